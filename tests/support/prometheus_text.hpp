#pragma once
// A strict parser of the Prometheus text exposition format (0.0.4), for tests: every
// line must be a well-formed comment, HELP, TYPE or sample; every sample must belong to a
// family declared by TYPE before it; histogram buckets must be cumulative and end in
// le="+Inf" equal to _count. Throws std::runtime_error naming the line on any violation.

#include <chrono>
#include <cmath>
#include <optional>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace ferry::testing {

struct Sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

struct Exposition {
  std::map<std::string, std::string> types;  // family -> counter|gauge|histogram|summary|untyped
  std::map<std::string, std::string> help;
  std::vector<Sample> samples;

  // The value of the sample with this name whose labels include `match`; throws if none
  // or several match.
  double value(const std::string& name, const std::map<std::string, std::string>& match = {}) const {
    const Sample* found = nullptr;
    for (const auto& s : samples) {
      if (s.name != name) continue;
      bool ok = true;
      for (const auto& [k, v] : match) {
        auto it = s.labels.find(k);
        if (it == s.labels.end() || it->second != v) ok = false;
      }
      if (!ok) continue;
      if (found) throw std::runtime_error("several samples of " + name + " match");
      found = &s;
    }
    if (!found) throw std::runtime_error("no sample of " + name + " matches");
    return found->value;
  }
  bool has(const std::string& name) const {
    for (const auto& s : samples)
      if (s.name == name) return true;
    return false;
  }
};

namespace detail {

inline bool name_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':' || (!first && c >= '0' && c <= '9');
}

inline std::string read_name(const std::string& line, std::size_t& pos, const std::string& what) {
  std::size_t start = pos;
  while (pos < line.size() && name_char(line[pos], pos == start)) ++pos;
  if (pos == start) throw std::runtime_error("expected a " + what + " in: " + line);
  return line.substr(start, pos - start);
}

inline double parse_value(const std::string& text, const std::string& line) {
  if (text == "+Inf") return INFINITY;
  if (text == "-Inf") return -INFINITY;
  if (text == "NaN") return NAN;
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    throw std::runtime_error("bad value '" + text + "' in: " + line);
  }
  if (used != text.size()) throw std::runtime_error("bad value '" + text + "' in: " + line);
  return v;
}

inline std::string family_of(const std::string& sample, const std::map<std::string, std::string>& types) {
  if (types.count(sample)) return sample;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    std::string s(suffix);
    if (sample.size() > s.size() && sample.compare(sample.size() - s.size(), s.size(), s) == 0) {
      std::string base = sample.substr(0, sample.size() - s.size());
      auto it = types.find(base);
      if (it != types.end() && (it->second == "histogram" || it->second == "summary")) return base;
    }
  }
  return {};
}

}  // namespace detail

inline Exposition parse_prometheus(const std::string& text) {
  Exposition out;
  if (!text.empty() && text.back() != '\n') throw std::runtime_error("the exposition must end with a newline");
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::istringstream words(line);
      std::string hash, keyword, name;
      words >> hash >> keyword >> name;
      if (keyword == "TYPE") {
        std::string type;
        words >> type;
        if (type != "counter" && type != "gauge" && type != "histogram" && type != "summary" && type != "untyped")
          throw std::runtime_error("unknown TYPE in: " + line);
        if (out.types.count(name)) throw std::runtime_error("TYPE given twice for " + name);
        out.types[name] = type;
      } else if (keyword == "HELP") {
        out.help[name] = line;
      }
      continue;
    }
    std::size_t pos = 0;
    Sample s;
    s.name = detail::read_name(line, pos, "metric name");
    if (pos < line.size() && line[pos] == '{') {
      ++pos;
      while (pos < line.size() && line[pos] != '}') {
        std::string label = detail::read_name(line, pos, "label name");
        if (pos >= line.size() || line[pos] != '=' || pos + 1 >= line.size() || line[pos + 1] != '"')
          throw std::runtime_error("expected =\" after label " + label + " in: " + line);
        pos += 2;
        std::string value;
        while (pos < line.size() && line[pos] != '"') {
          if (line[pos] == '\\') {
            if (pos + 1 >= line.size()) throw std::runtime_error("dangling escape in: " + line);
            char e = line[pos + 1];
            if (e == 'n') value += '\n';
            else if (e == '\\' || e == '"') value += e;
            else throw std::runtime_error("bad escape in: " + line);
            pos += 2;
          } else {
            value += line[pos++];
          }
        }
        if (pos >= line.size()) throw std::runtime_error("unterminated label value in: " + line);
        ++pos;
        if (s.labels.count(label)) throw std::runtime_error("label " + label + " repeated in: " + line);
        s.labels[label] = value;
        if (pos < line.size() && line[pos] == ',') ++pos;
      }
      if (pos >= line.size()) throw std::runtime_error("unterminated label set in: " + line);
      ++pos;
    }
    if (pos >= line.size() || line[pos] != ' ') throw std::runtime_error("expected a space before the value in: " + line);
    ++pos;
    std::string rest = line.substr(pos);
    auto space = rest.find(' ');
    s.value = detail::parse_value(rest.substr(0, space), line);
    std::string family = detail::family_of(s.name, out.types);
    if (family.empty()) throw std::runtime_error("sample without a preceding TYPE: " + line);
    const std::string& type = out.types[family];
    if (type == "counter" && (s.value < 0 || std::isnan(s.value)))
      throw std::runtime_error("negative counter: " + line);
    if (type == "counter" && s.name.size() >= 6 && s.name.compare(s.name.size() - 6, 6, "_total") != 0)
      throw std::runtime_error("counter not named *_total: " + line);
    out.samples.push_back(std::move(s));
  }
  // Histograms: cumulative buckets ending in +Inf == _count.
  for (const auto& [family, type] : out.types) {
    if (type != "histogram") continue;
    std::map<std::map<std::string, std::string>, std::vector<std::pair<double, double>>> series;
    std::map<std::map<std::string, std::string>, double> counts;
    for (const auto& s : out.samples) {
      if (s.name == family + "_bucket") {
        auto labels = s.labels;
        auto le = labels.find("le");
        if (le == labels.end()) throw std::runtime_error("bucket without le in " + family);
        double bound = detail::parse_value(le->second, family);
        labels.erase(le);
        series[labels].emplace_back(bound, s.value);
      } else if (s.name == family + "_count") {
        counts[s.labels] = s.value;
      }
    }
    for (const auto& [labels, buckets] : series) {
      for (std::size_t i = 1; i < buckets.size(); ++i)
        if (buckets[i].first <= buckets[i - 1].first || buckets[i].second < buckets[i - 1].second)
          throw std::runtime_error("histogram " + family + " buckets are not cumulative and ordered");
      if (buckets.empty() || !std::isinf(buckets.back().first))
        throw std::runtime_error("histogram " + family + " lacks le=\"+Inf\"");
      if (!counts.count(labels) || counts[labels] != buckets.back().second)
        throw std::runtime_error("histogram " + family + " _count differs from its +Inf bucket");
    }
  }
  return out;
}

// Scrapes with `fetch` (returns an exposition's text) until the sample `name` whose labels
// include `match` equals `expected` or `timeout` passes. Returns the last value seen, or
// nullopt if no scrape had the sample. Every scrape must parse.
template <class Fetch>
std::optional<double> wait_for_sample(Fetch fetch, const std::string& name,
                                      const std::map<std::string, std::string>& match, double expected,
                                      std::chrono::milliseconds timeout) {
  std::optional<double> seen;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    Exposition parsed = parse_prometheus(fetch());
    try {
      seen = parsed.value(name, match);
    } catch (const std::runtime_error&) {
      // not reported yet
    }
    if ((seen && *seen == expected) || std::chrono::steady_clock::now() >= deadline) return seen;
    std::this_thread::sleep_for(std::chrono::milliseconds{200});
  }
}

}  // namespace ferry::testing
