#include "processor.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "ferry/router/middleware.hpp"
#include "order.hpp"

namespace ferry::app {

void ProcessorOptions::validate() const {
  if (!valid_name(topic)) throw Error(Errc::invalid_argument, "processor topic '" + topic + "' is not a valid name");
  if (!valid_name(group)) throw Error(Errc::invalid_argument, "processor group '" + group + "' is not a valid name");
  if (ack_timeout.count() < 100 || ack_timeout > std::chrono::hours{24})
    throw Error(Errc::invalid_argument, "--ack-timeout must be between 0.1 seconds and 24 hours");
  if (concurrency < 1 || concurrency > 1024)
    throw Error(Errc::invalid_argument, "--concurrency " + std::to_string(concurrency) + " must be between 1 and 1024");
}

void process_order_created(Request& request, OrderStore& store, const ProcessorOptions& options,
                           ProcessorCounters& counters) {
  const Message& message = request.message();
  auto decoded = decode_order_created(message.payload);
  if (!decoded.event) {
    spdlog::warn("order processor: message {} on {} rejected to the dead-letter topic: {}", message.id,
                 request.topic(), decoded.reason);
    counters.rejected.fetch_add(1, std::memory_order_relaxed);
    throw Reject(decoded.reason);
  }
  ProcessOutcome outcome;
  try {
    outcome = store.mark_processed(*decoded.event, message.id, options.name);
  } catch (const std::exception& e) {
    counters.failed.fetch_add(1, std::memory_order_relaxed);
    spdlog::error("order processor: order {} (message {}, attempt {}) not processed: {}", decoded.event->order_id,
                  message.id, request.attempt(), e.what());
    throw;
  }
  if (outcome == ProcessOutcome::processed) {
    counters.processed.fetch_add(1, std::memory_order_relaxed);
    auto trace = message.headers.find(header::traceparent);
    spdlog::debug("order processor: order {} processed (message {}, attempt {}, traceparent {})",
                  decoded.event->order_id, message.id, request.attempt(),
                  trace == message.headers.end() ? std::string("-") : trace->second);
  } else {
    counters.duplicates.fetch_add(1, std::memory_order_relaxed);
    spdlog::info("order processor: order {} was already processed; duplicate message {} acked",
                 decoded.event->order_id, message.id);
  }
}

namespace {

// Counts the deliveries the dedup middleware skips as duplicates.
class CountingStore : public IdempotencyStore {
 public:
  CountingStore(std::shared_ptr<IdempotencyStore> inner, ProcessorCounters& counters)
      : inner_(std::move(inner)), counters_(counters) {}
  bool seen(const std::string& key) override {
    bool seen = inner_->seen(key);
    if (seen) {
      counters_.duplicates.fetch_add(1, std::memory_order_relaxed);
      spdlog::info("order processor: message {} was already processed; duplicate acked", key);
    }
    return seen;
  }
  void remember(const std::string& key, std::chrono::milliseconds ttl) override { inner_->remember(key, ttl); }

 private:
  std::shared_ptr<IdempotencyStore> inner_;
  ProcessorCounters& counters_;
};

}  // namespace

Handler order_handler(OrderStore& store, const ProcessorOptions& options, ProcessorCounters& counters) {
  auto idempotency = options.idempotency ? options.idempotency : make_memory_idempotency_store();
  std::vector<Middleware> chain{middleware::recoverer(), middleware::correlation_id()};
  if (options.registry) chain.push_back(middleware::metrics(*options.registry));
  chain.push_back(middleware::dead_letter());
  chain.push_back(middleware::retry({.max_attempts = options.max_attempts,
                                     .initial_delay = options.first_backoff,
                                     .max_delay = options.max_backoff}));
  chain.push_back(middleware::dedup(std::make_shared<CountingStore>(idempotency, counters)));
  return compose(chain, [&store, &options, &counters](Request& r) { process_order_created(r, store, options, counters); });
}

void handle_order_created(Delivery& delivery, OrderStore& store, const ProcessorOptions& options,
                          ProcessorCounters& counters) {
  Request request(delivery, "order-processor");
  try {
    order_handler(store, options, counters)(request);
    delivery.ack();
  } catch (const Retry& r) {
    delivery.nack(r.delay());
  } catch (const Reject& r) {
    delivery.reject(r.what());
  } catch (const std::exception& e) {
    delivery.nack(options.first_backoff);
  }
}

OrderProcessor::OrderProcessor(std::shared_ptr<Broker> broker, OrderStore& store, ProcessorOptions options)
    : broker_(std::move(broker)), store_(store), options_(std::move(options)) {
  options_.validate();
}

OrderProcessor::~OrderProcessor() {
  stop();
}

void OrderProcessor::start() {
  router_ = std::make_unique<Router>(RouterOptions{.drain_timeout = options_.ack_timeout});
  router_->add_handler({.name = "order-processor",
                        .broker = broker_,
                        .backend = options_.backend,
                        .topic = options_.topic,
                        .group = options_.group,
                        .concurrency = options_.concurrency,
                        .prefetch = std::max(2, options_.concurrency * 2),
                        .ack_timeout = options_.ack_timeout},
                       order_handler(store_, options_, counters_));
  router_->start();
}

std::uint64_t OrderProcessor::stop() {
  if (!router_) return 0;
  std::uint64_t in_flight = router_->stop();
  router_.reset();
  return in_flight;
}

}  // namespace ferry::app
