// The producer under pressure: more publishes than librdkafka's queue holds, from several
// threads, one message per call and in batches larger than the queue, all complete and
// arrive; a batch with a message the producer refuses fails once, and the messages queued
// before it are still delivered.
#include <gtest/gtest.h>

#include <atomic>
#include <condition_variable>
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

}  // namespace
}  // namespace ferry::kafka::testing
