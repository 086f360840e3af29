#include "processor.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "order.hpp"

namespace ferry::app {
namespace {

std::chrono::milliseconds backoff_for(int attempt, const ProcessorOptions& options) {
  auto delay = options.first_backoff;
  for (int i = 1; i < attempt && delay < options.max_backoff; ++i) delay *= 2;
  return std::min(delay, options.max_backoff);
}

}  // namespace

void ProcessorOptions::validate() const {
  if (!valid_name(topic)) throw Error(Errc::invalid_argument, "processor topic '" + topic + "' is not a valid name");
  if (!valid_name(group)) throw Error(Errc::invalid_argument, "processor group '" + group + "' is not a valid name");
  if (ack_timeout.count() < 100 || ack_timeout > std::chrono::hours{24})
    throw Error(Errc::invalid_argument, "--ack-timeout must be between 0.1 seconds and 24 hours");
  if (concurrency < 1 || concurrency > 1024)
    throw Error(Errc::invalid_argument, "--concurrency " + std::to_string(concurrency) + " must be between 1 and 1024");
}

void handle_order_created(Delivery& delivery, OrderStore& store, const ProcessorOptions& options,
                          ProcessorCounters& counters) {
  const Message& message = delivery.message();
  auto decoded = decode_order_created(message.payload);
  if (!decoded.event) {
    spdlog::warn("order processor: message {} on {} rejected to the dead-letter topic: {}", message.id,
                 delivery.topic(), decoded.reason);
    delivery.reject(decoded.reason);
    counters.rejected.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  try {
    auto outcome = store.mark_processed(*decoded.event, message.id, options.name);
    delivery.ack();
    if (outcome == ProcessOutcome::processed) {
      counters.processed.fetch_add(1, std::memory_order_relaxed);
      spdlog::debug("order processor: order {} processed (message {}, attempt {})", decoded.event->order_id, message.id,
                    delivery.attempt());
    } else {
      counters.duplicates.fetch_add(1, std::memory_order_relaxed);
      spdlog::info("order processor: order {} was already processed; duplicate message {} acked",
                   decoded.event->order_id, message.id);
    }
  } catch (const std::exception& e) {
    auto delay = backoff_for(delivery.attempt(), options);
    spdlog::error("order processor: order {} (message {}, attempt {}) not processed: {}; retrying in {} ms",
                  decoded.event->order_id, message.id, delivery.attempt(), e.what(), delay.count());
    delivery.nack(delay);
    counters.failed.fetch_add(1, std::memory_order_relaxed);
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
  SubscribeOptions so;
  so.topic = options_.topic;
  so.group = options_.group;
  so.prefetch = std::max(2, options_.concurrency * 2);
  so.ack_timeout = options_.ack_timeout;
  subscriber_ = broker_->subscribe(so);
  stopping_ = false;
  for (int i = 0; i < options_.concurrency; ++i) workers_.emplace_back([this] { work(); });
}

std::uint64_t OrderProcessor::stop() {
  if (workers_.empty() && !subscriber_) return 0;
  std::uint64_t in_flight = busy_.load();
  stopping_ = true;
  for (auto& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
  if (subscriber_) {
    subscriber_->close();
    subscriber_.reset();
  }
  return in_flight;
}

void OrderProcessor::work() {
  pthread_setname_np(pthread_self(), "order-worker");
  while (!stopping_.load()) {
    std::optional<Delivery> delivery;
    try {
      delivery = subscriber_->receive(std::chrono::milliseconds{200});
    } catch (const std::exception& e) {
      spdlog::error("order processor: receiving from {} failed: {}; retrying in 1 s", broker_->url().masked(),
                    e.what());
      std::this_thread::sleep_for(std::chrono::seconds{1});
      continue;
    }
    if (!delivery) continue;
    busy_.fetch_add(1);
    handle_order_created(*delivery, store_, options_, counters_);
    busy_.fetch_sub(1);
  }
}

}  // namespace ferry::app
