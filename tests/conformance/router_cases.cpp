// The router's middleware chain on every backend: retries through the broker's nack,
// dead letters through its reject, deduplication of a repeated message.

#include <thread>

#include "conformance.hpp"
#include "ferry/router/middleware.hpp"
#include "ferry/router/router.hpp"

namespace ferry::testing {
namespace {

using namespace std::chrono_literals;

bool wait_until(const std::function<bool()>& done, milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (!done() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(5ms);
  return done();
}

std::vector<Middleware> standard_chain(int max_attempts, std::shared_ptr<IdempotencyStore> store = nullptr) {
  std::vector<Middleware> chain{middleware::recoverer(), middleware::dead_letter(),
                                middleware::retry({.max_attempts = max_attempts, .initial_delay = 20ms, .jitter = 0})};
  if (store) chain.push_back(middleware::dedup(store));
  return chain;
}

TEST_P(Conformance, RouterFailingTwiceThenSucceedingProcessesOnce) {
  run([](Context& c) {
    const auto topic = c.name("router-flaky");
    std::atomic<int> calls{0}, done{0};
    Router router;
    router.add_handler({.name = "flaky", .broker = c.broker_ptr(), .topic = topic, .group = c.name("g"),
                        .middleware = standard_chain(5)},
                       [&](Request& r) {
                         ++calls;
                         if (r.attempt() <= 2) throw std::runtime_error("not yet");
                         ++done;
                       });
    router.start();
    c.broker().publisher().publish(topic, Message::with_payload("job"));
    ASSERT_TRUE(wait_until([&] { return done.load() == 1; }, c.patience())) << "calls so far: " << calls.load();
    std::this_thread::sleep_for(c.quiet());
    router.stop();
    EXPECT_EQ(calls.load(), 3);
    EXPECT_EQ(done.load(), 1);
  });
}

TEST_P(Conformance, RouterPoisonMessageReachesDeadLetterTopicWithReason) {
  run([](Context& c) {
    const auto topic = c.name("router-poison");
    const auto group = c.name("g");
    auto dlq = c.subscribe(topic + "." + group + ".dlq", c.name("inspect"));
    std::atomic<int> calls{0};
    Router router;
    router.add_handler({.name = "poison", .broker = c.broker_ptr(), .topic = topic, .group = group,
                        .middleware = standard_chain(3)},
                       [&](Request&) {
                         ++calls;
                         throw std::runtime_error("cannot parse order");
                       });
    router.start();
    Message m = Message::with_payload("{not json");
    c.broker().publisher().publish(topic, m);
    auto d = receive_one(*dlq, c.patience());
    router.stop();
    ASSERT_TRUE(d) << "the poison message never reached the dead-letter topic";
    EXPECT_EQ(d->message().payload, "{not json");
    EXPECT_EQ(d->message().headers.at(header::error), "after 3 attempts: cannot parse order");
    EXPECT_EQ(d->message().headers.at(header::original_topic), topic);
    EXPECT_EQ(calls.load(), 3);
    d->ack();
  });
}

TEST_P(Conformance, RouterDedupProcessesARepeatedMessageOnce) {
  run([](Context& c) {
    const auto topic = c.name("router-dedup");
    std::atomic<int> calls{0};
    Router router;
    router.add_handler({.name = "dedup", .broker = c.broker_ptr(), .topic = topic, .group = c.name("g"),
                        .middleware = standard_chain(3, make_memory_idempotency_store())},
                       [&](Request&) { ++calls; });
    router.start();
    Message m = Message::with_payload("charge card");
    c.broker().publisher().publish(topic, m);  // the same message id, twice, as a retrying producer would
    c.broker().publisher().publish(topic, m);
    Message other = Message::with_payload("another");
    c.broker().publisher().publish(topic, other);
    ASSERT_TRUE(wait_until([&] { return calls.load() >= 2; }, c.patience()));
    std::this_thread::sleep_for(c.quiet() * 2);
    auto stats = router.stats();
    router.stop();
    EXPECT_EQ(calls.load(), 2) << "a duplicate was processed again";
    EXPECT_EQ(stats.at(0).acked, 3u) << "the duplicate must be acked, not left for redelivery";
  });
}

}  // namespace
}  // namespace ferry::testing
