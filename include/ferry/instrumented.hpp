#pragma once
// Metrics for a broker's publishing and backlog, in a ferry::metrics::Registry.
//
//   ferry_published_total{backend,topic}           messages confirmed
//   ferry_publish_errors_total{backend,topic}      messages whose publish failed
//   ferry_publish_duration_seconds{backend,topic}  call to confirmation, per batch
//   ferry_backlog{backend,topic,group}             not yet settled by the group (where the
//   ferry_in_flight_deliveries{backend,topic,group} backend can tell: Broker::admin())
//   ferry_topic_messages{backend,topic}            retained messages
//
// InstrumentedPublisher wraps another publisher and is thread-safe like it; the wrapped
// publisher must outlive it.

#include <chrono>
#include <memory>
#include <string>

#include "ferry/broker.hpp"
#include "ferry/metrics.hpp"

namespace ferry {

class InstrumentedPublisher : public Publisher {
 public:
  InstrumentedPublisher(Publisher& inner, metrics::Registry& registry, std::string backend);
  void publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) override;
  void publish_async(const std::string& topic, Message&& message, PublishCallback done) override;
  void publish_async(const std::string& topic, const Message& message, PublishCallback done) override;
  void close() override { inner_.close(); }

 private:
  // Calls `publish` with `done` wrapped to count `count` messages and time the call.
  template <class Publish>
  void counted(const std::string& topic, std::size_t count, PublishCallback done, Publish publish);

  Publisher& inner_;
  std::string backend_;
  metrics::Family<metrics::Counter>& published_;
  metrics::Family<metrics::Counter>& errors_;
  metrics::Family<metrics::Histogram>& duration_;
};

// Reads Broker::admin()->stats() into the backlog gauges at every render, labelled with
// `backend` (the broker's URL scheme when empty); does nothing for a broker without an
// Admin. The reading runs on a thread of its own, one at a time: a render waits at most
// `wait` for fresh figures and otherwise shows the last ones, so that a slow or
// unreachable broker never holds up the caller (an HTTP server's thread). Holds a weak
// reference: a closed broker stops reporting.
void collect_backlog(metrics::Registry& registry, const std::shared_ptr<Broker>& broker, std::string backend = {},
                     std::chrono::milliseconds wait = std::chrono::seconds{1});

}  // namespace ferry
