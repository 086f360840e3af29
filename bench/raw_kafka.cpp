// ferry_bench_raw_kafka: ferry's kafka:// publish throughput against a raw librdkafka
// producer loop doing the same work in the same run, and ferry's end-to-end latency at a
// fixed rate. Both producers use the same settings: enable.idempotence=true, acks=all,
// linger.ms=5, partitioner=murmur2_random, the same message count and payload size.
//
//   ferry_bench_raw_kafka [--messages N] [--size BYTES] [--rounds R] [--rate MSG_PER_S]
//                         [--latency-messages N] [--bootstrap HOST:PORT,...]
//
// Without --bootstrap it starts librdkafka's mock cluster (3 brokers) in-process. The raw
// loop runs twice: bare, and with the two headers ferry's messages carry in `ferry bench`
// (the 36-byte ferry-id and the bench's send-time header), which is "the same work".
// ferry runs twice per round: one publish_async per message, and publish_batch_async with
// batches of 100. Rounds alternate raw and ferry; the best round of each is reported.

#include <librdkafka/rdkafka.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>
#include <thread>

#include "bench.hpp"
#include "ferry/backends/kafka.hpp"
#include "ferry/message.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;

struct RawResult {
  std::uint64_t delivered = 0, failed = 0;
  double seconds = 0;
  double msgs_per_s() const { return seconds > 0 ? static_cast<double>(delivered) / seconds : 0; }
};

struct Counters {
  std::atomic<std::uint64_t> delivered{0}, failed{0};
};

void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  auto* c = static_cast<Counters*>(opaque);
  if (m->err)
    ++c->failed;
  else
    ++c->delivered;
}

// The raw loop: one thread producing asynchronously, a poller serving delivery reports,
// done when every report is in.
RawResult raw_publish(const std::string& bootstrap, const std::string& topic, std::uint64_t messages, std::size_t size,
                      bool with_headers) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  const std::pair<const char*, const char*> settings[] = {
      {"bootstrap.servers", bootstrap.c_str()}, {"enable.idempotence", "true"},  {"acks", "all"}, {"linger.ms", "5"},
      {"partitioner", "murmur2_random"},        {"message.max.bytes", "4194304"}};
  for (const auto& [key, value] : settings)
    if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
      std::cerr << key << ": " << errstr << "\n";
      std::exit(2);
    }
  Counters counters;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, &counters);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!rk) {
    std::cerr << "rd_kafka_new: " << errstr << "\n";
    std::exit(2);
  }
  // The topic exists before the clock starts, as it does for ferry after its first publish.
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);

  std::atomic<bool> stop{false};
  std::thread poller([&] {
    while (!stop) rd_kafka_poll(rk, 100);
  });
  const std::string payload(size, 'x');
  const auto start = SteadyClock::now();
  for (std::uint64_t i = 0; i < messages; ++i) {
    rd_kafka_headers_t* headers = nullptr;
    if (with_headers) {
      const std::string id = ferry::make_uuid();
      const std::string sent = std::to_string(SteadyClock::now().time_since_epoch().count());
      headers = rd_kafka_headers_new(2);
      rd_kafka_header_add(headers, "ferry-id", -1, id.data(), static_cast<ssize_t>(id.size()));
      rd_kafka_header_add(headers, "ferry-bench-sent-ns", -1, sent.data(), static_cast<ssize_t>(sent.size()));
    }
    while (true) {
      rd_kafka_resp_err_t err =
          headers
              ? rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()),
                                  RD_KAFKA_V_VALUE(const_cast<char*>(payload.data()), payload.size()),
                                  RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END)
              : rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic.c_str()),
                                  RD_KAFKA_V_VALUE(const_cast<char*>(payload.data()), payload.size()),
                                  RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
      if (!err) break;
      if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
        if (headers) rd_kafka_headers_destroy(headers);
        ++counters.failed;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  rd_kafka_flush(rk, 60000);
  RawResult result;
  result.seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  stop = true;
  poller.join();
  rd_kafka_destroy(rk);
  result.delivered = counters.delivered;
  result.failed = counters.failed;
  return result;
}

std::uint64_t arg_u64(int& i, int argc, char** argv) {
  if (i + 1 >= argc) {
    std::cerr << argv[i] << " needs a value\n";
    std::exit(2);
  }
  return std::strtoull(argv[++i], nullptr, 10);
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t messages = 200'000, rounds = 3, rate = 10'000, latency_messages = 50'000;
  std::size_t size = 100;
  std::string bootstrap;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--messages")
      messages = arg_u64(i, argc, argv);
    else if (a == "--size")
      size = arg_u64(i, argc, argv);
    else if (a == "--rounds")
      rounds = std::max<std::uint64_t>(1, arg_u64(i, argc, argv));
    else if (a == "--rate")
      rate = arg_u64(i, argc, argv);
    else if (a == "--latency-messages")
      latency_messages = arg_u64(i, argc, argv);
    else if (a == "--bootstrap" && i + 1 < argc)
      bootstrap = argv[++i];
    else {
      std::cerr << "usage: ferry_bench_raw_kafka [--messages N] [--size BYTES] [--rounds R] [--rate MSG_PER_S] "
                   "[--latency-messages N] [--bootstrap HOST:PORT,...]\n";
      return 2;
    }
  }
  ferry::kafka::register_scheme();
  std::unique_ptr<ferry::kafka::MockCluster> mock;
  std::string url;
  if (bootstrap.empty()) {
    mock = std::make_unique<ferry::kafka::MockCluster>(3);
    bootstrap = mock->bootstrap();
    url = mock->url();
  } else {
    url = "kafka://" + bootstrap;
  }
  std::cout << "kafka at " << bootstrap << (mock ? " (librdkafka mock cluster, in-process)" : "") << "; " << messages
            << " messages of " << size << " B, " << rounds << " rounds\n";

  RawResult best_bare, best_headers;
  ferry::bench::Result best_ferry, best_batched;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    const std::string suffix = ferry::make_uuid().substr(0, 8);
    RawResult bare = raw_publish(bootstrap, "raw-bare-" + suffix, messages, size, false);
    RawResult headers = raw_publish(bootstrap, "raw-headers-" + suffix, messages, size, true);
    ferry::bench::Config config;
    config.broker = url;
    config.messages = messages;
    config.size = size;
    config.producers = 1;
    config.consumers = 0;
    config.window = 100'000;
    config.batch = 1;
    config.topic = "ferry-" + suffix;
    ferry::bench::Result f = ferry::bench::run(config);
    config.batch = 100;
    config.topic += "-batched";
    ferry::bench::Result b = ferry::bench::run(config);
    std::cout << std::fixed << std::setprecision(0) << "round " << r + 1 << ": raw " << bare.msgs_per_s()
              << " msg/s, raw+headers " << headers.msgs_per_s() << " msg/s, ferry " << f.publish_msgs_per_s
              << " msg/s, ferry batch 100 " << b.publish_msgs_per_s << " msg/s (" << f.publish_errors + b.publish_errors
              << " errors)\n";
    if (bare.msgs_per_s() > best_bare.msgs_per_s()) best_bare = bare;
    if (headers.msgs_per_s() > best_headers.msgs_per_s()) best_headers = headers;
    if (f.publish_msgs_per_s > best_ferry.publish_msgs_per_s) best_ferry = f;
    if (b.publish_msgs_per_s > best_batched.publish_msgs_per_s) best_batched = b;
  }
  std::cout << std::fixed << std::setprecision(0) << "best: raw " << best_bare.msgs_per_s() << " msg/s, raw+headers "
            << best_headers.msgs_per_s() << " msg/s, ferry " << best_ferry.publish_msgs_per_s
            << " msg/s, ferry batch 100 " << best_batched.publish_msgs_per_s << " msg/s\n"
            << std::setprecision(3) << "ratio ferry/raw+headers "
            << best_ferry.publish_msgs_per_s / best_headers.msgs_per_s()
            << " (batch 100: " << best_batched.publish_msgs_per_s / best_headers.msgs_per_s() << "), ferry/raw "
            << best_ferry.publish_msgs_per_s / best_bare.msgs_per_s()
            << " (batch 100: " << best_batched.publish_msgs_per_s / best_bare.msgs_per_s() << ")\n";

  if (latency_messages > 0 && rate > 0) {
    ferry::bench::Config config;
    config.broker = url;
    config.messages = latency_messages;
    config.size = size;
    config.producers = 1;
    config.consumers = 1;
    config.window = 1000;
    config.rate = static_cast<double>(rate);
    ferry::bench::Result f = ferry::bench::run(config);
    std::cout << "end to end at " << rate << " msg/s:\n";
    ferry::bench::print_text(std::cout, config, f);
  }
  return 0;
}
