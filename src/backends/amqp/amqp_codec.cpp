#include "amqp_codec.hpp"

#include <charconv>
#include <cstring>
#include <string_view>

#include "amqp_connection.hpp"

namespace ferry::amqp::detail {
namespace {

bool is_wire_header(std::string_view name) {
  return name == wire::key || name == wire::timestamp_ms || name == wire::delivery_count;
}

// Broker-added dead-lettering headers (RabbitMQ), meaningless to a ferry consumer.
bool is_broker_header(std::string_view name) {
  return name == "x-death" || name.starts_with("x-first-death-") || name.starts_with("x-last-death-");
}

std::optional<long long> to_integer(std::string_view text) {
  long long v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || ptr != text.data() + text.size()) return std::nullopt;
  return v;
}

// A header value as text, or nothing for tables and arrays.
std::optional<std::string> text_of(const amqp_field_value_t& v) {
  switch (v.kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
      return string_of(v.value.bytes);
    case AMQP_FIELD_KIND_BOOLEAN:
      return std::string(v.value.boolean ? "true" : "false");
    case AMQP_FIELD_KIND_I8:
      return std::to_string(v.value.i8);
    case AMQP_FIELD_KIND_U8:
      return std::to_string(v.value.u8);
    case AMQP_FIELD_KIND_I16:
      return std::to_string(v.value.i16);
    case AMQP_FIELD_KIND_U16:
      return std::to_string(v.value.u16);
    case AMQP_FIELD_KIND_I32:
      return std::to_string(v.value.i32);
    case AMQP_FIELD_KIND_U32:
      return std::to_string(v.value.u32);
    case AMQP_FIELD_KIND_I64:
      return std::to_string(v.value.i64);
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP:
      return std::to_string(v.value.u64);
    case AMQP_FIELD_KIND_F32:
      return std::to_string(v.value.f32);
    case AMQP_FIELD_KIND_F64:
      return std::to_string(v.value.f64);
    case AMQP_FIELD_KIND_VOID:
      return std::string();
    case AMQP_FIELD_KIND_DECIMAL: {
      std::string digits = std::to_string(v.value.decimal.value);
      unsigned places = v.value.decimal.decimals;
      if (places == 0) return digits;
      while (digits.size() <= places) digits.insert(0, "0");
      digits.insert(digits.size() - places, ".");
      return digits;
    }
    default:
      return std::nullopt;
  }
}

}  // namespace

void Encoded::add(const char* key, const std::string& value) {
  amqp_table_entry_t e{};
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = bytes_of(value);
  entries_.push_back(e);
}

void Encoded::encode(const Message& m, int deliveries, long long expiration_ms) {
  entries_.clear();
  entries_.reserve(m.headers.size() + 3);
  props_ = amqp_basic_properties_t{};
  props_._flags =
      AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
  props_.delivery_mode = 2;  // persistent
  props_.message_id = bytes_of(m.id);
  const std::int64_t ms = to_unix_ms(m.timestamp);
  props_.timestamp = static_cast<std::uint64_t>(ms < 0 ? 0 : ms / 1000);
  for (const auto& [name, value] : m.headers) {
    amqp_table_entry_t e{};
    e.key = bytes_of(name);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = bytes_of(value);
    entries_.push_back(e);
  }
  if (auto it = m.headers.find("content-type"); it != m.headers.end()) {
    props_._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
    props_.content_type = bytes_of(it->second);
  }
  timestamp_ = std::to_string(ms);
  add(wire::timestamp_ms, timestamp_);
  if (m.key) add(wire::key, *m.key);
  if (deliveries > 0) {
    deliveries_ = std::to_string(deliveries);
    add(wire::delivery_count, deliveries_);
  }
  if (expiration_ms > 0) {
    expiration_ = std::to_string(expiration_ms);
    props_._flags |= AMQP_BASIC_EXPIRATION_FLAG;
    props_.expiration = bytes_of(expiration_);
  }
  props_.headers.num_entries = static_cast<int>(entries_.size());
  props_.headers.entries = entries_.data();
  body_ = bytes_of(m.payload);
}

std::string unencodable(const Message& m) {
  if (m.id.size() > 255) return "message id is longer than 255 bytes, the most an AMQP message_id holds";
  for (const auto& [name, value] : m.headers) {
    if (name.empty()) return "a header has an empty name";
    if (name.size() > 128) return "header name '" + name.substr(0, 40) + "…' is longer than 128 bytes";
    if (is_wire_header(name)) return "header '" + name + "' is reserved for ferry's AMQP encoding";
  }
  if (auto it = m.headers.find("content-type"); it != m.headers.end() && it->second.size() > 255)
    return "header content-type is longer than 255 bytes";
  return {};
}

Decoded decode(const amqp_basic_properties_t& p) {
  Decoded d;
  Message& m = d.message;
  bool have_ms = false;
  if (p._flags & AMQP_BASIC_HEADERS_FLAG) {
    for (int i = 0; i < p.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = p.headers.entries[i];
      std::string name = string_of(e.key);
      if (is_broker_header(name)) continue;
      auto value = text_of(e.value);
      if (!value) continue;
      if (name == wire::key) {
        m.key = std::move(*value);
      } else if (name == wire::timestamp_ms) {
        if (auto ms = to_integer(*value)) {
          m.timestamp = from_unix_ms(*ms);
          have_ms = true;
        }
      } else if (name == wire::delivery_count) {
        if (auto n = to_integer(*value); n && *n >= 0 && *n < 1'000'000) d.deliveries = static_cast<int>(*n);
      } else {
        m.headers.insert_or_assign(std::move(name), std::move(*value));
      }
    }
  }
  if ((p._flags & AMQP_BASIC_CONTENT_TYPE_FLAG) && !m.headers.count("content-type"))
    m.headers.emplace("content-type", string_of(p.content_type));
  if (p._flags & AMQP_BASIC_MESSAGE_ID_FLAG) m.id = string_of(p.message_id);
  if (m.id.empty()) m.id = make_uuid();
  if (!have_ms) {
    m.timestamp = (p._flags & AMQP_BASIC_TIMESTAMP_FLAG) ? from_unix_ms(static_cast<std::int64_t>(p.timestamp) * 1000)
                                                         : Clock::now();
  }
  return d;
}

}  // namespace ferry::amqp::detail
