// ferry_bench_raw_kafka: ferry's kafka:// publish throughput against a raw librdkafka
// producer loop doing the same work in the same run, and ferry's end-to-end latency at a
// fixed rate against librdkafka's own. Both producers use the same settings:
// enable.idempotence=true, acks=all, linger.ms=5, partitioner=murmur2_random, the same
// message count and payload size.
//
//   ferry_bench_raw_kafka [--messages N] [--size BYTES] [--rounds R] [--rate MSG_PER_S]
//                         [--latency-messages N] [--bootstrap HOST:PORT,...[?QUERY]]
//
// Without --bootstrap it starts librdkafka's mock cluster (3 brokers) in-process. A query
// after the addresses goes to ferry's URL only (a mock cluster in another process, as
// `ferry dev kafka` starts, needs ?create_topics=auto).
//
// Throughput: the raw loop runs twice, bare and with the two headers ferry's messages
// carry in `ferry bench` (the 36-byte ferry-id and the bench's send-time header), which is
// "the same work". ferry runs twice per round: one publish per call, and batches of 100.
// Rounds alternate raw and ferry; the best and the median round of each are reported, and
// the median of the rounds' own ratios (each ferry run against the raw run just before
// it), which the machine's drift between rounds disturbs least.
//
// Each round also reports the CPU time of the whole process per message for the four runs
// (user and system, every thread): with --bootstrap to a mock in another process, the
// client's cost alone.
//
// Latency: `ferry bench` with one producer and one consumer at --rate, not counting the
// messages of the first second (the group's first fetch; reported apart); then a raw
// producer and a raw consumer of a group at the same rate, timed from once the consumer
// has received a first message.

#include <librdkafka/rdkafka.h>
#include <sys/resource.h>

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
#include <vector>

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

using Settings = std::vector<std::pair<const char*, const char*>>;

// ferry's producer defaults (kafka_options.cpp), which both sides of the comparison use.
const Settings producer_settings = {{"enable.idempotence", "true"},
                                    {"acks", "all"},
                                    {"linger.ms", "5"},
                                    {"partitioner", "murmur2_random"},
                                    {"message.max.bytes", "4194304"}};

rd_kafka_conf_t* make_conf(const std::string& bootstrap, const Settings& settings) {
  char errstr[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  Settings all = settings;
  all.emplace_back("bootstrap.servers", bootstrap.c_str());
  for (const auto& [key, value] : all)
    if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
      std::cerr << key << ": " << errstr << "\n";
      std::exit(2);
    }
  return conf;
}

rd_kafka_t* make_handle(rd_kafka_type_t type, rd_kafka_conf_t* conf) {
  char errstr[512];
  rd_kafka_t* rk = rd_kafka_new(type, conf, errstr, sizeof errstr);
  if (!rk) {
    std::cerr << "rd_kafka_new: " << errstr << "\n";
    std::exit(2);
  }
  return rk;
}

// The raw loop: one thread producing asynchronously, a poller serving delivery reports,
// done when every report is in.
RawResult raw_publish(const std::string& bootstrap, const std::string& topic, std::uint64_t messages, std::size_t size,
                      bool with_headers) {
  rd_kafka_conf_t* conf = make_conf(bootstrap, producer_settings);
  Counters counters;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, &counters);
  rd_kafka_t* rk = make_handle(RD_KAFKA_PRODUCER, conf);
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

struct Latency {
  std::uint64_t received = 0;
  double p50 = 0, p99 = 0, p999 = 0, max = 0;
};

// End-to-end latency with librdkafka alone, as ferry's is measured: one producer at a
// fixed rate stamping the send time in a header, one consumer of a group polling and
// committing nothing, with the consumer settings ferry uses (plus the URL's
// fetch.wait.max.ms, as `ferry dev kafka` suggests it).
Latency raw_end_to_end(const std::string& bootstrap, const std::string& topic, std::uint64_t messages,
                       std::size_t size, std::uint64_t rate, const std::string& fetch_wait_ms) {
  rd_kafka_t* producer = make_handle(RD_KAFKA_PRODUCER, make_conf(bootstrap, producer_settings));
  const std::string group = "raw-e2e-" + topic;
  rd_kafka_t* consumer = make_handle(RD_KAFKA_CONSUMER, make_conf(bootstrap, {{"group.id", group.c_str()},
                                                                               {"enable.auto.commit", "false"},
                                                                               {"auto.offset.reset", "earliest"},
                                                                               {"queued.min.messages", "10000"},
                                                                               {"fetch.wait.max.ms", fetch_wait_ms.c_str()}}));
  rd_kafka_poll_set_consumer(consumer);
  // The topic exists, and the consumer has its partitions, before the clock starts.
  rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_VALUE(const_cast<char*>("warm-up"), 7),
                    RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  rd_kafka_flush(producer, 10000);
  rd_kafka_topic_partition_list_t* topics = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(topics, topic.c_str(), RD_KAFKA_PARTITION_UA);
  rd_kafka_subscribe(consumer, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  for (auto until = SteadyClock::now() + std::chrono::seconds(20); SteadyClock::now() < until;) {
    rd_kafka_message_t* m = rd_kafka_consumer_poll(consumer, 100);
    if (!m) continue;
    const bool warm_up = !m->err;
    rd_kafka_message_destroy(m);
    if (warm_up) break;
  }

  std::atomic<bool> stop{false};
  std::thread poller([&] {
    while (!stop) rd_kafka_poll(producer, 100);
  });
  std::vector<double> latencies;
  latencies.reserve(messages);
  std::thread receiver([&] {
    const auto give_up = SteadyClock::now() + std::chrono::seconds(30) +
                         std::chrono::milliseconds(messages * 1000 / std::max<std::uint64_t>(rate, 1));
    while (latencies.size() < messages && SteadyClock::now() < give_up) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(consumer, 100);
      if (!m) continue;
      const void* value = nullptr;
      std::size_t len = 0;
      rd_kafka_headers_t* headers = nullptr;
      if (!m->err && rd_kafka_message_headers(m, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR &&
          rd_kafka_header_get_last(headers, "sent-ns", &value, &len) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        std::int64_t sent = std::strtoll(std::string(static_cast<const char*>(value), len).c_str(), nullptr, 10);
        latencies.push_back(static_cast<double>(SteadyClock::now().time_since_epoch().count() - sent) / 1e6);
      }
      rd_kafka_message_destroy(m);
    }
  });
  const std::string payload(size, 'x');
  const auto t0 = SteadyClock::now();
  for (std::uint64_t i = 0; i < messages; ++i) {
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<SteadyClock::duration>(
                                           std::chrono::duration<double>(static_cast<double>(i) / static_cast<double>(rate))));
    const std::string sent = std::to_string(SteadyClock::now().time_since_epoch().count());
    rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic.c_str()),
                      RD_KAFKA_V_VALUE(const_cast<char*>(payload.data()), payload.size()),
                      RD_KAFKA_V_HEADER("sent-ns", sent.data(), static_cast<ssize_t>(sent.size())),
                      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  }
  receiver.join();
  rd_kafka_flush(producer, 10000);
  stop = true;
  poller.join();
  rd_kafka_consumer_close(consumer);
  rd_kafka_destroy(consumer);
  rd_kafka_destroy(producer);

  std::sort(latencies.begin(), latencies.end());
  Latency result;
  result.received = latencies.size();
  result.p50 = ferry::bench::percentile(latencies, 0.50);
  result.p99 = ferry::bench::percentile(latencies, 0.99);
  result.p999 = ferry::bench::percentile(latencies, 0.999);
  result.max = latencies.empty() ? 0 : latencies.back();
  return result;
}

// CPU time (user and system, every thread of the process) since some fixed point.
double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
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
                   "[--latency-messages N] [--bootstrap HOST:PORT,...[?QUERY]]\n";
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
    bootstrap = bootstrap.substr(0, bootstrap.find('?'));
  }
  std::cout << "kafka at " << bootstrap << (mock ? " (librdkafka mock cluster, in-process)" : "") << "; " << messages
            << " messages of " << size << " B, " << rounds << " rounds\n";

  // msg/s per round: raw, raw+headers, ferry, ferry batch 100.
  std::vector<double> bare_rates, header_rates, ferry_rates, batched_rates;
  std::vector<double> ferry_ratios, batched_ratios;  // ÷ raw+headers of the same round
  // CPU time of the whole process per message (µs), mock brokers included, per round.
  std::vector<double> bare_cpu, header_cpu, ferry_cpu, batched_cpu;
  for (std::uint64_t r = 0; r < rounds; ++r) {
    const std::string suffix = ferry::make_uuid().substr(0, 8);
    double cpu = cpu_seconds();
    auto cpu_us_per_message = [&] {
      const double now = cpu_seconds();
      const double us = (now - cpu) * 1e6 / static_cast<double>(messages);
      cpu = now;
      return us;
    };
    RawResult bare = raw_publish(bootstrap, "raw-bare-" + suffix, messages, size, false);
    bare_cpu.push_back(cpu_us_per_message());
    RawResult headers = raw_publish(bootstrap, "raw-headers-" + suffix, messages, size, true);
    header_cpu.push_back(cpu_us_per_message());
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
    ferry_cpu.push_back(cpu_us_per_message());
    config.batch = 100;
    config.topic += "-batched";
    ferry::bench::Result b = ferry::bench::run(config);
    batched_cpu.push_back(cpu_us_per_message());
    std::cout << std::fixed << std::setprecision(0) << "round " << r + 1 << ": raw " << bare.msgs_per_s()
              << " msg/s, raw+headers " << headers.msgs_per_s() << " msg/s, ferry " << f.publish_msgs_per_s
              << " msg/s, ferry batch 100 " << b.publish_msgs_per_s << " msg/s (" << f.publish_errors + b.publish_errors
              << " errors)\n";
    bare_rates.push_back(bare.msgs_per_s());
    header_rates.push_back(headers.msgs_per_s());
    ferry_rates.push_back(f.publish_msgs_per_s);
    batched_rates.push_back(b.publish_msgs_per_s);
    ferry_ratios.push_back(f.publish_msgs_per_s / headers.msgs_per_s());
    batched_ratios.push_back(b.publish_msgs_per_s / headers.msgs_per_s());
  }
  auto best = [](std::vector<double> v) { return *std::max_element(v.begin(), v.end()); };
  std::cout << std::fixed << std::setprecision(0) << "best:   raw " << best(bare_rates) << " msg/s, raw+headers "
            << best(header_rates) << " msg/s, ferry " << best(ferry_rates) << " msg/s, ferry batch 100 "
            << best(batched_rates) << " msg/s\n"
            << "median: raw " << median(bare_rates) << " msg/s, raw+headers " << median(header_rates)
            << " msg/s, ferry " << median(ferry_rates) << " msg/s, ferry batch 100 " << median(batched_rates)
            << " msg/s\n"
            << std::setprecision(3) << "ratio ferry/raw+headers: best " << best(ferry_rates) / best(header_rates)
            << ", median of rounds " << median(ferry_ratios) << "; batch 100: best "
            << best(batched_rates) / best(header_rates) << ", median of rounds " << median(batched_ratios) << "\n"
            << std::setprecision(2) << "cpu per message (median, whole process): raw " << median(bare_cpu)
            << " us, raw+headers " << median(header_cpu) << " us, ferry " << median(ferry_cpu) << " us, ferry batch 100 "
            << median(batched_cpu) << " us\n";

  if (latency_messages > 0 && rate > 0) {
    ferry::bench::Config config;
    config.broker = url;
    config.messages = latency_messages;
    config.size = size;
    config.producers = 1;
    config.consumers = 1;
    config.window = 1000;
    config.rate = static_cast<double>(rate);
    config.warmup_s = 1;  // the raw consumer below starts its clock once it is fetching
    ferry::bench::Result f = ferry::bench::run(config);
    std::cout << "end to end at " << rate << " msg/s:\n";
    ferry::bench::print_text(std::cout, config, f);
    const std::string query = url.find('?') == std::string::npos ? "" : url.substr(url.find('?'));
    const auto fetch_wait = query.find("fetch.wait.max.ms=");
    const std::string wait_ms =
        fetch_wait == std::string::npos ? "500" : query.substr(fetch_wait + 18, query.find('&', fetch_wait) - fetch_wait - 18);
    Latency raw = raw_end_to_end(bootstrap, "raw-e2e-" + ferry::make_uuid().substr(0, 8), latency_messages, size, rate, wait_ms);
    std::cout << std::fixed << std::setprecision(2) << "raw librdkafka end to end (fetch.wait.max.ms=" << wait_ms
              << "): " << raw.received << " received, p50 " << raw.p50 << " ms, p99 " << raw.p99 << " ms, p999 "
              << raw.p999 << " ms, max " << raw.max << " ms\n";
  }
  return 0;
}
