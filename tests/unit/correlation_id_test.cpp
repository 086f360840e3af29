#include <gtest/gtest.h>

#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using ferry::testing::Fixture;

namespace {

TEST(CorrelationIdMiddleware, SetsItFromTheIdAndPassesItToOutputs) {
  Fixture f(1, "msg-7");
  f.request.message().headers[ferry::header::traceparent] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  ferry::middleware::correlation_id()([](ferry::Request& r) {
    EXPECT_EQ(r.message().headers.at(ferry::header::correlation_id), "msg-7");
    r.outputs().push_back(ferry::Message::with_payload("out"));
  })(f.request);
  ASSERT_EQ(f.request.outputs().size(), 1u);
  const auto& h = f.request.outputs()[0].headers;
  EXPECT_EQ(h.at(ferry::header::correlation_id), "msg-7");
  EXPECT_EQ(h.at(ferry::header::traceparent), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
}

TEST(CorrelationIdMiddleware, KeepsAnExistingOne) {
  Fixture f(1, "msg-8");
  f.request.message().headers[ferry::header::correlation_id] = "request-123";
  ferry::middleware::correlation_id()([](ferry::Request& r) {
    r.outputs().push_back(ferry::Message::with_payload("out"));
  })(f.request);
  EXPECT_EQ(f.request.outputs()[0].headers.at(ferry::header::correlation_id), "request-123");
  EXPECT_EQ(f.request.outputs()[0].headers.count(ferry::header::traceparent), 0u);
}

}  // namespace
