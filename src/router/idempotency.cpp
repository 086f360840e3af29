#include "ferry/router/idempotency.hpp"

#include <sqlite3.h>

#include <filesystem>
#include <mutex>
#include <unordered_map>

#include "ferry/error.hpp"

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;

class MemoryStore : public IdempotencyStore {
 public:
  bool seen(const std::string& key) override {
    std::lock_guard lock(mutex_);
    auto it = expiry_.find(key);
    return it != expiry_.end() && it->second > Clock::now();
  }

  void remember(const std::string& key, std::chrono::milliseconds ttl) override {
    std::lock_guard lock(mutex_);
    auto now = Clock::now();
    expiry_[key] = now + ttl;
    if (++since_sweep_ >= 1024) {
      since_sweep_ = 0;
      std::erase_if(expiry_, [&](const auto& item) { return item.second <= now; });
    }
  }

 private:
  std::mutex mutex_;
  std::unordered_map<std::string, Clock::time_point> expiry_;
  int since_sweep_ = 0;
};

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Keys in one table with their expiry time (Unix ms); one connection guarded by a mutex.
class SqliteStore : public IdempotencyStore {
 public:
  explicit SqliteStore(const std::string& path) : path_(path) {
    std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    sqlite3* raw = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             nullptr);
    db_.reset(raw);
    if (rc != SQLITE_OK) fail("cannot open the idempotency store");
    sqlite3_busy_timeout(raw, 5000);
    exec("PRAGMA journal_mode = WAL");
    exec("PRAGMA synchronous = NORMAL");
    exec("CREATE TABLE IF NOT EXISTS ferry_idempotency(key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) "
         "WITHOUT ROWID");
    seen_ = prepare("SELECT 1 FROM ferry_idempotency WHERE key = ?1 AND expires_at > ?2");
    remember_ = prepare("INSERT OR REPLACE INTO ferry_idempotency(key, expires_at) VALUES (?1, ?2)");
    sweep_ = prepare("DELETE FROM ferry_idempotency WHERE expires_at <= ?1");
  }

  bool seen(const std::string& key) override {
    std::lock_guard lock(mutex_);
    sqlite3_bind_text(seen_.get(), 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(seen_.get(), 2, unix_ms());
    int rc = sqlite3_step(seen_.get());
    sqlite3_reset(seen_.get());
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) fail("cannot read the idempotency store");
    return rc == SQLITE_ROW;
  }

  void remember(const std::string& key, std::chrono::milliseconds ttl) override {
    std::lock_guard lock(mutex_);
    std::int64_t now = unix_ms();
    sqlite3_bind_text(remember_.get(), 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(remember_.get(), 2, now + ttl.count());
    int rc = sqlite3_step(remember_.get());
    sqlite3_reset(remember_.get());
    if (rc != SQLITE_DONE) fail("cannot write the idempotency store");
    if (++since_sweep_ >= 1024) {
      since_sweep_ = 0;
      sqlite3_bind_int64(sweep_.get(), 1, now);
      sqlite3_step(sweep_.get());
      sqlite3_reset(sweep_.get());
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    throw Error(Errc::storage, what + " " + path_ + ": " + sqlite3_errmsg(db_.get()));
  }
  void exec(const char* sql) {
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, nullptr) != SQLITE_OK) fail("cannot set up");
  }
  StmtPtr prepare(const char* sql) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr) != SQLITE_OK) fail("cannot prepare a statement on");
    return StmtPtr(raw);
  }

  std::string path_;
  std::mutex mutex_;
  std::unique_ptr<sqlite3, DbCloser> db_;
  StmtPtr seen_, remember_, sweep_;
  int since_sweep_ = 0;
};

}  // namespace

std::shared_ptr<IdempotencyStore> make_memory_idempotency_store() { return std::make_shared<MemoryStore>(); }

std::shared_ptr<IdempotencyStore> make_sqlite_idempotency_store(const std::string& path) {
  return std::make_shared<SqliteStore>(path);
}

}  // namespace ferry
