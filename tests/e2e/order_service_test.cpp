// `ferry serve` and `ferry consume` as processes: the order API, the processor, shutdown
// and crash recovery, on the sqlite:// backend.
#include <gtest/gtest.h>
#include <signal.h>
#include <sqlite3.h>

#include <algorithm>
#include <atomic>
#include <boost/json.hpp>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "prometheus_text.hpp"
#include "e2e_support.hpp"

namespace ferry::e2e {
namespace {

// One service installation: a broker file and an order store in a temporary directory.
class OrderService : public ::testing::Test {
 protected:
  std::string broker_url() const { return "sqlite://" + dir_.file("ferry.db"); }
  std::string store_path() const { return dir_.file("orders.db"); }

  std::unique_ptr<FerryProcess> start(const std::string& command, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{command, "--store", store_path()};
    if (std::find(extra.begin(), extra.end(), "--broker") == extra.end())
      args.insert(args.end(), {"--broker", broker_url()});
    // A short lease, so that orders leased to a killed process come back quickly.
    args.insert(args.end(), {"--ack-timeout", "2"});
    if (command == "serve") {
      args.insert(args.end(), {"--listen", "127.0.0.1:0", "--threads", "2"});
    }
    args.insert(args.end(), extra.begin(), extra.end());
    std::string log = dir_.file(command + "-" + std::to_string(++started_) + ".log");
    return std::make_unique<FerryProcess>(args, log, dir_.path().string());
  }

  // Starts `ferry serve` and waits for its listening line.
  std::pair<std::unique_ptr<FerryProcess>, std::uint16_t> serve(std::vector<std::string> extra = {}) {
    auto p = start("serve", std::move(extra));
    auto port = p->wait_listening();
    EXPECT_NE(port, 0) << p->log();
    return {std::move(p), port};
  }

  // Runs `clients` threads that POST orders until `stop` is set or the server goes away;
  // collects the ids that got 202 and counts the other answers.
  struct Load {
    std::mutex mutex;
    std::vector<std::string> accepted;
    std::atomic<int> other{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> threads;

    void start(std::uint16_t port, int clients) {
      for (int c = 0; c < clients; ++c) {
        threads.emplace_back([this, port, c] {
          HttpClient client(port);
          for (int i = 0; !stop.load(); ++i) {
            auto r = client.post_json("/orders", order_body("load-" + std::to_string(c) + "-" + std::to_string(i)));
            if (r.status == 0) return;  // the server is gone
            if (r.status == 202) {
              std::lock_guard lock(mutex);
              accepted.push_back(json_field(r.body, "order_id"));
            } else {
              ++other;
            }
          }
        });
      }
    }
    void join() {
      stop = true;
      for (auto& t : threads)
        if (t.joinable()) t.join();
    }
    ~Load() { join(); }
  };

  TempDir dir_;
  int started_ = 0;
};

std::uint64_t parse_number(const std::string& text, const std::string& pattern) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex(pattern))) return ~0ull;
  return std::stoull(m[1].str());
}

// How many OrderCreated events the broker holds (nothing consumes them with --no-processor).
std::uint64_t published(const std::string& broker, const std::string& cwd) {
  auto r = run_ferry({"stats", "--json", "--broker", broker}, cwd);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto line = r.output.substr(r.output.find('{'));
  auto v = boost::json::parse(line);
  for (const auto& t : v.at("topics").as_array())
    if (t.at("topic").as_string() == "orders") return t.at("messages").to_number<std::uint64_t>();
  return 0;
}

TEST_F(OrderService, ThousandOrdersFromThirtyTwoClientsAreEachProcessedOnce) {
  auto [serve, port] = this->serve();
  ASSERT_NE(port, 0);
  constexpr int kOrders = 1000;
  std::vector<std::string> ids(kOrders);
  std::atomic<int> next{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 32; ++c) {
    clients.emplace_back([&, port = port] {
      HttpClient client(port);
      for (int i; (i = next++) < kOrders;) {
        auto r = client.post_json("/orders", order_body("user-" + std::to_string(i), 1 + i % 5));
        if (r.status == 202 && json_field(r.body, "status") == "accepted")
          ids[i] = json_field(r.body, "order_id");
        else
          ++failures;
      }
    });
  }
  for (auto& t : clients) t.join();
  ASSERT_EQ(failures.load(), 0);
  std::set<std::string> unique(ids.begin(), ids.end());
  ASSERT_EQ(unique.size(), static_cast<std::size_t>(kOrders));

  auto left = wait_processed(port, ids, 60s);
  EXPECT_TRUE(left.empty()) << left.size() << " order(s) not processed, e.g. " << left.front();

  serve->signal(SIGTERM);
  auto code = serve->wait_exit(15s);
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0) << serve->log();
  auto log = serve->log();
  EXPECT_EQ(parse_number(log, R"(processor: processed ([0-9]+))"), static_cast<std::uint64_t>(kOrders)) << log;
  EXPECT_EQ(parse_number(log, R"(processor: processed [0-9]+, duplicates ([0-9]+))"), 0u) << log;
  EXPECT_EQ(store_count(store_path(), "SELECT COUNT(*) FROM processed_messages"), kOrders);
  EXPECT_EQ(store_count(store_path(), "SELECT COUNT(*) FROM orders WHERE state = 'processed'"), kOrders);
}

TEST_F(OrderService, BadInputGetsItsStatusAndPublishesNothing) {
  auto [serve, port] = this->serve({"--no-processor"});
  ASSERT_NE(port, 0);
  HttpClient client(port);
  auto expect_error = [](const HttpResult& r, int status, const std::string& what) {
    EXPECT_EQ(r.status, status) << what << ": " << r.body << r.error;
    EXPECT_EQ(r.headers.count("content-type") ? r.headers.at("content-type") : "", "application/json") << what;
    EXPECT_FALSE(json_field(r.body, "error").empty()) << what << ": " << r.body;
    EXPECT_FALSE(json_field(r.body, "detail").empty()) << what << ": " << r.body;
  };
  const std::string good = order_body("u1");

  expect_error(client.request("POST", "/orders", good, {{"Content-Type", "text/plain"}}), 415, "text/plain");
  expect_error(client.request("POST", "/orders", good), 415, "no content type");
  expect_error(client.post_json("/orders", "{\"user_id\": \"u1\", "), 400, "truncated JSON");
  expect_error(client.post_json("/orders", "not json"), 400, "not JSON");
  const std::vector<std::pair<std::string, std::string>> invalid = {
      {"[]", "an array"},
      {R"({"product_ids":["a"]})", "no user_id"},
      {R"({"user_id":"u"})", "no product_ids"},
      {R"({"user_id":5,"product_ids":["a"]})", "numeric user_id"},
      {R"({"user_id":"","product_ids":["a"]})", "empty user_id"},
      {R"({"user_id":")" + std::string(129, 'x') + R"(","product_ids":["a"]})", "long user_id"},
      {R"({"user_id":"u","product_ids":[]})", "no products"},
      {R"({"user_id":"u","product_ids":"a"})", "product_ids a string"},
      {R"({"user_id":"u","product_ids":[1]})", "numeric product id"},
      {R"({"user_id":"u","product_ids":[""]})", "empty product id"},
      {order_body("u", 101), "101 products"},
      {R"({"user_id":"u","product_ids":["a"],"coupon":"x"})", "unknown field"},
  };
  for (const auto& [body, what] : invalid) expect_error(client.post_json("/orders", body), 422, what);

  std::string big(70'000, 'x');
  auto r413 = client.raw("POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                         std::to_string(big.size()) + "\r\n\r\n" + big);
  EXPECT_EQ(r413.status, 413) << r413.error;
  EXPECT_FALSE(json_field(r413.body, "error").empty()) << r413.body;

  expect_error(client.post_json("/orders/nosuchbroker", good), 404, "unknown backend");
  expect_error(client.get("/orders/00000000-0000-0000-0000-000000000000"), 404, "unknown order");
  expect_error(client.get("/nowhere"), 404, "unknown route");

  EXPECT_EQ(published(broker_url(), dir_.path().string()), 0u);

  // A good order, then the Idempotency-Key cases.
  auto first = client.post_json("/orders", good);
  ASSERT_EQ(first.status, 202) << first.body;
  auto keyed = client.post_json("/orders", good, {{"Idempotency-Key", "key-1"}});
  ASSERT_EQ(keyed.status, 202) << keyed.body;
  auto id = json_field(keyed.body, "order_id");
  auto again = client.post_json("/orders", R"({ "product_ids": ["sku-0", "sku-1"], "user_id": "u1" })",
                                {{"Idempotency-Key", "key-1"}});
  EXPECT_EQ(again.status, 202) << again.body;
  EXPECT_EQ(json_field(again.body, "order_id"), id);
  auto other = client.post_json("/orders", order_body("u2"), {{"Idempotency-Key", "key-1"}});
  expect_error(other, 409, "same key, other body");

  // Concurrent duplicates: all get the one order id.
  std::vector<std::string> ids(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i, port = port] {
      HttpClient c(port);
      auto r = c.post_json("/orders", order_body("u3"), {{"Idempotency-Key", "key-2"}});
      if (r.status == 202) ids[i] = json_field(r.body, "order_id");
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& x : ids) EXPECT_EQ(x, ids.front());
  EXPECT_FALSE(ids.front().empty());

  auto order = client.get("/orders/" + id);
  EXPECT_EQ(order.status, 200);
  EXPECT_EQ(json_field(order.body, "state"), "accepted") << order.body;

  EXPECT_EQ(published(broker_url(), dir_.path().string()), 3u);
  serve->signal(SIGTERM);
  EXPECT_EQ(serve->wait_exit(15s), 0);
}

TEST_F(OrderService, PostsThroughTheNamedBroker) {
  std::string second = "sqlite://" + dir_.file("second.db");
  std::vector<std::string> brokers{"--broker", "main=" + broker_url(), "--broker", "second=" + second};
  auto serve_args = brokers;
  serve_args.push_back("--no-processor");
  auto p = start("serve", serve_args);
  auto port = p->wait_listening();
  ASSERT_NE(port, 0) << p->log();
  HttpClient client(port);
  auto ready = client.get("/readyz");
  EXPECT_EQ(ready.status, 200) << ready.body;
  EXPECT_NE(ready.body.find("second"), std::string::npos) << ready.body;
  std::vector<std::string> ids;
  for (const char* target : {"/orders", "/orders/second", "/orders/main", "/beast/orders/second"}) {
    auto r = client.post_json(target, order_body("u"));
    ASSERT_EQ(r.status, 202) << target << ": " << r.body;
    ids.push_back(json_field(r.body, "order_id"));
  }
  auto metrics = client.get("/metrics");
  EXPECT_EQ(metrics.status, 200);
  auto parsed = ferry::testing::parse_prometheus(metrics.body);  // throws on any malformed line
  EXPECT_EQ(parsed.value("ferry_http_requests_total", {{"route", "/orders"}, {"method", "POST"}, {"code", "202"}}), 1);
  EXPECT_EQ(parsed.value("ferry_http_requests_total",
                         {{"route", "/orders/{backend}"}, {"method", "POST"}, {"code", "202"}}),
            2);
  EXPECT_EQ(parsed.value("ferry_http_requests_total",
                         {{"route", "/beast/orders/{backend}"}, {"method", "POST"}, {"code", "202"}}),
            1);
  EXPECT_EQ(parsed.value("ferry_published_total", {{"backend", "main"}, {"topic", "orders"}}), 2);
  EXPECT_EQ(parsed.value("ferry_published_total", {{"backend", "second"}, {"topic", "orders"}}), 2);
  EXPECT_EQ(parsed.value("ferry_publish_duration_seconds_count", {{"backend", "second"}}), 2);
  EXPECT_EQ(published(broker_url(), dir_.path().string()), 2u);
  EXPECT_EQ(published(second, dir_.path().string()), 2u);

  // One consume process serves both brokers.
  auto consumer = start("consume", brokers);
  auto left = wait_processed(port, ids, 30s);
  EXPECT_TRUE(left.empty()) << consumer->log();
  consumer->signal(SIGTERM);
  EXPECT_EQ(consumer->wait_exit(15s), 0);
  EXPECT_EQ(parse_number(consumer->log(), R"(consume: processed ([0-9]+))"), 4u) << consumer->log();
  p->signal(SIGTERM);
  EXPECT_EQ(p->wait_exit(15s), 0);
}

TEST_F(OrderService, TraceparentGoesFromTheRequestThroughTheEventToTheProcessor) {
  auto [p, port] = serve({"--log-level", "debug"});
  ASSERT_NE(port, 0);
  HttpClient client(port);
  const std::string trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  auto traced = client.post_json("/orders", order_body("traced"), {{"traceparent", trace}});
  ASSERT_EQ(traced.status, 202) << traced.body;
  // A malformed traceparent (an all-zero trace id) is not passed on and does not fail the order.
  auto bad = client.post_json("/orders", order_body("bad-trace"),
                              {{"traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}});
  ASSERT_EQ(bad.status, 202) << bad.body;
  const std::vector<std::string> ids{json_field(traced.body, "order_id"), json_field(bad.body, "order_id")};
  ASSERT_TRUE(wait_processed(port, ids, 30s).empty()) << p->log();
  p->signal(SIGTERM);
  EXPECT_EQ(p->wait_exit(15s), 0);
  // The processor's handler saw the header on the event it processed.
  const std::string log = p->log();
  auto line_of = [&](const std::string& id) {
    auto at = log.find("order " + id + " processed");
    return at == std::string::npos ? std::string() : log.substr(at, log.find('\n', at) - at);
  };
  EXPECT_NE(line_of(ids[0]).find("traceparent " + trace), std::string::npos) << log;
  EXPECT_NE(line_of(ids[1]).find("traceparent -"), std::string::npos) << log;
}

TEST_F(OrderService, BrokerThatCannotWriteGets503WithRetryAfter) {
  // Another process holds the broker file's write lock longer than the broker waits.
  std::string url = broker_url() + "?busy_timeout=300ms";
  auto p = start("serve", {"--broker", url, "--no-processor"});
  auto port = p->wait_listening();
  ASSERT_NE(port, 0) << p->log();
  HttpClient client(port);
  ASSERT_EQ(client.post_json("/orders", order_body("before")).status, 202);

  sqlite3* lock = nullptr;
  ASSERT_EQ(sqlite3_open(dir_.file("ferry.db").c_str(), &lock), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(lock, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr), SQLITE_OK);
  auto refused = client.post_json("/orders", order_body("during"));
  auto ready = client.get("/readyz");
  sqlite3_exec(lock, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(lock);

  EXPECT_EQ(refused.status, 503) << refused.body;
  EXPECT_EQ(refused.headers.count("retry-after"), 1u);
  EXPECT_FALSE(json_field(refused.body, "error").empty()) << refused.body;
  EXPECT_EQ(ready.status, 503) << ready.body;
  EXPECT_NE(json_field(ready.body, "detail").find("broker sqlite"), std::string::npos) << ready.body;

  EXPECT_EQ(client.post_json("/orders", order_body("after")).status, 202);
  EXPECT_EQ(client.get("/readyz").status, 200);
  EXPECT_EQ(published(broker_url(), dir_.path().string()), 2u);
  p->signal(SIGTERM);
  EXPECT_EQ(p->wait_exit(15s), 0);
}

TEST_F(OrderService, UnreadableEventsGoToTheDeadLetterTopicWithTheReason) {
  std::string cwd = dir_.path().string();
  auto sent = run_ferry({"publish", "--broker", broker_url(), "-t", "orders", "not json at all",
                         R"({"schema_version":9,"order_id":"o-9"})"},
                        cwd);
  ASSERT_EQ(sent.exit_code, 0) << sent.output;
  auto consumer = start("consume");
  auto rejections = [&] {
    auto log = consumer->log();
    std::size_t n = 0;
    for (auto at = log.find("rejected to the dead-letter topic"); at != std::string::npos;
         at = log.find("rejected to the dead-letter topic", at + 1))
      ++n;
    return n;
  };
  for (int i = 0; i < 300 && rejections() < 2; ++i) std::this_thread::sleep_for(50ms);
  ASSERT_EQ(rejections(), 2u) << consumer->log();
  consumer->signal(SIGTERM);
  EXPECT_EQ(consumer->wait_exit(15s), 0);
  EXPECT_EQ(parse_number(consumer->log(), R"(rejected ([0-9]+))"), 2u) << consumer->log();
  auto dlq = run_ferry({"dlq", "list", "--broker", broker_url(), "-t", "orders.order-processor.dlq"}, cwd);
  EXPECT_EQ(dlq.exit_code, 0) << dlq.output;
  EXPECT_NE(dlq.output.find("not JSON"), std::string::npos) << dlq.output;
  EXPECT_NE(dlq.output.find("unknown OrderCreated schema_version 9"), std::string::npos) << dlq.output;
}

TEST_F(OrderService, SigtermDuringLoadLosesNoAcceptedOrder) {
  auto [serve, port] = this->serve();
  ASSERT_NE(port, 0);
  Load load;
  load.start(port, 8);
  std::this_thread::sleep_for(1500ms);
  serve->signal(SIGTERM);
  auto code = serve->wait_exit(15s);
  load.join();
  ASSERT_TRUE(code.has_value()) << "serve did not exit";
  EXPECT_EQ(*code, 0) << serve->log();
  EXPECT_NE(serve->log().find("shutdown: drained"), std::string::npos) << serve->log();
  EXPECT_EQ(load.other.load(), 0);
  ASSERT_GT(load.accepted.size(), 50u);

  auto [again, port2] = this->serve();
  ASSERT_NE(port2, 0);
  auto left = wait_processed(port2, load.accepted, 60s);
  EXPECT_TRUE(left.empty()) << left.size() << " of " << load.accepted.size() << " accepted orders not processed";
  again->signal(SIGTERM);
  EXPECT_EQ(again->wait_exit(15s), 0);
}

TEST_F(OrderService, KilledServeLosesNoAcceptedOrder) {
  auto [serve, port] = this->serve();
  ASSERT_NE(port, 0);
  Load load;
  load.start(port, 8);
  std::this_thread::sleep_for(1500ms);
  serve->signal(SIGKILL);
  ASSERT_TRUE(serve->wait_exit(10s).has_value());
  load.join();
  ASSERT_GT(load.accepted.size(), 50u);

  auto [again, port2] = this->serve();
  ASSERT_NE(port2, 0);
  auto left = wait_processed(port2, load.accepted, 60s);
  EXPECT_TRUE(left.empty()) << left.size() << " of " << load.accepted.size() << " accepted orders not processed";
  again->signal(SIGTERM);
  EXPECT_EQ(again->wait_exit(15s), 0);
}

TEST_F(OrderService, TwoConsumeProcessesShareTheOrders) {
  auto [serve, port] = this->serve({"--no-processor"});
  ASSERT_NE(port, 0);
  auto a = start("consume", {"--concurrency", "2"});
  auto b = start("consume", {"--concurrency", "2"});
  ASSERT_TRUE(a->wait_for_log("consume: processing", 15s)) << a->log();
  ASSERT_TRUE(b->wait_for_log("consume: processing", 15s)) << b->log();

  constexpr int kOrders = 400;
  std::vector<std::string> ids(kOrders);
  std::atomic<int> next{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 8; ++c) {
    clients.emplace_back([&, port = port] {
      HttpClient client(port);
      for (int i; (i = next++) < kOrders;) {
        auto r = client.post_json("/orders", order_body("user-" + std::to_string(i)));
        if (r.status == 202) ids[i] = json_field(r.body, "order_id");
        // A steady flow rather than one burst, so that both consumers are woken for it.
        std::this_thread::sleep_for(10ms);
      }
    });
  }
  for (auto& t : clients) t.join();
  for (const auto& id : ids) ASSERT_FALSE(id.empty());
  auto left = wait_processed(port, ids, 60s);
  EXPECT_TRUE(left.empty()) << left.size() << " order(s) not processed";

  a->signal(SIGTERM);
  b->signal(SIGTERM);
  EXPECT_EQ(a->wait_exit(15s), 0) << a->log();
  EXPECT_EQ(b->wait_exit(15s), 0) << b->log();
  auto processed_a = parse_number(a->log(), R"(consume: processed ([0-9]+))");
  auto processed_b = parse_number(b->log(), R"(consume: processed ([0-9]+))");
  EXPECT_GT(processed_a, 0u) << a->log();
  EXPECT_GT(processed_b, 0u) << b->log();
  EXPECT_EQ(processed_a + processed_b, static_cast<std::uint64_t>(kOrders));
  EXPECT_EQ(parse_number(a->log(), R"(duplicates ([0-9]+))"), 0u);
  EXPECT_EQ(parse_number(b->log(), R"(duplicates ([0-9]+))"), 0u);
  EXPECT_EQ(store_count(store_path(), "SELECT COUNT(*) FROM processed_messages"), kOrders);
  serve->signal(SIGTERM);
  EXPECT_EQ(serve->wait_exit(15s), 0);
}

TEST_F(OrderService, ConsumeReportsPrometheusMetricsThatMatchWhatItDid) {
  auto [serve, port] = this->serve({"--no-processor"});
  HttpClient client(port);
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    auto r = client.post_json("/orders", order_body("metrics-" + std::to_string(i)));
    ASSERT_EQ(r.status, 202) << r.body;
    ids.push_back(json_field(r.body, "order_id"));
  }
  auto consumer = start("consume", {"--metrics-listen", "127.0.0.1:0"});
  auto metrics_port = consumer->wait_listening();
  ASSERT_NE(metrics_port, 0) << consumer->log();
  ASSERT_TRUE(wait_processed(port, ids, 30s).empty()) << consumer->log();

  HttpClient metrics_client(metrics_port);
  auto r = metrics_client.get("/metrics");
  ASSERT_EQ(r.status, 200);
  auto parsed = ferry::testing::parse_prometheus(r.body);  // throws on any malformed line
  std::map<std::string, std::string> labels{{"backend", "sqlite"}, {"topic", "orders"}, {"group", "order-processor"}};
  EXPECT_EQ(parsed.value("ferry_consumed_total", labels), 5) << r.body;
  EXPECT_EQ(parsed.value("ferry_acks_total", labels), 5);
  EXPECT_EQ(parsed.value("ferry_handler_duration_seconds_count", labels), 5);
  EXPECT_EQ(parsed.value("ferry_in_flight", labels), 0);
  EXPECT_EQ(parsed.value("ferry_backlog", labels), 0);
  EXPECT_EQ(metrics_client.get("/healthz").status, 200);
  EXPECT_EQ(metrics_client.get("/readyz").status, 200);

  consumer->signal(SIGTERM);
  EXPECT_EQ(consumer->wait_exit(15s), 0);
  serve->signal(SIGTERM);
  EXPECT_EQ(serve->wait_exit(15s), 0);
}

}  // namespace
}  // namespace ferry::e2e
