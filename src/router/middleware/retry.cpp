#include <random>

#include "ferry/error.hpp"
#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

void RetryOptions::validate() const {
  if (max_attempts < 1) throw Error(Errc::invalid_argument, "retry: max_attempts must be at least 1");
  if (initial_delay.count() < 0 || max_delay < initial_delay)
    throw Error(Errc::invalid_argument, "retry: need 0 <= initial_delay <= max_delay");
  if (multiplier < 1) throw Error(Errc::invalid_argument, "retry: multiplier must be at least 1");
  if (jitter < 0 || jitter >= 1) throw Error(Errc::invalid_argument, "retry: jitter must be in [0, 1)");
}

std::chrono::milliseconds backoff(const RetryOptions& options, int attempt) {
  double delay = static_cast<double>(options.initial_delay.count());
  for (int i = 1; i < attempt && delay < static_cast<double>(options.max_delay.count()); ++i) delay *= options.multiplier;
  delay = std::min(delay, static_cast<double>(options.max_delay.count()));
  return std::chrono::milliseconds{static_cast<long long>(delay)};
}

Middleware retry(RetryOptions options) {
  options.validate();
  return [options](Handler next) -> Handler {
    return [options, next = std::move(next)](Request& request) {
      try {
        next(request);
      } catch (const Retry&) {
        throw;
      } catch (const Reject&) {
        throw;
      } catch (const std::exception& e) {
        if (request.attempt() >= options.max_attempts || (options.retry_if && !options.retry_if(e))) throw;
        auto delay = backoff(options, request.attempt());
        if (options.jitter > 0) {
          thread_local std::mt19937 engine{std::random_device{}()};
          std::uniform_real_distribution<double> factor(1 - options.jitter, 1 + options.jitter);
          delay = std::chrono::milliseconds{static_cast<long long>(static_cast<double>(delay.count()) * factor(engine))};
        }
        throw Retry(e.what(), delay);
      }
    };
  };
}

}  // namespace ferry::middleware
