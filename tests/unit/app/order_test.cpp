#include "order.hpp"

#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <regex>

namespace ferry::app {
namespace {

TEST(OrderRequest, AcceptsAValidOrder) {
  auto r = parse_order_request(R"({"user_id":"u-1","product_ids":["a","b"]})");
  ASSERT_EQ(r.problem, RequestProblem::none) << r.detail;
  EXPECT_EQ(r.order->user_id, "u-1");
  EXPECT_EQ(r.order->product_ids, (std::vector<std::string>{"a", "b"}));
}

TEST(OrderRequest, TellsMalformedFromInvalid) {
  EXPECT_EQ(parse_order_request("{").problem, RequestProblem::malformed);
  EXPECT_EQ(parse_order_request("").problem, RequestProblem::malformed);
  EXPECT_EQ(parse_order_request("\"just a string\"").problem, RequestProblem::invalid);
  EXPECT_EQ(parse_order_request(R"({"user_id":"u"})").problem, RequestProblem::invalid);
  EXPECT_EQ(parse_order_request(R"({"user_id":"u","product_ids":["a"],"x":1})").problem, RequestProblem::invalid);
  EXPECT_EQ(parse_order_request(R"({"user_id":null,"product_ids":["a"]})").problem, RequestProblem::invalid);
}

TEST(OrderRequest, CountsCharactersNotBytes) {
  std::string user;
  for (int i = 0; i < 128; ++i) user += "\xC3\xA9";  // é: 128 characters, 256 bytes
  auto ok = parse_order_request(R"({"user_id":")" + user + R"(","product_ids":["a"]})");
  EXPECT_EQ(ok.problem, RequestProblem::none) << ok.detail;
  auto too_long = parse_order_request(R"({"user_id":")" + user + R"(x","product_ids":["a"]})");
  EXPECT_EQ(too_long.problem, RequestProblem::invalid);
}

TEST(OrderRequest, LimitsProducts) {
  std::string products;
  for (int i = 0; i < 100; ++i) products += (i ? ",\"p" : "\"p") + std::to_string(i) + "\"";
  EXPECT_EQ(parse_order_request(R"({"user_id":"u","product_ids":[)" + products + "]}").problem, RequestProblem::none);
  EXPECT_EQ(parse_order_request(R"({"user_id":"u","product_ids":[)" + products + ",\"extra\"]}").problem,
            RequestProblem::invalid);
}

TEST(OrderRequest, FingerprintIgnoresFormattingButNotContent) {
  auto a = parse_order_request(R"({"user_id":"u","product_ids":["a","b"]})").order->fingerprint();
  auto b = parse_order_request(R"({ "product_ids" : [ "a", "b" ], "user_id" : "u" })").order->fingerprint();
  auto c = parse_order_request(R"({"user_id":"u","product_ids":["ab"]})").order->fingerprint();
  auto d = parse_order_request(R"({"user_id":"u","product_ids":["b","a"]})").order->fingerprint();
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
}

TEST(OrderCreated, RoundTrips) {
  OrderRequest request{"u", {"a", "b"}};
  auto event = make_order_created("id-1", request);
  auto decoded = decode_order_created(encode_order_created(event));
  ASSERT_TRUE(decoded.event) << decoded.reason;
  EXPECT_EQ(decoded.event->order_id, "id-1");
  EXPECT_EQ(decoded.event->user_id, "u");
  EXPECT_EQ(decoded.event->product_ids, request.product_ids);
  EXPECT_EQ(decoded.event->timestamp_ms, event.timestamp_ms);
  EXPECT_EQ(decoded.event->created_at, format_rfc3339(event.timestamp_ms));
  auto json = boost::json::parse(encode_order_created(event)).as_object();
  EXPECT_EQ(json.at("schema_version").as_int64(), 1);
}

TEST(OrderCreated, RefusesOtherVersionsAndGarbageWithAReason) {
  auto v2 = decode_order_created(
      R"({"schema_version":2,"order_id":"o","user_id":"u","product_ids":[],"timestamp":1,"created_at":"x"})");
  EXPECT_FALSE(v2.event);
  EXPECT_NE(v2.reason.find("schema_version 2"), std::string::npos) << v2.reason;
  EXPECT_FALSE(decode_order_created("\x01\x02").event);
  EXPECT_FALSE(decode_order_created(R"({"order_id":"o"})").event);
  auto missing = decode_order_created(R"({"schema_version":1,"user_id":"u","product_ids":[],"timestamp":1})");
  EXPECT_FALSE(missing.event);
  EXPECT_NE(missing.reason.find("order_id"), std::string::npos) << missing.reason;
}

TEST(OrderCreated, FormatsRfc3339InUtc) {
  EXPECT_EQ(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
  EXPECT_EQ(format_rfc3339(1'700'000'000'123), "2023-11-14T22:13:20.123Z");
}

TEST(OrderId, IsATimeOrderedVersion7Uuid) {
  auto a = make_order_id();
  std::this_thread::sleep_for(std::chrono::milliseconds{2});
  auto b = make_order_id();
  std::regex uuid7("^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  EXPECT_TRUE(std::regex_match(a, uuid7)) << a;
  EXPECT_LT(a, b);
}

}  // namespace
}  // namespace ferry::app
