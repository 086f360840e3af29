#include "ferry/url.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

#include "ferry/error.hpp"

namespace ferry {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> percent_decode(std::string_view in) {
  std::string out;
  out.reserve(in.size());
  for (std::size_t i = 0; i < in.size(); ++i) {
    if (in[i] == '%') {
      if (i + 2 >= in.size()) return std::nullopt;
      int hi = hex_value(in[i + 1]), lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(in[i]);
    }
  }
  return out;
}

[[noreturn]] void fail(std::string_view text, const std::string& why) {
  throw Error(Errc::bad_url, "bad broker URL '" + mask_url(text) + "': " + why);
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return std::tolower(c); });
  return out;
}

}  // namespace

bool is_secret_key(std::string_view key) noexcept {
  std::string k = lower(key);
  for (const char* word : {"password", "secret", "token", "passwd", "key.pem", "credential"})
    if (k.find(word) != std::string::npos) return true;
  return false;
}

std::string mask_url(std::string_view text) {
  std::string out(text);
  auto scheme_end = out.find("://");
  std::size_t start = scheme_end == std::string::npos ? 0 : scheme_end + 3;
  // The userinfo ends at the last '@' before the query; the query begins where a '?' is
  // followed by a '='. People type '/', '?' and '@' into passwords without escaping
  // them, so the first '/' or '?' does not end the userinfo here: masking a little too
  // much beats printing part of a password.
  std::size_t at = std::string::npos;
  bool seen_question = false;
  for (std::size_t i = start; i < out.size(); ++i) {
    char c = out[i];
    if (c == '?') seen_question = true;
    else if (c == '=' && seen_question) break;
    else if (c == '@') at = i;
  }
  if (at != std::string::npos) {
    auto colon = out.find(':', start);
    if (colon < at) {
      out.replace(colon + 1, at - colon - 1, "***");
      at = colon + 4;
    }
  }
  auto query_pos = out.find('?', at == std::string::npos ? start : at);
  if (query_pos == std::string::npos) return out;
  std::string result = out.substr(0, query_pos + 1);
  std::string_view query = std::string_view(out).substr(query_pos + 1);
  bool first = true;
  while (true) {
    auto amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    if (!first) result += '&';
    first = false;
    auto eq = item.find('=');
    if (eq != std::string_view::npos && is_secret_key(item.substr(0, eq))) {
      result += item.substr(0, eq);
      result += "=***";
    } else {
      result += item;
    }
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return result;
}

Url Url::parse(std::string_view text) {
  Url url;
  url.raw_ = std::string(text);
  auto sep = text.find("://");
  if (sep == std::string_view::npos || sep == 0)
    fail(text, "expected scheme://..., e.g. sqlite://./ferry-data/ferry.db or kafka://localhost:9092");
  url.scheme_ = lower(text.substr(0, sep));
  for (char c : url.scheme_)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.')
      fail(text, "the scheme may hold only letters, digits, '+', '-' and '.'");
  std::string_view rest = text.substr(sep + 3);
  auto qpos = rest.find('?');
  std::string_view query = qpos == std::string_view::npos ? std::string_view{} : rest.substr(qpos + 1);
  rest = rest.substr(0, qpos);
  if (rest.find('#') != std::string_view::npos) fail(text, "a fragment ('#') has no meaning in a broker URL");
  url.location_ = std::string(rest);

  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) {
    auto path = percent_decode(rest.substr(slash));
    if (!path) fail(text, "bad percent-escape in the path");
    url.path_ = *path;
  }
  auto at = authority.rfind('@');
  if (at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    authority = authority.substr(at + 1);
    auto colon = userinfo.find(':');
    auto user = percent_decode(userinfo.substr(0, colon));
    auto pass = colon == std::string_view::npos ? std::optional<std::string>{""} : percent_decode(userinfo.substr(colon + 1));
    if (!user || !pass) fail(text, "bad percent-escape in the user or password");
    url.user_ = *user;
    url.password_ = *pass;
  }
  while (!authority.empty()) {
    auto comma = authority.find(',');
    if (comma != std::string_view::npos && comma + 1 == authority.size()) fail(text, "empty host in the host list");
    std::string_view item = authority.substr(0, comma);
    authority = comma == std::string_view::npos ? std::string_view{} : authority.substr(comma + 1);
    if (item.empty()) fail(text, "empty host in the host list");
    HostPort hp;
    std::string_view host = item;
    std::string_view port;
    if (item.front() == '[') {
      auto close = item.find(']');
      if (close == std::string_view::npos) fail(text, "unterminated '[' in an IPv6 host");
      host = item.substr(1, close - 1);
      std::string_view after = item.substr(close + 1);
      if (!after.empty()) {
        if (after.front() != ':') fail(text, "expected ':port' after ']'");
        port = after.substr(1);
      }
    } else if (auto colon = item.rfind(':'); colon != std::string_view::npos) {
      host = item.substr(0, colon);
      port = item.substr(colon + 1);
    }
    hp.host = std::string(host);
    if (!port.empty() || (item.back() == ':')) {
      int p = 0;
      auto [ptr, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
      if (ec != std::errc{} || ptr != port.data() + port.size() || p < 1 || p > 65535) {
        // What looks like a port may be the start of a password with an unescaped '/'.
        if (mask_url(text) != text)
          fail(text, "a port is not a number from 1 to 65535 (in a password, write '/' as %2F, '?' as %3F, '@' as %40)");
        fail(text, "port '" + std::string(port) + "' is not a number from 1 to 65535");
      }
      hp.port = p;
    }
    url.hosts_.push_back(std::move(hp));
  }
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view item = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
    if (item.empty()) continue;
    auto eq = item.find('=');
    auto key = percent_decode(item.substr(0, eq));
    auto value = eq == std::string_view::npos ? std::optional<std::string>{""} : percent_decode(item.substr(eq + 1));
    if (!key || !value) fail(text, "bad percent-escape in the query");
    if (key->empty()) fail(text, "a query parameter has no name");
    if (url.query_.count(*key)) fail(text, "query parameter '" + *key + "' is given twice");
    url.query_.emplace(std::move(*key), std::move(*value));
  }
  return url;
}

std::optional<std::string> Url::param(std::string_view key) const {
  auto it = query_.find(std::string(key));
  if (it == query_.end()) return std::nullopt;
  return it->second;
}

std::string Url::masked() const { return mask_url(raw_); }

std::chrono::milliseconds parse_duration(std::string_view text, std::string_view what) {
  auto bad = [&] {
    return Error(Errc::invalid_argument, std::string(what) + " '" + std::string(text) +
                                             "' is not a duration; write e.g. 250ms, 5s, 2m or 1h");
  };
  double value = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  if (ec != std::errc{} || !std::isfinite(value) || value < 0) throw bad();
  std::string_view unit(ptr, static_cast<std::size_t>(end - ptr));
  double ms = 0;
  if (unit.empty() || unit == "ms") ms = value;
  else if (unit == "s") ms = value * 1000;
  else if (unit == "m") ms = value * 60'000;
  else if (unit == "h") ms = value * 3'600'000;
  else throw bad();
  // Ten years: longer is a typo, and would overflow a time point once added to now().
  if (ms > 315'360'000'000.0)
    throw Error(Errc::invalid_argument, std::string(what) + " '" + std::string(text) + "' is too long; at most 10 years");
  return std::chrono::milliseconds{static_cast<long long>(ms)};
}

long long parse_count(std::string_view text, std::string_view what) {
  long long value = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || ptr != text.data() + text.size() || value < 0)
    throw Error(Errc::invalid_argument,
                std::string(what) + " '" + std::string(text) + "' is not a non-negative whole number");
  return value;
}

bool parse_bool(std::string_view text, std::string_view what) {
  std::string v = lower(text);
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  throw Error(Errc::invalid_argument, std::string(what) + " '" + std::string(text) + "' is not true or false");
}

}  // namespace ferry
