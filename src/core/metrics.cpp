#include "ferry/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <charconv>
#include <variant>

namespace ferry::metrics {
namespace {

void atomic_add(std::atomic<double>& target, double by) noexcept {
  double current = target.load(std::memory_order_relaxed);
  while (!target.compare_exchange_weak(current, current + by, std::memory_order_relaxed)) {
  }
}

bool valid_metric_name(const std::string& name) {
  if (name.empty()) return false;
  for (std::size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (i > 0 && c >= '0' && c <= '9');
    if (!ok) return false;
  }
  return true;
}

std::string format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  auto [end, ec] = std::to_chars(buffer, buffer + sizeof buffer, v);  // shortest text that reads back as v
  return ec == std::errc{} ? std::string(buffer, end) : std::to_string(v);
}

std::string escape_label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\') out += "\\\\";
    else if (c == '"') out += "\\\"";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

std::string escape_help(const std::string& help) {
  std::string out;
  for (char c : help) {
    if (c == '\\') out += "\\\\";
    else if (c == '\n') out += "\\n";
    else out.push_back(c);
  }
  return out;
}

std::string label_set(const Labels& names, const Labels& values, const std::string& extra_name = {},
                      const std::string& extra_value = {}) {
  if (names.empty() && extra_name.empty()) return {};
  std::string out = "{";
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += ',';
    out += names[i] + "=\"" + escape_label(values[i]) + "\"";
  }
  if (!extra_name.empty()) {
    if (!names.empty()) out += ',';
    out += extra_name + "=\"" + extra_value + "\"";
  }
  return out + "}";
}

}  // namespace

void Counter::inc(double by) noexcept {
  if (by > 0) atomic_add(value_, by);
}

void Gauge::add(double by) noexcept { atomic_add(value_, by); }

Histogram::Histogram(const std::vector<double>* bounds)
    : bounds_(bounds), buckets_(new std::atomic<std::uint64_t>[bounds->size() + 1]) {
  for (std::size_t i = 0; i <= bounds_->size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) noexcept {
  auto it = std::lower_bound(bounds_->begin(), bounds_->end(), v);
  buckets_[static_cast<std::size_t>(it - bounds_->begin())].fetch_add(1, std::memory_order_relaxed);
  atomic_add(sum_, v);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void Histogram::observe(std::chrono::steady_clock::duration d) noexcept {
  observe(std::chrono::duration<double>(d).count());
}

std::vector<std::uint64_t> Histogram::cumulative() const {
  std::vector<std::uint64_t> out(bounds_->size() + 1);
  std::uint64_t running = 0;
  for (std::size_t i = 0; i <= bounds_->size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    out[i] = running;
  }
  return out;
}

const std::vector<double>& latency_buckets() {
  static const std::vector<double> bounds{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,  0.05,    0.1,    0.25,  0.5,    1,     2.5, 5, 10};
  return bounds;
}

struct Registry::Entry {
  std::variant<std::unique_ptr<Family<Counter>>, std::unique_ptr<Family<Gauge>>, std::unique_ptr<Family<Histogram>>,
               std::monostate>
      family;
  const std::vector<double>* bounds = nullptr;
};

Registry::Registry() = default;
Registry::~Registry() = default;

namespace {

void check_names(const std::string& name, const Labels& label_names) {
  if (!valid_metric_name(name)) throw std::invalid_argument("'" + name + "' is not a valid Prometheus metric name");
  for (const auto& l : label_names)
    if (!valid_metric_name(l) || l.find(':') != std::string::npos || l.rfind("__", 0) == 0 || l == "le")
      throw std::invalid_argument("'" + l + "' is not a valid label name for metric " + name);
}

}  // namespace

Family<Counter>& Registry::counter(const std::string& name, const std::string& help, const Labels& label_names) {
  check_names(name, label_names);
  std::lock_guard lock(mutex_);
  auto& entry = families_[name];
  if (!entry) {
    entry = std::make_unique<Entry>();
    entry->family = std::make_unique<Family<Counter>>(name, help, label_names, [] { return std::make_unique<Counter>(); });
  }
  auto* family = std::get_if<std::unique_ptr<Family<Counter>>>(&entry->family);
  if (!family) throw std::invalid_argument("metric " + name + " is already registered as another kind");
  return **family;
}

Family<Gauge>& Registry::gauge(const std::string& name, const std::string& help, const Labels& label_names) {
  check_names(name, label_names);
  std::lock_guard lock(mutex_);
  auto& entry = families_[name];
  if (!entry) {
    entry = std::make_unique<Entry>();
    entry->family = std::make_unique<Family<Gauge>>(name, help, label_names, [] { return std::make_unique<Gauge>(); });
  }
  auto* family = std::get_if<std::unique_ptr<Family<Gauge>>>(&entry->family);
  if (!family) throw std::invalid_argument("metric " + name + " is already registered as another kind");
  return **family;
}

Family<Histogram>& Registry::histogram(const std::string& name, const std::string& help, const Labels& label_names,
                                       const std::vector<double>& bounds) {
  check_names(name, label_names);
  if (bounds.empty() || !std::is_sorted(bounds.begin(), bounds.end()))
    throw std::invalid_argument("histogram " + name + " needs sorted bucket bounds");
  std::lock_guard lock(mutex_);
  auto& entry = families_[name];
  if (!entry) {
    entry = std::make_unique<Entry>();
    bounds_.push_back(std::make_unique<std::vector<double>>(bounds));
    const std::vector<double>* kept = bounds_.back().get();
    entry->bounds = kept;
    entry->family = std::make_unique<Family<Histogram>>(name, help, label_names,
                                                        [kept] { return std::make_unique<Histogram>(kept); });
  }
  auto* family = std::get_if<std::unique_ptr<Family<Histogram>>>(&entry->family);
  if (!family) throw std::invalid_argument("metric " + name + " is already registered as another kind");
  return **family;
}

void Registry::add_collector(std::function<void()> collect) {
  std::lock_guard lock(mutex_);
  collectors_.push_back(std::move(collect));
}

std::string Registry::render() const {
  std::vector<std::function<void()>> collectors;
  {
    std::lock_guard lock(mutex_);
    collectors = collectors_;
  }
  for (auto& collect : collectors) {
    try {
      collect();
    } catch (...) {
      // A collector that cannot read its source leaves its gauges as they were.
    }
  }
  std::string out;
  std::lock_guard lock(mutex_);
  for (const auto& [name, entry] : families_) {
    if (auto* c = std::get_if<std::unique_ptr<Family<Counter>>>(&entry->family)) {
      out += "# HELP " + name + " " + escape_help((*c)->help()) + "\n# TYPE " + name + " counter\n";
      (*c)->each([&](const Labels& values, const Counter& s) {
        out += name + label_set((*c)->label_names(), values) + " " + format_value(s.value()) + "\n";
      });
    } else if (auto* g = std::get_if<std::unique_ptr<Family<Gauge>>>(&entry->family)) {
      out += "# HELP " + name + " " + escape_help((*g)->help()) + "\n# TYPE " + name + " gauge\n";
      (*g)->each([&](const Labels& values, const Gauge& s) {
        out += name + label_set((*g)->label_names(), values) + " " + format_value(s.value()) + "\n";
      });
    } else if (auto* h = std::get_if<std::unique_ptr<Family<Histogram>>>(&entry->family)) {
      out += "# HELP " + name + " " + escape_help((*h)->help()) + "\n# TYPE " + name + " histogram\n";
      const auto& names = (*h)->label_names();
      (*h)->each([&](const Labels& values, const Histogram& s) {
        auto counts = s.cumulative();
        for (std::size_t i = 0; i < entry->bounds->size(); ++i)
          out += name + "_bucket" + label_set(names, values, "le", format_value((*entry->bounds)[i])) + " " +
                 std::to_string(counts[i]) + "\n";
        out += name + "_bucket" + label_set(names, values, "le", "+Inf") + " " + std::to_string(counts.back()) + "\n";
        out += name + "_sum" + label_set(names, values) + " " + format_value(s.sum()) + "\n";
        out += name + "_count" + label_set(names, values) + " " + std::to_string(counts.back()) + "\n";
      });
    }
  }
  return out;
}

Registry& default_registry() {
  static Registry registry;
  return registry;
}

}  // namespace ferry::metrics
