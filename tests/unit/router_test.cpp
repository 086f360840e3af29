#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "ferry/backends/memory.hpp"
#include "ferry/router/middleware.hpp"
#include "ferry/router/router.hpp"

using namespace std::chrono_literals;

namespace {

class RouterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ferry::memory::register_scheme();
    broker_ = ferry::Broker::open("memory://");
  }
  bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit = 10s) {
    auto until = std::chrono::steady_clock::now() + limit;
    while (!done() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
    return done();
  }
  std::shared_ptr<ferry::Broker> broker_;
};

TEST_F(RouterTest, HandlesPublishesOutputsAndAcks) {
  std::atomic<int> handled{0};
  ferry::Router router;
  router.add_handler({.name = "upper", .broker = broker_, .topic = "in", .group = "g", .concurrency = 3,
                      .output_topic = "out"},
                     [&](ferry::Request& r) {
                       std::string up = r.message().payload;
                       for (auto& c : up) c = static_cast<char>(std::toupper(c));
                       r.outputs().push_back(ferry::Message::with_payload(up));
                       ++handled;
                     });
  auto out = broker_->subscribe({.topic = "out", .group = "check"});
  router.start();
  for (int i = 0; i < 50; ++i) broker_->publisher().publish("in", ferry::Message::with_payload("m" + std::to_string(i)));
  std::set<std::string> outputs;
  while (outputs.size() < 50) {
    auto d = out->receive(5s);
    ASSERT_TRUE(d) << "outputs stopped at " << outputs.size();
    outputs.insert(d->message().payload);
    d->ack();
  }
  EXPECT_TRUE(outputs.count("M7"));
  router.stop();
  EXPECT_EQ(handled.load(), 50);
  auto stats = router.stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].acked, 50u);
  // Nothing left unacked: a fresh subscriber of the group gets nothing.
  auto again = broker_->subscribe({.topic = "in", .group = "g"});
  EXPECT_FALSE(again->receive(200ms));
}

TEST_F(RouterTest, FailingTwiceThenSucceedingIsProcessedOnce) {
  std::atomic<int> calls{0}, successes{0};
  ferry::Router router;
  router.use(ferry::middleware::recoverer());
  router.add_handler({.name = "flaky",
                      .broker = broker_,
                      .topic = "jobs",
                      .group = "g",
                      .middleware = {ferry::middleware::dead_letter(),
                                     ferry::middleware::retry({.max_attempts = 5, .initial_delay = 10ms, .jitter = 0})}},
                     [&](ferry::Request& r) {
                       ++calls;
                       if (r.attempt() <= 2) throw std::runtime_error("not yet");
                       ++successes;
                     });
  router.start();
  broker_->publisher().publish("jobs", ferry::Message::with_payload("x"));
  ASSERT_TRUE(wait_for([&] { return successes.load() == 1; }));
  std::this_thread::sleep_for(100ms);
  router.stop();
  EXPECT_EQ(calls.load(), 3);
  EXPECT_EQ(successes.load(), 1);
}

TEST_F(RouterTest, PoisonMessageLandsInTheDeadLetterTopicWithItsReason) {
  ferry::Router router;
  router.add_handler({.name = "poison",
                      .broker = broker_,
                      .topic = "jobs",
                      .group = "g",
                      .middleware = {ferry::middleware::dead_letter(),
                                     ferry::middleware::retry({.max_attempts = 3, .initial_delay = 5ms, .jitter = 0})}},
                     [](ferry::Request&) { throw std::runtime_error("unparseable order"); });
  auto dlq = broker_->subscribe({.topic = "jobs.g.dlq", .group = "inspect"});
  router.start();
  broker_->publisher().publish("jobs", ferry::Message::with_payload("{broken"));
  auto d = dlq->receive(10s);
  router.stop();
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().payload, "{broken");
  EXPECT_EQ(d->message().headers.at(ferry::header::error), "after 3 attempts: unparseable order");
  EXPECT_EQ(d->message().headers.at(ferry::header::attempts), "3");
  EXPECT_EQ(d->message().headers.at(ferry::header::original_topic), "jobs");
}

TEST_F(RouterTest, StopFinishesInFlightWorkAndCancelsStragglers) {
  std::atomic<bool> started{false}, finished{false}, cancelled{false};
  ferry::Router router({.drain_timeout = 200ms});
  router.add_handler({.name = "slow", .broker = broker_, .topic = "t", .group = "g"}, [&](ferry::Request& r) {
    started = true;
    auto until = std::chrono::steady_clock::now() + 5s;
    while (!r.cancel().cancelled() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
    cancelled = r.cancel().cancelled();
    finished = true;
    throw ferry::Retry("stopping", 0ms);
  });
  router.start();
  broker_->publisher().publish("t", ferry::Message::with_payload("x"));
  ASSERT_TRUE(wait_for([&] { return started.load(); }));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(router.stop(), 1u);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_TRUE(finished.load());
  EXPECT_TRUE(cancelled.load());
  // The nacked message is still there for the next consumer.
  auto sub = broker_->subscribe({.topic = "t", .group = "g"});
  auto d = sub->receive(2s);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->attempt(), 2);
}

TEST_F(RouterTest, RefusesBadHandlers) {
  ferry::Router router;
  EXPECT_THROW(router.add_handler({.name = "", .broker = broker_, .topic = "t", .group = "g"}, [](ferry::Request&) {}),
               ferry::Error);
  EXPECT_THROW(router.add_handler({.name = "x", .broker = broker_, .topic = "bad topic", .group = "g"},
                                  [](ferry::Request&) {}),
               ferry::Error);
  router.add_handler({.name = "x", .broker = broker_, .topic = "t", .group = "g"}, [](ferry::Request&) {});
  EXPECT_THROW(router.add_handler({.name = "x", .broker = broker_, .topic = "t", .group = "g2"}, [](ferry::Request&) {}),
               ferry::Error);
}

}  // namespace
