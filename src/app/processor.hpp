#pragma once
// ferry::app::OrderProcessor: consumes OrderCreated events (topic "orders", group
// "order-processor") and marks each order processed in the OrderStore.
//
// It runs on a ferry::Router with the middleware chain
//   recoverer → metrics → dead_letter → retry → dedup → handler
// so that, per delivery:
//  - an undecodable payload or an unknown schema_version → Reject(reason): the message
//    lands in the group's dead-letter topic with the reason in ferry-error;
//  - otherwise mark_processed in the store, then ack; a repeat delivery (a message id the
//    idempotency store has seen, or an order already processed) is acked and counted as
//    a duplicate;
//  - a store failure → retried through the broker's nack with exponential backoff and
//    jitter (first_backoff doubling up to max_backoff); after max_attempts it is
//    dead-lettered with the reason;
//  - anything unexpected thrown → dead-lettered, naming what was thrown.
//
// Threads: the router's `concurrency` workers ("ferry-order-pro…"). start() and stop()
// are called from one controlling thread; counters() is thread-safe.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ferry/broker.hpp"
#include "ferry/metrics.hpp"
#include "ferry/router/idempotency.hpp"
#include "ferry/router/router.hpp"
#include "order_store.hpp"

namespace ferry::app {

struct ProcessorOptions {
  std::string topic = "orders";
  std::string group = "order-processor";
  int concurrency = 4;
  // Recorded with each processed message, to tell processes apart in the store.
  std::string name = "processor";
  // How long a delivery stays leased to this process; after a crash, its unsettled
  // deliveries go to another consumer once this passes.
  std::chrono::milliseconds ack_timeout{30'000};
  std::chrono::milliseconds first_backoff{1000};
  std::chrono::milliseconds max_backoff{30'000};
  int max_attempts = 20;  // deliveries of one message before it is dead-lettered
  std::string backend{};  // the broker's label in metrics; its URL scheme when empty
  // Where consumer metrics go (ferry_consumed_total, ...); none when null.
  metrics::Registry* registry = nullptr;
  // Message ids already processed, in front of the store's own durable record of them
  // (which is what keeps an order processed once across processes and restarts); a
  // memory store when null.
  std::shared_ptr<IdempotencyStore> idempotency{};

  // Throws Error(invalid_argument).
  void validate() const;
};

// Monotonic counts since start, shared by the workers.
struct ProcessorCounters {
  std::atomic<std::uint64_t> processed{0};
  std::atomic<std::uint64_t> duplicates{0};
  std::atomic<std::uint64_t> rejected{0};
  std::atomic<std::uint64_t> failed{0};  // nacked after a store failure
};

// The handler itself: decodes and stores one OrderCreated event. Throws Reject for an
// event it can never process, and the store's error when the store fails.
void process_order_created(Request& request, OrderStore& store, const ProcessorOptions& options,
                           ProcessorCounters& counters);

// The processor's middleware chain around process_order_created.
Handler order_handler(OrderStore& store, const ProcessorOptions& options, ProcessorCounters& counters);

// Runs one delivery through order_handler and settles it as the router would. Never
// throws. For tests and tools that hold a delivery themselves.
void handle_order_created(Delivery& delivery, OrderStore& store, const ProcessorOptions& options,
                          ProcessorCounters& counters);

class OrderProcessor {
 public:
  // The broker and store must outlive the processor.
  OrderProcessor(std::shared_ptr<Broker> broker, OrderStore& store, ProcessorOptions options);
  ~OrderProcessor();
  OrderProcessor(const OrderProcessor&) = delete;
  OrderProcessor& operator=(const OrderProcessor&) = delete;

  // Subscribes and starts the workers; throws ferry::Error if the broker refuses.
  void start();
  // Stops receiving, lets every worker finish and settle its current delivery, then
  // closes the subscriber (prefetched, unreceived messages go back to the broker).
  // Returns the number of deliveries that were in flight when stop() was called.
  std::uint64_t stop();

  const ProcessorCounters& counters() const noexcept { return counters_; }
  const ProcessorOptions& options() const noexcept { return options_; }

 private:
  std::shared_ptr<Broker> broker_;
  OrderStore& store_;
  ProcessorOptions options_;
  ProcessorCounters counters_;
  std::unique_ptr<Router> router_;
};

}  // namespace ferry::app
