#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

#include "ferry/router/middleware.hpp"

namespace ferry::middleware {
namespace {

// One thread per timeout middleware sets the cancel tokens of requests past their deadline.
class Watchdog {
 public:
  using Clock = std::chrono::steady_clock;
  using Slot = std::pair<Clock::time_point, std::uint64_t>;

  Watchdog() : thread_([this] { run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  Slot watch(Clock::time_point deadline, CancelToken* token) {
    std::lock_guard lock(mutex_);
    Slot slot{deadline, ++next_id_};
    auto it = deadlines_.emplace(slot, token).first;
    if (it == deadlines_.begin()) cv_.notify_all();
    return slot;
  }

  // Harmless when the deadline already fired.
  void forget(const Slot& slot) {
    std::lock_guard lock(mutex_);
    deadlines_.erase(slot);
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      if (deadlines_.empty()) {
        cv_.wait(lock);
        continue;
      }
      auto first = deadlines_.begin();
      if (first->first.first <= Clock::now()) {
        first->second->cancel();
        deadlines_.erase(first);
        continue;
      }
      // A copy: wait_until reads the time again after waking, and forget() may have erased
      // the entry by then.
      const Clock::time_point deadline = first->first.first;
      cv_.wait_until(lock, deadline);
    }
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::map<Slot, CancelToken*> deadlines_;
  std::uint64_t next_id_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace

Middleware timeout(std::chrono::milliseconds limit) {
  auto watchdog = std::make_shared<Watchdog>();
  return [limit, watchdog](Handler next) -> Handler {
    return [limit, watchdog, next = std::move(next)](Request& request) {
      auto start = Watchdog::Clock::now();
      auto slot = watchdog->watch(start + limit, &request.cancel());
      try {
        next(request);
      } catch (...) {
        watchdog->forget(slot);
        throw;
      }
      watchdog->forget(slot);
      if (Watchdog::Clock::now() - start > limit)
        throw std::runtime_error("timed out after " + std::to_string(limit.count()) + " ms");
    };
  };
}

}  // namespace ferry::middleware
