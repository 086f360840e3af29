// `ferry serve --broker amqp://...` end to end, against the fixture's RabbitMQ node: POST
// /orders, then GET /orders/{id} until the processor has handled it; the orders travel
// through RabbitMQ queues, whose depth /metrics reports; SIGTERM stops the service cleanly.

#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "e2e_support.hpp"
#include "prometheus_text.hpp"
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
  auto left = wait_processed(port, ids, 30s);
  EXPECT_TRUE(left.empty()) << left.size() << " orders were never processed\n" << serve.log();
  EXPECT_EQ(client.get("/readyz").status, 200);

  // The depth of the processor's queue reaches /metrics as its group's backlog.
  auto scrape = [&] { return client.get("/metrics").body; };
  auto backlog = ferry::testing::wait_for_sample(
      scrape, "ferry_backlog", {{"backend", "amqp"}, {"topic", "orders"}, {"group", "order-processor"}}, 0, 10s);
  EXPECT_EQ(backlog, 0.0) << scrape();

  serve.signal(SIGTERM);
  EXPECT_EQ(serve.wait_exit(30s), 0) << serve.log();
  EXPECT_EQ(serve.log().find("guest:guest"), std::string::npos) << "the password was logged:\n" << serve.log();
}

}  // namespace
}  // namespace ferry::e2e
