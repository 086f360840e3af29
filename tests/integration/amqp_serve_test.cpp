// `ferry serve --broker amqp://...` end to end, against the fixture's RabbitMQ node: POST
// /orders, then GET /orders/{id} until the processor has handled it; the orders travel
// through RabbitMQ queues; SIGTERM stops the service cleanly.

#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "e2e_support.hpp"
#include "rabbitmq_fixture.hpp"

namespace ferry::e2e {
namespace {

const bool uses_rabbitmq = ferry::testing::use_rabbitmq();

TEST(AmqpServe, OrdersAreAcceptedAndProcessedThroughRabbitMq) {
  TempDir dir;
  const std::string url = ferry::testing::rabbitmq().url();
  FerryProcess serve({"serve", "--broker", url, "--store", dir.file("orders.db"), "--listen", "127.0.0.1:0",
                      "--threads", "2", "--ack-timeout", "5"},
                     dir.file("serve.log"), dir.path().string());
  const auto port = serve.wait_listening(40s);
  ASSERT_NE(port, 0) << serve.log();

  HttpClient client(port);
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    auto r = client.post_json("/orders", order_body("user-" + std::to_string(i)));
    ASSERT_EQ(r.status, 202) << r.body << "\n" << serve.log();
    ids.push_back(json_field(r.body, "order_id"));
    ASSERT_FALSE(ids.back().empty()) << r.body;
  }
  std::vector<std::string> left = ids;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
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
  EXPECT_EQ(client.get("/readyz").status, 200);

  serve.signal(SIGTERM);
  EXPECT_EQ(serve.wait_exit(30s), 0) << serve.log();
  EXPECT_EQ(serve.log().find("guest:guest"), std::string::npos) << "the password was logged:\n" << serve.log();
}

}  // namespace
}  // namespace ferry::e2e
