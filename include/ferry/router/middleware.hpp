#pragma once
// Middleware for ferry::Router. Each is a function from a Handler to a Handler
// (handler.hpp); compose them with Router::use or HandlerOptions::middleware, outermost
// first. A sensible chain for a consumer that must not lose or repeat work:
//
//   recoverer() → metrics(registry) → dead_letter() → retry({...}) → dedup(store) → handler
//
// Each one is independent and thread-safe; its state (a throttle's bucket, a store) is
// shared by every thread running the handler.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "ferry/metrics.hpp"
#include "ferry/router/handler.hpp"
#include "ferry/router/idempotency.hpp"

namespace ferry::middleware {

struct RetryOptions {
  int max_attempts = 5;  // deliveries in all, the first included
  std::chrono::milliseconds initial_delay{100};
  std::chrono::milliseconds max_delay{30'000};
  double multiplier = 2.0;
  double jitter = 0.2;  // each delay is scaled by a random factor in [1 - jitter, 1 + jitter]
  // Which failures to retry; the default retries every exception.
  std::function<bool(const std::exception&)> retry_if{};
  void validate() const;  // throws Error(invalid_argument)
};

// A failure on attempt n < max_attempts becomes Retry(delay(n)): exponential backoff with
// jitter, through the broker's nack with delay. On the last attempt, or for a failure
// retry_if declines, the exception passes on unchanged (to dead_letter, say).
Middleware retry(RetryOptions options = {});

// The delay before attempt n + 1 after attempt n failed, without jitter.
std::chrono::milliseconds backoff(const RetryOptions& options, int attempt);

// Any failure that is not a Retry becomes a Reject: the message goes to the dead-letter
// topic with the reason "<what>" (and, for attempts > 1, "after N attempts: ...").
Middleware dead_letter();

// Skips a message whose id was already processed successfully within `ttl`: it is acked
// without calling the handler. Remembers the id after the handler succeeds. Concurrent
// deliveries of one id may both run; the store narrows, not closes, that window.
Middleware dedup(std::shared_ptr<IdempotencyStore> store, std::chrono::milliseconds ttl = std::chrono::hours{24});

// Gives each message `limit` to be handled: the request's cancel token is set at the
// deadline (handlers that look at it stop early), and a handler that returns after the
// deadline has failed with "timed out after <limit>".
Middleware timeout(std::chrono::milliseconds limit);

// An exception that is neither Retry nor Reject becomes a Reject naming what was thrown,
// so one poison message cannot loop forever.
Middleware recoverer();

// Every message carries ferry-correlation-id (its own id when it came without one) and
// passes it, with a W3C traceparent header if present, on to the handler's outputs.
Middleware correlation_id();

// At most `per_second` messages a second enter the handler (across its threads); others
// wait for their turn.
Middleware throttle(double per_second);

// Counts consumed messages and outcomes, times the handler, tracks in-flight work:
//   ferry_consumed_total, ferry_acks_total, ferry_nacks_total, ferry_rejects_total,
//   ferry_handler_duration_seconds, ferry_in_flight   (labels backend, topic, group)
Middleware metrics(metrics::Registry& registry);

}  // namespace ferry::middleware
