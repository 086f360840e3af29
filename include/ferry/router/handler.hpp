#pragma once
// What a router handler sees and how it reports failure.
//
// A Handler is a function of a Request. Returning normally means "done": the router
// publishes the request's outputs (if the handler has an output topic) and then acks.
// Throwing means "not done"; what happens then depends on the exception:
//   ferry::Retry   nack: deliver again after retry.delay() (attempt + 1)
//   ferry::Reject  reject: move to the dead-letter topic with what() as the reason
//   anything else  the router's failure policy (RouterOptions::on_failure)
// Middleware (middleware.hpp) turns failures into these decisions: Retry with backoff,
// DeadLetter after the last attempt, Recoverer for unexpected exceptions.

#include <atomic>
#include <chrono>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ferry/delivery.hpp"

namespace ferry {

class Retry : public std::runtime_error {
 public:
  Retry(const std::string& reason, std::chrono::milliseconds delay) : std::runtime_error(reason), delay_(delay) {}
  std::chrono::milliseconds delay() const noexcept { return delay_; }

 private:
  std::chrono::milliseconds delay_;
};

class Reject : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Cooperative cancellation: set by the Timeout middleware and by Router::stop() after
// its drain deadline. Handlers that run long should look at it.
class CancelToken {
 public:
  bool cancelled() const noexcept { return cancelled_.load(std::memory_order_relaxed); }
  void cancel() noexcept { cancelled_.store(true, std::memory_order_relaxed); }

 private:
  std::atomic<bool> cancelled_{false};
};

// One delivery on its way through a handler's middleware chain. Used by one thread.
class Request {
 public:
  Request(Delivery& delivery, std::string handler_name, std::string backend = {})
      : delivery_(delivery), handler_(std::move(handler_name)), backend_(std::move(backend)) {}

  const Message& message() const noexcept { return delivery_.message(); }
  Message& message() noexcept { return delivery_.message(); }
  int attempt() const noexcept { return delivery_.attempt(); }
  const std::string& topic() const noexcept { return delivery_.topic(); }
  const std::string& group() const noexcept { return delivery_.group(); }
  const std::string& handler() const noexcept { return handler_; }
  // The URL scheme of the broker the delivery came from ("sqlite", "kafka", ...).
  const std::string& backend() const noexcept { return backend_; }

  // Messages to publish to the handler's output topic once it succeeds.
  std::vector<Message>& outputs() noexcept { return outputs_; }
  CancelToken& cancel() noexcept { return cancel_; }
  const CancelToken& cancel() const noexcept { return cancel_; }

 private:
  Delivery& delivery_;
  std::string handler_;
  std::string backend_;
  std::vector<Message> outputs_;
  CancelToken cancel_;
};

using Handler = std::function<void(Request&)>;
using Middleware = std::function<Handler(Handler)>;

// Wraps `handler` in `chain`: the first middleware is the outermost.
Handler compose(const std::vector<Middleware>& chain, Handler handler);

}  // namespace ferry
