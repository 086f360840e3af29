// create_topics=admin: a topic missing at the first publish or subscribe is created through
// the Admin API (CreateTopics) with the URL's partitions and replication, a topic that is there is
// used as it is, and a creation the cluster refuses fails the publish with its reason and
// creates nothing. The cluster is the shared mock cluster behind CreateTopicsFront, which
// answers the CreateTopics requests the mock itself does not handle.
#include <gtest/gtest.h>

#include <chrono>
#include <set>

#include "ferry/broker.hpp"
#include "kafka_create_topics_front.hpp"
#include "kafka_support.hpp"

namespace ferry::kafka::testing {
namespace {

using namespace std::chrono_literals;

// The error of a publish expected to fail ("" and a test failure if it succeeded).
std::string failed_publish(Broker& broker, const std::string& topic) {
  try {
    broker.publisher().publish(topic, Message::with_payload("lost?"));
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "a publish to '" << topic << "', which could not be created, succeeded";
  return {};
}

class KafkaCreateTopics : public ::testing::Test {
 protected:
  void SetUp() override { register_scheme(); }

  std::string through_front(const std::string& query) const {
    return "kafka://" + front_.bootstrap() + "?create_topics=admin&admin_timeout=10s&" + query;
  }

  CreateTopicsFront front_{cluster()};
};

TEST_F(KafkaCreateTopics, AMissingTopicIsCreatedWithTheUrlsPartitionsAndReplication) {
  const std::string topic = unique("created");
  const std::string target = through_front("partitions=5&replication=2");
  constexpr int kMessages = 40;
  {
    auto broker = Broker::open(target);
    std::vector<Message> messages;
    for (int i = 0; i < kMessages; ++i) {
      Message m = Message::with_payload("m" + std::to_string(i));
      m.key = "key-" + std::to_string(i);
      messages.push_back(std::move(m));
    }
    broker->publisher().publish_batch(topic, std::move(messages));
    broker->close();
  }
  auto asked = front_.requests();
  ASSERT_EQ(asked.size(), 1u) << "one CreateTopics request for the new topic";
  EXPECT_EQ(asked[0].topic, topic);
  EXPECT_EQ(asked[0].partitions, 5);
  EXPECT_EQ(asked[0].replication, 2);
  EXPECT_FALSE(asked[0].validate_only);
  EXPECT_EQ(asked[0].error, 0);
  EXPECT_GT(front_.passed(0), 0) << "the messages were not produced through the front";
  EXPECT_EQ(front_.partitions(topic), 5) << topic << " is not in the cluster with 5 partitions";

  // Another handle (another process) publishing to it: the controller answers that it
  // exists, and the publish goes on to the topic as it is.
  {
    auto broker = Broker::open(target);
    broker->publisher().publish(topic, Message::with_payload("m" + std::to_string(kMessages)));
    broker->close();
  }
  asked = front_.requests();
  ASSERT_EQ(asked.size(), 2u);
  EXPECT_EQ(asked[1].topic, topic);
  EXPECT_EQ(asked[1].error, 36) << "TOPIC_ALREADY_EXISTS";
  EXPECT_EQ(front_.partitions(topic), 5);

  // Every message is in it, read straight from the cluster.
  auto reader = Broker::open(url());
  auto sub = reader->subscribe({.topic = topic, .group = unique("created-reader"), .prefetch = 64});
  std::set<std::string> payloads;
  for (int i = 0; i <= kMessages; ++i) {
    auto d = sub->receive(20s);
    ASSERT_TRUE(d) << "received " << i << " of " << kMessages + 1;
    payloads.insert(d->message().payload);
    d->ack();
  }
  EXPECT_EQ(payloads.size(), static_cast<std::size_t>(kMessages + 1));
  sub->close();
  reader->close();
}

TEST_F(KafkaCreateTopics, ASubscribeToAMissingTopicCreatesItToo) {
  const std::string topic = unique("subscribed");
  auto broker = Broker::open(through_front("partitions=4&session.timeout.ms=6000&fetch.wait.max.ms=10"));
  auto sub = broker->subscribe({.topic = topic, .group = unique("first"), .prefetch = 16});
  auto asked = front_.requests();
  ASSERT_EQ(asked.size(), 1u) << "one CreateTopics request, before the group joins";
  EXPECT_EQ(asked[0].topic, topic);
  EXPECT_EQ(asked[0].partitions, 4);
  EXPECT_EQ(asked[0].replication, -1) << "replication=-1 (the default) leaves it to the broker";
  EXPECT_EQ(front_.partitions(topic), 4);

  // Created before the group joined, so what is published next is not missed.
  broker->publisher().publish(topic, Message::with_payload("first"));
  auto d = sub->receive(20s);
  ASSERT_TRUE(d) << "nothing received on the created topic";
  EXPECT_EQ(d->message().payload, "first");
  d->ack();
  sub->close();
  broker->close();
  EXPECT_EQ(front_.requests().size(), 1u) << "the publish found the topic made by the subscribe";
  EXPECT_GT(front_.passed(10), 0) << "the group's coordinator was not found through the front";
  EXPECT_GT(front_.passed(1), 0) << "no Fetch came through the front";
}

TEST_F(KafkaCreateTopics, ARefusedCreationFailsThePublishWithTheReasonAndCreatesNothing) {
  const std::string topic = unique("refused");
  auto broker = Broker::open(through_front("partitions=2&replication=4"));
  const auto start = std::chrono::steady_clock::now();
  const std::string what = failed_publish(*broker, topic);
  EXPECT_NE(what.find("cannot create topic '" + topic + "'"), std::string::npos) << what;
  EXPECT_NE(what.find("Replication factor: 4 larger than available brokers: 3"), std::string::npos) << what;
  EXPECT_NE(what.find("replication=4"), std::string::npos) << what;
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s) << "a refusal is an answer: no waiting for admin_timeout";
  auto asked = front_.requests();
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_EQ(asked[0].error, 38) << "INVALID_REPLICATION_FACTOR";
  // Not created with the brokers' defaults behind ferry's back either.
  EXPECT_FALSE(front_.partitions(topic).has_value()) << topic << " exists after all";

  // The next publish asks again (the cluster may have grown), and fails the same way.
  EXPECT_THROW(broker->publisher().publish(topic, Message::with_payload("again")), Error);
  EXPECT_EQ(front_.requests().size(), 2u);
  broker->close();
}

TEST_F(KafkaCreateTopics, WithoutCreateTopicsTheClusterIsNamedAsLackingIt) {
  // The mock on its own: no controller answers, within admin_timeout.
  const std::string topic = unique("no-admin-api");
  auto broker = Broker::open("kafka://" + cluster().bootstrap() + "?create_topics=admin&admin_timeout=1s");
  const std::string what = failed_publish(*broker, topic);
  EXPECT_NE(what.find("cannot create topic '" + topic + "'"), std::string::npos) << what;
  EXPECT_NE(what.find("add create_topics=auto to the URL"), std::string::npos) << what;
  EXPECT_FALSE(front_.partitions(topic).has_value()) << topic << " was created with the brokers' defaults";
  broker->close();
}

}  // namespace
}  // namespace ferry::kafka::testing
