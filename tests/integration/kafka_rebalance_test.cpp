// A consumer group on the mock cluster hands its partitions over: a second member joins
// (another Broker handle, as another process would be), then the first leaves, while
// messages keep coming. Every confirmed message is processed; none is lost. Duplicates
// are allowed (at-least-once): the mock refuses commits during a rebalance.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "ferry/broker.hpp"
#include "kafka_support.hpp"

namespace ferry::kafka::testing {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Receives and acks on its own thread, recording what it processed.
class Worker {
 public:
  Worker(std::shared_ptr<Broker> broker, const std::string& topic, const std::string& group)
      : broker_(std::move(broker)) {
    sub_ = broker_->subscribe({.topic = topic, .group = group, .prefetch = 32});
    thread_ = std::thread([this] {
      while (!stop_) {
        auto d = sub_->receive(50ms);
        if (!d) continue;
        std::this_thread::sleep_for(1ms);  // some work
        {
          std::lock_guard lock(mutex_);
          ++processed_[d->message().id];
        }
        d->ack();
      }
    });
  }
  ~Worker() { leave(); }
  // Stops receiving and closes its broker handle: the member leaves the group.
  void leave() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
    if (sub_) sub_->close();
    if (broker_) broker_->close();
  }
  std::map<std::string, int> processed() const {
    std::lock_guard lock(mutex_);
    return processed_;
  }
  std::size_t count() const {
    std::lock_guard lock(mutex_);
    return processed_.size();
  }

 private:
  std::shared_ptr<Broker> broker_;
  std::unique_ptr<Subscriber> sub_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mutex_;
  std::map<std::string, int> processed_;
};

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  const auto until = SteadyClock::now() + limit;
  while (!done() && SteadyClock::now() < until) std::this_thread::sleep_for(20ms);
  return done();
}

TEST(KafkaRebalance, SecondMemberJoinsFirstLeavesNothingLost) {
  register_scheme();
  const std::string u = url("&commit_interval=100ms&heartbeat.interval.ms=500");
  const std::string topic = unique("rebalance");
  const std::string group = unique("workers");
  auto producer = Broker::open(u);

  std::mutex sent_mutex;
  std::set<std::string> confirmed;
  std::atomic<bool> stop_publishing{false};
  std::atomic<int> failures{0};
  std::thread publisher([&] {
    for (int i = 0; !stop_publishing; ++i) {
      Message m = Message::with_payload("job-" + std::to_string(i));
      m.key = "key-" + std::to_string(i % 10);
      const std::string id = m.id;
      try {
        producer->publisher().publish(topic, std::move(m));
        std::lock_guard lock(sent_mutex);
        confirmed.insert(id);
      } catch (const std::exception&) {
        ++failures;
      }
      std::this_thread::sleep_for(5ms);
    }
  });
  auto sent = [&] {
    std::lock_guard lock(sent_mutex);
    return confirmed.size();
  };

  auto first = std::make_unique<Worker>(Broker::open(u), topic, group);
  ASSERT_TRUE(wait_for([&] { return first->count() >= 50; }, 20s)) << "the first member processed nothing";

  auto second = std::make_unique<Worker>(Broker::open(u), topic, group);  // joins: a rebalance
  const std::size_t first_before = first->count();
  ASSERT_TRUE(wait_for([&] { return second->count() >= 20; }, 30s)) << "the second member never got a partition";
  EXPECT_TRUE(wait_for([&] { return first->count() > first_before + 20; }, 30s))
      << "the first member got nothing after the rebalance (partitions should be shared)";

  first->leave();  // its partitions go to the second member
  const std::size_t second_before = second->count();
  const std::size_t sent_at_leave = sent();
  ASSERT_TRUE(wait_for([&] { return sent() > sent_at_leave + 100; }, 30s));
  stop_publishing = true;
  publisher.join();
  EXPECT_EQ(failures.load(), 0);

  std::set<std::string> want;
  {
    std::lock_guard lock(sent_mutex);
    want = confirmed;
  }
  auto processed_all = [&] {
    auto a = first->processed(), b = second->processed();
    for (const auto& id : want)
      if (!a.count(id) && !b.count(id)) return false;
    return true;
  };
  EXPECT_TRUE(wait_for(processed_all, 40s)) << "confirmed messages were never processed";
  auto a = first->processed(), b = second->processed();
  std::size_t lost = 0, duplicates = 0;
  for (const auto& id : want) {
    int n = (a.count(id) ? a[id] : 0) + (b.count(id) ? b[id] : 0);
    if (n == 0) ++lost;
    if (n > 1) ++duplicates;
  }
  EXPECT_EQ(lost, 0u) << lost << " of " << want.size() << " confirmed messages were lost";
  EXPECT_GT(second->count(), second_before) << "the second member took over nothing";
  RecordProperty("messages", static_cast<int>(want.size()));
  RecordProperty("duplicates", static_cast<int>(duplicates));
  std::cout << want.size() << " messages; first member " << a.size() << ", second " << b.size() << ", " << duplicates
            << " processed twice (redelivered after a rebalance)\n";
  second->leave();
  producer->close();
}

}  // namespace
}  // namespace ferry::kafka::testing
