#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include "ferry/router/middleware.hpp"
#include "router_test_support.hpp"

using namespace std::chrono_literals;
using ferry::testing::Fixture;

namespace {

void runs_each_id_once(const std::shared_ptr<ferry::IdempotencyStore>& store) {
  int calls = 0;
  auto handler = ferry::middleware::dedup(store, 1h)([&](ferry::Request&) { ++calls; });
  Fixture a(1, "order-1"), again(2, "order-1"), b(1, "order-2");
  handler(a.request);
  handler(again.request);
  handler(b.request);
  EXPECT_EQ(calls, 2);
}

TEST(DedupMiddleware, DuplicateDeliveryRunsOnceInMemory) { runs_each_id_once(ferry::make_memory_idempotency_store()); }

TEST(DedupMiddleware, DuplicateDeliveryRunsOnceInSqliteAcrossReopen) {
  auto dir = std::filesystem::temp_directory_path() / ("ferry-dedup-" + ferry::make_uuid());
  auto path = (dir / "idempotency.db").string();
  runs_each_id_once(ferry::make_sqlite_idempotency_store(path));
  // A new process (a new store on the same file) remembers.
  auto reopened = ferry::make_sqlite_idempotency_store(path);
  EXPECT_TRUE(reopened->seen("order-1"));
  EXPECT_FALSE(reopened->seen("order-3"));
  std::filesystem::remove_all(dir);
}

TEST(DedupMiddleware, FailedAttemptIsNotRemembered) {
  auto store = ferry::make_memory_idempotency_store();
  int calls = 0;
  auto handler = ferry::middleware::dedup(store)([&](ferry::Request&) {
    if (++calls == 1) throw std::runtime_error("transient");
  });
  Fixture first(1, "x"), second(2, "x");
  EXPECT_THROW(handler(first.request), std::runtime_error);
  handler(second.request);
  EXPECT_EQ(calls, 2);
  EXPECT_TRUE(store->seen("x"));
}

TEST(DedupMiddleware, KeysExpireAfterTheirTtl) {
  auto store = ferry::make_memory_idempotency_store();
  store->remember("k", 50ms);
  EXPECT_TRUE(store->seen("k"));
  std::this_thread::sleep_for(80ms);
  EXPECT_FALSE(store->seen("k"));
}

}  // namespace
