#include <gtest/gtest.h>

#include <thread>

#include "ferry/error.hpp"
#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using namespace std::chrono_literals;
using ferry::testing::Fixture;

namespace {

TEST(ThrottleMiddleware, SpacesMessagesAcrossThreads) {
  std::atomic<int> calls{0};
  auto handler = ferry::middleware::throttle(100)([&](ferry::Request&) { ++calls; });  // one per 10 ms
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 5; ++i) {
        Fixture f;
        handler(f.request);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(calls.load(), 20);
  // 20 messages at 100/s: the last may start no sooner than 19 intervals after the first.
  EXPECT_GE(std::chrono::steady_clock::now() - start, 190ms);
}

TEST(ThrottleMiddleware, RefusesANonPositiveRate) { EXPECT_THROW(ferry::middleware::throttle(0), ferry::Error); }

}  // namespace
