#include "ferry/subscriber.hpp"

#include "ferry/error.hpp"

namespace ferry {

bool valid_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > 200) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string SubscribeOptions::effective_dead_letter_topic() const {
  return dead_letter_topic.empty() ? topic + "." + group + ".dlq" : dead_letter_topic;
}

void SubscribeOptions::validate() const {
  auto check = [](const std::string& name, const char* what) {
    if (!valid_name(name))
      throw Error(Errc::invalid_argument, std::string(what) + " '" + name +
                                              "' is not valid: use 1 to 200 characters from A-Z a-z 0-9 . _ -");
  };
  check(topic, "topic");
  check(group, "group");
  if (!dead_letter_topic.empty()) check(dead_letter_topic, "dead-letter topic");
  if (prefetch < 1) throw Error(Errc::invalid_argument, "prefetch must be at least 1");
  if (ack_timeout < std::chrono::milliseconds{100})
    throw Error(Errc::invalid_argument, "ack timeout must be at least 100ms");
}

}  // namespace ferry
