#include "commands.hpp"

#include <chrono>
#include <cmath>

#include "ferry/error.hpp"
#include "service.hpp"

namespace ferry::cli {
namespace {

std::chrono::milliseconds to_ms(double seconds, const char* flag) {
  if (!std::isfinite(seconds) || seconds <= 0 || seconds > 86400)
    throw Error(Errc::invalid_argument, std::string(flag) + " must be a positive number of seconds");
  return std::chrono::milliseconds{static_cast<long long>(std::llround(seconds * 1000))};
}

void add_processor_options(CLI::App& cmd, int& concurrency, double& ack_timeout_s) {
  cmd.add_option("--concurrency", concurrency, "order processor workers per broker")->capture_default_str();
  cmd.add_option("--ack-timeout", ack_timeout_s,
                 "seconds an order event stays leased to this process; after a crash it is redelivered once this "
                 "passes")
      ->capture_default_str();
}

void add_broker_option(CLI::App& cmd, std::vector<std::string>& brokers, const std::string& default_broker) {
  brokers = {default_broker};
  cmd.add_option("--broker", brokers,
                 "broker URL, or NAME=URL to name it for POST /orders/NAME; repeatable, the first is the default "
                 "(sqlite://PATH, memory://, kafka://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST, nsq://HOST:PORT)")
      ->envname("FERRY_BROKER")
      ->capture_default_str();
}

}  // namespace

void add_serve_options(CLI::App& cmd, ServeArgs& args, const std::string& default_broker) {
  add_broker_option(cmd, args.brokers, default_broker);
  cmd.add_option("--listen", args.listen,
                 "HTTP address: HOST:PORT, [IPv6]:PORT or :PORT (every interface); port 0 "
                 "picks a free one")
      ->envname("FERRY_LISTEN")
      ->capture_default_str();
  cmd.add_option("--threads", args.threads, "HTTP I/O threads (0: one per core)")->capture_default_str();
  cmd.add_flag("--no-processor", args.no_processor, "do not run the order processor in this process");
  add_processor_options(cmd, args.concurrency, args.ack_timeout_s);
  cmd.add_option("--store", args.store, "the order store's SQLite file")->envname("FERRY_STORE")->capture_default_str();
  cmd.add_option("--shutdown-timeout", args.shutdown_timeout_s, "seconds to drain on SIGINT/SIGTERM")
      ->capture_default_str();
}

void add_consume_options(CLI::App& cmd, ConsumeArgs& args, const std::string& default_broker) {
  add_broker_option(cmd, args.brokers, default_broker);
  cmd.add_option("--store", args.store, "the order store's SQLite file")->envname("FERRY_STORE")->capture_default_str();
  add_processor_options(cmd, args.concurrency, args.ack_timeout_s);
  cmd.add_option("--shutdown-timeout", args.shutdown_timeout_s, "seconds to drain on SIGINT/SIGTERM")
      ->capture_default_str();
  cmd.add_option("--metrics-listen", args.metrics_listen,
                 "serve /metrics, /healthz and /readyz on HOST:PORT (:0 picks a free port); off when empty");
}

int run_serve(const ServeArgs& args) {
  app::ServeConfig config;
  config.version = FERRY_VERSION;
  config.brokers = args.brokers;
  config.listen = args.listen;
  config.threads = args.threads;
  config.processor = !args.no_processor;
  config.concurrency = args.concurrency;
  config.ack_timeout = to_ms(args.ack_timeout_s, "--ack-timeout");
  config.store = args.store;
  config.shutdown_timeout = to_ms(args.shutdown_timeout_s, "--shutdown-timeout");
  return app::run_serve(config);
}

int run_consume(const ConsumeArgs& args) {
  app::ConsumeConfig config;
  config.version = FERRY_VERSION;
  config.brokers = args.brokers;
  config.store = args.store;
  config.concurrency = args.concurrency;
  config.ack_timeout = to_ms(args.ack_timeout_s, "--ack-timeout");
  config.shutdown_timeout = to_ms(args.shutdown_timeout_s, "--shutdown-timeout");
  config.metrics_listen = args.metrics_listen;
  return app::run_consume(config);
}

}  // namespace ferry::cli
