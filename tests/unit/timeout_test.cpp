#include <gtest/gtest.h>

#include <thread>

#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using namespace std::chrono_literals;
using ferry::testing::Fixture;

namespace {

TEST(TimeoutMiddleware, CancelsAtTheDeadlineAndFailsALateHandler) {
  bool saw_cancel = false;
  auto handler = ferry::middleware::timeout(50ms)([&](ferry::Request& r) {
    auto give_up = std::chrono::steady_clock::now() + 2s;
    while (!r.cancel().cancelled() && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
    saw_cancel = r.cancel().cancelled();
  });
  Fixture f;
  auto start = std::chrono::steady_clock::now();
  try {
    handler(f.request);
    FAIL() << "a handler past its deadline must fail";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "timed out after 50 ms");
  }
  EXPECT_TRUE(saw_cancel);
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s) << "the token was not set at the deadline";
}

TEST(TimeoutMiddleware, QuickHandlerIsUntouched) {
  auto handler = ferry::middleware::timeout(1s)([](ferry::Request& r) { EXPECT_FALSE(r.cancel().cancelled()); });
  for (int i = 0; i < 100; ++i) {
    Fixture f;
    handler(f.request);
    EXPECT_FALSE(f.request.cancel().cancelled());
  }
}

}  // namespace
