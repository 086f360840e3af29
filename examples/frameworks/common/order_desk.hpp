#pragma once
// What the framework examples share, so that each example is only its framework's glue:
// the command line, the order request and its OrderCreated v1 event, and OrderDesk.
//
// OrderDesk publishes orders to named brokers and, like the seed's consumer goroutines,
// consumes them again in the same process: one consumer thread per broker (topic
// "orders", group "<framework>-orders") decodes each OrderCreated event, logs
// "processed order ID ...", acks it, and remembers that the order is processed. The
// event is the one `ferry serve` publishes (schema_version 1), so `ferry consume` can
// process orders taken by an example, and the other way round.
//
// Replies are framework-neutral (status, JSON body, extra headers); each example turns
// them into its framework's response. Every method of OrderDesk is thread-safe.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::examples {

struct NamedBroker {
  std::string name;  // the {backend} of the routes
  std::string url;
};

struct ExampleOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::vector<NamedBroker> brokers;
};

// Parses --listen HOST:PORT and --broker NAME=URL (repeatable). Without --broker the
// example serves memory=memory:// and sqlite=sqlite://./ferry-data/ferry.db. Prints the
// usage and exits 0 on --help; prints a one-line reason and exits 2 on a bad argument.
ExampleOptions parse_options(int argc, char** argv, std::string_view framework, std::uint16_t default_port);

struct Reply {
  int status = 200;
  std::string body;                                          // JSON
  std::vector<std::pair<std::string, std::string>> headers;  // beyond Content-Type
};
using ReplyCallback = std::function<void(Reply)>;

// {"error": error, "detail": detail} with that status.
Reply error_reply(int status, std::string_view error, std::string_view detail);

class OrderDesk {
 public:
  // Opens every broker and starts its consumer. Throws ferry::Error when a URL is bad or a
  // broker cannot be opened.
  OrderDesk(std::string framework, const std::vector<NamedBroker>& brokers);
  ~OrderDesk();
  OrderDesk(const OrderDesk&) = delete;
  OrderDesk& operator=(const OrderDesk&) = delete;

  const std::string& framework() const noexcept { return framework_; }
  std::string describe() const;  // "memory=memory://, sqlite=sqlite://…" (masked)

  // POST /<framework>/orders/<backend>: validates the body and publishes OrderCreated
  // without blocking the caller. `reply` runs exactly once: at once for bad input, or
  // from the publisher's completion (on a broker thread, or on this thread before
  // place() returns) with 202 {"order_id", "status": "accepted", "backend"} once the
  // broker has confirmed the event, 503 with Retry-After if it could not. Bad input:
  // 404 unknown backend, 415 a body that is not declared as JSON (`content_type` empty
  // is accepted), 400 not JSON, 422 JSON without the right fields.
  void place(std::string_view backend, std::string_view content_type, std::string_view body, ReplyCallback reply);

  // GET /<framework>/orders/<backend>/<id>: 200 {"order_id", "backend", "state"} with state
  // "accepted" (published) or "processed" (consumed by this process), 404 otherwise.
  Reply lookup(std::string_view backend, std::string_view order_id) const;

  // 404 for a path that is none of the routes, listing them.
  Reply no_route(std::string_view method, std::string_view path) const;

  // Admission of requests, for a graceful shutdown. A ticket is held while a request is
  // served and released (dropped) once its response is written; admit() returns an
  // empty ticket once stop_admitting() was called, and the request should get 503.
  using Ticket = std::shared_ptr<void>;
  Ticket admit();
  void stop_admitting();
  // Waits until every ticket is released; false at the timeout.
  bool drain(std::chrono::milliseconds timeout);
  Reply shutting_down() const;

  // Stops the consumers (unsettled deliveries go back to their broker) and closes the
  // brokers, which completes every publish already started. Logs the totals. Idempotent.
  void close();

 private:
  struct Backend;
  Backend* find(std::string_view name) const;
  void consume(Backend& backend);

  std::string framework_;
  mutable std::mutex mutex_;
  std::condition_variable idle_;
  int in_flight_ = 0;
  bool admitting_ = true;
  bool closed_ = false;
  // Last, so that brokers (and publish callbacks they still hold) go before the mutex.
  std::vector<std::unique_ptr<Backend>> backends_;
};

// SIGINT and SIGTERM, taken by one thread with sigwait. block() must be called in main
// before any thread starts, so that every thread inherits the blocked mask and the signal
// reaches wait() instead of killing the process.
class ShutdownSignal {
 public:
  static void block();
  // Returns the signal that arrived. A second signal after that ends the process at once
  // with exit code 1, for a shutdown that hangs.
  static int wait();
};

// Writes one log line to standard error, with a timestamp and the example's name.
void log_line(std::string_view framework, std::string_view text);

}  // namespace ferry::examples
