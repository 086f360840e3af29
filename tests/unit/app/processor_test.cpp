#include "processor.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <thread>

#include "ferry/backends/memory.hpp"
#include "order.hpp"

namespace ferry::app {
namespace {

using namespace std::chrono_literals;

class ProcessorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    memory::register_scheme();
    dir_ = std::filesystem::temp_directory_path() / ("ferry-processor-test-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(dir_);
    OrderStoreOptions o;
    o.path = (dir_ / "orders.db").string();
    store_ = std::make_unique<OrderStore>(o);
    broker_ = Broker::open("memory://");
  }
  void TearDown() override {
    broker_->close();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  void publish(const std::string& id, const std::string& payload) {
    Message m;
    m.id = id;
    m.key = id;
    m.payload = payload;
    broker_->publisher().publish("orders", std::move(m));
  }

  std::string order(const std::string& id) {
    return encode_order_created(make_order_created(id, OrderRequest{"u", {"a"}}));
  }

  template <typename Pred>
  static bool eventually(Pred pred) {
    for (int i = 0; i < 500; ++i) {
      if (pred()) return true;
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  std::filesystem::path dir_;
  std::unique_ptr<OrderStore> store_;
  std::shared_ptr<Broker> broker_;
};

TEST_F(ProcessorTest, ProcessesOrdersOnceAndRejectsWhatItCannotRead) {
  OrderProcessor processor(broker_, *store_, ProcessorOptions{});
  processor.start();
  publish("o1", order("o1"));
  publish("o1", order("o1"));  // delivered twice
  publish("bad", "not json");
  publish("v2", R"({"schema_version":2,"order_id":"v2"})");
  ASSERT_TRUE(eventually([&] {
    const auto& c = processor.counters();
    return c.processed + c.duplicates + c.rejected == 4;
  }));
  processor.stop();
  EXPECT_EQ(processor.counters().processed.load(), 1u);
  EXPECT_EQ(processor.counters().duplicates.load(), 1u);
  EXPECT_EQ(processor.counters().rejected.load(), 2u);
  EXPECT_EQ(store_->find("o1")->state, "processed");

  auto dlq = broker_->subscribe({.topic = "orders.order-processor.dlq", .group = "check"});
  std::vector<std::string> reasons;
  while (auto d = dlq->receive(500ms)) {
    reasons.push_back(d->message().headers.at(header::error));
    d->ack();
  }
  ASSERT_EQ(reasons.size(), 2u);
  std::sort(reasons.begin(), reasons.end());  // the workers reject concurrently, in any order
  EXPECT_NE(reasons[0].find("not JSON"), std::string::npos) << reasons[0];
  EXPECT_NE(reasons[1].find("schema_version 2"), std::string::npos) << reasons[1];
}

TEST_F(ProcessorTest, NacksWhenTheStoreFailsAndProcessesOnRedelivery) {
  // A closed store fails every write: the handler must nack, not ack or reject.
  auto sub = broker_->subscribe({.topic = "orders", .group = "order-processor"});
  publish("o2", order("o2"));
  auto d = sub->receive(1s);
  ASSERT_TRUE(d);
  OrderStoreOptions o;
  o.path = (dir_ / "closed.db").string();
  OrderStore closed(o);
  closed.close();
  ProcessorCounters counters;
  ProcessorOptions options;
  options.first_backoff = 10ms;
  handle_order_created(*d, closed, options, counters);
  EXPECT_EQ(counters.failed.load(), 1u);
  auto again = sub->receive(2s);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->attempt(), 2);
  handle_order_created(*again, *store_, options, counters);
  EXPECT_EQ(counters.processed.load(), 1u);
  EXPECT_EQ(store_->find("o2")->state, "processed");
}

}  // namespace
}  // namespace ferry::app
