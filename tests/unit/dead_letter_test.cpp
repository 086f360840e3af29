#include <gtest/gtest.h>

#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using ferry::testing::Fixture;

namespace {

TEST(DeadLetterMiddleware, FailureBecomesRejectWithReasonAndAttempts) {
  auto handler = ferry::middleware::dead_letter()([](ferry::Request&) { throw std::runtime_error("no such product"); });
  Fixture first(1);
  try {
    handler(first.request);
    FAIL();
  } catch (const ferry::Reject& r) {
    EXPECT_STREQ(r.what(), "no such product");
  }
  Fixture third(3);
  try {
    handler(third.request);
    FAIL();
  } catch (const ferry::Reject& r) {
    EXPECT_STREQ(r.what(), "after 3 attempts: no such product");
  }
}

TEST(DeadLetterMiddleware, RetryDecisionsAndSuccessPassThrough) {
  auto retrying = ferry::middleware::dead_letter()(
      [](ferry::Request&) { throw ferry::Retry("later", std::chrono::milliseconds{5}); });
  Fixture f;
  EXPECT_THROW(retrying(f.request), ferry::Retry);
  bool ran = false;
  ferry::middleware::dead_letter()([&](ferry::Request&) { ran = true; })(f.request);
  EXPECT_TRUE(ran);
}

}  // namespace
