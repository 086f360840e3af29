// The RabbitMQ node goes away under a running publisher and a running consumer of one
// broker handle: stopped gracefully, then killed with SIGKILL. While it is away, publishes
// fail within their deadline with a clear error; once it is back, the same handle
// publishes again, the consumer resumes, and every message the broker confirmed arrives.

#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "ferry/backends/amqp.hpp"
#include "ferry/broker.hpp"
#include "rabbitmq_fixture.hpp"
#include "unique_name.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

const bool uses_rabbitmq = testing::use_rabbitmq();

using ferry::testing::unique_name;

// Records what a publishing loop saw.
struct PublishLog {
  std::mutex mutex;
  std::set<std::string> confirmed;
  std::vector<std::string> errors;
  std::chrono::milliseconds slowest_failure{0};

  std::size_t confirmed_count() {
    std::lock_guard lock(mutex);
    return confirmed.size();
  }
  std::size_t error_count() {
    std::lock_guard lock(mutex);
    return errors.size();
  }
};

// Publishes one message at a time until `stop`, through `broker`.
std::thread publish_until(Broker& broker, const std::string& topic, std::atomic<bool>& stop, PublishLog& log) {
  return std::thread([&broker, topic, &stop, &log] {
    int i = 0;
    while (!stop) {
      Message m = Message::with_payload("m" + std::to_string(i++));
      const std::string id = m.id;
      auto started = SteadyClock::now();
      Status s = broker.publisher().publish_future(topic, std::move(m)).get();
      auto took = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started);
      std::lock_guard lock(log.mutex);
      if (s.ok()) {
        log.confirmed.insert(id);
      } else {
        log.errors.push_back(std::string(to_string(s.code)) + ": " + s.message);
        log.slowest_failure = std::max(log.slowest_failure, took);
      }
      if (!s.ok()) std::this_thread::sleep_for(20ms);
    }
  });
}

bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds limit) {
  auto until = SteadyClock::now() + limit;
  while (!done()) {
    if (SteadyClock::now() > until) return false;
    std::this_thread::sleep_for(20ms);
  }
  return true;
}

class AmqpRestart : public ::testing::TestWithParam<bool> {};

TEST_P(AmqpRestart, PublishersFailClearlyConsumersResumeNothingConfirmedIsLost) {
  const bool crash = GetParam();
  amqp::register_scheme();
  auto& node = testing::rabbitmq();
  const std::string url = node.url("?publish_timeout=2s&connect_timeout=1s&heartbeat=2s");
  auto broker = Broker::open(url);
  const auto topic = unique_name("restart");

  std::mutex received_mutex;
  std::set<std::string> received;
  std::atomic<bool> stop_consumer{false};
  auto sub = broker->subscribe({.topic = topic, .group = "g", .prefetch = 32});
  std::thread consumer([&] {
    while (!stop_consumer) {
      auto d = sub->receive(100ms);
      if (!d) continue;
      {
        std::lock_guard lock(received_mutex);
        received.insert(d->message().id);
      }
      d->ack();
    }
  });
  auto received_count = [&] {
    std::lock_guard lock(received_mutex);
    return received.size();
  };

  PublishLog log;
  std::atomic<bool> stop_publisher{false};
  std::thread publisher = publish_until(*broker, topic, stop_publisher, log);

  ASSERT_TRUE(wait_for([&] { return log.confirmed_count() >= 200; }, 30s)) << "publishing did not get going";
  ASSERT_TRUE(broker->ping().ok());

  if (crash)
    node.kill();
  else
    node.stop();
  const auto down_at = SteadyClock::now();
  EXPECT_TRUE(wait_for([&] { return log.error_count() >= 5; }, 15s))
      << "publishes did not fail while RabbitMQ was down";
  Status ping = broker->ping();
  EXPECT_FALSE(ping.ok());
  EXPECT_NE(ping.message.find("is RabbitMQ running?"), std::string::npos) << ping.message;
  std::this_thread::sleep_for(500ms);
  const std::size_t confirmed_while_down_check = log.confirmed_count();
  node.start();
  const auto up_after = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - down_at);

  // The same handle publishes again, and the consumer resumes.
  EXPECT_TRUE(wait_for([&] { return log.confirmed_count() >= confirmed_while_down_check + 200; }, 30s))
      << "publishing did not resume after RabbitMQ came back (" << up_after.count() << " ms down)";
  EXPECT_TRUE(broker->ping().ok());
  stop_publisher = true;
  publisher.join();

  std::set<std::string> confirmed;
  {
    std::lock_guard lock(log.mutex);
    confirmed = log.confirmed;
  }
  EXPECT_TRUE(wait_for(
      [&] {
        std::lock_guard lock(received_mutex);
        for (const auto& id : confirmed)
          if (!received.count(id)) return false;
        return true;
      },
      30s))
      << "confirmed messages never arrived after the restart; received " << received_count() << " of "
      << confirmed.size();
  stop_consumer = true;
  consumer.join();

  std::lock_guard lock(log.mutex);
  ASSERT_FALSE(log.errors.empty());
  bool clear = false;
  for (const auto& e : log.errors) {
    EXPECT_EQ(e.find("guest:guest"), std::string::npos) << "a password in an error: " << e;
    EXPECT_TRUE(e.starts_with("unavailable: ") || e.starts_with("timeout: ")) << e;
    if (e.find("cannot reach amqp://guest:***@127.0.0.1:" + std::to_string(node.port()) + "/") != std::string::npos &&
        e.find("is RabbitMQ running?") != std::string::npos)
      clear = true;
  }
  EXPECT_TRUE(clear) << "no publish said the broker cannot be reached; first error: " << log.errors.front();
  EXPECT_LE(log.slowest_failure, 2s + 1500ms) << "a publish took longer than its deadline to fail";
  sub->close();
  broker->close();
}

INSTANTIATE_TEST_SUITE_P(Amqp, AmqpRestart, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Killed") : std::string("Stopped");
                         });

}  // namespace
}  // namespace ferry
