// The producer under pressure: more publishes than librdkafka's queue holds, from several
// threads, one message per call and in batches larger than the queue, all complete and
// arrive; a batch with a message the producer refuses fails once, and the messages queued
// before it are still delivered; publish callbacks may drop the last reference to their
// broker, close it, or publish again; one thread may publish through several brokers.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "ferry/broker.hpp"
#include "kafka_support.hpp"

namespace ferry::kafka::testing {
namespace {

using namespace std::chrono_literals;

// Counts publish callbacks and keeps the first failure.
struct Outcomes {
  std::mutex mutex;
  std::condition_variable cv;
  int ok = 0, failed = 0, calls = 0;
  std::string first_failure;

  PublishCallback callback() {
    return [this](const Status& s) {
      std::lock_guard lock(mutex);
      ++calls;
      if (s.ok()) {
        ++ok;
      } else {
        ++failed;
        if (first_failure.empty()) first_failure = s.message;
      }
      cv.notify_all();
    };
  }
  bool wait_for_calls(int n, std::chrono::seconds limit) {
    std::unique_lock lock(mutex);
    return cv.wait_for(lock, limit, [&] { return calls >= n; });
  }
};

// Receives until `expected` distinct payloads are in or `limit` passes.
std::set<std::string> receive_all(Subscriber& sub, std::size_t expected, std::chrono::seconds limit) {
  std::set<std::string> payloads;
  const auto until = std::chrono::steady_clock::now() + limit;
  while (payloads.size() < expected && std::chrono::steady_clock::now() < until) {
    auto d = sub.receive(500ms);
    if (!d) continue;
    payloads.insert(d->message().payload);
    d->ack();
  }
  return payloads;
}

// A broker on the shared cluster with `extra` in its URL, a fresh topic with a subscriber,
// and a first message ("first") published to it, so that the topic exists.
struct TopicWithSubscriber {
  std::shared_ptr<Broker> broker;
  std::string topic;
  std::unique_ptr<Subscriber> sub;

  TopicWithSubscriber(const std::string& extra, const std::string& stem)
      : broker((register_scheme(), Broker::open(url(extra)))),
        topic(unique(stem)),
        sub(broker->subscribe({.topic = topic, .group = unique("g")})) {
    broker->publisher().publish(topic, Message::with_payload("first"));
  }
};

TEST(KafkaProducer, PublishesBeyondTheQueueBoundWaitForRoomAndAllArrive) {
  // librdkafka holds at most 32 unconfirmed messages: nearly every publish below waits
  // for room, and the waiting publishers must be woken as deliveries free it.
  TopicWithSubscriber setup("&queue.buffering.max.messages=32&publish_timeout=30s", "full");
  auto& [broker, topic, sub] = setup;

  constexpr int kThreads = 4, kEach = 500, kBatch = 200;
  Outcomes singles, batch;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i)
        broker->publisher().publish_async(topic, Message::with_payload(std::to_string(t) + "-" + std::to_string(i)),
                                          singles.callback());
    });
  threads.emplace_back([&] {
    std::vector<Message> messages;
    for (int i = 0; i < kBatch; ++i) messages.push_back(Message::with_payload("batch-" + std::to_string(i)));
    broker->publisher().publish_batch_async(topic, std::move(messages), batch.callback());
  });
  for (auto& t : threads) t.join();

  ASSERT_TRUE(singles.wait_for_calls(kThreads * kEach, 60s)) << singles.calls << " of " << kThreads * kEach;
  ASSERT_TRUE(batch.wait_for_calls(1, 60s));
  EXPECT_EQ(singles.ok, kThreads * kEach) << singles.first_failure;
  EXPECT_EQ(singles.calls, kThreads * kEach) << "a callback ran more than once";
  EXPECT_EQ(batch.ok, 1) << batch.first_failure;

  const std::size_t expected = 1 + kThreads * kEach + kBatch;
  auto payloads = receive_all(*sub, expected, 60s);
  EXPECT_EQ(payloads.size(), expected);
  EXPECT_TRUE(payloads.count("3-499") && payloads.count("batch-199") && payloads.count("first"));
  sub->close();
  broker->close();
}

TEST(KafkaProducer, ABatchWithARefusedMessageFailsOnceAndDeliversWhatWasQueued) {
  TopicWithSubscriber setup("&message.max.bytes=10000", "refused");
  auto& [broker, topic, sub] = setup;

  Outcomes outcome;
  std::vector<Message> messages{Message::with_payload("before"), Message::with_payload(std::string(20000, 'x')),
                                Message::with_payload("after")};
  broker->publisher().publish_batch_async(topic, std::move(messages), outcome.callback());
  ASSERT_TRUE(outcome.wait_for_calls(1, 30s));
  {
    std::lock_guard lock(outcome.mutex);
    EXPECT_EQ(outcome.failed, 1);
    EXPECT_EQ(outcome.first_failure.find("publish to '" + topic + "' was refused"), 0u) << outcome.first_failure;
  }
  // The message queued before the refused one is delivered; the batch stopped there.
  broker->publisher().publish(topic, Message::with_payload("later"));
  auto payloads = receive_all(*sub, 3, 30s);
  EXPECT_EQ(payloads, (std::set<std::string>{"first", "before", "later"}));
  std::this_thread::sleep_for(200ms);
  std::lock_guard lock(outcome.mutex);
  EXPECT_EQ(outcome.calls, 1) << "the batch's callback ran more than once";
  sub->close();
  broker->close();
}

TEST(KafkaProducer, OneThreadPublishingThroughTwoBrokersInTurnCompletesEachPublishOnce) {
  // A publishing thread keeps a few of a producer's batch objects until it publishes
  // through another producer or ends: here it changes producer at every publish, and goes
  // on publishing after the one it used last is gone.
  TopicWithSubscriber a("", "turns-a"), b("", "turns-b");
  constexpr int kEach = 300;
  Outcomes outcomes;
  for (int i = 0; i < kEach; ++i) {
    b.broker->publisher().publish_async(b.topic, Message::with_payload("b" + std::to_string(i)), outcomes.callback());
    a.broker->publisher().publish_async(a.topic, Message::with_payload("a" + std::to_string(i)), outcomes.callback());
  }
  ASSERT_TRUE(outcomes.wait_for_calls(2 * kEach, 60s)) << outcomes.calls << " of " << 2 * kEach;
  EXPECT_EQ(receive_all(*a.sub, 1 + kEach, 60s).size(), 1u + kEach);
  a.sub->close();
  a.broker->close();
  a.sub.reset();
  a.broker.reset();

  for (int i = kEach; i < 2 * kEach; ++i)
    b.broker->publisher().publish_async(b.topic, Message::with_payload("b" + std::to_string(i)), outcomes.callback());
  ASSERT_TRUE(outcomes.wait_for_calls(3 * kEach, 60s)) << outcomes.calls << " of " << 3 * kEach;
  auto payloads = receive_all(*b.sub, 1 + 2 * kEach, 60s);
  EXPECT_EQ(payloads.size(), 1u + 2 * kEach);
  EXPECT_TRUE(payloads.count("b0") && payloads.count("b599"));
  std::this_thread::sleep_for(200ms);
  std::lock_guard lock(outcomes.mutex);
  EXPECT_EQ(outcomes.ok, 3 * kEach) << outcomes.first_failure;
  EXPECT_EQ(outcomes.calls, 3 * kEach) << "a callback ran more than once";
  b.sub->close();
  b.broker->close();
}

// Publish callbacks run on the producer's poller thread: what they may do there.

TEST(KafkaProducer, ACallbackHoldingTheLastReferenceToItsBrokerLetsItGoCleanly) {
  register_scheme();
  auto broker = Broker::open(url("&linger.ms=300"));  // no report before the broker is let go below
  const std::weak_ptr<Broker> weak = broker;
  const std::string topic = unique("last-ref");
  broker->publisher().publish(topic, Message::with_payload("topic exists"));
  Outcomes outcomes;
  for (int i = 0; i < 3; ++i)
    broker->publisher().publish_async(topic, Message::with_payload("m" + std::to_string(i)),
                                      [keep = broker, done = outcomes.callback()](const Status& s) { done(s); });
  broker.reset();  // the callbacks hold the broker now; the last one let go closes it
  ASSERT_TRUE(outcomes.wait_for_calls(3, 30s));
  EXPECT_EQ(outcomes.ok, 3) << outcomes.first_failure;
  const auto until = std::chrono::steady_clock::now() + 30s;
  while (!weak.expired() && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(weak.expired()) << "the broker outlived its last reference";
}

TEST(KafkaProducer, ACallbackMayCloseItsBroker) {
  register_scheme();
  auto broker = Broker::open(url());
  const std::string topic = unique("close-in-callback");
  std::promise<Status> first;
  broker->publisher().publish_async(topic, Message::with_payload("one"), [&](const Status& s) {
    broker->close();
    first.set_value(s);
  });
  auto status = first.get_future();
  ASSERT_EQ(status.wait_for(30s), std::future_status::ready);
  EXPECT_TRUE(status.get().ok());
  try {
    broker->publisher().publish(topic, Message::with_payload("two"));
    ADD_FAILURE() << "a publish after close succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::closed) << e.what();
  }
  broker.reset();  // joins the poller, which ended after the callback
}

TEST(KafkaProducer, APublishFromACallbackFindingTheQueueFullFailsAtOnce) {
  // The queue holds one message, and the one whose report is being served counts until
  // its callback returns: a publish from that callback finds no room, which only the
  // poller thread running the callback could make.
  register_scheme();
  auto broker = Broker::open(url("&queue.buffering.max.messages=1&publish_timeout=5s"));
  const std::string topic = unique("publish-in-callback");
  broker->publisher().publish(topic, Message::with_payload("topic exists"));
  std::promise<std::pair<Status, std::chrono::steady_clock::duration>> inner;
  broker->publisher().publish_async(topic, Message::with_payload("one"), [&](const Status&) {
    const auto start = std::chrono::steady_clock::now();
    broker->publisher().publish_async(topic, Message::with_payload("two"), [&, start](const Status& s) {
      inner.set_value({s, std::chrono::steady_clock::now() - start});
    });
  });
  auto result = inner.get_future();
  ASSERT_EQ(result.wait_for(30s), std::future_status::ready);
  auto [status, took] = result.get();
  EXPECT_EQ(status.code, Errc::unavailable) << status.message;
  EXPECT_NE(status.message.find("from a publish callback"), std::string::npos) << status.message;
  EXPECT_LT(took, 1s) << "it waited for room that could not come";
  broker->close();
}

}  // namespace
}  // namespace ferry::kafka::testing
