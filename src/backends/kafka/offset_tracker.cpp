#include "offset_tracker.hpp"

#include <algorithm>
#include <charconv>

namespace ferry::kafka::detail {
namespace {

constexpr std::string_view kPrefix = "ferry:1|";
constexpr std::int64_t kMaxRun = std::int64_t{1} << 40;

bool parse_int(std::string_view text, std::int64_t& out) {
  if (text.empty()) return false;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
  return ec == std::errc{} && ptr == text.data() + text.size();
}

}  // namespace

OffsetTracker::OffsetTracker(std::int64_t committed)
    : next_(committed >= 0 ? committed : -1), start_(committed >= 0 ? committed : -1) {}

bool OffsetTracker::track(std::int64_t offset) {
  if (offset < 0 || (next_ >= 0 && offset < next_)) return false;
  if (start_ < 0) start_ = offset;
  pending_.insert(offset);
  next_ = offset + 1;
  return true;
}

bool OffsetTracker::done(std::int64_t offset) {
  return pending_.erase(offset) > 0;
}

std::optional<std::int64_t> OffsetTracker::committable() const {
  if (!pending_.empty()) return *pending_.begin();
  if (next_ >= 0) return next_;
  return std::nullopt;
}

void Carried::add(std::int64_t start, std::int64_t length, int value) {
  if (length <= 0 || value == 0) return;
  auto after = runs_.lower_bound(start);
  if (after != runs_.begin()) {
    auto before = std::prev(after);
    Run& prev = before->second;
    if (prev.start + prev.length == start && prev.value == value) {
      prev.length += length;
      if (after != runs_.end() && after->second.start == prev.start + prev.length && after->second.value == value) {
        prev.length += after->second.length;
        runs_.erase(after);
      }
      return;
    }
  }
  runs_[start] = Run{start, length, value};
}

int Carried::lookup(std::int64_t offset) const {
  auto it = runs_.upper_bound(offset);
  if (it == runs_.begin()) return 0;
  const Run& run = std::prev(it)->second;
  return offset < run.start + run.length ? run.value : 0;
}

std::vector<Carried::Run> Carried::runs() const {
  std::vector<Run> out;
  out.reserve(runs_.size());
  for (const auto& [_, run] : runs_) out.push_back(run);
  return out;
}

int combine_carried(int a, int b) {
  if (a == kDone || b == kDone) return kDone;
  return std::max(a, b);
}

void carry_unfetched(Carried& out, std::int64_t from, const Carried& a, const Carried& b) {
  // Every run boundary at or after `from`; between two of them both values are constant.
  std::vector<std::int64_t> cuts{from};
  for (const Carried* c : {&a, &b})
    for (const auto& run : c->runs())
      for (std::int64_t cut : {run.start, run.start + run.length})
        if (cut > from) cuts.push_back(cut);
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  for (std::size_t i = 0; i + 1 < cuts.size(); ++i)
    out.add(cuts[i], cuts[i + 1] - cuts[i], combine_carried(a.lookup(cuts[i]), b.lookup(cuts[i])));
}

Carried carried_state(const OffsetTracker& tracker, const std::map<std::int64_t, int>& deliveries, bool from_start) {
  Carried out;
  auto from = tracker.committable();
  if (!from) return out;
  if (from_start && tracker.start() >= 0 && tracker.start() < *from)
    out.add(tracker.start(), *from - tracker.start(), kDone);
  std::int64_t cursor = *from;
  for (std::int64_t p : tracker.pending_offsets()) {
    if (p > cursor) out.add(cursor, p - cursor, kDone);
    if (auto it = deliveries.find(p); it != deliveries.end() && it->second > 0) out.add(p, 1, it->second);
    cursor = p + 1;
  }
  if (tracker.next() > cursor) out.add(cursor, tracker.next() - cursor, kDone);
  return out;
}

std::string encode_carried(std::int64_t committed, const Carried& carried, std::size_t max_bytes) {
  std::string out(kPrefix);
  bool first = true;
  for (const auto& run : carried.runs()) {
    std::int64_t start = run.start, length = run.length;
    if (start + length <= committed) continue;
    if (start < committed) {
      length -= committed - start;
      start = committed;
    }
    std::string text = std::to_string(start - committed);
    if (length > 1) text += "~" + std::to_string(length);
    text += ':';
    text += run.value == kDone ? std::string("d") : std::to_string(run.value);
    if (out.size() + text.size() + 1 > max_bytes) break;
    if (!first) out += ',';
    out += text;
    first = false;
  }
  return out;
}

Carried decode_carried(std::string_view metadata, std::int64_t committed) {
  Carried out;
  if (committed < 0 || metadata.substr(0, kPrefix.size()) != kPrefix) return out;
  std::string_view rest = metadata.substr(kPrefix.size());
  std::int64_t last_end = committed;
  while (!rest.empty()) {
    auto comma = rest.find(',');
    std::string_view text = rest.substr(0, comma);
    rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
    auto colon = text.find(':');
    if (colon == std::string_view::npos) return {};
    std::string_view range = text.substr(0, colon);
    std::string_view value_text = text.substr(colon + 1);
    std::int64_t delta = 0, length = 1, value = 0;
    auto tilde = range.find('~');
    if (!parse_int(range.substr(0, tilde), delta) || delta < 0 || delta > kMaxRun) return {};
    if (tilde != std::string_view::npos &&
        (!parse_int(range.substr(tilde + 1), length) || length < 1 || length > kMaxRun))
      return {};
    if (value_text == "d")
      value = kDone;
    else if (!parse_int(value_text, value) || value < 1 || value > 1'000'000)
      return {};
    if (committed + delta < last_end) return {};  // runs out of order or overlapping
    out.add(committed + delta, length, static_cast<int>(value));
    last_end = committed + delta + length;
  }
  return out;
}

}  // namespace ferry::kafka::detail
