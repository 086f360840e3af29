#include "bench.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <iomanip>
#include <mutex>
#include <ostream>
#include <thread>
#include <utility>
#include <vector>

#include "ferry/broker.hpp"

namespace ferry::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr const char* kSentHeader = "bench-sent-ns";

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count();
}

// Bounds the publishes in flight of one producer (one thread acquires, confirmations
// release from any thread). The producer counts what it acquired on its own and reads the
// count released only when its last reading says the window is full, so the two threads
// do not pass a cache line back and forth at every message. A full window resumes once an
// eighth of it is free again; releases lock nothing unless the producer waits.
class Window {
 public:
  explicit Window(int size) : size_(size), slack_(size / 8) {}
  void acquire(int n) {
    if (acquired_ + n - seen_released_ > static_cast<std::uint64_t>(size_)) {
      seen_released_ = released_.load();
      if (acquired_ + n - seen_released_ > static_cast<std::uint64_t>(size_))
        wait_until_used_at_most(std::max(0, size_ - n - slack_));
    }
    acquired_ += static_cast<std::uint64_t>(n);
  }
  void release(int n) {
    const std::uint64_t released = released_.fetch_add(static_cast<std::uint64_t>(n)) + static_cast<std::uint64_t>(n);
    std::int64_t wanted = wanted_.load();
    // The release that reaches the wanted count wakes the producer, once: the releases after
    // it, before the producer runs again, find it cleared.
    if (wanted >= 0 && released >= static_cast<std::uint64_t>(wanted) && wanted_.compare_exchange_strong(wanted, -1)) {
      std::lock_guard lock(mutex_);
      cv_.notify_all();
    }
  }
  void drain() { wait_until_used_at_most(0); }

 private:
  // wanted_ is stored before released_ is read and release() reads wanted_ after changing
  // released_ (all sequentially consistent): either this sees the release or it notifies.
  void wait_until_used_at_most(int limit) {
    const std::uint64_t target = acquired_ - std::min<std::uint64_t>(acquired_, static_cast<std::uint64_t>(limit));
    std::unique_lock lock(mutex_);
    wanted_.store(static_cast<std::int64_t>(target));
    cv_.wait(lock, [&] { return released_.load() >= target; });
    wanted_.store(-1);
    seen_released_ = released_.load();
  }

  const int size_;
  const int slack_;
  std::uint64_t acquired_ = 0;       // producer thread only
  std::uint64_t seen_released_ = 0;  // producer thread only: released_ when last read
  alignas(64) std::atomic<std::uint64_t> released_{0};
  alignas(64) std::atomic<std::int64_t> wanted_{-1};  // released_ the producer waits for; -1: not waiting
  std::mutex mutex_;
  std::condition_variable cv_;
};

// What the publish callbacks of one run count.
struct Tally {
  std::atomic<std::uint64_t> confirmed{0}, errors{0};
  std::mutex error_mutex;
  std::string first_error;

  void failed(std::uint64_t n, const std::string& why) {
    errors.fetch_add(n);
    std::lock_guard lock(error_mutex);
    if (first_error.empty()) first_error = why;
  }
};

// One producer thread's window and the run's tally.
struct Lane {
  Tally* tally;
  Window window;
};

// A publish callback: a pointer and a count, small enough for std::function to keep
// without allocating.
struct Done {
  Lane* lane;
  int n;
  void operator()(const Status& s) const {
    if (s.ok())
      lane->tally->confirmed.fetch_add(static_cast<std::uint64_t>(n));
    else
      lane->tally->failed(static_cast<std::uint64_t>(n), s.message);
    lane->window.release(n);
  }
};

}  // namespace

void Config::validate() const {
  auto bad = [](const std::string& what) { throw Error(Errc::invalid_argument, what); };
  if (messages == 0) bad("--messages must be at least 1");
  if (producers < 1 || producers > 1024) bad("--producers must be between 1 and 1024");
  if (consumers < 0 || consumers > 1024) bad("--consumers must be between 0 and 1024");
  if (window < 1) bad("--window must be at least 1");
  if (batch < 1 || batch > window) bad("--batch must be between 1 and --window");
  if (rate < 0) bad("--rate must not be negative");
  if (warmup_s < 0) bad("--warmup must not be negative");
  if (size > 64 * 1024 * 1024) bad("--size must be at most 64 MiB");
}

double percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto index = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(index, sorted.size() - 1)];
}

Result run(const Config& config) {
  config.validate();
  auto broker = Broker::open(config.broker);
  std::string topic = config.topic.empty() ? "bench-" + make_uuid().substr(0, 8) : config.topic;
  Result result;

  std::vector<std::unique_ptr<Subscriber>> subscribers;
  for (int i = 0; i < config.consumers; ++i)
    subscribers.push_back(broker->subscribe({.topic = topic, .group = "bench", .prefetch = 256}));

  std::atomic<std::uint64_t> consumed{0};
  std::atomic<std::int64_t> last_consumed_ns{0};
  std::atomic<bool> stop_consumers{false};
  std::mutex latency_mutex;
  std::vector<std::pair<std::int64_t, double>> samples;  // send time (ns), latency (ms)
  samples.reserve(config.messages);

  std::vector<std::thread> consumer_threads;
  for (auto& sub : subscribers) {
    consumer_threads.emplace_back([&, s = sub.get()] {
      std::vector<std::pair<std::int64_t, double>> local;
      while (!stop_consumers.load(std::memory_order_relaxed)) {
        auto d = s->receive(std::chrono::milliseconds{100});
        if (!d) continue;
        std::int64_t now = steady_ns();
        const auto& h = d->message().headers;
        if (auto it = h.find(kSentHeader); it != h.end()) {
          std::int64_t sent = 0;
          std::from_chars(it->second.data(), it->second.data() + it->second.size(), sent);
          local.emplace_back(sent, static_cast<double>(now - sent) / 1e6);
        }
        d->ack();
        last_consumed_ns.store(now, std::memory_order_relaxed);
        if (consumed.fetch_add(1) + 1 >= config.messages) stop_consumers = true;
      }
      std::lock_guard lock(latency_mutex);
      samples.insert(samples.end(), local.begin(), local.end());
    });
  }

  std::string payload(config.size, 'x');
  Tally tally;
  std::int64_t start_ns = steady_ns();
  std::vector<std::thread> producer_threads;
  for (int p = 0; p < config.producers; ++p) {
    std::uint64_t share = config.messages / static_cast<std::uint64_t>(config.producers) +
                          (static_cast<std::uint64_t>(p) < config.messages % static_cast<std::uint64_t>(config.producers) ? 1 : 0);
    producer_threads.emplace_back([&, share] {
      Lane lane{&tally, Window(config.window)};
      double per_producer_rate = config.rate / config.producers;
      auto t0 = SteadyClock::now();
      std::uint64_t sent = 0;
      // One message at a time goes out as a copy of this one, its send time changed: a
      // publish of a message the caller keeps (ferry makes a fresh id for each).
      Message single;
      single.payload = payload;
      std::string& single_sent = single.headers[kSentHeader];
      while (sent < share) {
        int n = static_cast<int>(std::min<std::uint64_t>(static_cast<std::uint64_t>(config.batch), share - sent));
        if (per_producer_rate > 0) {
          auto due = t0 + std::chrono::duration_cast<SteadyClock::duration>(
                              std::chrono::duration<double>(static_cast<double>(sent) / per_producer_rate));
          std::this_thread::sleep_until(due);
        }
        std::string now = std::to_string(steady_ns());
        auto message = [&](std::string sent) {
          Message m;
          m.payload = payload;
          m.headers.emplace(kSentHeader, std::move(sent));
          return m;
        };
        lane.window.acquire(n);
        try {
          if (n == 1 && config.fresh_messages) {
            broker->publisher().publish_async(topic, message(std::move(now)), Done{&lane, n});
          } else if (n == 1) {
            single_sent = std::move(now);
            broker->publisher().publish_async(topic, std::as_const(single), Done{&lane, n});
          } else {
            std::vector<Message> batch;
            batch.reserve(static_cast<std::size_t>(n));
            for (int i = 0; i < n; ++i) batch.push_back(message(now));
            broker->publisher().publish_batch_async(topic, std::move(batch), Done{&lane, n});
          }
        } catch (const std::exception& e) {
          lane.window.release(n);
          tally.failed(static_cast<std::uint64_t>(n), e.what());
        }
        sent += static_cast<std::uint64_t>(n);
      }
      lane.window.drain();
    });
  }
  for (auto& t : producer_threads) t.join();
  std::int64_t published_ns = steady_ns();

  auto give_up = SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                          std::chrono::duration<double>(config.timeout_s));
  std::uint64_t expected = tally.confirmed.load();
  while (config.consumers > 0 && consumed.load() < expected && SteadyClock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
  stop_consumers = true;
  for (auto& t : consumer_threads) t.join();
  for (auto& s : subscribers) s->close();
  broker->close();

  result.published = tally.confirmed.load();
  result.publish_errors = tally.errors.load();
  result.first_error = tally.first_error;
  result.consumed = consumed.load();
  result.publish_seconds = static_cast<double>(published_ns - start_ns) / 1e9;
  result.consume_seconds = static_cast<double>(std::max(last_consumed_ns.load(), start_ns) - start_ns) / 1e9;
  result.publish_msgs_per_s = result.publish_seconds > 0 ? static_cast<double>(result.published) / result.publish_seconds : 0;
  result.publish_mb_per_s = result.publish_msgs_per_s * static_cast<double>(config.size) / 1e6;
  result.consume_msgs_per_s = result.consume_seconds > 0 ? static_cast<double>(result.consumed) / result.consume_seconds : 0;
  const auto warmup_end = start_ns + static_cast<std::int64_t>(config.warmup_s * 1e9);
  std::vector<double> all_ms, counted_ms;
  all_ms.reserve(samples.size());
  counted_ms.reserve(samples.size());
  for (const auto& [sent, ms] : samples) {
    all_ms.push_back(ms);
    if (sent >= warmup_end) counted_ms.push_back(ms);
  }
  std::sort(all_ms.begin(), all_ms.end());
  std::sort(counted_ms.begin(), counted_ms.end());
  result.latency_samples = counted_ms.size();
  result.warmup_samples = all_ms.size() - counted_ms.size();
  result.p50_ms = percentile(counted_ms, 0.50);
  result.p99_ms = percentile(counted_ms, 0.99);
  result.p999_ms = percentile(counted_ms, 0.999);
  result.max_ms = counted_ms.empty() ? 0 : counted_ms.back();
  result.p99_with_warmup_ms = percentile(all_ms, 0.99);
  return result;
}

void print_text(std::ostream& out, const Config& c, const Result& r) {
  out << std::fixed << std::setprecision(1);
  out << "broker       " << mask_url(c.broker) << "\n";
  out << "workload     " << c.messages << " messages of " << c.size << " B, " << c.producers << " producers (window "
      << c.window << ", batch " << c.batch << "), " << c.consumers << " consumers";
  if (c.rate > 0) out << ", offered " << c.rate << " msg/s";
  out << "\n";
  out << "publish      " << r.published << " confirmed, " << r.publish_errors << " failed in " << std::setprecision(3)
      << r.publish_seconds << " s: " << std::setprecision(0) << r.publish_msgs_per_s << " msg/s, "
      << std::setprecision(1) << r.publish_mb_per_s << " MB/s\n";
  if (c.consumers > 0) {
    out << "consume      " << r.consumed << " in " << std::setprecision(3) << r.consume_seconds << " s: "
        << std::setprecision(0) << r.consume_msgs_per_s << " msg/s\n";
    out << std::setprecision(2) << "end-to-end   p50 " << r.p50_ms << " ms, p99 " << r.p99_ms << " ms, p999 "
        << r.p999_ms << " ms, max " << r.max_ms << " ms";
    if (c.warmup_s > 0)
      out << " (" << r.latency_samples << " messages; the " << r.warmup_samples << " sent in the first "
          << std::setprecision(1) << c.warmup_s << " s not counted; with them p99 " << std::setprecision(2)
          << r.p99_with_warmup_ms << " ms)";
    out << "\n";
  }
  if (!r.first_error.empty()) out << "first error  " << r.first_error << "\n";
}

void print_json(std::ostream& out, const Config& c, const Result& r) {
  out << std::fixed << std::setprecision(3);
  out << "{\"broker\":\"" << mask_url(c.broker) << "\",\"messages\":" << c.messages << ",\"size\":" << c.size
      << ",\"producers\":" << c.producers << ",\"consumers\":" << c.consumers << ",\"window\":" << c.window
      << ",\"batch\":" << c.batch << ",\"rate\":" << c.rate << ",\"published\":" << r.published
      << ",\"publish_errors\":" << r.publish_errors << ",\"consumed\":" << r.consumed
      << ",\"publish_seconds\":" << r.publish_seconds << ",\"publish_msgs_per_s\":" << r.publish_msgs_per_s
      << ",\"publish_mb_per_s\":" << r.publish_mb_per_s << ",\"consume_seconds\":" << r.consume_seconds
      << ",\"consume_msgs_per_s\":" << r.consume_msgs_per_s << ",\"latency_ms\":{\"p50\":" << r.p50_ms
      << ",\"p99\":" << r.p99_ms << ",\"p999\":" << r.p999_ms << ",\"max\":" << r.max_ms
      << ",\"samples\":" << r.latency_samples << ",\"warmup_s\":" << c.warmup_s
      << ",\"warmup_samples\":" << r.warmup_samples << ",\"p99_with_warmup\":" << r.p99_with_warmup_ms << "}}\n";
}

}  // namespace ferry::bench
