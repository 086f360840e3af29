// What a consumer-group member hands on to the partition's next owner, through the commit
// metadata, and what it finishes before it leaves (or, closed while joining, what it says):
// on the mock cluster, with one broker handle per member, as separate processes would have.
#include <gtest/gtest.h>

#include <future>
#include <map>
#include <thread>

#include "ferry/broker.hpp"
#include "kafka_support.hpp"

namespace ferry::kafka::testing {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Commits every 100 ms, so that a member commits while a test holds it still.
std::string member_url() {
  return url("&commit_interval=100ms");
}

// A one-partition topic holding `count` messages, payloads "0", "1", ...
std::string topic_with(int count) {
  const std::string topic = unique("handover");
  cluster().create_topic(topic, 1);
  auto broker = Broker::open(member_url());
  std::vector<Message> messages;
  for (int i = 0; i < count; ++i) {
    Message m;
    m.payload = std::to_string(i);
    messages.push_back(std::move(m));
  }
  broker->publisher().publish_batch(topic, std::move(messages));
  broker->close();
  return topic;
}

class KafkaHandover : public ::testing::Test {
 protected:
  void SetUp() override { register_scheme(); }
};

TEST_F(KafkaHandover, SettledOffsetsBeyondWhatTheNextOwnerFetchedAreHandedOnAgain) {
  const std::string topic = topic_with(10);
  const std::string group = unique("group");
  {
    // The first member settles 1..9 and leaves 0 unsettled: it commits offset 0, with
    // 1..9 settled and 0 delivered once in the commit's metadata.
    auto broker = Broker::open(member_url());
    auto sub = broker->subscribe({.topic = topic, .group = group, .prefetch = 10});
    std::vector<Delivery> held;
    for (auto until = SteadyClock::now() + 20s; held.size() < 10 && SteadyClock::now() < until;)
      if (auto d = sub->receive(100ms)) held.push_back(std::move(*d));
    ASSERT_EQ(held.size(), 10u);
    for (auto& d : held)
      if (d.message().payload != "0") d.ack();
    sub->close();
    broker->close();
  }
  {
    // The second holds one message at a time: it fetches offset 0 and nothing past it, and
    // commits (every 100 ms) while it holds it. Its commits must still carry 1..9 as settled.
    auto broker = Broker::open(member_url());
    auto sub = broker->subscribe({.topic = topic, .group = group, .prefetch = 1});
    auto d = sub->receive(20s);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->message().payload, "0");
    EXPECT_EQ(d->attempt(), 2) << "the first member's delivery is counted";
    std::this_thread::sleep_for(600ms);
    sub->close();  // 0 is not settled
    broker->close();
  }
  // The third gets offset 0 again, a third time, and nothing the first member settled.
  auto broker = Broker::open(member_url());
  auto sub = broker->subscribe({.topic = topic, .group = group, .prefetch = 10});
  std::map<std::string, int> attempts;  // payload -> attempt
  auto until = SteadyClock::now() + 20s;
  while (SteadyClock::now() < until) {
    auto d = sub->receive(100ms);
    if (!d) continue;
    attempts[d->message().payload] = d->attempt();
    d->ack();
    if (attempts.count("0")) until = std::min(until, SteadyClock::now() + 1500ms);  // a while for any others
  }
  EXPECT_EQ(attempts, (std::map<std::string, int>{{"0", 3}}));
  broker->close();
}

TEST_F(KafkaHandover, ClosingWaitsForDeliveriesBeingHandledAndCommitsTheirAcks) {
  const std::string topic = topic_with(3);
  const std::string group = unique("group");
  {
    auto broker = Broker::open(member_url() + "&revoke_grace=5s");
    auto sub = broker->subscribe({.topic = topic, .group = group, .prefetch = 10});
    std::vector<Delivery> handling;
    for (auto until = SteadyClock::now() + 20s; handling.size() < 3 && SteadyClock::now() < until;)
      if (auto d = sub->receive(100ms)) handling.push_back(std::move(*d));
    ASSERT_EQ(handling.size(), 3u);
    // The handlers finish 300 ms after the broker starts closing, as a service's do when
    // it is told to stop.
    std::thread handlers([&] {
      std::this_thread::sleep_for(300ms);
      for (auto& d : handling) d.ack();
    });
    const auto closing = SteadyClock::now();
    broker->close();
    const auto took = SteadyClock::now() - closing;
    handlers.join();
    EXPECT_GE(took, 250ms) << "close waited for the deliveries out";
    EXPECT_LT(took, 5s) << "and no longer than they took";
  }
  // Their acks were committed: the group has nothing left.
  auto broker = Broker::open(member_url());
  auto sub = broker->subscribe({.topic = topic, .group = group, .prefetch = 10});
  auto d = sub->receive(3s);
  EXPECT_FALSE(d) << "delivered again: " << d->message().payload;
  broker->close();
}

TEST_F(KafkaHandover, ClosingTheBrokerWhileASubscribeWaitsToJoinFailsItAsClosed) {
  const std::string topic = topic_with(1);
  auto broker = Broker::open(member_url());
  std::promise<Errc> outcome;
  std::thread subscriber([&] {
    try {
      broker->subscribe({.topic = topic, .group = unique("group")});
      outcome.set_value(Errc::ok);
    } catch (const Error& e) {
      outcome.set_value(e.code());
    }
  });
  std::this_thread::sleep_for(300ms);  // the mock's group takes seconds to form
  const auto closing = SteadyClock::now();
  broker->close();
  auto result = outcome.get_future();
  ASSERT_EQ(result.wait_for(10s), std::future_status::ready) << "subscribe went on waiting";
  EXPECT_EQ(result.get(), Errc::closed) << "not 'could not join: is Kafka reachable?'";
  EXPECT_LT(SteadyClock::now() - closing, 10s);
  subscriber.join();
}

}  // namespace
}  // namespace ferry::kafka::testing
