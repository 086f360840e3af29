#pragma once
// The order service's data: the POST /orders request and the OrderCreated v1 event.
//
// Request rules: a JSON object with exactly the fields "user_id" (a non-empty string of
// at most 128 characters, counted as Unicode code points) and "product_ids" (a non-empty
// array of at most 100 non-empty strings of at most 128 characters each). Unknown extra fields are rejected as invalid,
// so a misspelt optional field never passes silently and the idempotency fingerprint covers everything the client sent
// that matters.
//
// OrderCreated v1 (JSON): {"schema_version": 1, "order_id", "user_id", "product_ids",
// "timestamp" (ms since the Unix epoch), "created_at" (RFC 3339, UTC, milliseconds)}.
// decode_order_created() accepts only schema_version 1 and reports why it refuses
// anything else. All functions are pure and thread-safe.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::app {

inline constexpr std::size_t kMaxIdLength = 128;
inline constexpr std::size_t kMaxProducts = 100;
inline constexpr int kOrderCreatedVersion = 1;

struct OrderRequest {
  std::string user_id;
  std::vector<std::string> product_ids;

  // A stable digest of the request's content (not of its formatting): two bodies that
  // differ only in whitespace or field order have the same fingerprint.
  std::string fingerprint() const;
};

enum class RequestProblem {
  none,
  malformed,  // not JSON at all → 400
  invalid,    // JSON, but wrong fields or types → 422
};

struct ParsedRequest {
  std::optional<OrderRequest> order;  // set when problem == none
  RequestProblem problem = RequestProblem::none;
  std::string detail;  // what is wrong, for the client
};

ParsedRequest parse_order_request(std::string_view body);

struct OrderCreated {
  std::string order_id;
  std::string user_id;
  std::vector<std::string> product_ids;
  std::int64_t timestamp_ms = 0;
  std::string created_at;  // RFC 3339 of timestamp_ms
};

// A new order id: a version 7 UUID (RFC 9562), whose first 48 bits are the Unix time in
// milliseconds and the rest random (from ferry::make_uuid). Ids made later sort later, so
// the store's tables, keyed by order id, grow at their end instead of at random pages.
std::string make_order_id();

// A new event for a validated request, stamped with the current time.
OrderCreated make_order_created(std::string order_id, const OrderRequest& request);

std::string encode_order_created(const OrderCreated& event);

struct DecodedOrder {
  std::optional<OrderCreated> event;  // set on success
  std::string reason;                 // why decoding failed otherwise
};

DecodedOrder decode_order_created(std::string_view payload);

// "2024-05-01T12:34:56.789Z" for milliseconds since the Unix epoch.
std::string format_rfc3339(std::int64_t unix_ms);

// The product ids as a compact JSON array, and back (empty on bad input).
std::string product_ids_to_json(const std::vector<std::string>& product_ids);
std::vector<std::string> product_ids_from_json(std::string_view json);

}  // namespace ferry::app
