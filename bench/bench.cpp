#include "bench.hpp"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <iomanip>
#include <mutex>
#include <ostream>
#include <thread>
#include <vector>

#include "ferry/broker.hpp"

namespace ferry::bench {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr const char* kSentHeader = "ferry-bench-sent-ns";

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(SteadyClock::now().time_since_epoch()).count();
}

double percentile(std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  auto index = static_cast<std::size_t>(p * static_cast<double>(sorted.size() - 1) + 0.5);
  return sorted[std::min(index, sorted.size() - 1)];
}

// Bounds the publishes in flight of one producer.
class Window {
 public:
  explicit Window(int size) : size_(size) {}
  void acquire(int n) {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return used_ + n <= size_ || used_ == 0; });
    used_ += n;
  }
  void release(int n) {
    {
      std::lock_guard lock(mutex_);
      used_ -= n;
    }
    cv_.notify_all();
  }
  void drain() {
    std::unique_lock lock(mutex_);
    cv_.wait(lock, [&] { return used_ == 0; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int size_;
  int used_ = 0;
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
  if (size > 64 * 1024 * 1024) bad("--size must be at most 64 MiB");
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
  std::vector<double> latencies_ms;
  latencies_ms.reserve(config.messages);

  std::vector<std::thread> consumer_threads;
  for (auto& sub : subscribers) {
    consumer_threads.emplace_back([&, s = sub.get()] {
      std::vector<double> local;
      while (!stop_consumers.load(std::memory_order_relaxed)) {
        auto d = s->receive(std::chrono::milliseconds{100});
        if (!d) continue;
        std::int64_t now = steady_ns();
        const auto& h = d->message().headers;
        if (auto it = h.find(kSentHeader); it != h.end()) {
          std::int64_t sent = 0;
          std::from_chars(it->second.data(), it->second.data() + it->second.size(), sent);
          local.push_back(static_cast<double>(now - sent) / 1e6);
        }
        d->ack();
        last_consumed_ns.store(now, std::memory_order_relaxed);
        if (consumed.fetch_add(1) + 1 >= config.messages) stop_consumers = true;
      }
      std::lock_guard lock(latency_mutex);
      latencies_ms.insert(latencies_ms.end(), local.begin(), local.end());
    });
  }

  std::string payload(config.size, 'x');
  std::atomic<std::uint64_t> confirmed{0}, errors{0};
  std::mutex error_mutex;
  std::int64_t start_ns = steady_ns();
  std::vector<std::thread> producer_threads;
  for (int p = 0; p < config.producers; ++p) {
    std::uint64_t share = config.messages / static_cast<std::uint64_t>(config.producers) +
                          (static_cast<std::uint64_t>(p) < config.messages % static_cast<std::uint64_t>(config.producers) ? 1 : 0);
    producer_threads.emplace_back([&, share] {
      Window window(config.window);
      double per_producer_rate = config.rate / config.producers;
      auto t0 = SteadyClock::now();
      std::uint64_t sent = 0;
      while (sent < share) {
        int n = static_cast<int>(std::min<std::uint64_t>(static_cast<std::uint64_t>(config.batch), share - sent));
        if (per_producer_rate > 0) {
          auto due = t0 + std::chrono::duration_cast<SteadyClock::duration>(
                              std::chrono::duration<double>(static_cast<double>(sent) / per_producer_rate));
          std::this_thread::sleep_until(due);
        }
        std::vector<Message> batch(static_cast<std::size_t>(n));
        std::string now = std::to_string(steady_ns());
        for (auto& m : batch) {
          m.payload = payload;
          m.headers.emplace(kSentHeader, now);
        }
        window.acquire(n);
        try {
          broker->publisher().publish_batch_async(topic, std::move(batch), [&, n](const Status& s) {
            if (s.ok()) {
              confirmed.fetch_add(static_cast<std::uint64_t>(n));
            } else {
              errors.fetch_add(static_cast<std::uint64_t>(n));
              std::lock_guard lock(error_mutex);
              if (result.first_error.empty()) result.first_error = s.message;
            }
            window.release(n);
          });
        } catch (const std::exception& e) {
          window.release(n);
          errors.fetch_add(static_cast<std::uint64_t>(n));
          std::lock_guard lock(error_mutex);
          if (result.first_error.empty()) result.first_error = e.what();
        }
        sent += static_cast<std::uint64_t>(n);
      }
      window.drain();
    });
  }
  for (auto& t : producer_threads) t.join();
  std::int64_t published_ns = steady_ns();

  auto give_up = SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(
                                          std::chrono::duration<double>(config.timeout_s));
  std::uint64_t expected = confirmed.load();
  while (config.consumers > 0 && consumed.load() < expected && SteadyClock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds{5});
  stop_consumers = true;
  for (auto& t : consumer_threads) t.join();
  for (auto& s : subscribers) s->close();
  broker->close();

  result.published = confirmed.load();
  result.publish_errors = errors.load();
  result.consumed = consumed.load();
  result.publish_seconds = static_cast<double>(published_ns - start_ns) / 1e9;
  result.consume_seconds = static_cast<double>(std::max(last_consumed_ns.load(), start_ns) - start_ns) / 1e9;
  result.publish_msgs_per_s = result.publish_seconds > 0 ? static_cast<double>(result.published) / result.publish_seconds : 0;
  result.publish_mb_per_s = result.publish_msgs_per_s * static_cast<double>(config.size) / 1e6;
  result.consume_msgs_per_s = result.consume_seconds > 0 ? static_cast<double>(result.consumed) / result.consume_seconds : 0;
  std::sort(latencies_ms.begin(), latencies_ms.end());
  result.p50_ms = percentile(latencies_ms, 0.50);
  result.p99_ms = percentile(latencies_ms, 0.99);
  result.p999_ms = percentile(latencies_ms, 0.999);
  result.max_ms = latencies_ms.empty() ? 0 : latencies_ms.back();
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
        << r.p999_ms << " ms, max " << r.max_ms << " ms\n";
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
      << ",\"p99\":" << r.p99_ms << ",\"p999\":" << r.p999_ms << ",\"max\":" << r.max_ms << "}}\n";
}

}  // namespace ferry::bench
