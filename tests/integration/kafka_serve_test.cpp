// `ferry serve --broker kafka://...` end to end, against the mock cluster that
// `ferry dev kafka` runs in another process: POST /orders, then GET /orders/{id} until the
// processor has handled it; /metrics shows the topic's retained messages and the
// processor group's lag read from Kafka; SIGTERM stops both processes cleanly.
#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "e2e_support.hpp"
#include "prometheus_text.hpp"

namespace ferry::e2e {
namespace {

TEST(KafkaServe, OrdersAreAcceptedAndProcessedThroughKafka) {
  TempDir dir;
  FerryProcess dev({"dev", "kafka", "--brokers", "3"}, dir.file("dev.log"), dir.path().string());
  auto url = dev.wait_for_log("broker URL: (kafka://\\S+)", 20s);
  ASSERT_TRUE(url) << "ferry dev kafka did not print its URL:\n" << dev.log();

  FerryProcess serve({"serve", "--broker", *url, "--store", dir.file("orders.db"), "--listen", "127.0.0.1:0",
                      "--threads", "2", "--ack-timeout", "5"},
                     dir.file("serve.log"), dir.path().string());
  const auto port = serve.wait_listening(40s);
  ASSERT_NE(port, 0) << serve.log();

  HttpClient client(port);
  std::vector<std::string> ids;
  for (int i = 0; i < 10; ++i) {
    auto r = client.post_json("/orders", order_body("user-" + std::to_string(i)));
    ASSERT_EQ(r.status, 202) << r.body << "\n" << serve.log();
    ids.push_back(json_field(r.body, "order_id"));
    ASSERT_FALSE(ids.back().empty()) << r.body;
  }
  auto left = wait_processed(port, ids, 40s);
  EXPECT_TRUE(left.empty()) << left.size() << " orders were never processed\n" << serve.log();

  // The backlog gauges come from Kafka's watermarks and the group's committed offsets:
  // 10 retained, and no lag once the processor's commit (every commit_interval) is in.
  const std::map<std::string, std::string> topic_labels{{"backend", "kafka"}, {"topic", "orders"}};
  std::map<std::string, std::string> group_labels = topic_labels;
  group_labels["group"] = "order-processor";
  double retained = -1, backlog = -1;
  std::string body;
  const auto metrics_deadline = std::chrono::steady_clock::now() + 20s;
  while (std::chrono::steady_clock::now() < metrics_deadline) {
    auto r = client.get("/metrics");
    ASSERT_EQ(r.status, 200);
    body = r.body;
    auto parsed = ferry::testing::parse_prometheus(body);
    try {
      retained = parsed.value("ferry_topic_messages", topic_labels);
      backlog = parsed.value("ferry_backlog", group_labels);
    } catch (const std::exception&) {
      // not reported yet
    }
    if (retained == 10 && backlog == 0) break;
    std::this_thread::sleep_for(200ms);
  }
  EXPECT_EQ(retained, 10) << body;
  EXPECT_EQ(backlog, 0) << body;

  serve.signal(SIGTERM);
  EXPECT_EQ(serve.wait_exit(30s), 0) << serve.log();
  dev.signal(SIGTERM);
  EXPECT_EQ(dev.wait_exit(10s), 0) << dev.log();
}

}  // namespace
}  // namespace ferry::e2e
