// memory:// specifics the conformance suite does not cover: named sharing, Admin,
// retention, and lifetimes of handles, subscribers and deliveries.

#include <gtest/gtest.h>

#include <thread>

#include "ferry/backends/memory.hpp"
#include "ferry/broker.hpp"

namespace ferry {
namespace {

using std::chrono::milliseconds;

class MemoryBroker : public ::testing::Test {
 protected:
  void SetUp() override { memory::register_scheme(); }

  static std::unique_ptr<Subscriber> subscribe(Broker& b, const std::string& topic, const std::string& group) {
    SubscribeOptions o;
    o.topic = topic;
    o.group = group;
    return b.subscribe(o);
  }

  static const GroupStats* find_group(const std::vector<TopicStats>& stats, const std::string& topic,
                                      const std::string& group) {
    for (const auto& t : stats)
      if (t.topic == topic)
        for (const auto& g : t.groups)
          if (g.group == group) return &g;
    return nullptr;
  }

  static std::uint64_t retained(Broker& b, const std::string& topic) {
    for (const auto& t : b.admin()->stats())
      if (t.topic == topic) return t.messages;
    return 0;
  }
};

TEST_F(MemoryBroker, Capabilities) {
  auto b = Broker::open("memory://");
  Capabilities c = b->capabilities();
  EXPECT_TRUE(c.per_key_order);
  EXPECT_TRUE(c.native_delay);
  EXPECT_TRUE(c.native_dead_letter);
  EXPECT_FALSE(c.persistent);
  EXPECT_FALSE(c.multi_process_groups);
  EXPECT_TRUE(c.late_group_sees_history);
  EXPECT_TRUE(c.redelivers_on_close);
  EXPECT_NE(b->admin(), nullptr);
  EXPECT_TRUE(b->ping().ok());
}

TEST_F(MemoryBroker, NamedBrokerIsSharedWhileAHandleLives) {
  auto a = Broker::open("memory://unit-shared");
  auto b = Broker::open("memory://unit-shared");
  auto sub = subscribe(*b, "t", "g");
  a->publisher().publish("t", Message::with_payload("across handles"));
  auto d = sub->receive(milliseconds{1000});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().payload, "across handles");
  d->ack();

  a->close();  // closes only its own handle
  EXPECT_FALSE(a->ping().ok());
  EXPECT_TRUE(b->ping().ok());
  b->publisher().publish("t", Message::with_payload("still open"));
  EXPECT_TRUE(sub->receive(milliseconds{1000}));

  sub.reset();
  a.reset();
  b.reset();
  auto fresh = Broker::open("memory://unit-shared");
  EXPECT_TRUE(fresh->admin()->stats().empty()) << "the broker outlived every handle";
}

TEST_F(MemoryBroker, PrivateBrokersAreIsolated) {
  auto a = Broker::open("memory://");
  auto b = Broker::open("memory://");
  a->publisher().publish("t", Message::with_payload("x"));
  EXPECT_EQ(a->admin()->peek("t", 10).size(), 1u);
  EXPECT_TRUE(b->admin()->peek("t", 10).empty());
}

TEST_F(MemoryBroker, RejectsQueryOptions) {
  try {
    Broker::open("memory://x?size=10");
    ADD_FAILURE() << "an unknown option was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
}

TEST_F(MemoryBroker, PublishCompletesOnTheCallingThreadAndThrowsOnABadTopic) {
  auto b = Broker::open("memory://");
  bool called = false;
  Status got{Errc::internal, ""};
  b->publisher().publish_async("t", Message::with_payload("x"), [&](const Status& s) {
    called = true;
    got = s;
  });
  EXPECT_TRUE(called);
  EXPECT_TRUE(got.ok());
  EXPECT_THROW(b->publisher().publish_async("no spaces", Message::with_payload("x"), [](const Status&) {}), Error);
  bool empty_batch_done = false;
  b->publisher().publish_batch_async("t", {}, [&](const Status& s) { empty_batch_done = s.ok(); });
  EXPECT_TRUE(empty_batch_done);
}

TEST_F(MemoryBroker, StatsCountBacklogAndInFlightPerGroup) {
  auto b = Broker::open("memory://");
  auto a = subscribe(*b, "t", "a");
  auto other = subscribe(*b, "t", "b");
  for (int i = 0; i < 5; ++i) b->publisher().publish("t", Message::with_payload(std::to_string(i)));
  auto first = a->receive(milliseconds{0});
  auto second = a->receive(milliseconds{0});
  ASSERT_TRUE(first && second);
  first->ack();

  auto stats = b->admin()->stats();
  ASSERT_EQ(stats.size(), 1u);
  EXPECT_EQ(stats[0].topic, "t");
  EXPECT_EQ(stats[0].messages, 5u);
  const GroupStats* ga = find_group(stats, "t", "a");
  const GroupStats* gb = find_group(stats, "t", "b");
  ASSERT_TRUE(ga && gb);
  EXPECT_EQ(ga->backlog, 4u);
  EXPECT_EQ(ga->in_flight, 1u);
  EXPECT_EQ(gb->backlog, 5u);
  EXPECT_EQ(gb->in_flight, 0u);
}

TEST_F(MemoryBroker, RetainsWhatSomeGroupStillNeeds) {
  auto b = Broker::open("memory://");
  b->publisher().publish("lonely", Message::with_payload("kept"));
  EXPECT_EQ(retained(*b, "lonely"), 1u) << "a topic without groups keeps everything";

  auto a = subscribe(*b, "t", "a");
  auto c = subscribe(*b, "t", "c");
  for (int i = 0; i < 3; ++i) b->publisher().publish("t", Message::with_payload(std::to_string(i)));
  for (int i = 0; i < 3; ++i) a->receive(milliseconds{0})->ack();
  EXPECT_EQ(retained(*b, "t"), 3u) << "group c has not consumed them yet";
  c->receive(milliseconds{0})->ack();
  c->receive(milliseconds{0})->reject("bad");
  EXPECT_EQ(retained(*b, "t"), 1u);
  c->receive(milliseconds{0})->ack();
  EXPECT_EQ(retained(*b, "t"), 0u);
  EXPECT_EQ(retained(*b, "t.c.dlq"), 1u);
}

TEST_F(MemoryBroker, PeekIsOldestFirstAndConsumesNothing) {
  auto b = Broker::open("memory://");
  auto sub = subscribe(*b, "t", "g");
  for (int i = 0; i < 5; ++i) b->publisher().publish("t", Message::with_payload(std::to_string(i)));
  auto peeked = b->admin()->peek("t", 3);
  ASSERT_EQ(peeked.size(), 3u);
  EXPECT_EQ(peeked[0].payload, "0");
  EXPECT_EQ(peeked[2].payload, "2");
  EXPECT_TRUE(b->admin()->peek("unknown", 3).empty());
  auto d = sub->receive(milliseconds{0});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().payload, "0");
}

TEST_F(MemoryBroker, PurgeDropsMessagesAndGroupState) {
  auto b = Broker::open("memory://");
  auto sub = subscribe(*b, "t", "g");
  for (int i = 0; i < 4; ++i) b->publisher().publish("t", Message::with_payload(std::to_string(i)));
  auto held = sub->receive(milliseconds{0});
  ASSERT_TRUE(held);
  EXPECT_EQ(b->admin()->purge("t"), 4u);
  EXPECT_EQ(b->admin()->purge("unknown"), 0u);
  held->nack();  // settles nothing: the message is gone
  EXPECT_FALSE(sub->receive(milliseconds{0}));
  b->publisher().publish("t", Message::with_payload("after"));
  auto d = sub->receive(milliseconds{0});
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().payload, "after");
}

TEST_F(MemoryBroker, NackedKeyBlocksOnlyItsOwnKey) {
  auto b = Broker::open("memory://");
  auto sub = subscribe(*b, "t", "g");
  auto keyed = [](std::string key, std::string payload) {
    Message m = Message::with_payload(std::move(payload));
    m.key = std::move(key);
    return m;
  };
  b->publisher().publish_batch("t", {keyed("a", "a1"), keyed("a", "a2"), keyed("b", "b1")});
  auto a1 = sub->receive(milliseconds{0});
  ASSERT_TRUE(a1);
  EXPECT_EQ(a1->message().payload, "a1");
  a1->nack(milliseconds{200});
  auto next = sub->receive(milliseconds{0});
  ASSERT_TRUE(next);
  EXPECT_EQ(next->message().payload, "b1") << "a2 must wait for a1";
  next->ack();
  EXPECT_FALSE(sub->receive(milliseconds{50})) << "a2 overtook the delayed a1";
  auto again = sub->receive(milliseconds{2000});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->message().payload, "a1");
  EXPECT_EQ(again->attempt(), 2);
  again->ack();
  auto a2 = sub->receive(milliseconds{0});
  ASSERT_TRUE(a2);
  EXPECT_EQ(a2->message().payload, "a2");
}

TEST_F(MemoryBroker, DestroyedSubscriberHandsBackAndItsDeliveriesAreInert) {
  auto b = Broker::open("memory://");
  auto sub = subscribe(*b, "t", "g");
  b->publisher().publish("t", Message::with_payload("x"));
  auto d = sub->receive(milliseconds{0});
  ASSERT_TRUE(d);
  sub.reset();
  d->ack();
  auto other = subscribe(*b, "t", "g");
  auto again = other->receive(milliseconds{0});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->attempt(), 2);
}

TEST_F(MemoryBroker, CloseWakesReceiversAndRefusesNewWork) {
  auto b = Broker::open("memory://");
  auto sub = subscribe(*b, "t", "g");
  std::thread receiver([&] { EXPECT_FALSE(sub->receive(milliseconds{30'000})); });
  std::this_thread::sleep_for(milliseconds{50});
  const auto start = std::chrono::steady_clock::now();
  b->close();
  receiver.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds{5});
  EXPECT_FALSE(sub->receive(milliseconds{0}));
  Status s = b->publisher().publish_future("t", Message::with_payload("x")).get();
  EXPECT_EQ(s.code, Errc::closed);
  EXPECT_THROW(subscribe(*b, "t", "g"), Error);
}

TEST_F(MemoryBroker, SubscriberAndDeliveryMayOutliveTheBroker) {
  auto b = Broker::open("memory://");
  auto sub = subscribe(*b, "t", "g");
  b->publisher().publish("t", Message::with_payload("x"));
  auto d = sub->receive(milliseconds{0});
  b.reset();
  ASSERT_TRUE(d);
  d->ack();
  EXPECT_FALSE(sub->receive(milliseconds{0}));
  sub.reset();
}

}  // namespace
}  // namespace ferry
