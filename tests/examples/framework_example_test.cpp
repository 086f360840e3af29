// A web framework example (examples/frameworks/) as a process, with the memory and
// sqlite brokers: orders are published and processed, bad input gets a clear 4xx, and
// SIGTERM loses no order that was answered 202.
//
// Built once per framework: FERRY_BINARY is the example's executable and
// FERRY_FRAMEWORK its name, which is also the first segment of its routes.
//
// memory:// lives inside the example, so "processed" is read from the example itself:
// its consumer marks each order it consumed, and GET /<framework>/orders/<backend>/<id>
// says "processed". For sqlite:// the test also reads the topic from the broker file with
// a subscriber of its own (group "audit"), so that publication is seen from outside.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <boost/json.hpp>
#include <mutex>
#include <thread>

#include "e2e_support.hpp"
#include "ferry/backends/sqlite.hpp"
#include "ferry/broker.hpp"

namespace ferry::e2e {
namespace {

const std::string kFramework = FERRY_FRAMEWORK;

class FrameworkExample : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { sqlite::register_scheme(); }

  std::string sqlite_url() const { return "sqlite://" + dir_.file("ferry.db"); }
  static std::string route(const std::string& backend) { return "/" + kFramework + "/orders/" + backend; }

  // Starts the example on a free port with memory=memory:// and sqlite=<temp file>.
  std::uint16_t start() {
    example_ = std::make_unique<FerryProcess>(
        std::vector<std::string>{"--listen", "127.0.0.1:0", "--broker", "memory=memory://", "--broker",
                                 "sqlite=" + sqlite_url()},
        dir_.file("example.log"), dir_.path().string());
    auto port = example_->wait_listening();
    EXPECT_NE(port, 0) << example_->log();
    return port;
  }

  // A subscriber to the example's sqlite topic, made before any order is posted so that
  // its group sees every order.
  std::unique_ptr<Subscriber> audit() {
    audit_broker_ = Broker::open(sqlite_url());
    return audit_broker_->subscribe({.topic = "orders", .group = "audit"});
  }

  // The OrderCreated events the audit subscriber receives, by order id, until it has seen
  // every id of `want` or the timeout passes.
  static std::map<std::string, boost::json::object> read_events(Subscriber& subscriber,
                                                                const std::vector<std::string>& want,
                                                                std::chrono::milliseconds timeout) {
    std::map<std::string, boost::json::object> events;
    auto seen_all = [&] {
      for (const auto& id : want)
        if (!events.count(id)) return false;
      return true;
    };
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!seen_all() && std::chrono::steady_clock::now() < deadline) {
      auto delivery = subscriber.receive(200ms);
      if (!delivery) continue;
      auto value = boost::json::parse(delivery->message().payload);
      auto& object = value.as_object();
      events[std::string(object.at("order_id").as_string())] = object;
      delivery->ack();
    }
    return events;
  }

  // Polls GET /<framework>/orders/<backend>/<id> until the order is processed.
  static std::string wait_state(HttpClient& client, const std::string& backend, const std::string& id,
                                const std::string& state, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    std::string last;
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = client.get(route(backend) + "/" + id);
      last = json_field(r.body, "state");
      if (r.status == 200 && last == state) return last;
      std::this_thread::sleep_for(50ms);
    }
    return last;
  }

  void stop_cleanly() {
    example_->signal(SIGTERM);
    auto code = example_->wait_exit(20s);
    ASSERT_TRUE(code.has_value()) << "the example did not exit after SIGTERM\n" << example_->log();
    EXPECT_EQ(*code, 0) << example_->log();
  }

  TempDir dir_;
  std::unique_ptr<FerryProcess> example_;
  std::shared_ptr<Broker> audit_broker_;
};

TEST_F(FrameworkExample, PublishesAndProcessesAnOrderThroughEveryBroker) {
  auto port = start();
  ASSERT_NE(port, 0);
  auto audit = this->audit();
  HttpClient client(port);
  std::map<std::string, std::string> ids;  // backend → order id
  for (const std::string backend : {"memory", "sqlite"}) {
    auto r = client.post_json(route(backend), order_body("user-" + backend, 3));
    ASSERT_EQ(r.status, 202) << backend << ": " << r.body << r.error << "\n" << example_->log();
    EXPECT_EQ(r.headers["content-type"], "application/json") << backend;
    EXPECT_EQ(json_field(r.body, "status"), "accepted") << r.body;
    EXPECT_EQ(json_field(r.body, "backend"), backend) << r.body;
    ids[backend] = json_field(r.body, "order_id");
    ASSERT_EQ(ids[backend].size(), 36u) << r.body;
  }
  EXPECT_NE(ids["memory"], ids["sqlite"]);

  // Processed by the example's own consumer of each broker.
  for (const auto& [backend, id] : ids) {
    EXPECT_EQ(wait_state(client, backend, id, "processed", 15s), "processed") << backend << "\n" << example_->log();
    EXPECT_NE(example_->log().find("processed order " + id + " from " + backend), std::string::npos) << example_->log();
  }
  // An order is known only through the broker that carried it.
  EXPECT_EQ(client.get(route("memory") + "/" + ids["sqlite"]).status, 404);

  // Published: the sqlite topic holds exactly the sqlite order, as an OrderCreated v1 event.
  auto events = read_events(*audit, {ids["sqlite"]}, 10s);
  ASSERT_EQ(events.size(), 1u);
  ASSERT_EQ(events.count(ids["sqlite"]), 1u);
  const auto& event = events[ids["sqlite"]];
  EXPECT_EQ(event.at("schema_version").as_int64(), 1);
  EXPECT_EQ(event.at("user_id").as_string(), "user-sqlite");
  EXPECT_EQ(event.at("product_ids").as_array().size(), 3u);
  EXPECT_TRUE(event.at("timestamp").is_int64());
  EXPECT_FALSE(event.at("created_at").as_string().empty());
  EXPECT_FALSE(audit->receive(300ms).has_value()) << "a second event was published";
  audit->close();

  stop_cleanly();
  auto log = example_->log();
  EXPECT_NE(log.find("closed memory: published 1, processed 1, rejected 0"), std::string::npos) << log;
  EXPECT_NE(log.find("closed sqlite: published 1, processed 1, rejected 0"), std::string::npos) << log;
}

TEST_F(FrameworkExample, BadInputGetsAClearClientErrorAndPublishesNothing) {
  auto port = start();
  ASSERT_NE(port, 0);
  HttpClient client(port);
  auto expect_error = [&](const HttpResult& r, int status, const std::string& error, const std::string& what) {
    EXPECT_EQ(r.status, status) << what << ": " << r.body << r.error;
    EXPECT_EQ(json_field(r.body, "error"), error) << what << ": " << r.body;
    EXPECT_FALSE(json_field(r.body, "detail").empty()) << what << ": " << r.body;
  };
  const std::string good = order_body("u1");

  expect_error(client.post_json(route("memory"), "{\"user_id\": \"u1\", "), 400, "malformed_json", "truncated");
  expect_error(client.post_json(route("sqlite"), "not json"), 400, "malformed_json", "not JSON");
  auto unknown = client.post_json(route("kafka"), good);
  expect_error(unknown, 404, "unknown_backend", "a backend that is not configured");
  EXPECT_NE(json_field(unknown.body, "detail").find("memory, sqlite"), std::string::npos) << unknown.body;
  expect_error(client.request("POST", route("memory"), good, {{"Content-Type", "text/plain"}}), 415,
               "unsupported_media_type", "text/plain");
  const std::vector<std::pair<std::string, std::string>> invalid = {
      {"[]", "an array"},
      {R"({"product_ids":["a"]})", "no user_id"},
      {R"({"user_id":"u"})", "no product_ids"},
      {R"({"user_id":5,"product_ids":["a"]})", "numeric user_id"},
      {R"({"user_id":"u","product_ids":[]})", "no products"},
      {R"({"user_id":"u","product_ids":[""]})", "empty product id"},
      {R"({"user_id":"u","product_ids":["a"],"coupon":"x"})", "unknown field"},
  };
  for (const auto& [body, what] : invalid)
    expect_error(client.post_json(route("sqlite"), body), 422, "invalid_order", what);

  expect_error(client.get(route("memory") + "/no-such-order"), 404, "unknown_order", "an unknown order");
  expect_error(client.get(route("nsq") + "/no-such-order"), 404, "unknown_backend", "GET, unknown backend");
  expect_error(client.post_json("/orders", good), 404, "no_route", "another path");

  // The connection is still usable, and a good order still goes through.
  auto r = client.post_json(route("memory"), good);
  EXPECT_EQ(r.status, 202) << r.body << r.error;

  stop_cleanly();
  auto log = example_->log();
  EXPECT_NE(log.find("closed memory: published 1, processed 1, rejected 0"), std::string::npos) << log;
  EXPECT_NE(log.find("closed sqlite: published 0, processed 0, rejected 0"), std::string::npos) << log;
}

TEST_F(FrameworkExample, SigtermUnderLoadKeepsEveryAcceptedOrder) {
  auto port = start();
  ASSERT_NE(port, 0);
  auto audit = this->audit();

  std::mutex mutex;
  std::vector<std::string> accepted;
  std::atomic<int> unexpected{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      HttpClient client(port);
      for (int i = 0; !stop; ++i) {
        auto r = client.post_json(route(c % 2 ? "sqlite" : "memory"),
                                  order_body("load-" + std::to_string(c) + "-" + std::to_string(i)));
        if (r.status == 0) return;  // the server is gone
        if (r.status == 202) {
          if (c % 2) {
            std::lock_guard lock(mutex);
            accepted.push_back(json_field(r.body, "order_id"));
          }
        } else if (r.status != 503) {
          ++unexpected;
        }
      }
    });
  }
  auto until = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < until) {
    {
      std::lock_guard lock(mutex);
      if (accepted.size() >= 40) break;
    }
    std::this_thread::sleep_for(20ms);
  }
  example_->signal(SIGTERM);
  auto code = example_->wait_exit(20s);
  stop = true;
  for (auto& t : clients) t.join();
  ASSERT_TRUE(code.has_value()) << example_->log();
  EXPECT_EQ(*code, 0) << example_->log();
  EXPECT_EQ(unexpected.load(), 0);
  ASSERT_FALSE(accepted.empty()) << example_->log();

  // Every order answered 202 is in the broker file.
  auto events = read_events(*audit, accepted, 20s);
  std::size_t missing = 0;
  for (const auto& id : accepted) missing += events.count(id) ? 0 : 1;
  EXPECT_EQ(missing, 0u) << "of " << accepted.size() << " accepted orders";
  EXPECT_NE(example_->log().find("closed sqlite: published"), std::string::npos) << example_->log();
}

}  // namespace
}  // namespace ferry::e2e
