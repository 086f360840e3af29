#include "order.hpp"

#include <boost/json.hpp>
#include <boost/uuid/detail/sha1.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "ferry/message.hpp"

namespace ferry::app {
namespace {

namespace json = boost::json;

std::size_t code_points(std::string_view text) {
  std::size_t n = 0;
  for (unsigned char c : text)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

// Checks one id-like string; returns the problem or an empty string.
std::string check_id(const json::value& v, const std::string& what) {
  if (!v.is_string()) return what + " must be a string";
  auto s = v.get_string();
  if (s.empty()) return what + " must not be empty";
  if (code_points(s) > kMaxIdLength) return what + " must be at most " + std::to_string(kMaxIdLength) + " characters";
  return {};
}

ParsedRequest invalid(std::string detail) {
  return {std::nullopt, RequestProblem::invalid, std::move(detail)};
}

}  // namespace

std::string OrderRequest::fingerprint() const {
  boost::uuids::detail::sha1 sha;
  auto add = [&](std::string_view s) {
    std::uint64_t n = s.size();
    unsigned char len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>(n >> (8 * i));
    sha.process_bytes(len, sizeof len);
    sha.process_bytes(s.data(), s.size());
  };
  add(user_id);
  for (const auto& p : product_ids) add(p);
  boost::uuids::detail::sha1::digest_type digest;
  sha.get_digest(digest);
  char hex[41];
  for (int i = 0; i < 5; ++i) std::snprintf(hex + 8 * i, 9, "%08x", static_cast<unsigned>(digest[i]));
  return std::string(hex, 40);
}

ParsedRequest parse_order_request(std::string_view body) {
  json::error_code ec;
  json::value root = json::parse(body, ec);
  if (ec) return {std::nullopt, RequestProblem::malformed, "the body is not valid JSON: " + ec.message()};
  if (!root.is_object()) return invalid("the body must be a JSON object with user_id and product_ids");
  const auto& obj = root.get_object();
  for (const auto& field : obj) {
    if (field.key() != "user_id" && field.key() != "product_ids")
      return invalid("unknown field '" + std::string(field.key()) + "'; expected only user_id and product_ids");
  }
  const json::value* user = obj.if_contains("user_id");
  if (!user) return invalid("user_id is required");
  if (auto problem = check_id(*user, "user_id"); !problem.empty()) return invalid(problem);
  const json::value* products = obj.if_contains("product_ids");
  if (!products) return invalid("product_ids is required");
  if (!products->is_array()) return invalid("product_ids must be an array of strings");
  const auto& array = products->get_array();
  if (array.empty()) return invalid("product_ids must not be empty");
  if (array.size() > kMaxProducts)
    return invalid("product_ids must have at most " + std::to_string(kMaxProducts) + " entries");
  OrderRequest order;
  order.user_id = std::string(user->get_string());
  order.product_ids.reserve(array.size());
  for (std::size_t i = 0; i < array.size(); ++i) {
    if (auto problem = check_id(array[i], "product_ids[" + std::to_string(i) + "]"); !problem.empty())
      return invalid(problem);
    order.product_ids.emplace_back(array[i].get_string());
  }
  return {std::move(order), RequestProblem::none, {}};
}

std::string make_order_id() {
  std::string id = make_uuid();  // xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx, random
  auto ms = static_cast<std::uint64_t>(to_unix_ms(Clock::now())) & 0xFFFF'FFFF'FFFFULL;
  static constexpr char digits[] = "0123456789abcdef";
  // The 12 hex digits before the version nibble: 8, a dash, then 4.
  constexpr int positions[12] = {0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12};
  for (int i = 0; i < 12; ++i) id[positions[i]] = digits[(ms >> (44 - 4 * i)) & 0xf];
  id[14] = '7';
  return id;
}

OrderCreated make_order_created(std::string order_id, const OrderRequest& request) {
  OrderCreated event;
  event.order_id = std::move(order_id);
  event.user_id = request.user_id;
  event.product_ids = request.product_ids;
  event.timestamp_ms = to_unix_ms(Clock::now());
  event.created_at = format_rfc3339(event.timestamp_ms);
  return event;
}

std::string encode_order_created(const OrderCreated& event) {
  json::array products;
  products.reserve(event.product_ids.size());
  for (const auto& p : event.product_ids) products.emplace_back(p);
  json::object o;
  o["schema_version"] = kOrderCreatedVersion;
  o["order_id"] = event.order_id;
  o["user_id"] = event.user_id;
  o["product_ids"] = std::move(products);
  o["timestamp"] = event.timestamp_ms;
  o["created_at"] = event.created_at;
  return json::serialize(o);
}

DecodedOrder decode_order_created(std::string_view payload) {
  auto fail = [](std::string reason) { return DecodedOrder{std::nullopt, std::move(reason)}; };
  json::error_code ec;
  json::value root = json::parse(payload, ec);
  if (ec) return fail("OrderCreated payload is not JSON: " + ec.message());
  if (!root.is_object()) return fail("OrderCreated payload is not a JSON object");
  const auto& obj = root.get_object();
  const json::value* version = obj.if_contains("schema_version");
  if (!version) return fail("OrderCreated payload has no schema_version");
  if (!version->is_int64() && !version->is_uint64())
    return fail("OrderCreated schema_version is not an integer: " + json::serialize(*version));
  if (version->to_number<std::int64_t>() != kOrderCreatedVersion)
    return fail("unknown OrderCreated schema_version " + json::serialize(*version) + "; this processor reads version " +
                std::to_string(kOrderCreatedVersion));
  OrderCreated event;
  auto text = [&](const char* name, std::string& out) -> std::string {
    const json::value* v = obj.if_contains(name);
    if (!v || !v->is_string() || v->get_string().empty())
      return std::string("OrderCreated v1 field ") + name + " is missing or not a non-empty string";
    out = std::string(v->get_string());
    return {};
  };
  for (auto [name, out] : {std::pair{"order_id", &event.order_id}, std::pair{"user_id", &event.user_id},
                           std::pair{"created_at", &event.created_at}}) {
    if (auto problem = text(name, *out); !problem.empty()) return fail(problem);
  }
  const json::value* products = obj.if_contains("product_ids");
  if (!products || !products->is_array()) return fail("OrderCreated v1 field product_ids is missing or not an array");
  for (const auto& p : products->get_array()) {
    if (!p.is_string()) return fail("OrderCreated v1 field product_ids holds a non-string");
    event.product_ids.emplace_back(p.get_string());
  }
  const json::value* ts = obj.if_contains("timestamp");
  if (!ts || (!ts->is_int64() && !ts->is_uint64()))
    return fail("OrderCreated v1 field timestamp is missing or not an integer");
  event.timestamp_ms = ts->to_number<std::int64_t>();
  return {std::move(event), {}};
}

std::string format_rfc3339(std::int64_t unix_ms) {
  std::int64_t secs = unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000;
  int millis = static_cast<int>(unix_ms - secs * 1000);
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, millis);
  return buf;
}

std::string product_ids_to_json(const std::vector<std::string>& product_ids) {
  json::array a;
  a.reserve(product_ids.size());
  for (const auto& p : product_ids) a.emplace_back(p);
  return json::serialize(a);
}

std::vector<std::string> product_ids_from_json(std::string_view text) {
  std::vector<std::string> out;
  json::error_code ec;
  json::value v = json::parse(text, ec);
  if (ec || !v.is_array()) return out;
  for (const auto& p : v.get_array())
    if (p.is_string()) out.emplace_back(p.get_string());
  return out;
}

}  // namespace ferry::app
