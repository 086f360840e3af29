// What amqp:// declares and how it says no: URL options, a topology that exists with other
// settings, unroutable messages, unreachable brokers and wrong passwords, TLS, the
// dead-letter keeper queue, ephemeral groups, and the Admin interface.

#include <gtest/gtest.h>

#include <thread>

#include "ferry/backends/amqp.hpp"
#include "ferry/broker.hpp"
#include "rabbitmq_fixture.hpp"
#include "unique_name.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;

const bool uses_rabbitmq = testing::use_rabbitmq();

using ferry::testing::unique_name;

Error open_error(const std::string& url) {
  try {
    Broker::open(url);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "opening " << url << " succeeded";
  return Error(Errc::ok, "");
}

Status publish_status(Broker& broker, const std::string& topic) {
  try {
    return broker.publisher().publish_future(topic, Message::with_payload("x")).get();
  } catch (const Error& e) {
    return {e.code(), e.what()};
  }
}

class AmqpTopology : public ::testing::Test {
 protected:
  void SetUp() override { amqp::register_scheme(); }
  testing::RabbitMq& node() { return testing::rabbitmq(); }
};

TEST_F(AmqpTopology, UrlOptionsAreCheckedAtOpen) {
  auto bad = open_error(node().url("?prefetch=10&colour=blue"));
  EXPECT_EQ(bad.code(), Errc::invalid_argument);
  EXPECT_NE(std::string(bad.what()).find("unknown amqp option 'colour'"), std::string::npos) << bad.what();
  EXPECT_EQ(open_error(node().url("?exchange_type=headers")).code(), Errc::invalid_argument);
  EXPECT_EQ(open_error(node().url("?routing_key=k")).code(), Errc::invalid_argument) << "a fanout exchange has no key";
  EXPECT_EQ(open_error(node().url("?cacert=/x.pem")).code(), Errc::invalid_argument) << "TLS options on amqp://";
  EXPECT_EQ(open_error(node().url("?confirm_window=0")).code(), Errc::invalid_argument);
  EXPECT_EQ(open_error("amqp://").code(), Errc::bad_url);
}

TEST_F(AmqpTopology, UnreachableAndRefusedSayWhatAndHideThePassword) {
  // Port 1: nobody listens there.
  auto unreachable = open_error("amqp://app:s3cret@127.0.0.1:1/");
  EXPECT_EQ(unreachable.code(), Errc::unavailable);
  EXPECT_EQ(std::string(unreachable.what()),
            "cannot reach amqp://app:***@127.0.0.1:1/ (connection refused); is RabbitMQ running?");

  auto refused = open_error("amqp://guest:wrong-s3cret@127.0.0.1:" + std::to_string(node().port()) + "/");
  EXPECT_EQ(refused.code(), Errc::unavailable);
  EXPECT_NE(std::string(refused.what()).find("refused"), std::string::npos) << refused.what();
  EXPECT_EQ(std::string(refused.what()).find("s3cret"), std::string::npos) << refused.what();

  auto no_vhost = open_error(node().url() + "no-such-vhost");
  EXPECT_NE(std::string(no_vhost.what()).find("vhost"), std::string::npos) << no_vhost.what();
}

TEST_F(AmqpTopology, PublishingToATopicWithoutGroupsIsAnError) {
  auto broker = Broker::open(node().url());
  const auto topic = unique_name("nobody");
  Status s = publish_status(*broker, topic);
  EXPECT_EQ(s.code, Errc::unavailable);
  EXPECT_NE(s.message.find("unroutable: no queue bound to exchange '" + topic + "'"), std::string::npos) << s.message;
  // The connection survives: once a group exists the same topic works.
  broker->subscribe({.topic = topic, .group = "g"})->close();
  EXPECT_TRUE(publish_status(*broker, topic).ok());
  broker->close();
}

TEST_F(AmqpTopology, RedeclaringWithOtherSettingsIsAClearError) {
  const auto topic = unique_name("retyped");
  auto direct = Broker::open(node().url("?exchange_type=direct"));
  direct->subscribe({.topic = topic, .group = "g"})->close();

  auto fanout = Broker::open(node().url());
  try {
    fanout->subscribe({.topic = topic, .group = "h"});
    ADD_FAILURE() << "subscribing with another exchange type succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
    std::string what = e.what();
    EXPECT_NE(what.find("PRECONDITION_FAILED"), std::string::npos) << what;
    EXPECT_NE(what.find("exchange '" + topic + "'"), std::string::npos) << what;
    EXPECT_NE(what.find("other settings"), std::string::npos) << what;
  }
  Status s = publish_status(*fanout, topic);
  EXPECT_EQ(s.code, Errc::invalid_argument) << s.message;
  EXPECT_NE(s.message.find("PRECONDITION_FAILED"), std::string::npos) << s.message;
  // The failure was confined to the declaring channel: the handle still publishes.
  const auto other = unique_name("fine");
  fanout->subscribe({.topic = other, .group = "g"})->close();
  EXPECT_TRUE(publish_status(*fanout, other).ok());
  EXPECT_TRUE(direct->ping().ok());
  direct->close();
  fanout->close();
}

TEST_F(AmqpTopology, RejectedMessagesAreKeptForTheReplayGroup) {
  auto broker = Broker::open(node().url());
  const auto topic = unique_name("poison");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  const std::string dlq = topic + ".g.dlq";
  const std::string keeper = dlq + "." + std::string(amqp::dead_letter_keeper_group);
  ASSERT_TRUE(testing::queue_counts(node().port(), keeper)) << "the keeper queue was not declared with the group";
  ASSERT_TRUE(testing::queue_counts(node().port(), topic + ".g.retry")) << "the retry queue was not declared";

  Message m = Message::with_payload("bad");
  broker->publisher().publish(topic, m);
  auto d = sub->receive(10s);
  ASSERT_TRUE(d);
  d->reject("cannot parse");
  sub->close();

  // A group subscribed after the reject (as `ferry dlq replay` is) still finds it.
  auto replay = broker->subscribe({.topic = dlq, .group = std::string(amqp::dead_letter_keeper_group)});
  auto dead = replay->receive(10s);
  ASSERT_TRUE(dead) << "the dead letter was not kept";
  EXPECT_EQ(dead->message().id, m.id);
  EXPECT_EQ(dead->message().headers.at(header::error), "cannot parse");
  EXPECT_EQ(dead->message().headers.at(header::original_topic), topic);
  EXPECT_EQ(dead->message().headers.at(header::original_group), "g");
  EXPECT_EQ(dead->attempt(), 1);
  dead->ack();
  broker->close();
}

TEST_F(AmqpTopology, AnEphemeralGroupIsDeletedWithItsSubscriber) {
  auto broker = Broker::open(node().url());
  const auto topic = unique_name("tail");
  broker->subscribe({.topic = topic, .group = "kept"})->close();
  SubscribeOptions options{.topic = topic, .group = "tail-1"};
  options.ephemeral = true;
  auto tail = broker->subscribe(options);
  ASSERT_TRUE(testing::queue_counts(node().port(), topic + ".tail-1"));
  broker->publisher().publish(topic, Message::with_payload("seen by tail"));
  auto d = tail->receive(10s);
  ASSERT_TRUE(d);
  d->ack();
  tail->close();
  EXPECT_FALSE(testing::queue_counts(node().port(), topic + ".tail-1"))
      << "the ephemeral queue outlived its subscriber";
  EXPECT_FALSE(testing::queue_counts(node().port(), topic + ".tail-1.retry"));
  EXPECT_TRUE(testing::queue_counts(node().port(), topic + ".kept"));
  broker->close();
}

TEST_F(AmqpTopology, AdminStatsPeekAndPurge) {
  auto broker = Broker::open(node().url());
  auto* admin = broker->admin();
  ASSERT_NE(admin, nullptr);
  const auto topic = unique_name("admin");
  broker->subscribe({.topic = topic, .group = "g"})->close();
  std::vector<Message> batch;
  for (int i = 0; i < 5; ++i) batch.push_back(Message::with_payload("p" + std::to_string(i)));
  broker->publisher().publish_batch(topic, batch);

  auto stats = admin->stats();
  auto it = std::find_if(stats.begin(), stats.end(), [&](const TopicStats& t) { return t.topic == topic; });
  ASSERT_NE(it, stats.end());
  ASSERT_EQ(it->groups.size(), 1u);
  EXPECT_EQ(it->groups[0].group, "g");
  EXPECT_EQ(it->groups[0].backlog, 5u);

  auto peeked = admin->peek(topic, 3);
  ASSERT_EQ(peeked.size(), 3u);
  EXPECT_EQ(peeked[0].id, batch[0].id);
  EXPECT_EQ(peeked[0].payload, "p0");
  EXPECT_EQ(testing::queue_counts(node().port(), topic + ".g")->messages, 5u) << "peek consumed messages";

  EXPECT_EQ(admin->purge(topic), 5u);
  EXPECT_EQ(testing::queue_counts(node().port(), topic + ".g")->messages, 0u);
  broker->close();
}

TEST_F(AmqpTopology, TlsRoundTrip) {
  auto broker = Broker::open(node().tls_url());
  EXPECT_TRUE(broker->ping().ok());
  const auto topic = unique_name("tls");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  Message m = Message::with_payload("over TLS");
  broker->publisher().publish(topic, m);
  auto d = sub->receive(10s);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().id, m.id);
  d->ack();
  broker->close();

  // Without the test CA the server's certificate does not verify.
  auto untrusted = open_error("amqps://guest:guest@localhost:" + std::to_string(node().tls_port()) + "/");
  EXPECT_EQ(untrusted.code(), Errc::unavailable);
  EXPECT_NE(std::string(untrusted.what()).find("TLS"), std::string::npos) << untrusted.what();
  // verify=false accepts it (encrypted, not authenticated).
  auto unverified =
      Broker::open("amqps://guest:guest@localhost:" + std::to_string(node().tls_port()) + "/?verify=false");
  EXPECT_TRUE(unverified->ping().ok());
  unverified->close();
}

}  // namespace
}  // namespace ferry
