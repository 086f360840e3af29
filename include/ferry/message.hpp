#pragma once
// ferry::Message: the unit every backend carries.
//
// A message is a plain value: copy and move it freely; it is not thread-safe to mutate
// one message from several threads. Publishers fill in `id` (a random UUID) and
// `timestamp` (now) when they are empty, before the message leaves the process.

#include <chrono>
#include <map>
#include <optional>
#include <string>

namespace ferry {

using Headers = std::map<std::string, std::string, std::less<>>;
using Clock = std::chrono::system_clock;

// Headers ferry itself sets. User headers must not start with "ferry-".
namespace header {
inline constexpr const char* error = "ferry-error";
inline constexpr const char* attempts = "ferry-attempts";
inline constexpr const char* original_topic = "ferry-original-topic";
inline constexpr const char* original_group = "ferry-original-group";
inline constexpr const char* correlation_id = "ferry-correlation-id";
inline constexpr const char* traceparent = "traceparent";
}  // namespace header

struct Message {
  std::string id;                  // unique id; a UUID when ferry generates it
  std::optional<std::string> key;  // ordering and partitioning key
  Headers headers;                 // string to string
  std::string payload;             // arbitrary bytes, NUL included
  Clock::time_point timestamp{};   // when the message was created

  // A message with this payload and a fresh id and timestamp.
  static Message with_payload(std::string payload);
};

// A random (version 4) UUID in its canonical 36-character text form.
std::string make_uuid();
// The same, written to `out` (no terminating NUL).
void make_uuid(char (&out)[36]) noexcept;

// Milliseconds since the Unix epoch, and back.
std::int64_t to_unix_ms(Clock::time_point t) noexcept;
Clock::time_point from_unix_ms(std::int64_t ms) noexcept;

// Gives the message an id and a timestamp if it has none.
void stamp(Message& message);

// Compact binary encoding of the headers (length-prefixed key/value pairs), shared by
// backends that store headers in one field. decode_headers throws Error(not_ferry_data)
// on input that encode_headers did not produce.
std::string encode_headers(const Headers& headers);
Headers decode_headers(std::string_view bytes);

}  // namespace ferry
