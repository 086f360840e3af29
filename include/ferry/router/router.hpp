#pragma once
// ferry::Router: runs named handlers, each bound to a (topic, group) of a broker, through
// a chain of middleware, and settles every delivery by the handler's outcome
// (see handler.hpp). A handler may publish its outputs to another topic; the outputs are
// confirmed before the input is acked, so a crash in between causes a redelivery, never
// a lost output.
//
//   ferry::Router router;
//   router.use(ferry::middleware::recoverer());
//   router.add_handler({.name = "bill", .broker = broker, .topic = "orders", .group = "billing"},
//                      [](ferry::Request& r) { ... });
//   router.start();
//   ...
//   router.stop();   // stop receiving, finish and settle in-flight work, close
//
// Threads: each handler runs `concurrency` worker threads named "ferry-<name>" that call
// receive() on one subscriber. add_handler/use/start/stop are called from one controlling
// thread; stats() is thread-safe.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/broker.hpp"
#include "ferry/router/handler.hpp"

namespace ferry {

struct HandlerOptions {
  std::string name{};                   // unique per router; in logs, metrics and thread names
  std::shared_ptr<Broker> broker{};
  std::string backend{};                // the broker's label in metrics; its URL scheme when empty
  std::string topic{};
  std::string group{};
  int concurrency = 1;
  int prefetch = 64;
  std::chrono::milliseconds ack_timeout{30'000};
  std::string output_topic{};           // where Request::outputs() go; empty: outputs are an error
  std::shared_ptr<Broker> output_broker{};  // defaults to `broker`
  std::vector<Middleware> middleware{};     // inside the router-wide chain

  void validate() const;  // throws Error(invalid_argument)
};

enum class FailurePolicy { nack, reject };

struct RouterOptions {
  // What an exception other than Retry/Reject that reaches the router means.
  FailurePolicy on_failure = FailurePolicy::nack;
  std::chrono::milliseconds failure_delay{1000};  // the nack delay for FailurePolicy::nack
  // How long stop() lets in-flight handlers finish before it cancels them.
  std::chrono::milliseconds drain_timeout{10'000};
};

struct HandlerStats {
  std::string name;
  std::uint64_t acked = 0, nacked = 0, rejected = 0, in_flight = 0;
};

class Router {
 public:
  explicit Router(RouterOptions options = {});
  ~Router();  // stop()
  Router(const Router&) = delete;
  Router& operator=(const Router&) = delete;

  // Router-wide middleware, outside every handler's own. Before start() only.
  Router& use(Middleware middleware);
  Router& add_handler(HandlerOptions options, Handler handler);

  // Subscribes every handler and starts its workers. Throws Error if a broker refuses.
  void start();
  // Stops receiving; waits up to drain_timeout for in-flight handlers (then cancels
  // them and waits for them to return); settles what they decided; closes subscribers.
  // Returns how many deliveries were in flight when it was called. Idempotent.
  std::uint64_t stop();
  bool running() const noexcept;

  std::vector<HandlerStats> stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
