// ferry's amqp:// publisher against a raw rabbitmq-c loop doing the same work, in one
// process and one run, so that ferry's overhead is a ratio (docs/amqp.md).
//
//   ferry_amqp_bench --broker amqp://guest:guest@127.0.0.1:5672/ [--messages 200000]
//                    [--size 100] [--producers 8] [--connections 4] [--confirm-window 512]
//                    [--rounds 3]
//
// Raw: `connections` threads, each with its own connection, publish their share of the
// messages to a durable fanout exchange bound to one durable queue: persistent
// (delivery mode 2), mandatory, with message id, timestamp and one header, keeping up to
// `confirm-window` publishes unconfirmed (publisher confirms, multiple acks honoured).
// ferry: `producers` threads publish the same number of messages of the same size
// through Broker::open("...?connections=C&confirm_window=W"), i.e. the same connections
// and the same confirm window, into a group's queue; ferry::bench::run measures it.
// Nothing consumes during either (publish throughput). Rounds alternate raw and ferry;
// the medians are reported.

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <iomanip>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "bench.hpp"
#include "ferry/backends/amqp.hpp"
#include "ferry/broker.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;

struct RawConfig {
  std::string host;
  int port = 5672;
  std::string user, password, vhost;
  std::uint64_t messages = 0;
  std::size_t size = 0;
  int connections = 0;
  int window = 0;
};

[[noreturn]] void die(const std::string& what) {
  std::cerr << "ferry_amqp_bench: " << what << "\n";
  std::exit(1);
}

void check(amqp_rpc_reply_t r, const char* what) {
  if (r.reply_type != AMQP_RESPONSE_NORMAL) die(std::string(what) + " failed");
}

amqp_connection_state_t connect(const RawConfig& c) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(conn);
  if (!socket || amqp_socket_open(socket, c.host.c_str(), c.port) != AMQP_STATUS_OK) die("cannot connect");
  check(amqp_login(conn, c.vhost.c_str(), 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, c.user.c_str(), c.password.c_str()),
        "login");
  amqp_channel_open(conn, 1);
  check(amqp_get_rpc_reply(conn), "channel.open");
  return conn;
}

// One raw publishing connection: publishes `count` messages keeping `window` unconfirmed.
void raw_publisher(const RawConfig& c, const std::string& exchange, std::uint64_t count,
                   std::atomic<std::uint64_t>& confirmed) {
  amqp_connection_state_t conn = connect(c);
  amqp_confirm_select(conn, 1);
  check(amqp_get_rpc_reply(conn), "confirm.select");
  std::string payload(c.size, 'x');
  std::deque<bool> window;  // unconfirmed tags from first_tag
  std::uint64_t first_tag = 1, sent = 0, done = 0;
  char id[40];
  while (done < count) {
    while (sent < count && static_cast<int>(window.size()) < c.window) {
      amqp_basic_properties_t props{};
      props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                     AMQP_BASIC_HEADERS_FLAG;
      props.delivery_mode = 2;
      int n = std::snprintf(id, sizeof id, "00000000-0000-4000-8000-%012llx", static_cast<unsigned long long>(sent));
      props.message_id = amqp_bytes_t{static_cast<std::size_t>(n), id};
      props.timestamp = static_cast<std::uint64_t>(std::time(nullptr));
      std::string now = std::to_string(SteadyClock::now().time_since_epoch().count());
      std::string ms = std::to_string(props.timestamp * 1000);
      amqp_table_entry_t headers[2]{};
      headers[0].key = amqp_cstring_bytes("bench-sent-ns");
      headers[0].value.kind = AMQP_FIELD_KIND_UTF8;
      headers[0].value.value.bytes = amqp_bytes_t{now.size(), now.data()};
      headers[1].key = amqp_cstring_bytes("ferry-timestamp-ms");
      headers[1].value.kind = AMQP_FIELD_KIND_UTF8;
      headers[1].value.value.bytes = amqp_bytes_t{ms.size(), ms.data()};
      props.headers = amqp_table_t{2, headers};
      if (amqp_basic_publish(conn, 1, amqp_cstring_bytes(exchange.c_str()), amqp_cstring_bytes(exchange.c_str()), 1, 0,
                             &props, amqp_bytes_t{payload.size(), payload.data()}) != AMQP_STATUS_OK)
        die("publish failed");
      window.push_back(false);
      ++sent;
    }
    amqp_frame_t frame;
    if (amqp_simple_wait_frame(conn, &frame) != AMQP_STATUS_OK) die("connection lost");
    if (frame.frame_type != AMQP_FRAME_METHOD || frame.payload.method.id != AMQP_BASIC_ACK_METHOD) continue;
    auto* ack = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
    if (ack->delivery_tag < first_tag) continue;
    std::uint64_t last = ack->delivery_tag - first_tag;
    for (std::uint64_t i = ack->multiple ? 0 : last; i <= last && i < window.size(); ++i) {
      if (!window[i]) {
        window[i] = true;
        ++done;
      }
    }
    while (!window.empty() && window.front()) {
      window.pop_front();
      ++first_tag;
    }
    amqp_maybe_release_buffers(conn);
  }
  confirmed += done;
  amqp_channel_close(conn, 1, AMQP_REPLY_SUCCESS);
  amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(conn);
}

double run_raw(const RawConfig& c, int round) {
  const std::string name = "raw-bench-" + std::to_string(::getpid()) + "-" + std::to_string(round);
  amqp_connection_state_t admin = connect(c);
  amqp_exchange_declare(admin, 1, amqp_cstring_bytes(name.c_str()), amqp_cstring_bytes("fanout"), 0, 1, 0, 0,
                        amqp_empty_table);
  check(amqp_get_rpc_reply(admin), "exchange.declare");
  amqp_queue_declare(admin, 1, amqp_cstring_bytes(name.c_str()), 0, 1, 0, 0, amqp_empty_table);
  check(amqp_get_rpc_reply(admin), "queue.declare");
  amqp_queue_bind(admin, 1, amqp_cstring_bytes(name.c_str()), amqp_cstring_bytes(name.c_str()), amqp_empty_bytes,
                  amqp_empty_table);
  check(amqp_get_rpc_reply(admin), "queue.bind");

  std::atomic<std::uint64_t> confirmed{0};
  std::vector<std::thread> threads;
  auto start = SteadyClock::now();
  for (int i = 0; i < c.connections; ++i) {
    std::uint64_t share = c.messages / static_cast<std::uint64_t>(c.connections) +
                          (static_cast<std::uint64_t>(i) < c.messages % static_cast<std::uint64_t>(c.connections));
    threads.emplace_back([&, share] { raw_publisher(c, name, share, confirmed); });
  }
  for (auto& t : threads) t.join();
  double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();

  amqp_queue_delete(admin, 1, amqp_cstring_bytes(name.c_str()), 0, 0);
  amqp_exchange_delete(admin, 1, amqp_cstring_bytes(name.c_str()), 0);
  amqp_connection_close(admin, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(admin);
  if (confirmed.load() != c.messages) die("raw: not every message was confirmed");
  return static_cast<double>(c.messages) / seconds;
}

double run_ferry(const std::string& url, const RawConfig& c, int producers, int round) {
  const std::string topic = "ferry-bench-" + std::to_string(::getpid()) + "-" + std::to_string(round);
  {
    // The group's queue must exist before publishing (mandatory publishes).
    auto broker = ferry::Broker::open(url);
    broker->subscribe({.topic = topic, .group = "bench"})->close();
    broker->close();
  }
  ferry::bench::Config config;
  config.broker = url;
  config.messages = c.messages;
  config.size = c.size;
  config.producers = producers;
  config.consumers = 0;
  // Producers may keep twice what the handle accepts in flight: ferry's own bound
  // (max_in_flight = 2 x connections x confirm_window) holds them back, as it would an
  // application that publishes asynchronously.
  config.window = std::max(1, c.window * c.connections * 4 / producers);
  config.topic = topic;
  auto result = ferry::bench::run(config);
  if (result.publish_errors)
    die("ferry: " + std::to_string(result.publish_errors) + " publishes failed: " + result.first_error);

  amqp_connection_state_t admin = connect(c);
  for (const std::string& q : {topic + ".bench", topic + ".bench.retry", topic + ".bench.dlq.ferry-dlq-replay"})
    amqp_queue_delete(admin, 1, amqp_cstring_bytes(q.c_str()), 0, 0);
  for (const std::string& x : {topic, topic + ".bench.dlq"})
    amqp_exchange_delete(admin, 1, amqp_cstring_bytes(x.c_str()), 0);
  amqp_connection_close(admin, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(admin);
  return result.publish_msgs_per_s;
}

// CPU seconds (user + system) this process has used.
double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry's amqp:// publisher against a raw rabbitmq-c loop, in one run"};
  std::string url;
  RawConfig c;
  c.messages = 200'000;
  c.size = 100;
  c.connections = 4;
  c.window = 512;
  int producers = 8;
  int rounds = 3;
  std::string only;
  app.add_option("--broker", url, "amqp://user:pass@host:port/vhost")->required();
  app.add_option("--messages", c.messages, "messages per run")->capture_default_str();
  app.add_option("--size", c.size, "payload bytes")->capture_default_str();
  app.add_option("--producers", producers, "ferry publishing threads")->capture_default_str();
  app.add_option("--connections", c.connections, "connections (raw threads; ferry's pool)")->capture_default_str();
  app.add_option("--confirm-window", c.window, "unconfirmed publishes per connection")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds of raw then ferry")->capture_default_str();
  app.add_option("--only", only, "run only one side (for profiling): raw or ferry")
      ->check(CLI::IsMember({"raw", "ferry"}));
  CLI11_PARSE(app, argc, argv);

  ferry::amqp::register_scheme();
  ferry::Url parsed = ferry::Url::parse(url);
  if (parsed.scheme() != "amqp") die("--broker must be an amqp:// URL");
  c.host = parsed.hosts().front().host;
  c.port = parsed.hosts().front().port.value_or(5672);
  c.user = parsed.user().empty() ? "guest" : parsed.user();
  c.password = parsed.user().empty() ? "guest" : parsed.password();
  c.vhost = parsed.path().size() > 1 ? parsed.path().substr(1) : "/";
  std::string ferry_url = url + (url.find('?') == std::string::npos ? "?" : "&") +
                          "connections=" + std::to_string(c.connections) +
                          "&confirm_window=" + std::to_string(c.window);

  std::cout << "broker      " << parsed.masked() << "\n"
            << "workload    " << c.messages << " persistent, mandatory, confirmed messages of " << c.size << " B; "
            << c.connections << " connections, confirm window " << c.window << "; ferry: " << producers
            << " producers\n";
  std::vector<double> raw, ours, raw_cpu, ours_cpu;
  std::cout << std::fixed << std::setprecision(0);
  for (int r = 0; r < rounds; ++r) {
    double t0 = cpu_seconds();
    raw.push_back(only == "ferry" ? 1 : run_raw(c, r));
    double t1 = cpu_seconds();
    ours.push_back(only == "raw" ? 1 : run_ferry(ferry_url, c, producers, r));
    double t2 = cpu_seconds();
    raw_cpu.push_back((t1 - t0) * 1e6 / static_cast<double>(c.messages));
    ours_cpu.push_back((t2 - t1) * 1e6 / static_cast<double>(c.messages));
    std::cout << "round " << r + 1 << "     raw " << raw.back() << " msg/s (" << std::setprecision(1) << raw_cpu.back()
              << " us CPU/msg), ferry " << std::setprecision(0) << ours.back() << " msg/s (" << std::setprecision(1)
              << ours_cpu.back() << " us CPU/msg), ratio " << std::setprecision(2) << ours.back() / raw.back()
              << std::setprecision(0) << "\n";
  }
  std::vector<double> ratios;
  for (std::size_t i = 0; i < raw.size(); ++i) ratios.push_back(ours[i] / raw[i]);
  std::cout << "median      raw " << median(raw) << " msg/s (" << std::setprecision(1) << median(raw_cpu)
            << " us CPU/msg), ferry " << std::setprecision(0) << median(ours) << " msg/s (" << std::setprecision(1)
            << median(ours_cpu) << " us CPU/msg); median of the rounds' ratios " << std::setprecision(2)
            << median(ratios) << "\n";
  return 0;
}
