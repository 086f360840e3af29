#include <gtest/gtest.h>

#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using ferry::testing::Fixture;

namespace {

TEST(RecovererMiddleware, AnyExceptionBecomesARejectNamingIt) {
  Fixture f;
  try {
    ferry::middleware::recoverer()([](ferry::Request&) { throw std::out_of_range("product index 7"); })(f.request);
    FAIL();
  } catch (const ferry::Reject& r) {
    EXPECT_NE(std::string(r.what()).find("product index 7"), std::string::npos) << r.what();
    EXPECT_NE(std::string(r.what()).find("out_of_range"), std::string::npos) << r.what();
  }
  try {
    ferry::middleware::recoverer()([](ferry::Request&) { throw 42; })(f.request);
    FAIL();
  } catch (const ferry::Reject& r) {
    EXPECT_NE(std::string(r.what()).find("non-standard"), std::string::npos);
  }
}

TEST(RecovererMiddleware, RetryPassesThrough) {
  Fixture f;
  EXPECT_THROW(ferry::middleware::recoverer()(
                   [](ferry::Request&) { throw ferry::Retry("later", std::chrono::milliseconds{1}); })(f.request),
               ferry::Retry);
}

}  // namespace
