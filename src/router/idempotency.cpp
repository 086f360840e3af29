#include "ferry/router/idempotency.hpp"

#include <filesystem>
#include <mutex>
#include <unordered_map>

#include "ferry/error.hpp"
#include "sqlite_db.hpp"

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

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Keys in one table with their expiry time (Unix ms); one connection guarded by a mutex.
class SqliteStore : public IdempotencyStore {
 public:
  explicit SqliteStore(const std::string& path) : db_(open(path)) {
    db_.exec("PRAGMA journal_mode = WAL");
    db_.exec("PRAGMA synchronous = NORMAL");
    db_.exec("CREATE TABLE IF NOT EXISTS ferry_idempotency(key TEXT PRIMARY KEY, expires_at INTEGER NOT NULL) "
             "WITHOUT ROWID");
    seen_ = db_.prepare("SELECT 1 FROM ferry_idempotency WHERE key = ?1 AND expires_at > ?2");
    remember_ = db_.prepare("INSERT OR REPLACE INTO ferry_idempotency(key, expires_at) VALUES (?1, ?2)");
    sweep_ = db_.prepare("DELETE FROM ferry_idempotency WHERE expires_at <= ?1");
  }

  bool seen(const std::string& key) override {
    std::lock_guard lock(mutex_);
    const bool found = seen_.bind(1, key).bind(2, unix_ms()).step();
    seen_.reset();
    return found;
  }

  void remember(const std::string& key, std::chrono::milliseconds ttl) override {
    std::lock_guard lock(mutex_);
    std::int64_t now = unix_ms();
    remember_.bind(1, key).bind(2, now + ttl.count()).run();
    if (++since_sweep_ >= 1024) {
      since_sweep_ = 0;
      try {
        sweep_.bind(1, now).run();
      } catch (const Error&) {
        // Expired keys are only clutter: the key is remembered, the next sweep tries again.
      }
    }
  }

 private:
  static sqlite::Db open(const std::string& path) {
    std::filesystem::path p(path);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    return sqlite::Db(path, true, 5000);
  }

  std::mutex mutex_;
  sqlite::Db db_;
  sqlite::Statement seen_, remember_, sweep_;
  int since_sweep_ = 0;
};

}  // namespace

std::shared_ptr<IdempotencyStore> make_memory_idempotency_store() { return std::make_shared<MemoryStore>(); }

std::shared_ptr<IdempotencyStore> make_sqlite_idempotency_store(const std::string& path) {
  return std::make_shared<SqliteStore>(path);
}

}  // namespace ferry
