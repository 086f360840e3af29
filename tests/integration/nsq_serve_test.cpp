// `ferry serve --broker nsq://...` end to end against the NSQ test peer: orders posted over
// HTTP are published to NSQ, consumed by the order processor in the same process and
// show up as processed; `ferry consume` as a second process shares the channel; a peer
// that goes away gets 503 and recovers.

#include <gtest/gtest.h>
#include <signal.h>

#include <thread>

#include "e2e_support.hpp"
#include "prometheus_text.hpp"
#include "nsq_peer.hpp"

namespace ferry::e2e {
namespace {

class NsqServe : public ::testing::Test {
 protected:
  void SetUp() override { peer_.start(); }

  std::unique_ptr<FerryProcess> start(const std::string& command, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{
        command,         "--store", dir_.file("orders.db"), "--broker", broker_url(), "--ack-timeout", "2"};
    if (command == "serve") args.insert(args.end(), {"--listen", "127.0.0.1:0", "--threads", "2"});
    args.insert(args.end(), extra.begin(), extra.end());
    return std::make_unique<FerryProcess>(args, dir_.file(command + std::to_string(++started_) + ".log"),
                                          dir_.path().string());
  }

  std::string broker_url() const {
    return peer_.url() + "?max_backoff=200ms&http=127.0.0.1:" + std::to_string(peer_.http_port());
  }

  static nsq_peer::PeerOptions with_http() {
    nsq_peer::PeerOptions o;
    o.http_port = 0;  // nsqd's HTTP API, for the backlog in /metrics
    return o;
  }

  nsq_peer::Peer peer_{with_http()};
  TempDir dir_;
  int started_ = 0;
};

TEST_F(NsqServe, OrdersArePublishedToNsqAndProcessed) {
  auto serve = start("serve");
  auto port = serve->wait_listening();
  ASSERT_NE(port, 0) << serve->log();
  HttpClient client(port);
  std::vector<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    auto r = client.post_json("/orders", order_body("nsq-user-" + std::to_string(i)));
    ASSERT_EQ(r.status, 202) << r.body << r.error << serve->log();
    ids.push_back(json_field(r.body, "order_id"));
  }
  auto left = wait_processed(port, ids, 20s);
  EXPECT_TRUE(left.empty()) << left.size() << " orders not processed\n" << serve->log();

  bool found = false;
  for (const auto& t : peer_.stats().topics) {
    if (t.name != "orders") continue;
    found = true;
    EXPECT_EQ(t.message_count, ids.size());
    for (const auto& c : t.channels) EXPECT_EQ(c.finish_count, ids.size()) << "channel " << c.name;
  }
  EXPECT_TRUE(found) << "nothing was published to the peer's 'orders' topic";

  // The channel's depth from nsqd's /stats reaches /metrics as the group's backlog.
  auto scrape = [&] { return client.get("/metrics").body; };
  auto backlog = ferry::testing::wait_for_sample(
      scrape, "ferry_backlog", {{"backend", "nsq"}, {"topic", "orders"}, {"group", "order-processor"}}, 0, 10s);
  EXPECT_EQ(backlog, 0.0) << scrape();

  serve->signal(SIGTERM);
  auto code = serve->wait_exit(15s);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << serve->log();
}

TEST_F(NsqServe, ASeparateConsumeProcessSharesTheChannel) {
  auto serve = start("serve", {"--no-processor"});
  auto port = serve->wait_listening();
  ASSERT_NE(port, 0) << serve->log();
  auto consume = start("consume");
  HttpClient client(port);
  std::vector<std::string> ids;
  for (int i = 0; i < 20; ++i) {
    auto r = client.post_json("/orders", order_body("u" + std::to_string(i)));
    ASSERT_EQ(r.status, 202) << r.body << r.error;
    ids.push_back(json_field(r.body, "order_id"));
  }
  auto left = wait_processed(port, ids, 20s);
  EXPECT_TRUE(left.empty()) << left.size() << " orders not processed\n" << consume->log();
  consume->signal(SIGTERM);
  EXPECT_EQ(consume->wait_exit(15s).value_or(-1), 0) << consume->log();

  // With no consumer, what is posted now waits in the channel: its depth in nsqd's /stats
  // is the group's backlog in /metrics.
  for (int i = 0; i < 5; ++i) ASSERT_EQ(client.post_json("/orders", order_body("later")).status, 202);
  auto scrape = [&] { return client.get("/metrics").body; };
  auto backlog = ferry::testing::wait_for_sample(
      scrape, "ferry_backlog", {{"backend", "nsq"}, {"topic", "orders"}, {"group", "order-processor"}}, 5, 10s);
  EXPECT_EQ(backlog, 5.0) << scrape();
  serve->signal(SIGTERM);
  EXPECT_EQ(serve->wait_exit(15s).value_or(-1), 0) << serve->log();
}

TEST_F(NsqServe, APeerThatGoesAwayGets503AndTheServiceRecovers) {
  auto serve = start("serve");
  auto port = serve->wait_listening();
  ASSERT_NE(port, 0) << serve->log();
  HttpClient client(port);
  auto first = client.post_json("/orders", order_body("before"));
  ASSERT_EQ(first.status, 202) << first.body;

  peer_.stop();
  auto down = client.post_json("/orders", order_body("while down"));
  EXPECT_EQ(down.status, 503) << down.body;
  EXPECT_TRUE(down.headers.count("retry-after")) << down.body;
  peer_.start();

  std::string id;
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (id.empty() && std::chrono::steady_clock::now() < deadline) {
    auto r = client.post_json("/orders", order_body("after"));
    if (r.status == 202)
      id = json_field(r.body, "order_id");
    else
      std::this_thread::sleep_for(100ms);
  }
  ASSERT_FALSE(id.empty()) << "publishing did not recover after the peer came back\n" << serve->log();
  // The peer forgot its topics: the processor's subscription comes back with SUB and
  // receives the new order (the first one was lost with the peer's memory, as with nsqd).
  auto left = wait_processed(port, {id}, 15s);
  EXPECT_TRUE(left.empty()) << "the processor did not resume after the peer restarted\n" << serve->log();
  serve->signal(SIGTERM);
  EXPECT_EQ(serve->wait_exit(15s).value_or(-1), 0) << serve->log();
}

TEST_F(NsqServe, FerryDevNsqServesAPeerThatFerryPublishCanUse) {
  FerryProcess dev({"dev", "nsq"}, dir_.file("dev.log"), dir_.path().string());
  auto url = dev.wait_for_log(R"(broker URL: (nsq://127\.0\.0\.1:[0-9]+))", 10s);
  ASSERT_TRUE(url) << dev.log();
  auto published = run_ferry({"publish", "--broker", *url, "-t", "greetings", "hello", "world"}, dir_.path().string());
  EXPECT_EQ(published.exit_code, 0) << published.output;
  dev.signal(SIGTERM);
  EXPECT_EQ(dev.wait_exit(10s).value_or(-1), 0) << dev.log();
}

}  // namespace
}  // namespace ferry::e2e
