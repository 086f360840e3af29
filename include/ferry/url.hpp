#pragma once
// ferry::Url: a broker URL, "scheme://[user[:password]@]host[:port][,host...][/path][?k=v&...]".
//
// Parsing is lenient about what backends need (several comma-separated hosts, relative
// paths after "sqlite://") and strict about the rest. masked() prints the URL with any
// password and any secret-looking query value replaced by "***"; use it for every log
// line and error message.

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

struct HostPort {
  std::string host;
  std::optional<int> port;
};

class Url {
 public:
  // Throws Error(bad_url) with the masked URL and the reason.
  static Url parse(std::string_view text);

  const std::string& scheme() const noexcept { return scheme_; }
  const std::string& user() const noexcept { return user_; }
  const std::string& password() const noexcept { return password_; }
  const std::vector<HostPort>& hosts() const noexcept { return hosts_; }
  const std::string& path() const noexcept { return path_; }
  // Everything between "://" and "?" (for backends that address a file).
  const std::string& location() const noexcept { return location_; }
  const std::map<std::string, std::string>& query() const noexcept { return query_; }
  std::optional<std::string> param(std::string_view key) const;

  std::string masked() const;

 private:
  std::string scheme_, user_, password_, path_, location_;
  std::vector<HostPort> hosts_;
  std::map<std::string, std::string> query_;
  std::string raw_;
};

// Masks a URL given as text, even one that does not parse.
std::string mask_url(std::string_view text);
bool is_secret_key(std::string_view key) noexcept;

// Parses a duration such as "250ms", "5s", "2m", "1h" or a bare number of milliseconds.
// Throws Error(invalid_argument) naming `what`.
std::chrono::milliseconds parse_duration(std::string_view text, std::string_view what);
// Parses a non-negative integer, throwing Error(invalid_argument) naming `what`.
long long parse_count(std::string_view text, std::string_view what);
// Parses true/false/1/0/yes/no/on/off.
bool parse_bool(std::string_view text, std::string_view what);

}  // namespace ferry
