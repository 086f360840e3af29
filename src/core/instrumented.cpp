#include "ferry/instrumented.hpp"

namespace ferry {

InstrumentedPublisher::InstrumentedPublisher(Publisher& inner, metrics::Registry& registry, std::string backend)
    : inner_(inner),
      backend_(std::move(backend)),
      published_(registry.counter("ferry_published_total", "Messages the broker confirmed.", {"backend", "topic"})),
      errors_(registry.counter("ferry_publish_errors_total", "Messages whose publish failed.", {"backend", "topic"})),
      duration_(registry.histogram("ferry_publish_duration_seconds", "From publish call to confirmation.",
                                   {"backend", "topic"})) {}

void InstrumentedPublisher::publish_batch_async(const std::string& topic, std::vector<Message> messages,
                                                PublishCallback done) {
  auto start = std::chrono::steady_clock::now();
  auto count = static_cast<double>(messages.size());
  metrics::Labels labels{backend_, topic};
  auto* published = &published_.labels(labels);
  auto* errors = &errors_.labels(labels);
  auto* duration = &duration_.labels(labels);
  try {
    inner_.publish_batch_async(topic, std::move(messages),
                               [=, done = std::move(done)](const Status& s) {
                                 duration->observe(std::chrono::steady_clock::now() - start);
                                 (s.ok() ? published : errors)->inc(count);
                                 if (done) done(s);
                               });
  } catch (...) {
    errors->inc(count);
    throw;
  }
}

void collect_backlog(metrics::Registry& registry, const std::shared_ptr<Broker>& broker, std::string backend) {
  if (!broker->admin()) return;
  auto& backlog = registry.gauge("ferry_backlog", "Messages a group has not settled yet.", {"backend", "topic", "group"});
  auto& in_flight = registry.gauge("ferry_in_flight_deliveries", "Deliveries handed out and not yet settled.",
                                   {"backend", "topic", "group"});
  auto& retained = registry.gauge("ferry_topic_messages", "Messages the broker retains.", {"backend", "topic"});
  std::weak_ptr<Broker> weak = broker;
  if (backend.empty()) backend = broker->url().scheme();
  registry.add_collector([weak, backend, &backlog, &in_flight, &retained] {
    auto b = weak.lock();
    if (!b || !b->admin()) return;
    for (const auto& t : b->admin()->stats()) {
      retained.labels({backend, t.topic}).set(static_cast<double>(t.messages));
      for (const auto& g : t.groups) {
        backlog.labels({backend, t.topic, g.group}).set(static_cast<double>(g.backlog));
        in_flight.labels({backend, t.topic, g.group}).set(static_cast<double>(g.in_flight));
      }
    }
  });
}

}  // namespace ferry
