#include <gtest/gtest.h>

#include "ferry/error.hpp"
#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using namespace std::chrono_literals;
using ferry::testing::Fixture;

namespace {

ferry::Handler failing() {
  return [](ferry::Request&) { throw std::runtime_error("database busy"); };
}

TEST(RetryMiddleware, EarlyFailureBecomesRetryWithBackoff) {
  auto handler = ferry::middleware::retry({.max_attempts = 3, .initial_delay = 100ms, .jitter = 0})(failing());
  Fixture first(1);
  try {
    handler(first.request);
    FAIL() << "expected Retry";
  } catch (const ferry::Retry& r) {
    EXPECT_EQ(r.delay(), 100ms);
    EXPECT_STREQ(r.what(), "database busy");
  }
  Fixture second(2);
  try {
    handler(second.request);
    FAIL() << "expected Retry";
  } catch (const ferry::Retry& r) {
    EXPECT_EQ(r.delay(), 200ms);
  }
}

TEST(RetryMiddleware, LastAttemptPassesTheFailureOn) {
  auto handler = ferry::middleware::retry({.max_attempts = 3, .jitter = 0})(failing());
  Fixture last(3);
  EXPECT_THROW(
      {
        try {
          handler(last.request);
        } catch (const ferry::Retry&) {
          FAIL() << "the last attempt must not be retried";
        }
      },
      std::runtime_error);
}

TEST(RetryMiddleware, BackoffGrowsAndIsCapped) {
  ferry::middleware::RetryOptions o{.initial_delay = 100ms, .max_delay = 1000ms, .multiplier = 3};
  EXPECT_EQ(ferry::middleware::backoff(o, 1), 100ms);
  EXPECT_EQ(ferry::middleware::backoff(o, 2), 300ms);
  EXPECT_EQ(ferry::middleware::backoff(o, 3), 900ms);
  EXPECT_EQ(ferry::middleware::backoff(o, 4), 1000ms);
  EXPECT_EQ(ferry::middleware::backoff(o, 50), 1000ms);
}

TEST(RetryMiddleware, JitterStaysWithinItsBand) {
  auto handler = ferry::middleware::retry({.max_attempts = 5, .initial_delay = 1000ms, .jitter = 0.2})(failing());
  bool varied = false;
  std::chrono::milliseconds first{-1};
  for (int i = 0; i < 50; ++i) {
    Fixture f(1);
    try {
      handler(f.request);
    } catch (const ferry::Retry& r) {
      EXPECT_GE(r.delay(), 800ms);
      EXPECT_LE(r.delay(), 1200ms);
      if (first.count() < 0) first = r.delay();
      else if (r.delay() != first) varied = true;
    }
  }
  EXPECT_TRUE(varied) << "jitter never changed the delay";
}

TEST(RetryMiddleware, RetryIfDeclinesSomeFailures) {
  auto handler = ferry::middleware::retry({.max_attempts = 5,
                                           .retry_if = [](const std::exception& e) {
                                             return dynamic_cast<const std::invalid_argument*>(&e) == nullptr;
                                           }})([](ferry::Request&) { throw std::invalid_argument("bad order"); });
  Fixture f(1);
  EXPECT_THROW(handler(f.request), std::invalid_argument);
}

TEST(RetryMiddleware, SuccessAndExplicitDecisionsPassThrough) {
  int calls = 0;
  auto ok = ferry::middleware::retry()([&](ferry::Request&) { ++calls; });
  Fixture f(1);
  ok(f.request);
  EXPECT_EQ(calls, 1);
  auto rejecting = ferry::middleware::retry()([](ferry::Request&) { throw ferry::Reject("poison"); });
  EXPECT_THROW(rejecting(f.request), ferry::Reject);
}

TEST(RetryMiddleware, BadOptionsAreRefused) {
  EXPECT_THROW(ferry::middleware::retry({.max_attempts = 0}), ferry::Error);
  EXPECT_THROW(ferry::middleware::retry({.jitter = 1.5}), ferry::Error);
  EXPECT_THROW(ferry::middleware::retry({.initial_delay = 5s, .max_delay = 1s}), ferry::Error);
}

}  // namespace
