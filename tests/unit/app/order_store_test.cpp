#include "order_store.hpp"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <filesystem>
#include <future>
#include <random>
#include <thread>

namespace ferry::app {
namespace {

class OrderStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / ("ferry-store-test-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(dir_);
    options_.path = (dir_ / "orders.db").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static Status accept(OrderStore& store, const OrderCreated& e, std::optional<std::string> key = {}) {
    std::promise<Status> done;
    store.record_accepted(e, std::move(key), [&](const Status& s) { done.set_value(s); });
    return done.get_future().get();
  }

  static std::pair<Status, KeyReservation> reserve(OrderStore& store, const std::string& key, const std::string& fp,
                                                   const std::string& id) {
    std::promise<std::pair<Status, KeyReservation>> done;
    store.reserve_key(key, fp, id, [&](const Status& s, const KeyReservation& r) { done.set_value({s, r}); });
    return done.get_future().get();
  }

  static OrderCreated event(const std::string& id) { return make_order_created(id, OrderRequest{"u", {"a"}}); }

  std::filesystem::path dir_;
  OrderStoreOptions options_;
};

TEST_F(OrderStoreTest, StoresAcceptedThenProcessedAndNeverGoesBack) {
  OrderStore store(options_);
  EXPECT_FALSE(store.find("o1"));
  ASSERT_TRUE(accept(store, event("o1")).ok());
  EXPECT_EQ(store.find("o1")->state, "accepted");
  EXPECT_EQ(store.mark_processed(event("o1"), "o1", "t"), ProcessOutcome::processed);
  auto processed = store.find("o1");
  EXPECT_EQ(processed->state, "processed");
  EXPECT_TRUE(processed->processed_at);
  ASSERT_TRUE(accept(store, event("o1")).ok());
  EXPECT_EQ(store.find("o1")->state, "processed");
}

TEST_F(OrderStoreTest, ProcessesEachMessageAndEachOrderOnce) {
  OrderStore store(options_);
  EXPECT_EQ(store.mark_processed(event("o2"), "m1", "t"), ProcessOutcome::processed);  // never stored as accepted
  EXPECT_EQ(store.find("o2")->state, "processed");
  EXPECT_EQ(store.mark_processed(event("o2"), "m1", "t"), ProcessOutcome::duplicate);  // same message again
  EXPECT_EQ(store.mark_processed(event("o2"), "m2", "t"), ProcessOutcome::duplicate);  // same order, new message
}

TEST_F(OrderStoreTest, ConcurrentDuplicatesProcessOnce) {
  OrderStore store(options_);
  std::atomic<int> processed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      if (store.mark_processed(event("o3"), "m3", "t") == ProcessOutcome::processed) ++processed;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(processed.load(), 1);
}

TEST_F(OrderStoreTest, IdempotencyKeysBindToTheFirstRequest) {
  OrderStore store(options_);
  auto first = reserve(store, "k", "fp1", "o4");
  ASSERT_TRUE(first.first.ok());
  EXPECT_EQ(first.second.claim, KeyClaim::reserved);
  auto pending = reserve(store, "k", "fp1", "other");
  EXPECT_EQ(pending.second.claim, KeyClaim::pending);
  EXPECT_EQ(pending.second.order_id, "o4");
  EXPECT_EQ(reserve(store, "k", "fp2", "other").second.claim, KeyClaim::conflict);
  ASSERT_TRUE(accept(store, event("o4"), "k").ok());
  auto done = reserve(store, "k", "fp1", "other");
  EXPECT_EQ(done.second.claim, KeyClaim::done);
  EXPECT_EQ(done.second.order_id, "o4");
}

TEST_F(OrderStoreTest, TwoStoresOnOneFileShareIt) {
  OrderStore a(options_);
  OrderStore b(options_);
  EXPECT_EQ(a.mark_processed(event("o5"), "m5", "a"), ProcessOutcome::processed);
  EXPECT_EQ(b.mark_processed(event("o5"), "m5", "b"), ProcessOutcome::duplicate);
  EXPECT_EQ(b.find("o5")->state, "processed");
  EXPECT_TRUE(a.ping().ok());
}

TEST_F(OrderStoreTest, RefusesAFileThatIsNotAnOrderStore) {
  // An SQLite database with someone else's tables, e.g. a broker's file.
  OrderStoreOptions foreign;
  foreign.path = (dir_ / "foreign.db").string();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(foreign.path.c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE messages(seq INTEGER PRIMARY KEY)", nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
  try {
    OrderStore store(foreign);
    FAIL() << "opened a foreign database";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::not_ferry_data);
    EXPECT_NE(std::string(e.what()).find("foreign.db"), std::string::npos) << e.what();
  }
  // A file that is not SQLite at all.
  OrderStoreOptions text;
  text.path = (dir_ / "text.db").string();
  std::FILE* f = std::fopen(text.path.c_str(), "w");
  std::fputs("this is not an SQLite database, only text that is long enough to fill a header page", f);
  std::fclose(f);
  EXPECT_THROW(OrderStore store(text), Error);
}

TEST_F(OrderStoreTest, WritesAfterCloseFailWithClosed) {
  OrderStore store(options_);
  store.close();
  auto s = accept(store, event("o6"));
  EXPECT_EQ(s.code, Errc::closed);
  EXPECT_THROW(store.mark_processed(event("o6"), "m6", "t"), Error);
}

}  // namespace
}  // namespace ferry::app
