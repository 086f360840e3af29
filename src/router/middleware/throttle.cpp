#include <mutex>
#include <thread>

#include "ferry/error.hpp"
#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

Middleware throttle(double per_second) {
  if (!(per_second > 0)) throw Error(Errc::invalid_argument, "throttle: the rate must be positive");
  struct Schedule {
    std::mutex mutex;
    std::chrono::steady_clock::time_point next{};
  };
  auto schedule = std::make_shared<Schedule>();
  auto interval = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(1.0 / per_second));
  return [schedule, interval](Handler next) -> Handler {
    return [schedule, interval, next = std::move(next)](Request& request) {
      std::chrono::steady_clock::time_point slot;
      {
        std::lock_guard lock(schedule->mutex);
        auto now = std::chrono::steady_clock::now();
        slot = std::max(now, schedule->next);
        schedule->next = slot + interval;
      }
      std::this_thread::sleep_until(slot);
      next(request);
    };
  };
}

}  // namespace ferry::middleware
