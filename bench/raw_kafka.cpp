// ferry_bench_raw_kafka: ferry's kafka:// publish throughput against a raw librdkafka
// producer loop doing the same work in the same run, and ferry's end-to-end latency at a
// fixed rate against librdkafka's own. Both producers use the same settings:
// enable.idempotence=true, acks=all, linger.ms=5, partitioner=murmur2_random, the same
// message count and payload size.
//
//   ferry_bench_raw_kafka [--messages N] [--size BYTES] [--rounds R] [--rate MSG_PER_S]
//                         [--latency-messages N] [--bootstrap HOST:PORT,...[?QUERY]]
//                         [--only NAME]
//
// Without --bootstrap it starts librdkafka's mock cluster (3 brokers) in-process. A query
// after the addresses goes to ferry's URL only (a mock cluster in another process, as
// `ferry dev kafka` starts, needs ?create_topics=auto).
//
// Throughput, six runs per round, each publishing from a thread of its own:
//   raw              librdkafka, bare messages, the delivery reports counted;
//   raw+headers      with the two headers ferry's messages carry in `ferry bench` (the
//                    36-byte ferry-id and the bench's send-time header);
//   raw+completions  and each message with a completion of its own, run from its
//                    delivery report: what ferry's publish_async does for a caller;
//   ferry            ferry::bench, one publish_async per message, each a copy of one
//                    message the bench keeps (its send time changed);
//   ferry fresh      the same, each publish given a ferry::Message built for it (its
//                    payload copied in, the send time in its header map);
//   ferry batch 100  ferry::bench, publish_batch_async of 100 messages.
// The best and the median round of each are reported, and the median of the rounds' own
// ratios (each ferry run against the raw runs of its round), which the machine's drift
// between rounds disturbs least; and the CPU time of the whole process per message (user
// and system, every thread): with --bootstrap to a mock in another process, the client's
// cost alone.
//
// --only NAME runs one of the six, --rounds times, and nothing else: a run to profile.
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
#include <functional>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
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

// What a raw loop that learns the outcome of each message, as ferry's publish_async
// does, hands librdkafka with it: the least a per-message completion can be.
struct Completion {
  Counters* counters;
  void operator()(rd_kafka_resp_err_t err) const {
    if (err)
      ++counters->failed;
    else
      ++counters->delivered;
  }
};

void on_delivery(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
  if (auto* completion = static_cast<Completion*>(m->_private)) {
    (*completion)(m->err);
    delete completion;
    return;
  }
  auto* c = static_cast<Counters*>(opaque);
  if (m->err)
    ++c->failed;
  else
    ++c->delivered;
}

// What each message of a raw loop carries: nothing, the two headers, or the headers and a
// completion of its own.
enum class RawWork { bare, headers, completions };

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
                      RawWork work) {
  rd_kafka_conf_t* conf = make_conf(bootstrap, producer_settings);
  Counters counters;
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  rd_kafka_conf_set_opaque(conf, &counters);
  rd_kafka_t* rk = make_handle(RD_KAFKA_PRODUCER, conf);
  // The topic exists before the clock starts, as it does for ferry after its first publish,
  // and messages go to its handle, as ferry's do (not looked up by name each time).
  rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, topic.c_str(), nullptr);
  const rd_kafka_metadata_t* md = nullptr;
  if (rd_kafka_metadata(rk, 0, rkt, &md, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) rd_kafka_metadata_destroy(md);

  std::atomic<bool> stop{false};
  std::thread poller([&] {
    while (!stop) rd_kafka_poll(rk, 100);
  });
  const std::string payload(size, 'x');
  const auto start = SteadyClock::now();
  // A thread of its own, as ferry::bench publishes from (the allocator gives the main
  // thread an arena of its own).
  std::thread publisher([&] {
    for (std::uint64_t i = 0; i < messages; ++i) {
      rd_kafka_headers_t* headers = nullptr;
      Completion* completion = work == RawWork::completions ? new Completion{&counters} : nullptr;
      if (work != RawWork::bare) {
        const std::string id = ferry::make_uuid();
        const std::string sent = std::to_string(SteadyClock::now().time_since_epoch().count());
        headers = rd_kafka_headers_new(2);
        rd_kafka_header_add(headers, "ferry-id", -1, id.data(), static_cast<ssize_t>(id.size()));
        rd_kafka_header_add(headers, "bench-sent-ns", -1, sent.data(), static_cast<ssize_t>(sent.size()));
      }
      while (true) {
        rd_kafka_resp_err_t err =
            headers ? rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt),
                                        RD_KAFKA_V_VALUE(const_cast<char*>(payload.data()), payload.size()),
                                        RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                        RD_KAFKA_V_OPAQUE(completion), RD_KAFKA_V_END)
                    : rd_kafka_producev(rk, RD_KAFKA_V_RKT(rkt),
                                        RD_KAFKA_V_VALUE(const_cast<char*>(payload.data()), payload.size()),
                                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
        if (!err) break;
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
          if (headers) rd_kafka_headers_destroy(headers);
          delete completion;
          ++counters.failed;
          break;
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
      }
    }
  });
  publisher.join();
  rd_kafka_flush(rk, 60000);
  RawResult result;
  result.seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  stop = true;
  poller.join();
  rd_kafka_topic_destroy(rkt);
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
Latency raw_end_to_end(const std::string& bootstrap, const std::string& topic, std::uint64_t messages, std::size_t size,
                       std::uint64_t rate, const std::string& fetch_wait_ms) {
  rd_kafka_t* producer = make_handle(RD_KAFKA_PRODUCER, make_conf(bootstrap, producer_settings));
  const std::string group = "raw-e2e-" + topic;
  rd_kafka_t* consumer =
      make_handle(RD_KAFKA_CONSUMER, make_conf(bootstrap, {{"group.id", group.c_str()},
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
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<SteadyClock::duration>(std::chrono::duration<double>(
                                           static_cast<double>(i) / static_cast<double>(rate))));
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
  std::string bootstrap, only;
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
    else if (a == "--only" && i + 1 < argc)
      only = argv[++i];
    else {
      std::cerr << "usage: ferry_bench_raw_kafka [--messages N] [--size BYTES] [--rounds R] [--rate MSG_PER_S] "
                   "[--latency-messages N] [--bootstrap HOST:PORT,...[?QUERY]] "
                   "[--only NAME]\n";
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

  auto run_ferry = [&](const std::string& topic, int batch, bool fresh) {
    ferry::bench::Config config;
    config.broker = url;
    config.messages = messages;
    config.size = size;
    config.producers = 1;
    config.consumers = 0;
    config.window = 100'000;
    config.batch = batch;
    config.fresh_messages = fresh;
    config.topic = topic;
    return ferry::bench::run(config);
  };

  // The six publish runs, in the order the first round runs them.
  struct Variant {
    std::string name;
    std::function<double(const std::string& topic)> run;  // msg/s
    std::vector<double> rates = {}, cpu = {};             // per round; cpu: µs per message
  };
  auto raw = [&](RawWork work) {
    return [&, work](const std::string& topic) {
      return raw_publish(bootstrap, topic, messages, size, work).msgs_per_s();
    };
  };
  auto with_ferry = [&](int batch, bool fresh) {
    return [&, batch, fresh](const std::string& topic) { return run_ferry(topic, batch, fresh).publish_msgs_per_s; };
  };
  std::vector<Variant> variants = {{"raw", raw(RawWork::bare)},
                                   {"raw+headers", raw(RawWork::headers)},
                                   {"raw+completions", raw(RawWork::completions)},
                                   {"ferry", with_ferry(1, false)},
                                   {"ferry fresh", with_ferry(1, true)},
                                   {"ferry batch 100", with_ferry(100, false)}};
  enum { kBare, kHeaders, kCompletions, kFerry, kFresh, kBatched };
  if (!only.empty()) {
    auto chosen = std::find_if(variants.begin(), variants.end(), [&](const Variant& v) { return v.name == only; });
    if (chosen == variants.end()) {
      std::cerr << "--only takes one of: raw, raw+headers, raw+completions, ferry, 'ferry fresh', 'ferry batch 100'\n";
      return 2;
    }
    variants = {*chosen};
  }

  // Each round starts one run later than the one before, so that no run always follows the
  // same other run (what a run leaves in the allocator and the mock cluster weighs on the next).
  for (std::uint64_t r = 0; r < rounds; ++r) {
    const std::string suffix = ferry::make_uuid().substr(0, 8);
    std::cout << "round " << r + 1 << ":";
    for (std::size_t k = 0; k < variants.size(); ++k) {
      Variant& v = variants[(r + k) % variants.size()];
      std::string topic = v.name + "-" + suffix;
      std::replace_if(
          topic.begin(), topic.end(), [](char c) { return c == ' ' || c == '+'; }, '-');
      const double cpu = cpu_seconds();
      v.rates.push_back(v.run(topic));
      v.cpu.push_back((cpu_seconds() - cpu) * 1e6 / static_cast<double>(messages));
      std::cout << std::fixed << std::setprecision(0) << " " << v.name << " " << v.rates.back() << " msg/s"
                << (k + 1 == variants.size() ? "\n" : ",") << std::flush;
    }
  }
  auto best = [](const std::vector<double>& v) { return *std::max_element(v.begin(), v.end()); };
  auto line = [&](const char* title, auto value) {
    std::cout << title;
    for (const auto& v : variants)
      std::cout << " " << v.name << " " << value(v) << (&v == &variants.back() ? "\n" : ",");
  };
  std::cout << std::fixed << std::setprecision(0);
  line("best:  ", [&](const Variant& v) { return std::to_string(static_cast<long>(best(v.rates))) + " msg/s"; });
  line("median:", [&](const Variant& v) { return std::to_string(static_cast<long>(median(v.rates))) + " msg/s"; });
  line("cpu per message (median, whole process):", [&](const Variant& v) {
    std::ostringstream out;
    out << std::fixed << std::setprecision(2) << median(v.cpu) << " us";
    return out.str();
  });
  if (variants.size() == 6) {
    // Each ferry run against the raw run of the same round: the machine's drift between
    // rounds disturbs these least.
    auto ratio = [&](int of, int to) {
      std::vector<double> ratios;
      for (std::size_t r = 0; r < rounds; ++r) ratios.push_back(variants[of].rates[r] / variants[to].rates[r]);
      std::ostringstream out;
      out << std::fixed << std::setprecision(3) << "best " << best(variants[of].rates) / best(variants[to].rates)
          << ", median of rounds " << median(ratios);
      return out.str();
    };
    std::cout << "ratio ferry/raw+headers: " << ratio(kFerry, kHeaders) << "\n"
              << "ratio ferry/raw+completions: " << ratio(kFerry, kCompletions) << "\n"
              << "ratio ferry fresh/raw+completions: " << ratio(kFresh, kCompletions) << "\n"
              << "ratio ferry batch 100/raw+headers: " << ratio(kBatched, kHeaders) << "\n";
  }
  if (!only.empty()) return 0;

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
    const std::string wait_ms = fetch_wait == std::string::npos
                                    ? "500"
                                    : query.substr(fetch_wait + 18, query.find('&', fetch_wait) - fetch_wait - 18);
    Latency raw =
        raw_end_to_end(bootstrap, "raw-e2e-" + ferry::make_uuid().substr(0, 8), latency_messages, size, rate, wait_ms);
    std::cout << std::fixed << std::setprecision(2) << "raw librdkafka end to end (fetch.wait.max.ms=" << wait_ms
              << "): " << raw.received << " received, p50 " << raw.p50 << " ms, p99 " << raw.p99 << " ms, p999 "
              << raw.p999 << " ms, max " << raw.max << " ms\n";
  }
  return 0;
}
