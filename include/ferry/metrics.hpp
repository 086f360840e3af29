#pragma once
// ferry::metrics: counters, gauges and histograms with labels, rendered in the
// Prometheus text exposition format (version 0.0.4).
//
//   auto& published = registry.counter("ferry_published_total", "Messages confirmed.",
//                                      {"backend", "topic"});
//   published.labels({"sqlite", "orders"}).inc();
//   std::string text = registry.render();
//
// Every method is thread-safe. Series are created on first use of a label set and live
// as long as the registry; inc()/observe() on a series are lock-free. Collectors run at
// render time, for values read from elsewhere (a backlog, a queue depth).

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace ferry::metrics {

using Labels = std::vector<std::string>;

class Counter {
 public:
  void inc(double by = 1) noexcept;
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Gauge {
 public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void add(double by) noexcept;
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

class Histogram {
 public:
  explicit Histogram(const std::vector<double>* bounds);
  void observe(double v) noexcept;
  void observe(std::chrono::steady_clock::duration d) noexcept;
  // Cumulative counts per bound (then +Inf), the sum and the count.
  std::vector<std::uint64_t> cumulative() const;
  double sum() const noexcept { return sum_.load(std::memory_order_relaxed); }
  std::uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

 private:
  const std::vector<double>* bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // one per bound, plus +Inf
  std::atomic<double> sum_{0};
  std::atomic<std::uint64_t> count_{0};
};

// Default latency buckets, in seconds: 100 µs to 10 s.
const std::vector<double>& latency_buckets();

template <typename Series>
class Family {
 public:
  Family(std::string name, std::string help, Labels label_names, std::function<std::unique_ptr<Series>()> make)
      : name_(std::move(name)), help_(std::move(help)), label_names_(std::move(label_names)), make_(std::move(make)) {}
  // The series for these label values (as many as the family's label names).
  Series& labels(const Labels& values);
  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const Labels& label_names() const { return label_names_; }
  // Visits every series; holds the family's lock meanwhile.
  void each(const std::function<void(const Labels&, const Series&)>& visit) const;

 private:
  std::string name_, help_;
  Labels label_names_;
  std::function<std::unique_ptr<Series>()> make_;
  mutable std::mutex mutex_;
  std::map<Labels, std::unique_ptr<Series>> series_;
};

class Registry {
 public:
  Registry();
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // A family is created once per name; asking again returns the same family. Throws
  // std::invalid_argument for a name or labels that break Prometheus' naming rules, or a
  // name already used by another kind of metric.
  Family<Counter>& counter(const std::string& name, const std::string& help, const Labels& label_names = {});
  Family<Gauge>& gauge(const std::string& name, const std::string& help, const Labels& label_names = {});
  Family<Histogram>& histogram(const std::string& name, const std::string& help, const Labels& label_names = {},
                               const std::vector<double>& bounds = latency_buckets());
  // Runs before every render; typically sets gauges from a backend's statistics.
  void add_collector(std::function<void()> collect);

  std::string render() const;

 private:
  struct Entry;
  mutable std::mutex mutex_;
  std::vector<std::function<void()>> collectors_;
  std::map<std::string, std::unique_ptr<Entry>> families_;
  std::vector<std::unique_ptr<std::vector<double>>> bounds_;
};

// The process-wide registry that ferry's own parts report to by default.
Registry& default_registry();

template <typename Series>
Series& Family<Series>::labels(const Labels& values) {
  std::lock_guard lock(mutex_);
  auto it = series_.find(values);
  if (it == series_.end()) {
    if (values.size() != label_names_.size())
      throw std::invalid_argument("metric " + name_ + " takes " + std::to_string(label_names_.size()) +
                                  " label values, got " + std::to_string(values.size()));
    it = series_.emplace(values, make_()).first;
  }
  return *it->second;
}

template <typename Series>
void Family<Series>::each(const std::function<void(const Labels&, const Series&)>& visit) const {
  std::lock_guard lock(mutex_);
  for (const auto& [labels, series] : series_) visit(labels, *series);
}

}  // namespace ferry::metrics
