#pragma once
// ferry::app::OrderProcessor: consumes OrderCreated events (topic "orders", group
// "order-processor") and marks each order processed in the OrderStore.
//
// Per delivery (handle_order_created, a plain function of a Delivery so a router can
// host it later):
//  - an undecodable payload or an unknown schema_version → reject(reason): the message
//    lands in the group's dead-letter topic with the reason in ferry-error;
//  - otherwise mark_processed in the store, then ack; a repeat delivery (same message id
//    or an order already processed) is acked and counted as a duplicate;
//  - a store failure → nack with an exponential backoff (1 s doubling up to 30 s).
//
// Threads: `concurrency` worker threads named "order-worker", each calling receive() on
// one shared subscriber. start() and stop() are called from one controlling thread;
// counters() is thread-safe.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "ferry/broker.hpp"
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

// Settles one delivery of an OrderCreated event as described above. Never throws.
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
  void work();

  std::shared_ptr<Broker> broker_;
  OrderStore& store_;
  ProcessorOptions options_;
  ProcessorCounters counters_;
  std::unique_ptr<Subscriber> subscriber_;
  std::vector<std::thread> workers_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> busy_{0};
};

}  // namespace ferry::app
