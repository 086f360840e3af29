#pragma once
// The order service's two processes, as functions the command line calls.
//
// run_serve: opens the brokers and the order store, starts the order processor (one per
// broker, unless disabled) and the HTTP API, logs one start-up line ("ferry VERSION
// serve: listening on HOST:PORT ..." with masked broker URLs), then runs until SIGINT or
// SIGTERM. Shutdown: stop accepting, answer the requests in flight, wait for their
// publishes, let the processor finish and ack its current messages, close the brokers
// and the store, log what was drained, return 0 — all within shutdown_timeout (past it,
// 1; a second signal exits at once with 1).
//
// run_consume: the order processor alone, with the same start-up line, signals and
// shutdown; it logs "consume: processed N, duplicates D, rejected R" on exit.
//
// Both throw Error(invalid_argument | bad_url | unknown_scheme) for bad configuration,
// before anything is opened where possible.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::app {

struct ServeConfig {
  std::string version;
  std::vector<std::string> brokers;  // "URL" or "name=URL"; the first is the default
  std::string listen = "127.0.0.1:8080";
  int threads = 0;  // 0: one per core
  bool processor = true;
  int concurrency = 4;
  std::chrono::milliseconds ack_timeout{30'000};
  std::string store = "./ferry-data/orders.db";
  std::chrono::milliseconds shutdown_timeout{10'000};
  std::chrono::milliseconds request_timeout{8'000};
};

struct ConsumeConfig {
  std::string version;
  std::vector<std::string> brokers;
  std::string store = "./ferry-data/orders.db";
  int concurrency = 4;
  std::chrono::milliseconds ack_timeout{30'000};
  std::chrono::milliseconds shutdown_timeout{10'000};
  std::string metrics_listen;  // empty: no HTTP endpoint; else /metrics, /healthz, /readyz there
};

int run_serve(const ServeConfig& config);
int run_consume(const ConsumeConfig& config);

struct ListenAddress {
  std::string host;
  std::uint16_t port = 0;
};
// "host:port", "[v6]:port" or ":port" (every interface); port 0 picks a free one.
// Throws Error(invalid_argument).
ListenAddress parse_listen(std::string_view text);

struct BrokerSpec {
  std::string name;  // given as name=URL, else the URL's scheme
  std::string url;
};
// Throws Error(invalid_argument) for an empty list, a bad name or a repeated name.
std::vector<BrokerSpec> parse_broker_specs(const std::vector<std::string>& items);

}  // namespace ferry::app
