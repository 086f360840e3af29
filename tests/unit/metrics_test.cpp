#include <gtest/gtest.h>

#include <condition_variable>
#include <mutex>

#include <thread>

#include "ferry/metrics.hpp"
#include "ferry/router/middleware.hpp"
#include "prometheus_text.hpp"
#include "router_test_support.hpp"

using ferry::testing::Fixture;
using ferry::testing::parse_prometheus;

namespace {

TEST(MetricsRegistry, RendersStrictPrometheusText) {
  ferry::metrics::Registry r;
  auto& published = r.counter("ferry_published_total", "Messages confirmed.", {"backend", "topic"});
  published.labels({"sqlite", "orders"}).inc(3);
  published.labels({"sqlite", "odd \"topic\"\\\n"}).inc();
  r.gauge("ferry_backlog", "Messages waiting.", {"topic"}).labels({"orders"}).set(42);
  auto& latency = r.histogram("ferry_publish_duration_seconds", "Publish latency.", {"topic"});
  latency.labels({"orders"}).observe(0.003);
  latency.labels({"orders"}).observe(0.2);
  latency.labels({"orders"}).observe(50);

  auto text = r.render();
  auto parsed = parse_prometheus(text);
  EXPECT_EQ(parsed.types.at("ferry_published_total"), "counter");
  EXPECT_EQ(parsed.value("ferry_published_total", {{"topic", "orders"}}), 3);
  EXPECT_EQ(parsed.value("ferry_published_total", {{"topic", "odd \"topic\"\\\n"}}), 1);
  EXPECT_EQ(parsed.value("ferry_backlog", {{"topic", "orders"}}), 42);
  EXPECT_EQ(parsed.value("ferry_publish_duration_seconds_count"), 3);
  EXPECT_EQ(parsed.value("ferry_publish_duration_seconds_bucket", {{"le", "0.005"}}), 1);
  EXPECT_EQ(parsed.value("ferry_publish_duration_seconds_bucket", {{"le", "0.25"}}), 2);
  EXPECT_EQ(parsed.value("ferry_publish_duration_seconds_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_NEAR(parsed.value("ferry_publish_duration_seconds_sum"), 50.203, 1e-9);
}

TEST(MetricsRegistry, CountsFromManyThreads) {
  ferry::metrics::Registry r;
  auto& c = r.counter("hits_total", "Hits.", {"k"});
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) c.labels({"a"}).inc();
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(parse_prometheus(r.render()).value("hits_total"), 80000);
}

TEST(MetricsRegistry, RefusesBadNamesAndKindClashes) {
  ferry::metrics::Registry r;
  EXPECT_THROW(r.counter("1bad", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("ok_total", "x", {"le"}), std::invalid_argument);
  r.counter("same_total", "x");
  EXPECT_THROW(r.gauge("same_total", "x"), std::invalid_argument);
  EXPECT_THROW(r.counter("c_total", "x", {"a"}).labels({"1", "2"}), std::invalid_argument);
}

TEST(PrometheusParser, RejectsMalformedText) {
  EXPECT_THROW(parse_prometheus("no_type 1\n"), std::runtime_error);
  EXPECT_THROW(parse_prometheus("# TYPE a_total counter\na_total{x=\"1} 1\n"), std::runtime_error);
  EXPECT_THROW(parse_prometheus("# TYPE a_total counter\na_total -1\n"), std::runtime_error);
  EXPECT_THROW(parse_prometheus("# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n"),
               std::runtime_error);
  EXPECT_THROW(parse_prometheus("# TYPE g gauge\ng 1"), std::runtime_error);
}

TEST(MetricsMiddleware, CountsOutcomesAndDurations) {
  ferry::metrics::Registry r;
  auto mw = ferry::middleware::metrics(r);
  Fixture ok, retried, rejected;
  mw([](ferry::Request&) {})(ok.request);
  EXPECT_THROW(mw([](ferry::Request&) { throw ferry::Retry("x", std::chrono::milliseconds{1}); })(retried.request),
               ferry::Retry);
  EXPECT_THROW(mw([](ferry::Request&) { throw ferry::Reject("poison"); })(rejected.request), ferry::Reject);
  auto parsed = parse_prometheus(r.render());
  std::map<std::string, std::string> labels{{"backend", "memory"}, {"topic", "orders"}, {"group", "billing"}};
  EXPECT_EQ(parsed.value("ferry_consumed_total", labels), 3);
  EXPECT_EQ(parsed.value("ferry_acks_total", labels), 1);
  EXPECT_EQ(parsed.value("ferry_nacks_total", labels), 1);
  EXPECT_EQ(parsed.value("ferry_rejects_total", labels), 1);
  EXPECT_EQ(parsed.value("ferry_handler_duration_seconds_count", labels), 3);
  EXPECT_EQ(parsed.value("ferry_in_flight", labels), 0);
}

}  // namespace

#include "ferry/backends/memory.hpp"
#include "ferry/instrumented.hpp"

namespace {

TEST(InstrumentedPublisher, CountsConfirmationsAndFailuresAndReportsBacklog) {
  ferry::memory::register_scheme();
  auto broker = ferry::Broker::open("memory://");
  ferry::metrics::Registry r;
  ferry::InstrumentedPublisher publisher(broker->publisher(), r, "memory");
  ferry::collect_backlog(r, broker);
  auto sub = broker->subscribe({.topic = "orders", .group = "billing"});
  publisher.publish("orders", ferry::Message::with_payload("a"));
  publisher.publish_batch("orders", {ferry::Message::with_payload("b"), ferry::Message::with_payload("c")});
  auto d = sub->receive(std::chrono::seconds{2});
  ASSERT_TRUE(d);
  broker->publisher().close();
  EXPECT_THROW(publisher.publish("orders", ferry::Message::with_payload("late")), ferry::Error);

  auto parsed = parse_prometheus(r.render());
  EXPECT_EQ(parsed.value("ferry_published_total", {{"backend", "memory"}, {"topic", "orders"}}), 3);
  EXPECT_EQ(parsed.value("ferry_publish_errors_total", {{"topic", "orders"}}), 1);
  EXPECT_EQ(parsed.value("ferry_publish_duration_seconds_count", {{"topic", "orders"}}), 3);
  EXPECT_EQ(parsed.value("ferry_backlog", {{"topic", "orders"}, {"group", "billing"}}), 3);
  EXPECT_EQ(parsed.value("ferry_in_flight_deliveries", {{"topic", "orders"}, {"group", "billing"}}), 1);
  d->ack();
  EXPECT_EQ(parse_prometheus(r.render()).value("ferry_backlog", {{"topic", "orders"}, {"group", "billing"}}), 2);
}

}  // namespace

namespace {

// A broker whose Admin::stats() blocks until released: a cluster that does not answer.
class StalledAdminBroker : public ferry::Broker, public ferry::Admin {
 public:
  explicit StalledAdminBroker(std::shared_ptr<ferry::Broker> inner) : inner_(std::move(inner)) {}
  const ferry::Url& url() const override { return inner_->url(); }
  ferry::Capabilities capabilities() const override { return inner_->capabilities(); }
  ferry::Publisher& publisher() override { return inner_->publisher(); }
  std::unique_ptr<ferry::Subscriber> subscribe(const ferry::SubscribeOptions& o) override {
    return inner_->subscribe(o);
  }
  ferry::Status ping() override { return inner_->ping(); }
  void close() override { inner_->close(); }
  ferry::Admin* admin() override { return this; }

  std::vector<ferry::TopicStats> stats() override {
    std::unique_lock lock(mutex_);
    released_cv_.wait(lock, [&] { return released_; });
    return inner_->admin()->stats();
  }
  std::vector<ferry::Message> peek(const std::string& topic, std::size_t limit) override {
    return inner_->admin()->peek(topic, limit);
  }
  std::uint64_t purge(const std::string& topic) override { return inner_->admin()->purge(topic); }

  void release() {
    {
      std::lock_guard lock(mutex_);
      released_ = true;
    }
    released_cv_.notify_all();
  }

 private:
  std::shared_ptr<ferry::Broker> inner_;
  std::mutex mutex_;
  std::condition_variable released_cv_;
  bool released_ = false;
};

TEST(CollectBacklog, ARenderWaitsNoLongerThanItsBoundForAStalledBroker) {
  ferry::memory::register_scheme();
  auto broker = std::make_shared<StalledAdminBroker>(ferry::Broker::open("memory://"));
  ferry::metrics::Registry r;
  ferry::collect_backlog(r, broker, "stalled", std::chrono::milliseconds{200});
  // Released before the registry (and the reader thread it owns) goes, whatever happens.
  std::shared_ptr<void> release_at_exit(nullptr, [&](void*) { broker->release(); });
  auto sub = broker->subscribe({.topic = "orders", .group = "billing"});
  broker->publisher().publish("orders", ferry::Message::with_payload("a"));

  auto start = std::chrono::steady_clock::now();
  auto text = r.render();
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_LT(took, std::chrono::seconds{2}) << "render waited for the stalled broker";
  EXPECT_EQ(text.find("ferry_backlog{"), std::string::npos) << "no figures yet, so no backlog sample:\n" << text;

  broker->release();
  // The reading under way completes; a later render shows fresh figures.
  double backlog = -1;
  for (int i = 0; i < 50 && backlog != 1; ++i) {
    try {
      backlog = parse_prometheus(r.render()).value("ferry_backlog", {{"backend", "stalled"}, {"group", "billing"}});
    } catch (const std::runtime_error&) {
    }
  }
  EXPECT_EQ(backlog, 1);
}

}  // namespace
