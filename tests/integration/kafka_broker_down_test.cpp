// The brokers go away (every mock broker set down): publishes fail within their deadline
// with a clear error, ping fails, and after the brokers return publishing and a
// subscription that was open all along work again. A group member whose consumer hits a
// fatal error says so to its subscribers and is not given new ones.
#include <gtest/gtest.h>

#include <thread>

#include "ferry/broker.hpp"
#include "kafka_support.hpp"

namespace ferry::kafka::testing {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

void all_brokers(bool up) {
  for (int id = 1; id <= cluster().brokers(); ++id) up ? cluster().set_broker_up(id) : cluster().set_broker_down(id);
}

TEST(KafkaBrokerDown, PublishesFailWithinTheirDeadlineAndRecover) {
  register_scheme();
  constexpr auto deadline = 3s;
  const std::string u = url("&publish_timeout=3s&reconnect.backoff.max.ms=500");
  const std::string topic = unique("down");
  auto broker = Broker::open(u);
  auto sub = broker->subscribe({.topic = topic, .group = unique("g")});
  broker->publisher().publish(topic, Message::with_payload("before"));
  auto d = sub->receive(10s);
  ASSERT_TRUE(d);
  d->ack();

  all_brokers(false);
  std::vector<std::future<Status>> pending;
  const auto started = SteadyClock::now();
  for (int i = 0; i < 5; ++i)
    pending.push_back(broker->publisher().publish_future(topic, Message::with_payload("lost")));
  for (auto& f : pending) {
    ASSERT_EQ(f.wait_for(deadline + 5s), std::future_status::ready) << "a publish hung while the brokers were down";
    Status s = f.get();
    EXPECT_EQ(s.code, Errc::timeout) << s.message;
    EXPECT_NE(s.message.find("not confirmed within 3000 ms"), std::string::npos) << s.message;
    EXPECT_NE(s.message.find("is Kafka reachable"), std::string::npos) << s.message;
  }
  const auto took = SteadyClock::now() - started;
  EXPECT_LT(took, deadline + 3s) << "publishes failed only after "
                                 << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms";
  Status ping = broker->ping();
  EXPECT_FALSE(ping.ok());
  std::cout << "while down: " << pending.size() << " publishes failed after "
            << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms; ping: " << ping.message
            << "\n";

  all_brokers(true);
  // The producer reconnects with backoff; the first publishes after the return may still
  // time out, so a publish is retried for a while.
  Message after = Message::with_payload("after");
  bool published = false;
  const auto until = SteadyClock::now() + 30s;
  Status last;
  while (!published && SteadyClock::now() < until) {
    last = broker->publisher().publish_future(topic, after).get();
    published = last.ok();
  }
  ASSERT_TRUE(published) << "publishing did not recover after the brokers returned: " << last.message;
  EXPECT_TRUE(broker->ping().ok());
  bool received = false;
  const auto receive_until = SteadyClock::now() + 30s;
  while (!received && SteadyClock::now() < receive_until) {
    auto got = sub->receive(1s);
    if (!got) continue;
    received = got->message().id == after.id;
    got->ack();
  }
  EXPECT_TRUE(received) << "the subscription did not resume after the brokers returned";
  sub->close();
  broker->close();
}

TEST(KafkaBrokerDown, ASubscribeAfterAFatalConsumerErrorGetsAFreshMember) {
  register_scheme();
  const std::string topic = unique("fenced");
  const std::string group = unique("static");
  cluster().create_topic(topic, 2);
  // Static membership: the coordinator answering FENCED_INSTANCE_ID is fatal to a consumer.
  auto broker = Broker::open(url("&consumer.group.instance.id=" + unique("instance") +
                                 "&consumer.heartbeat.interval.ms=300"));
  auto first = broker->subscribe({.topic = topic, .group = group});
  broker->publisher().publish(topic, Message::with_payload("before"));
  auto d = first->receive(20s);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().payload, "before");
  d->ack();

  cluster().fail_requests(12, {82});  // the next Heartbeat: FENCED_INSTANCE_ID
  std::string failure;
  const auto until = SteadyClock::now() + 20s;
  while (failure.empty() && SteadyClock::now() < until) {
    try {
      first->receive(200ms);
    } catch (const Error& e) {
      failure = e.what();
    }
  }
  ASSERT_FALSE(failure.empty()) << "the subscriber never heard of the fatal error";
  EXPECT_NE(failure.find("fatal error"), std::string::npos) << failure;

  // The failed member is not reused: a new subscribe of the same topic and group joins with
  // a member of its own and consumes.
  auto second = broker->subscribe({.topic = topic, .group = group});
  broker->publisher().publish(topic, Message::with_payload("after"));
  auto e = second->receive(20s);
  ASSERT_TRUE(e) << "the new subscriber received nothing";
  EXPECT_EQ(e->message().payload, "after");
  e->ack();
  EXPECT_THROW(first->receive(10ms), Error) << "the failed member's subscriber should keep saying so";
  second->close();
  first->close();
  broker->close();
}

}  // namespace
}  // namespace ferry::kafka::testing
