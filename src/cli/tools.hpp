#pragma once
// The command-line tools that work on any broker: publish, tail, stats and dlq.
// Each returns the process exit code; errors are thrown as ferry::Error.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace ferry::cli {

struct PublishArgs {
  std::string broker;
  std::string topic;
  std::optional<std::string> key;
  std::vector<std::string> headers;  // "name=value"
  std::vector<std::string> messages; // empty: one message per line of standard input
};
int run_publish(const PublishArgs& args);

struct TailArgs {
  std::string broker;
  std::string topic;
  std::uint64_t count = 0;  // 0: until interrupted
  bool json = false;
};
int run_tail(const TailArgs& args);

int run_stats(const std::string& broker, bool json);

struct DlqArgs {
  std::string broker;
  std::string topic;  // the dead-letter topic, e.g. orders.order-processor.dlq
  std::size_t limit = 100;
  std::chrono::milliseconds idle{1000};  // replay/purge stop after this long without a message
};
int run_dlq_list(const DlqArgs& args);
int run_dlq_replay(const DlqArgs& args);
int run_dlq_purge(const DlqArgs& args);

// Set by SIGINT/SIGTERM handlers; long-running tools poll it.
bool stop_requested() noexcept;
void install_stop_handlers();

}  // namespace ferry::cli
