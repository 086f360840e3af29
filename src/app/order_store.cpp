#include "order_store.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <future>
#include <mutex>
#include <set>
#include <thread>

#include "ferry/message.hpp"
#include "sqlite_db.hpp"

namespace ferry::app {
namespace sql = ferry::sqlite;
namespace {

constexpr const char* kFormat = "ferry-orders";
constexpr const char* kVersion = "1";

std::int64_t now_ms() {
  return to_unix_ms(Clock::now());
}

// Refuses a file that holds something other than an order store (a broker database,
// say) before anything is written to it.
void check_format(sql::Db& db) {
  auto tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table'");
  std::set<std::string> names;
  try {
    while (tables.step()) names.insert(tables.text(0));
  } catch (const Error& e) {
    throw Error(Errc::not_ferry_data, db.path() + " is not an order store (" + e.what() +
                                          "); point --store at a new file or an existing order store");
  }
  if (names.empty()) return;
  if (!names.count("order_store_meta"))
    throw Error(Errc::not_ferry_data, db.path() +
                                          " is an SQLite database but not an order store; point --store at "
                                          "a new file or an existing order store");
  auto meta = db.prepare("SELECT value FROM order_store_meta WHERE name = ?1");
  meta.bind(1, std::string_view("format"));
  std::string format = meta.step() ? meta.text(0) : std::string();
  meta.reset();
  meta.bind(1, std::string_view("version"));
  std::string version = meta.step() ? meta.text(0) : std::string();
  meta.reset();
  if (format != kFormat || version != kVersion)
    throw Error(Errc::not_ferry_data, db.path() + " holds order store format '" + format + "' version '" + version +
                                          "'; this ferry reads " + kFormat + " version " + kVersion);
}

void create_schema(sql::Db& db) {
  db.exec("BEGIN IMMEDIATE");
  try {
    db.exec(R"sql(
      CREATE TABLE IF NOT EXISTS order_store_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
      INSERT OR IGNORE INTO order_store_meta(name, value) VALUES ('format', 'ferry-orders'), ('version', '1');
      CREATE TABLE IF NOT EXISTS orders(
        id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        product_ids TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('accepted', 'processed')),
        created_at TEXT NOT NULL,
        processed_at TEXT) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS idempotency_keys(
        key TEXT PRIMARY KEY,
        fingerprint TEXT NOT NULL,
        order_id TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
        created_ms INTEGER NOT NULL) WITHOUT ROWID;
      CREATE TABLE IF NOT EXISTS processed_messages(
        message_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        processed_at TEXT NOT NULL,
        processor TEXT NOT NULL) WITHOUT ROWID;
    )sql");
    db.exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

// The writer thread's connection and statements.
class Writer {
 public:
  explicit Writer(sql::Db db) : db_(std::move(db)) {
    begin_ = db_.prepare("BEGIN IMMEDIATE");
    commit_ = db_.prepare("COMMIT");
    savepoint_ = db_.prepare("SAVEPOINT op");
    release_ = db_.prepare("RELEASE op");
    rollback_to_ = db_.prepare("ROLLBACK TO op");
    insert_key_ = db_.prepare(
        "INSERT INTO idempotency_keys(key, fingerprint, order_id, state, created_ms) VALUES (?1, ?2, ?3, 'pending', "
        "?4) "
        "ON CONFLICT(key) DO NOTHING");
    select_key_ = db_.prepare("SELECT fingerprint, order_id, state FROM idempotency_keys WHERE key = ?1");
    key_done_ = db_.prepare("UPDATE idempotency_keys SET state = 'done' WHERE key = ?1 AND order_id = ?2");
    insert_accepted_ = db_.prepare(
        "INSERT INTO orders(id, user_id, product_ids, state, created_at) VALUES (?1, ?2, ?3, 'accepted', ?4) "
        "ON CONFLICT(id) DO NOTHING");
    insert_processed_message_ = db_.prepare(
        "INSERT INTO processed_messages(message_id, order_id, processed_at, processor) VALUES (?1, ?2, ?3, ?4) "
        "ON CONFLICT(message_id) DO NOTHING");
    upsert_processed_ = db_.prepare(
        "INSERT INTO orders(id, user_id, product_ids, state, created_at, processed_at) "
        "VALUES (?1, ?2, ?3, 'processed', ?4, ?5) "
        "ON CONFLICT(id) DO UPDATE SET state = 'processed', processed_at = excluded.processed_at "
        "WHERE orders.state <> 'processed'");
  }

  KeyReservation reserve(const std::string& key, const std::string& fingerprint, const std::string& order_id) {
    if (insert_key_.bind(1, key).bind(2, fingerprint).bind(3, order_id).bind(4, now_ms()).run() > 0)
      return {KeyClaim::reserved, order_id};
    select_key_.bind(1, key);
    if (!select_key_.step()) {
      select_key_.reset();
      throw Error(Errc::internal, "idempotency key vanished while being reserved");
    }
    KeyReservation r;
    std::string stored_fingerprint = select_key_.text(0);
    r.order_id = select_key_.text(1);
    std::string state = select_key_.text(2);
    select_key_.reset();
    if (stored_fingerprint != fingerprint)
      r.claim = KeyClaim::conflict;
    else
      r.claim = state == "done" ? KeyClaim::done : KeyClaim::pending;
    return r;
  }

  void accepted(const OrderCreated& e, const std::optional<std::string>& key) {
    insert_accepted_.bind(1, e.order_id)
        .bind(2, e.user_id)
        .bind(3, product_ids_to_json(e.product_ids))
        .bind(4, e.created_at)
        .run();
    if (key) key_done_.bind(1, *key).bind(2, e.order_id).run();
  }

  ProcessOutcome processed(const OrderCreated& e, const std::string& message_id, const std::string& processor) {
    std::string at = format_rfc3339(now_ms());
    bool new_message =
        insert_processed_message_.bind(1, message_id).bind(2, e.order_id).bind(3, at).bind(4, processor).run() > 0;
    bool order_changed = upsert_processed_.bind(1, e.order_id)
                             .bind(2, e.user_id)
                             .bind(3, product_ids_to_json(e.product_ids))
                             .bind(4, e.created_at)
                             .bind(5, at)
                             .run() > 0;
    return new_message && order_changed ? ProcessOutcome::processed : ProcessOutcome::duplicate;
  }

  void begin() { begin_.run(); }
  void commit() { commit_.run(); }
  void rollback() noexcept { sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr); }
  void savepoint() { savepoint_.run(); }
  void release() { release_.run(); }
  void rollback_savepoint() noexcept {
    try {
      rollback_to_.run();
      release_.run();
    } catch (...) {
    }
  }

 private:
  sql::Db db_;
  sql::Statement begin_, commit_, savepoint_, release_, rollback_to_, insert_key_, select_key_, key_done_,
      insert_accepted_, insert_processed_message_, upsert_processed_;
};

// A read connection with its statements; checked out of the pool by one thread at a time.
struct Reader {
  explicit Reader(sql::Db c)
      : db(std::move(c)),
        find(db.prepare("SELECT id, user_id, product_ids, state, created_at, processed_at FROM orders WHERE id = ?1")),
        ping(db.prepare("SELECT value FROM order_store_meta WHERE name = 'format'")) {}
  sql::Db db;
  sql::Statement find;
  sql::Statement ping;
};

struct Op {
  std::function<void(Writer&)> apply;
  std::function<void(const Status&)> done;
};

}  // namespace

void OrderStoreOptions::validate() const {
  if (path.empty()) throw Error(Errc::invalid_argument, "--store must name a file, e.g. ./ferry-data/orders.db");
  if (busy_timeout.count() < 0) throw Error(Errc::invalid_argument, "the order store's busy timeout is negative");
  if (max_batch == 0) throw Error(Errc::invalid_argument, "the order store's max batch must be at least 1");
}

class OrderStore::Impl {
 public:
  explicit Impl(OrderStoreOptions options) : options_(std::move(options)) {
    options_.validate();
    std::filesystem::path p(options_.path);
    if (p.has_parent_path()) {
      std::error_code ec;
      std::filesystem::create_directories(p.parent_path(), ec);
      if (ec)
        throw Error(Errc::storage,
                    "cannot create directory " + p.parent_path().string() + " for the order store: " + ec.message());
    }
    sql::Db db(options_.path, true, busy_ms());
    check_format(db);
    db.exec("PRAGMA journal_mode = WAL");
    db.exec(options_.sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
    create_schema(db);
    check_format(db);
    // Checkpoints run on a thread of their own so that commits never wait for one.
    db.exec("PRAGMA wal_autocheckpoint = 0");
    checkpoint_db_ = std::make_unique<sql::Db>(options_.path, false, busy_ms());
    writer_ = std::make_unique<Writer>(std::move(db));
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "order-store");
      run();
    });
    checkpointer_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "order-ckpt");
      run_checkpoints();
    });
  }

  ~Impl() { close(); }

  const std::string& path() const noexcept { return options_.path; }

  void enqueue(Op op) {
    {
      std::lock_guard lock(mutex_);
      if (!closed_) {
        queue_.push_back(std::move(op));
        cv_.notify_one();
        return;
      }
    }
    if (op.done) op.done({Errc::closed, "the order store " + options_.path + " is closed"});
  }

  std::optional<OrderRecord> find(const std::string& id) {
    auto reader = checkout();
    std::optional<OrderRecord> out;
    try {
      reader->find.bind(1, id);
      if (reader->find.step()) {
        OrderRecord r;
        r.id = reader->find.text(0);
        r.user_id = reader->find.text(1);
        r.product_ids = product_ids_from_json(reader->find.text(2));
        r.state = reader->find.text(3);
        r.created_at = reader->find.text(4);
        if (!reader->find.is_null(5)) r.processed_at = reader->find.text(5);
        out = std::move(r);
      }
      reader->find.reset();
    } catch (...) {
      reader->find.reset();
      checkin(std::move(reader));
      throw;
    }
    checkin(std::move(reader));
    return out;
  }

  Status ping() {
    try {
      auto reader = checkout();
      bool ok = reader->ping.step();
      reader->ping.reset();
      checkin(std::move(reader));
      if (!ok) return {Errc::not_ferry_data, "the order store " + options_.path + " lost its format marker"};
      return {};
    } catch (const Error& e) {
      return {e.code(), e.what()};
    }
  }

  void close() {
    {
      std::lock_guard lock(mutex_);
      if (closed_) {
        if (!thread_.joinable()) return;
      }
      closed_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
    checkpoint_cv_.notify_all();
    if (checkpointer_.joinable()) checkpointer_.join();
    checkpoint_db_.reset();
    std::lock_guard lock(readers_mutex_);
    readers_.clear();
  }

 private:
  int busy_ms() const { return static_cast<int>(options_.busy_timeout.count()); }

  std::unique_ptr<Reader> checkout() {
    {
      std::lock_guard lock(readers_mutex_);
      if (!readers_.empty()) {
        auto r = std::move(readers_.back());
        readers_.pop_back();
        return r;
      }
    }
    return std::make_unique<Reader>(sql::Db(options_.path, false, busy_ms()));
  }

  void checkin(std::unique_ptr<Reader> reader) {
    std::lock_guard lock(readers_mutex_);
    if (readers_.size() < 16) readers_.push_back(std::move(reader));
  }

  void run() {
    std::vector<Op> batch;
    while (true) {
      {
        std::unique_lock lock(mutex_);
        cv_.wait(lock, [&] { return !queue_.empty() || closed_; });
        if (queue_.empty()) return;
        while (!queue_.empty() && batch.size() < options_.max_batch) {
          batch.push_back(std::move(queue_.front()));
          queue_.pop_front();
        }
      }
      execute(batch);
      batch.clear();
    }
  }

  // Copies committed WAL frames into the database file every 200 ms (PASSIVE: never
  // waits for, or blocks, a writer or reader of any process).
  void run_checkpoints() {
    std::unique_lock lock(mutex_);
    while (!closed_) {
      checkpoint_cv_.wait_for(lock, std::chrono::milliseconds{200});
      lock.unlock();
      int rc = sqlite3_wal_checkpoint_v2(checkpoint_db_->get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
      if (rc != SQLITE_OK && rc != SQLITE_BUSY && rc != SQLITE_LOCKED)
        spdlog::warn("order store {}: checkpoint failed: {}", options_.path, sqlite3_errmsg(checkpoint_db_->get()));
      lock.lock();
    }
  }

  void execute(std::vector<Op>& batch) {
    std::vector<Status> outcomes(batch.size());
    Status commit;
    try {
      writer_->begin();
      for (std::size_t i = 0; i < batch.size(); ++i) {
        try {
          writer_->savepoint();
          batch[i].apply(*writer_);
          writer_->release();
        } catch (const Error& e) {
          writer_->rollback_savepoint();
          outcomes[i] = {e.code(), e.what()};
        } catch (const std::exception& e) {
          writer_->rollback_savepoint();
          outcomes[i] = {Errc::internal, e.what()};
        }
      }
      writer_->commit();
    } catch (const Error& e) {
      writer_->rollback();
      commit = {e.code(), "writing the order store " + options_.path + " failed: " + e.what()};
    } catch (const std::exception& e) {
      writer_->rollback();
      commit = {Errc::internal, "writing the order store " + options_.path + " failed: " + e.what()};
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!batch[i].done) continue;
      try {
        batch[i].done(commit.ok() ? outcomes[i] : commit);
      } catch (const std::exception& e) {
        spdlog::error("order store {}: a completion callback threw: {}", options_.path, e.what());
      }
    }
  }

  OrderStoreOptions options_;
  std::unique_ptr<Writer> writer_;
  std::thread thread_;
  std::unique_ptr<sql::Db> checkpoint_db_;
  std::thread checkpointer_;
  std::condition_variable checkpoint_cv_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Op> queue_;
  bool closed_ = false;

  std::mutex readers_mutex_;
  std::vector<std::unique_ptr<Reader>> readers_;
};

OrderStore::OrderStore(OrderStoreOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
OrderStore::~OrderStore() = default;

const std::string& OrderStore::path() const noexcept {
  return impl_->path();
}

void OrderStore::reserve_key(std::string key, std::string fingerprint, std::string order_id, ReserveCallback done) {
  auto result = std::make_shared<KeyReservation>();
  Op op;
  op.apply = [key = std::move(key), fingerprint = std::move(fingerprint), order_id = std::move(order_id),
              result](Writer& w) { *result = w.reserve(key, fingerprint, order_id); };
  op.done = [result, done = std::move(done)](const Status& s) { done(s, *result); };
  impl_->enqueue(std::move(op));
}

void OrderStore::record_accepted(OrderCreated event, std::optional<std::string> key, DoneCallback done) {
  Op op;
  op.apply = [event = std::move(event), key = std::move(key)](Writer& w) { w.accepted(event, key); };
  op.done = std::move(done);
  impl_->enqueue(std::move(op));
}

ProcessOutcome OrderStore::mark_processed(const OrderCreated& event, const std::string& message_id,
                                          const std::string& processor) {
  auto outcome = std::make_shared<ProcessOutcome>(ProcessOutcome::duplicate);
  std::promise<Status> promise;
  auto future = promise.get_future();
  Op op;
  op.apply = [&event, &message_id, &processor, outcome](Writer& w) {
    *outcome = w.processed(event, message_id, processor);
  };
  op.done = [&promise](const Status& s) { promise.set_value(s); };
  impl_->enqueue(std::move(op));
  throw_if_error(future.get());
  return *outcome;
}

std::optional<OrderRecord> OrderStore::find(const std::string& order_id) {
  return impl_->find(order_id);
}

Status OrderStore::ping() {
  return impl_->ping();
}

void OrderStore::close() {
  impl_->close();
}

}  // namespace ferry::app
