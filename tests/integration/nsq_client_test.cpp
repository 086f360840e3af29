// ferry's NSQ client against the test peer, for what the conformance suite cannot see:
// reconnection after the peer restarts, failover between nsqd addresses, nsqlookupd
// discovery, max_attempts dead-lettering, TOUCH for long handlers, DPUB, AUTH, plain
// bodies from other clients, URL options.

#include <gtest/gtest.h>

#include <thread>

#include "ferry/backends/nsq.hpp"
#include "ferry/broker.hpp"
#include "nsq_peer.hpp"
#include "unique_name.hpp"

namespace ferry::nsq {
namespace {

using namespace std::chrono_literals;
using nsq_peer::Peer;
using nsq_peer::PeerOptions;

using ferry::testing::unique_name;

class NsqClient : public ::testing::Test {
 protected:
  void SetUp() override { register_scheme(); }
};

// Publishes until a publish succeeds or `limit` passes; returns whether one did.
bool publish_eventually(Broker& broker, const std::string& topic, const Message& m, std::chrono::milliseconds limit) {
  auto until = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < until) {
    if (broker.publisher().publish_future(topic, m).get().ok()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

TEST_F(NsqClient, ReconnectsAfterThePeerRestartsAndNewPublishesFlow) {
  Peer peer;
  peer.start();
  auto broker = Broker::open(peer.url() + "?max_backoff=200ms&heartbeat=1s");
  const auto topic = unique_name("restart");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  broker->publisher().publish(topic, Message::with_payload("before"));
  auto before = sub->receive(5s);
  ASSERT_TRUE(before);
  before->ack();

  peer.stop();  // every connection drops, every message is forgotten
  Status down = broker->publisher().publish_future(topic, Message::with_payload("while down")).get();
  EXPECT_EQ(down.code, Errc::unavailable) << down.message;
  EXPECT_FALSE(broker->ping().ok());
  peer.start();  // same port

  Message after = Message::with_payload("after");
  ASSERT_TRUE(publish_eventually(*broker, topic, after, 5s)) << "the publisher did not reconnect";
  EXPECT_TRUE(broker->ping().ok());
  // The subscriber reconnects with backoff and subscribes again; the peer held the
  // message for the topic's first channel, so it arrives once the SUB is in.
  auto d = sub->receive(10s);
  ASSERT_TRUE(d) << "the subscriber did not resume after the restart";
  EXPECT_EQ(d->message().id, after.id);
  d->ack();
  broker->close();
}

TEST_F(NsqClient, AnswersHeartbeatsSoIdleConnectionsStayOpen) {
  Peer peer;
  peer.start();
  auto broker = Broker::open(peer.url() + "?heartbeat=1s");
  const auto topic = unique_name("idle");
  auto sub = broker->subscribe({.topic = topic, .group = "g", .prefetch = 2});
  const auto accepted = peer.stats().connections_accepted;  // the publisher's and the subscriber's
  std::this_thread::sleep_for(3500ms);                      // three heartbeats; a silent client is dropped after two
  EXPECT_EQ(peer.stats().heartbeat_disconnects, 0u);
  for (int i = 0; i < 10; ++i) broker->publisher().publish(topic, Message::with_payload("m" + std::to_string(i)));
  for (int i = 0; i < 10; ++i) {
    auto d = sub->receive(5s);
    ASSERT_TRUE(d);
    d->ack();
  }
  auto stats = peer.stats();
  EXPECT_EQ(stats.connections_accepted, accepted) << "a connection was replaced";
  EXPECT_EQ(stats.max_in_flight_seen_over_rdy, 0u);
}

TEST_F(NsqClient, DropsAConnectionThatSendsNothingForTwoHeartbeatsAndReconnects) {
  Peer peer;
  peer.start();
  auto broker = Broker::open(peer.url() + "?heartbeat=1s&max_backoff=200ms");
  const auto topic = unique_name("hung");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  const auto accepted = peer.stats().connections_accepted;
  peer.set_silent(true);  // no heartbeats: to the client, a hung nsqd
  auto until = std::chrono::steady_clock::now() + 8s;
  while (peer.stats().connections_accepted < accepted + 2 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(100ms);
  EXPECT_GE(peer.stats().connections_accepted, accepted + 2)
      << "the publisher and the subscriber did not give up on a connection that sent nothing for 2 heartbeats";
  peer.set_silent(false);
  Message m = Message::with_payload("after");
  ASSERT_TRUE(publish_eventually(*broker, topic, m, 5s));
  auto d = sub->receive(5s);
  ASSERT_TRUE(d) << "the subscriber did not come back";
  EXPECT_EQ(d->message().id, m.id);
  d->ack();
}

TEST_F(NsqClient, OpenFailsClearlyWhenNoNsqdIsReachable) {
  Peer peer;
  peer.start();
  const std::string url = peer.url();
  peer.stop();
  try {
    Broker::open(url + "?connect_timeout=500ms");
    FAIL() << "open succeeded without an nsqd";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::unavailable);
    EXPECT_NE(std::string(e.what()).find("is nsqd running?"), std::string::npos) << e.what();
  }
}

TEST_F(NsqClient, PublishFailsOverToTheNextNsqd) {
  Peer dead, alive;
  dead.start();
  alive.start();
  const std::string dead_address = dead.address();
  dead.stop();
  auto broker = Broker::open("nsq://" + dead_address + "," + alive.address());
  const auto topic = unique_name("failover");
  broker->publisher().publish(topic, Message::with_payload("x"));
  auto stats = alive.stats();
  ASSERT_EQ(stats.topics.size(), 1u);
  EXPECT_EQ(stats.topics[0].message_count, 1u);
  broker->close();
}

TEST_F(NsqClient, ConsumesFromEveryNsqdThatLookupdLists) {
  Peer a, b;
  a.start();
  b.start();
  nsq_peer::Lookupd lookupd;
  lookupd.add(a);
  lookupd.add(b);
  const auto topic = unique_name("discover");
  // Producers straight to each nsqd; the consumer only knows nsqlookupd.
  auto to_a = Broker::open(a.url());
  auto to_b = Broker::open(b.url());
  to_a->publisher().publish(topic, Message::with_payload("from a"));  // the topic exists on a
  auto consumer = Broker::open("nsq://?lookupd=" + lookupd.address() + "&lookupd_poll=200ms");
  auto sub = consumer->subscribe({.topic = topic, .group = "g", .prefetch = 4});
  std::set<std::string> got;
  if (auto d = sub->receive(5s)) {
    got.insert(d->message().payload);
    d->ack();
  }
  to_b->publisher().publish(topic, Message::with_payload("from b"));  // b appears on the next poll
  auto until = std::chrono::steady_clock::now() + 10s;
  while (got.size() < 2 && std::chrono::steady_clock::now() < until) {
    if (auto d = sub->receive(200ms)) {
      got.insert(d->message().payload);
      d->ack();
    }
  }
  EXPECT_EQ(got, (std::set<std::string>{"from a", "from b"}));

  // A node nsqlookupd stops listing is left.
  lookupd.remove(b);
  until = std::chrono::steady_clock::now() + 5s;
  auto clients_on_b = [&] {
    for (const auto& t : b.stats().topics)
      for (const auto& c : t.channels) return c.clients;
    return std::uint64_t{0};
  };
  while (clients_on_b() > 0 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(50ms);
  EXPECT_EQ(clients_on_b(), 0u) << "the consumer stayed on an nsqd that nsqlookupd no longer lists";

  // nsqlookupd's /nodes is enough to publish.
  auto via_lookupd = Broker::open("nsq://?lookupd=" + lookupd.address());
  via_lookupd->publisher().publish(topic, Message::with_payload("via nodes"));
  auto d = sub->receive(5s);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->message().payload, "via nodes");
  d->ack();
}

TEST_F(NsqClient, MaxAttemptsMovesAPoisonMessageToTheDeadLetterTopic) {
  Peer peer;
  peer.start();
  auto broker = Broker::open(peer.url() + "?max_attempts=2");
  const auto topic = unique_name("poison");
  auto dlq = broker->subscribe({.topic = topic + ".g.dlq", .group = "inspect"});
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  Message m = Message::with_payload("crashes its consumer");
  m.headers = {{"x-kept", "yes"}};
  broker->publisher().publish(topic, m);
  for (int attempt = 1; attempt <= 2; ++attempt) {
    auto d = sub->receive(5s);
    ASSERT_TRUE(d);
    EXPECT_EQ(d->attempt(), attempt);
    d->nack();
  }
  EXPECT_FALSE(sub->receive(500ms)) << "a message past max_attempts was handed out again";
  auto dead = dlq->receive(5s);
  ASSERT_TRUE(dead);
  EXPECT_EQ(dead->message().id, m.id);
  EXPECT_EQ(dead->message().headers.at("x-kept"), "yes");
  EXPECT_EQ(dead->message().headers.at(header::attempts), "2");
  EXPECT_NE(dead->message().headers.at(header::error).find("max_attempts=2"), std::string::npos);
  dead->ack();
}

TEST_F(NsqClient, TouchKeepsALongHandlersMessageUntilItsAckTimeout) {
  Peer peer;
  peer.start();
  // nsqd's timeout 1 s; the handler may take 3 s: ferry TOUCHes in between.
  auto broker = Broker::open(peer.url() + "?msg_timeout=1s");
  const auto topic = unique_name("touch");
  auto slow = broker->subscribe({.topic = topic, .group = "g", .ack_timeout = 3000ms});
  broker->publisher().publish(topic, Message::with_payload("slow work"));
  std::optional<Delivery> held = slow->receive(5s);  // the channel's only consumer so far
  ASSERT_TRUE(held);
  auto other = broker->subscribe({.topic = topic, .group = "g"});
  EXPECT_FALSE(other->receive(2000ms)) << "the message was redelivered while its handler was still inside its lease";
  held->ack();
  EXPECT_FALSE(other->receive(1500ms)) << "an acked message came back";
  auto stats = peer.stats();
  EXPECT_EQ(stats.topics.at(0).channels.at(0).timeout_count, 0u);
}

TEST_F(NsqClient, DeferredPublishIsHeldByNsqd) {
  Peer peer;
  peer.start();
  auto broker = Broker::open(peer.url());
  const auto topic = unique_name("dpub");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  std::promise<Status> done;
  auto start = std::chrono::steady_clock::now();
  publish_deferred(*broker, topic, {Message::with_payload("later")}, 400ms,
                   [&](const Status& s) { done.set_value(s); });
  ASSERT_TRUE(done.get_future().get().ok());
  auto d = sub->receive(5s);
  ASSERT_TRUE(d);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 380ms);
  d->ack();
}

TEST_F(NsqClient, AuthenticatesWhenNsqdAsks) {
  PeerOptions options;
  options.auth_secret = "s3cret";
  Peer peer(options);
  peer.start();
  try {
    Broker::open(peer.url());
    FAIL() << "open succeeded without the secret nsqd asked for";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("auth_secret"), std::string::npos) << e.what();
  }
  try {
    Broker::open(peer.url() + "?auth_secret=wrong");
    FAIL() << "open succeeded with a wrong secret";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("E_UNAUTHORIZED"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("wrong"), std::string::npos) << "the secret leaked: " << e.what();
  }
  auto broker = Broker::open(peer.url() + "?auth_secret=s3cret");
  const auto topic = unique_name("auth");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  broker->publisher().publish(topic, Message::with_payload("authorized"));
  auto d = sub->receive(5s);
  ASSERT_TRUE(d);
  d->ack();
}

TEST_F(NsqClient, AdminReadsNsqdStatsAndEmptiesTopics) {
  PeerOptions options;
  options.http_port = 0;
  Peer peer(options);
  peer.start();
  auto broker = Broker::open(peer.url() + "?http=127.0.0.1:" + std::to_string(peer.http_port()));
  const auto topic = unique_name("admin");
  auto sub = broker->subscribe({.topic = topic, .group = "g", .prefetch = 1});
  for (int i = 0; i < 5; ++i) broker->publisher().publish(topic, Message::with_payload("m" + std::to_string(i)));
  auto held = sub->receive(5s);
  ASSERT_TRUE(held);
  Admin* admin = broker->admin();
  ASSERT_NE(admin, nullptr);
  auto find = [&](const std::vector<TopicStats>& all) -> const TopicStats* {
    for (const auto& t : all)
      if (t.topic == topic) return &t;
    return nullptr;
  };
  auto stats = admin->stats();
  const TopicStats* t = find(stats);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->messages, 5u);
  ASSERT_EQ(t->groups.size(), 1u);
  EXPECT_EQ(t->groups[0].group, "g");
  EXPECT_EQ(t->groups[0].backlog, 5u);
  EXPECT_EQ(t->groups[0].in_flight, 1u);
  EXPECT_THROW(admin->peek(topic, 10), Error);
  EXPECT_EQ(admin->purge(topic), 5u);
  stats = admin->stats();
  t = find(stats);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->messages, 0u);
  held->ack();  // nsqd emptied it: E_FIN_FAILED, ignored
}

TEST_F(NsqClient, UrlOptionsAreCheckedAtOpen) {
  Peer peer;
  peer.start();
  for (const std::string query : {"?nosuch=1", "?heartbeat=100ms", "?msg_timeout=10ms", "?max_in_flight=0",
                                  "?max_attempts=x", "?lookupd=", "?http="}) {
    try {
      Broker::open(peer.url() + query);
      ADD_FAILURE() << query << " was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << query << ": " << e.what();
    }
  }
  auto broker = Broker::open(peer.url());
  EXPECT_FALSE(broker->capabilities().persistent);
  EXPECT_TRUE(broker->capabilities().native_delay);
  try {  // NSQ's 64-character limit applies to a configured dead-letter topic
    broker->subscribe({.topic = "t", .group = "g", .dead_letter_topic = std::string(65, 'd')});
    ADD_FAILURE() << "a dead-letter topic over 64 characters was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument);
  }
  {  // while a default "<topic>.<group>.dlq" over 64 characters is shortened with a hash
    const std::string topic(40, 't');
    auto sub = broker->subscribe({.topic = topic, .group = std::string(20, 'g')});
    broker->publisher().publish(topic, Message::with_payload("x"));
    auto d = sub->receive(5s);
    ASSERT_TRUE(d);
    d->reject("no");
    std::string dlq;
    auto until = std::chrono::steady_clock::now() + 5s;
    while (dlq.empty() && std::chrono::steady_clock::now() < until) {
      for (const auto& t : peer.topics())
        if (t.size() > 4 && t.substr(t.size() - 4) == ".dlq") dlq = t;
      std::this_thread::sleep_for(20ms);
    }
    EXPECT_EQ(dlq.size(), 64u) << dlq;
    EXPECT_EQ(dlq.substr(0, 40), topic) << dlq;
  }
  Message big = Message::with_payload(std::string(1 << 20, 'x'));  // over nsqd's default max-msg-size with the envelope
  auto s = broker->publisher().publish_future("big", big).get();
  EXPECT_EQ(s.code, Errc::invalid_argument) << s.message;
}

}  // namespace
}  // namespace ferry::nsq
