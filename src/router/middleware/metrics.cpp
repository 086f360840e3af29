#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

Middleware metrics(metrics::Registry& registry) {
  const metrics::Labels names{"backend", "topic", "group"};
  auto* consumed = &registry.counter("ferry_consumed_total", "Messages handed to a handler.", names);
  auto* acks = &registry.counter("ferry_acks_total", "Messages a handler finished (acked).", names);
  auto* nacks = &registry.counter("ferry_nacks_total", "Messages handed back for redelivery.", names);
  auto* rejects = &registry.counter("ferry_rejects_total", "Messages sent to the dead-letter topic.", names);
  auto* duration = &registry.histogram("ferry_handler_duration_seconds", "Time spent in the handler.", names);
  auto* in_flight = &registry.gauge("ferry_in_flight", "Messages being handled now.", names);
  return [=](Handler next) -> Handler {
    return [=, next = std::move(next)](Request& request) {
      metrics::Labels labels{request.backend(), request.topic(), request.group()};
      consumed->labels(labels).inc();
      auto& gauge = in_flight->labels(labels);
      gauge.add(1);
      auto start = std::chrono::steady_clock::now();
      auto observe = [&](metrics::Family<metrics::Counter>* outcome) {
        duration->labels(labels).observe(std::chrono::steady_clock::now() - start);
        gauge.add(-1);
        outcome->labels(labels).inc();
      };
      try {
        next(request);
      } catch (const Reject&) {
        observe(rejects);
        throw;
      } catch (...) {
        observe(nacks);  // a Retry, or a failure the router's policy settles (nack by default)
        throw;
      }
      observe(acks);
    };
  };
}

}  // namespace ferry::middleware
