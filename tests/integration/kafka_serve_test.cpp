// `ferry serve --broker kafka://...` end to end, against the mock cluster that
// `ferry dev kafka` runs in another process: POST /orders, then GET /orders/{id} until the
// processor has handled it; SIGTERM stops both processes cleanly.
#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "e2e_support.hpp"

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
  std::vector<std::string> left = ids;
  const auto deadline = std::chrono::steady_clock::now() + 40s;
  while (!left.empty() && std::chrono::steady_clock::now() < deadline) {
    std::vector<std::string> still;
    for (const auto& id : left) {
      auto r = client.get("/orders/" + id);
      if (r.status != 200 || json_field(r.body, "state") != "processed") still.push_back(id);
    }
    left.swap(still);
    if (!left.empty()) std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(left.empty()) << left.size() << " orders were never processed\n" << serve.log();

  serve.signal(SIGTERM);
  EXPECT_EQ(serve.wait_exit(30s), 0) << serve.log();
  dev.signal(SIGTERM);
  EXPECT_EQ(dev.wait_exit(10s), 0) << dev.log();
}

}  // namespace
}  // namespace ferry::e2e
