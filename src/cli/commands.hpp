#pragma once
// `ferry serve` and `ferry consume`: the order service's two processes.

#include <CLI/CLI.hpp>

#include <string>
#include <vector>

namespace ferry::cli {

struct ServeArgs {
  std::vector<std::string> brokers;  // "URL" or "name=URL", repeatable; the first is the default
  std::string listen = "127.0.0.1:8080";
  int threads = 0;  // 0: one per core
  bool no_processor = false;
  int concurrency = 4;  // processor workers per broker
  double ack_timeout_s = 30;
  std::string store = "./ferry-data/orders.db";
  double shutdown_timeout_s = 10;
};

struct ConsumeArgs {
  std::vector<std::string> brokers;
  std::string store = "./ferry-data/orders.db";
  int concurrency = 4;
  double ack_timeout_s = 30;
  double shutdown_timeout_s = 10;
  std::string metrics_listen;  // serve has /metrics on its --listen address
};

void add_serve_options(CLI::App& cmd, ServeArgs& args, const std::string& default_broker);
void add_consume_options(CLI::App& cmd, ConsumeArgs& args, const std::string& default_broker);
int run_serve(const ServeArgs& args);
int run_consume(const ConsumeArgs& args);

}  // namespace ferry::cli
