// The brokers go away (every mock broker set down): publishes fail within their deadline
// with a clear error, ping fails, and after the brokers return publishing and a
// subscription that was open all along work again.
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

}  // namespace
}  // namespace ferry::kafka::testing
