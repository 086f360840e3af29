// ferry::bench::run, which `ferry bench` and bench/ share: every message is accounted
// for whatever the window and batch sizes, failures are counted with their reason, and
// the warm-up leaves exactly the messages sent in its span out of the latency figures.

#include <gtest/gtest.h>

#include "bench.hpp"
#include "ferry/backends/memory.hpp"
#include "ferry/error.hpp"

namespace ferry {
namespace {

class Bench : public ::testing::Test {
 protected:
  void SetUp() override { memory::register_scheme(); }
};

TEST_F(Bench, EveryMessageIsConfirmedAndConsumedWithOddWindowsAndBatches) {
  bench::Config c;
  c.broker = "memory://";
  c.messages = 1001;
  c.producers = 3;
  c.consumers = 2;
  c.window = 5;
  c.batch = 2;
  bench::Result r = bench::run(c);
  EXPECT_EQ(r.published, 1001u);
  EXPECT_EQ(r.publish_errors, 0u) << r.first_error;
  EXPECT_EQ(r.consumed, 1001u);
  EXPECT_EQ(r.latency_samples, 1001u);
  EXPECT_EQ(r.warmup_samples, 0u);
  EXPECT_GT(r.publish_msgs_per_s, 0);
  EXPECT_GT(r.max_ms, 0);
  EXPECT_LE(r.p50_ms, r.p99_ms);
  EXPECT_LE(r.p99_ms, r.max_ms);
}

TEST_F(Bench, AWindowOfOneStillFinishes) {
  bench::Config c;
  c.broker = "memory://";
  c.messages = 200;
  c.producers = 1;
  c.consumers = 0;
  c.window = 1;
  bench::Result r = bench::run(c);
  EXPECT_EQ(r.published, 200u);
  EXPECT_EQ(r.consumed, 0u);
}

TEST_F(Bench, FailedPublishesAreCountedWithTheFirstReason) {
  bench::Config c;
  c.broker = "memory://";
  c.topic = "not a valid topic";
  c.messages = 50;
  c.producers = 2;
  c.consumers = 0;
  c.batch = 5;
  c.window = 10;
  bench::Result r = bench::run(c);
  EXPECT_EQ(r.published, 0u);
  EXPECT_EQ(r.publish_errors, 50u);
  EXPECT_NE(r.first_error.find("not a valid topic"), std::string::npos) << r.first_error;
}

TEST_F(Bench, TheWarmUpLeavesOutExactlyTheMessagesSentInIt) {
  bench::Config c;
  c.broker = "memory://";
  c.messages = 1000;
  c.producers = 1;
  c.consumers = 1;
  c.rate = 2000;  // message i is sent at i / 2000 s or a little later
  c.warmup_s = 0.3;
  bench::Result r = bench::run(c);
  ASSERT_EQ(r.consumed, 1000u);
  EXPECT_EQ(r.latency_samples + r.warmup_samples, 1000u);
  // Messages 600 and on are due after 0.3 s, so they always count; the first is sent at once.
  EXPECT_GT(r.warmup_samples, 0u);
  EXPECT_LE(r.warmup_samples, 600u);
  EXPECT_GT(r.p99_with_warmup_ms, 0);
}

TEST_F(Bench, RejectsANegativeWarmUp) {
  bench::Config c;
  c.warmup_s = -1;
  EXPECT_THROW(c.validate(), Error);
}

}  // namespace
}  // namespace ferry
