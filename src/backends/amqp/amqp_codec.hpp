#pragma once
// ferry::Message to AMQP basic properties and a headers table, and back.

#include <amqp.h>

#include <string>
#include <vector>

#include "ferry/message.hpp"

namespace ferry::amqp::detail {

// Headers ferry puts on the wire and takes off again on receipt.
namespace wire {
inline constexpr const char* key = "ferry-key";
inline constexpr const char* timestamp_ms = "ferry-timestamp-ms";
inline constexpr const char* delivery_count = "ferry-delivery-count";
}  // namespace wire

// The properties of one outgoing message. It points into the Message it was made from
// (and into itself): keep both alive and unmoved until the publish call returns.
class Encoded {
 public:
  Encoded() = default;
  Encoded(const Encoded&) = delete;
  Encoded& operator=(const Encoded&) = delete;

  // `deliveries`: how many times the message was handed to a consumer before (0 for a
  // new message). `expiration_ms`: a per-message TTL, or 0 for none.
  void encode(const Message& message, int deliveries = 0, long long expiration_ms = 0);

  const amqp_basic_properties_t* properties() const noexcept { return &props_; }
  amqp_bytes_t body() const noexcept { return body_; }

 private:
  void add(const char* key, const std::string& value);

  amqp_basic_properties_t props_{};
  amqp_bytes_t body_{};
  std::vector<amqp_table_entry_t> entries_;
  std::string timestamp_, deliveries_, expiration_;
};

// Checks what encode() cannot carry: header names over 255 bytes, and user headers that
// collide with ferry's wire headers. Empty when the message is fine.
std::string unencodable(const Message& message);

// A received message: its fields and how many earlier deliveries it carries.
struct Decoded {
  Message message;
  int deliveries = 0;
};

// Decodes properties (the body is filled in by the caller).
Decoded decode(const amqp_basic_properties_t& properties);

}  // namespace ferry::amqp::detail
