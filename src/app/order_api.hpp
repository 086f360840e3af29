#pragma once
// ferry::app::OrderApi: the order service's HTTP routes, as an HttpHandler.
//
//   POST /orders, POST /orders/{backend}   accept an order: 202 after the publish is
//                                           confirmed; 400, 404, 409, 413, 415, 422, 503
//   GET  /orders/{id}                       the order and its state; 404 if unknown
//   GET  /healthz                           200 while the process runs
//   GET  /readyz                            200 when every broker and the store answer;
//                                           503 naming the ones that do not
//   GET  /metrics                           Prometheus text
//
// Errors are JSON {"error": "...", "detail": "..."} and publish nothing.
//
// Idempotency-Key (1 to 200 visible ASCII characters): the key is reserved in the store
// before anything is published. The same key with the same request (same fingerprint)
// returns the same order_id and publishes nothing new; with a different request → 409.
// A duplicate that arrives while the first request with its key is still in flight in
// this process waits for it and gets the same answer. If the first attempt failed (503)
// or its process died before the publish was confirmed, a retry publishes again under
// the same order_id; the event's message id is the order id, so the processor still
// processes the order once.
//
// A 503 (broker or store unavailable, or no confirmation within the request timeout)
// does not prove that nothing was published: a confirmation may still arrive after the
// answer. A client that must not create an order twice retries with the same
// Idempotency-Key, which yields the same order_id.
//
// handle() does not wait for I/O: publishes complete on the broker's thread and store
// writes on the store's thread; /readyz probes run on a thread of their own; GET
// /orders/{id} is one indexed read on a pooled connection (WAL readers never wait for
// writers). One caveat: a broker whose publish queue is full makes publish_async wait for
// room (sqlite://: max_in_flight, 100,000 by default, for at most publish_timeout).
// Thread-safe.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ferry/broker.hpp"
#include "http_server.hpp"
#include "order_store.hpp"

namespace ferry::app {

struct NamedBroker {
  std::string name;  // the {backend} of POST /orders/{backend}
  std::shared_ptr<Broker> broker;
  std::shared_ptr<Publisher> publisher{};  // what orders are published through; the broker's own when null
};

struct OrderApiOptions {
  std::string topic = "orders";
};

// Counts since start, for logs and /metrics.
struct OrderApiCounters {
  std::atomic<std::uint64_t> accepted{0};     // 202 with a new publish
  std::atomic<std::uint64_t> replayed{0};     // 202 for a repeated Idempotency-Key
  std::atomic<std::uint64_t> invalid{0};      // 400, 413 (counted by the server), 415, 422
  std::atomic<std::uint64_t> conflicts{0};    // 409
  std::atomic<std::uint64_t> unavailable{0};  // 503
  std::atomic<std::uint64_t> publishing{0};   // publishes in flight now
};

class OrderApi {
 public:
  // The first broker is the default of POST /orders. Brokers and store must outlive the API.
  OrderApi(std::vector<NamedBroker> brokers, OrderStore& store, OrderApiOptions options = {});
  ~OrderApi();
  OrderApi(const OrderApi&) = delete;
  OrderApi& operator=(const OrderApi&) = delete;

  void handle(HttpRequest&& request, Responder respond);

  // Adds lines to /metrics (Prometheus text, each ending in a newline).
  void add_metrics(std::function<void(std::string&)> source);

  // Waits until no publish is in flight or the deadline passes; true when none is.
  bool wait_publishes(std::chrono::steady_clock::time_point deadline) const;
  // Stops the /readyz thread.
  void stop();

  const OrderApiCounters& counters() const noexcept;

 private:
  class Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace ferry::app
