#include <poll.h>
#include <pthread.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <unordered_map>

#include "ferry/backends/sqlite.hpp"
#include "ferry/broker.hpp"
#include "sqlite_db.hpp"

namespace ferry::sqlite {
namespace {

using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* kFormat = "ferry-sqlite";
constexpr int kVersion = 1;
constexpr std::size_t kMaxOpsMessagesPerCommit = 50'000;
constexpr int kMaterializeChunk = 512;

std::int64_t now_ms() { return to_unix_ms(Clock::now()); }

struct Options {
  std::string path;
  bool sync_full = true;
  Ms busy_timeout{5000};
  std::size_t max_in_flight = 100'000;
  Ms publish_timeout{5000};
  Ms retention_interval{200};

  static Options from_url(const Url& url) {
    Options o;
    o.path = url.location();
    if (o.path.empty())
      throw Error(Errc::bad_url, "bad broker URL '" + url.masked() +
                                     "': name the database file, e.g. sqlite://./ferry-data/ferry.db");
    for (const auto& [key, value] : url.query()) {
      if (key == "sync") {
        if (value != "full" && value != "normal")
          throw Error(Errc::invalid_argument, "sqlite option sync='" + value + "' must be full or normal");
        o.sync_full = value == "full";
      } else if (key == "busy_timeout") {
        o.busy_timeout = parse_duration(value, "sqlite option busy_timeout");
      } else if (key == "max_in_flight") {
        o.max_in_flight = static_cast<std::size_t>(parse_count(value, "sqlite option max_in_flight"));
        if (o.max_in_flight == 0) throw Error(Errc::invalid_argument, "sqlite option max_in_flight must be at least 1");
      } else if (key == "publish_timeout") {
        o.publish_timeout = parse_duration(value, "sqlite option publish_timeout");
      } else if (key == "retention_interval") {
        o.retention_interval = parse_duration(value, "sqlite option retention_interval");
      } else {
        throw Error(Errc::invalid_argument,
                    "unknown sqlite option '" + key +
                        "' in " + url.masked() +
                        "; known: sync, busy_timeout, max_in_flight, publish_timeout, retention_interval");
      }
    }
    return o;
  }
};

// A message claimed for a subscriber: leased until settled or released.
struct Claimed {
  std::int64_t seq = 0;
  int attempt = 0;
  Message message;
};

struct ClaimResult {
  std::vector<Claimed> claimed;
  std::optional<std::int64_t> next_visible_ms;  // earliest time a leased/delayed row frees up
};

class Writer;

// One unit of work for the writer thread. `apply` runs inside a transaction (in a
// savepoint of its own); `done` runs after the commit with the outcome.
struct Op {
  std::function<void(Writer&)> apply;
  std::function<void(const Status&)> done;
  std::size_t messages = 0;  // publishes counted against max_in_flight
  bool wakes_consumers = false;
  bool durable = false;  // needs an fsync'd commit even without publishing messages
};

// Owns the database connection of the writer thread and its prepared statements.
class Writer {
 public:
  Writer(Db db, bool sync_full) : db_(std::move(db)), sync_full_(sync_full), durable_(sync_full) {
    insert_message_ = db_.prepare(
        "INSERT INTO messages(seq, topic, id, key, headers, payload, ts) VALUES (?7, ?1, ?2, ?3, ?4, ?5, ?6)");
    select_last_seq_ = db_.prepare("SELECT last FROM sequence WHERE id = 1");
    update_last_seq_ = db_.prepare("UPDATE sequence SET last = ?1 WHERE id = 1");
    select_topic_ = db_.prepare("SELECT id FROM topics WHERE name = ?1");
    insert_topic_ = db_.prepare("INSERT OR IGNORE INTO topics(name) VALUES (?1)");
    select_group_ = db_.prepare("SELECT id FROM groups WHERE topic = ?1 AND name = ?2");
    insert_group_ = db_.prepare("INSERT OR IGNORE INTO groups(topic, name, cursor) VALUES (?1, ?2, ?3)");
    select_ready_ = db_.prepare(
        "SELECT p.seq, p.attempts FROM pending p WHERE p.grp = ?1 AND p.visible_at <= ?2 AND "
        "(p.key IS NULL OR NOT EXISTS (SELECT 1 FROM pending q WHERE q.grp = ?1 AND q.key = p.key AND q.seq < p.seq)) "
        "ORDER BY p.seq LIMIT ?3");
    select_cursor_ = db_.prepare("SELECT cursor FROM groups WHERE id = ?1");
    materialize_ = db_.prepare(
        "INSERT INTO pending(grp, seq, key, attempts, visible_at) "
        "SELECT ?1, seq, key, 0, 0 FROM messages WHERE topic = ?2 AND seq > ?3 ORDER BY seq LIMIT ?4");
    max_pending_ = db_.prepare("SELECT MAX(seq) FROM pending WHERE grp = ?1");
    update_cursor_ = db_.prepare("UPDATE groups SET cursor = ?2 WHERE id = ?1");
    lease_ = db_.prepare("UPDATE pending SET attempts = attempts + 1, visible_at = ?3, owner = ?4 "
                         "WHERE grp = ?1 AND seq = ?2");
    select_message_ = db_.prepare("SELECT id, key, headers, payload, ts FROM messages WHERE seq = ?1");
    delete_pending_ = db_.prepare("DELETE FROM pending WHERE grp = ?1 AND seq = ?2");
    next_visible_ = db_.prepare("SELECT MIN(visible_at) FROM pending WHERE grp = ?1 AND visible_at > ?2");
    ack_ = db_.prepare("DELETE FROM pending WHERE grp = ?1 AND seq = ?2 AND attempts = ?3 AND owner = ?4");
    nack_ = db_.prepare("UPDATE pending SET visible_at = ?5, owner = NULL, attempts = attempts - ?6 "
                        "WHERE grp = ?1 AND seq = ?2 AND attempts = ?3 AND owner = ?4");
    owned_ = db_.prepare("SELECT 1 FROM pending WHERE grp = ?1 AND seq = ?2 AND attempts = ?3 AND owner = ?4");
    savepoint_ = db_.prepare("SAVEPOINT op");
    release_savepoint_ = db_.prepare("RELEASE op");
    rollback_savepoint_ = db_.prepare("ROLLBACK TO op");
    begin_ = db_.prepare("BEGIN IMMEDIATE");
    commit_ = db_.prepare("COMMIT");
  }

  Db& db() { return db_; }

  std::int64_t topic_id(const std::string& name) {
    if (auto it = topic_ids_.find(name); it != topic_ids_.end()) return it->second;
    insert_topic_.bind(1, name).run();
    select_topic_.bind(1, name);
    if (!select_topic_.step()) throw Error(Errc::internal, "topic '" + name + "' vanished while being created");
    std::int64_t id = select_topic_.int64(0);
    select_topic_.reset();
    topic_ids_.emplace(name, id);
    return id;
  }

  std::optional<std::int64_t> find_topic(const std::string& name) {
    select_topic_.bind(1, name);
    std::optional<std::int64_t> id;
    if (select_topic_.step()) id = select_topic_.int64(0);
    select_topic_.reset();
    return id;
  }

  // The group's id, creating it if needed: a new group starts at the topic's oldest
  // retained message, an ephemeral one after the newest.
  std::int64_t group_id(std::int64_t topic, const std::string& name, bool ephemeral) {
    std::int64_t start = 0;
    if (ephemeral) {
      start = last_seq_;
    }
    insert_group_.bind(1, topic).bind(2, name).bind(3, start).run();
    select_group_.bind(1, topic).bind(2, name);
    if (!select_group_.step()) throw Error(Errc::internal, "group '" + name + "' vanished while being created");
    std::int64_t id = select_group_.int64(0);
    select_group_.reset();
    return id;
  }

  void insert(std::int64_t topic, const Message& m) {
    insert_message_.bind(1, topic)
        .bind(2, std::string_view(m.id))
        .bind_optional(3, m.key)
        .bind_blob(4, encode_headers(m.headers))
        .bind_blob(5, m.payload)
        .bind(6, to_unix_ms(m.timestamp))
        .bind(7, ++last_seq_)
        .run();
    seq_dirty_ = true;
  }

  std::optional<Message> load(std::int64_t seq) {
    select_message_.bind(1, seq);
    std::optional<Message> m;
    if (select_message_.step()) {
      m.emplace();
      m->id = select_message_.text(0);
      if (!select_message_.is_null(1)) m->key = select_message_.text(1);
      m->headers = decode_headers(select_message_.blob(2));
      m->payload = select_message_.blob(3);
      m->timestamp = from_unix_ms(select_message_.int64(4));
    }
    select_message_.reset();
    return m;
  }

  ClaimResult claim(std::int64_t group, std::int64_t topic, int max, Ms lease, const std::string& owner) {
    ClaimResult result;
    std::int64_t now = now_ms();
    auto ready = select_ready(group, now, max);
    if (static_cast<int>(ready.size()) < max && materialize(group, topic, std::max(kMaterializeChunk, max * 2)))
      ready = select_ready(group, now, max);
    for (auto [seq, attempts] : ready) {
      auto message = load(seq);
      if (!message) {  // purged underneath the pending row
        delete_pending_.bind(1, group).bind(2, seq).run();
        continue;
      }
      lease_.bind(1, group).bind(2, seq).bind(3, now + lease.count()).bind(4, std::string_view(owner)).run();
      result.claimed.push_back({seq, attempts + 1, std::move(*message)});
    }
    next_visible_.bind(1, group).bind(2, now);
    if (next_visible_.step() && !next_visible_.is_null(0)) result.next_visible_ms = next_visible_.int64(0);
    next_visible_.reset();
    return result;
  }

  // Settles a delivery still owned by `owner` at `attempt`; a stale settlement is ignored.
  void settle(std::int64_t group, std::int64_t seq, int attempt, const std::string& owner, Outcome outcome, Ms delay,
              const std::string& reason, const std::string& topic, const std::string& group_name,
              const std::string& dead_letter_topic) {
    switch (outcome) {
      case Outcome::ack:
        ack_.bind(1, group).bind(2, seq).bind(3, attempt).bind(4, std::string_view(owner)).run();
        return;
      case Outcome::nack:
        release(group, seq, attempt, owner, now_ms() + delay.count(), false);
        return;
      case Outcome::reject: {
        owned_.bind(1, group).bind(2, seq).bind(3, attempt).bind(4, std::string_view(owner));
        bool owned = owned_.step();
        owned_.reset();
        if (!owned) return;
        if (auto message = load(seq)) {
          message->headers.insert_or_assign(header::error, reason);
          message->headers.insert_or_assign(header::attempts, std::to_string(attempt));
          message->headers.insert_or_assign(header::original_topic, topic);
          message->headers.insert_or_assign(header::original_group, group_name);
          insert(topic_id(dead_letter_topic), *message);
        }
        delete_pending_.bind(1, group).bind(2, seq).run();
        return;
      }
    }
  }

  // Makes a leased row visible again at `visible_at`; `uncount` undoes the attempt for a
  // delivery that never reached the application.
  void release(std::int64_t group, std::int64_t seq, int attempt, const std::string& owner, std::int64_t visible_at,
               bool uncount) {
    nack_.bind(1, group)
        .bind(2, seq)
        .bind(3, attempt)
        .bind(4, std::string_view(owner))
        .bind(5, visible_at)
        .bind(6, std::int64_t{uncount ? 1 : 0})
        .run();
  }

  void drop_group(std::int64_t group) {
    Statement pending(db_.get(), "DELETE FROM pending WHERE grp = ?1");
    pending.bind(1, group).run();
    Statement groups(db_.get(), "DELETE FROM groups WHERE id = ?1");
    groups.bind(1, group).run();
  }

  // Deletes the messages every group of their topic has settled.
  void enforce_retention() {
    Statement floors = db_.prepare(
        "SELECT g.topic, MIN(COALESCE((SELECT MIN(p.seq) FROM pending p WHERE p.grp = g.id), g.cursor + 1)) "
        "FROM groups g GROUP BY g.topic");
    std::vector<std::pair<std::int64_t, std::int64_t>> todo;
    while (floors.step()) todo.emplace_back(floors.int64(0), floors.int64(1));
    Statement drop = db_.prepare(
        "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE topic = ?1 AND seq < ?2 LIMIT 20000)");
    for (auto [topic, floor] : todo) drop.bind(1, topic).bind(2, floor).run();
  }

  // Starts a write transaction; `durable` commits fsync (publishes under sync=full),
  // others (claims and settlements, which only cost a redelivery if lost) do not.
  void begin(bool durable) {
    durable = durable && sync_full_;
    if (durable != durable_) {
      db_.exec(durable ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
      durable_ = durable;
    }
    begin_.run();
    if (!select_last_seq_.step()) throw Error(Errc::not_ferry_data, db_.path() + " lacks ferry's sequence row");
    last_seq_ = select_last_seq_.int64(0);
    select_last_seq_.reset();
    seq_dirty_ = false;
  }
  void commit() {
    if (seq_dirty_) update_last_seq_.bind(1, last_seq_).run();
    commit_.run();
  }
  void rollback() noexcept {
    sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    topic_ids_.clear();
  }
  void savepoint() { savepoint_.run(); }
  void release_savepoint() { release_savepoint_.run(); }
  void rollback_savepoint() noexcept {
    try {
      rollback_savepoint_.run();
      release_savepoint_.run();
    } catch (...) {
    }
    topic_ids_.clear();
  }

 private:
  std::vector<std::pair<std::int64_t, int>> select_ready(std::int64_t group, std::int64_t now, int max) {
    std::vector<std::pair<std::int64_t, int>> rows;
    select_ready_.bind(1, group).bind(2, now).bind(3, std::int64_t{max});
    while (select_ready_.step()) rows.emplace_back(select_ready_.int64(0), static_cast<int>(select_ready_.int64(1)));
    select_ready_.reset();
    return rows;
  }

  // Moves up to `limit` new messages of the topic into the group's pending rows.
  bool materialize(std::int64_t group, std::int64_t topic, int limit) {
    select_cursor_.bind(1, group);
    std::int64_t cursor = select_cursor_.step() ? select_cursor_.int64(0) : 0;
    select_cursor_.reset();
    materialize_.bind(1, group).bind(2, topic).bind(3, cursor).bind(4, std::int64_t{limit}).run();
    if (db_.changes() == 0) return false;
    max_pending_.bind(1, group);
    std::int64_t top = max_pending_.step() ? max_pending_.int64(0) : cursor;
    max_pending_.reset();
    update_cursor_.bind(1, group).bind(2, top).run();
    return true;
  }

  Db db_;
  std::unordered_map<std::string, std::int64_t> topic_ids_;
  std::int64_t last_seq_ = 0;  // message sequence numbers only grow, even past deletions
  bool seq_dirty_ = false;
  bool sync_full_;
  bool durable_;
  Statement select_last_seq_, update_last_seq_, insert_message_, select_topic_, insert_topic_, select_group_, insert_group_, select_ready_, select_cursor_,
      materialize_, max_pending_, update_cursor_, lease_, select_message_, delete_pending_, next_visible_, ack_, nack_,
      owned_, savepoint_, release_savepoint_, rollback_savepoint_, begin_, commit_;
};

// Checks that the file is empty or holds ferry's schema, before anything is written to it.
void check_format(Db& db) {
  std::set<std::string> names;
  try {
    Statement tables(db.get(), "SELECT name FROM sqlite_master WHERE type = 'table'");
    while (tables.step()) names.insert(tables.text(0));
  } catch (const Error& e) {
    throw Error(Errc::not_ferry_data, db.path() + " is not a ferry database (" + e.what() +
                                          "); point --broker at a new file or a ferry database");
  }
  if (names.empty()) return;
  if (!names.count("ferry_meta"))
    throw Error(Errc::not_ferry_data, db.path() +
                                          " is an SQLite database that ferry did not create; point --broker at a new "
                                          "file or a ferry database");
  Statement meta(db.get(), "SELECT value FROM ferry_meta WHERE name = ?1");
  meta.bind(1, std::string_view("format"));
  std::string format = meta.step() ? meta.text(0) : std::string();
  meta.reset();
  meta.bind(1, std::string_view("version"));
  std::string version = meta.step() ? meta.text(0) : std::string();
  if (format != kFormat)
    throw Error(Errc::not_ferry_data, db.path() + " is not a ferry database (format '" + format + "')");
  if (version != std::to_string(kVersion))
    throw Error(Errc::not_ferry_data, db.path() + " has ferry format version " + version + "; this ferry reads version " +
                                          std::to_string(kVersion) + ". Use the ferry release that wrote it.");
}

void create_schema(Db& db) {
  db.exec("BEGIN IMMEDIATE");
  try {
    db.exec(R"sql(
      CREATE TABLE IF NOT EXISTS ferry_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
      INSERT OR IGNORE INTO ferry_meta(name, value) VALUES ('format', 'ferry-sqlite'), ('version', '1');
      CREATE TABLE IF NOT EXISTS topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
      CREATE TABLE IF NOT EXISTS messages(
        seq INTEGER PRIMARY KEY,
        topic INTEGER NOT NULL,
        id TEXT NOT NULL,
        key TEXT,
        headers BLOB,
        payload BLOB NOT NULL,
        ts INTEGER NOT NULL);
      CREATE INDEX IF NOT EXISTS messages_by_topic ON messages(topic, seq);
      CREATE TABLE IF NOT EXISTS sequence(id INTEGER PRIMARY KEY CHECK (id = 1), last INTEGER NOT NULL);
      INSERT OR IGNORE INTO sequence(id, last) VALUES (1, 0);
      CREATE TABLE IF NOT EXISTS groups(
        id INTEGER PRIMARY KEY,
        topic INTEGER NOT NULL,
        name TEXT NOT NULL,
        cursor INTEGER NOT NULL,
        UNIQUE(topic, name));
      CREATE TABLE IF NOT EXISTS pending(
        grp INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        key TEXT,
        attempts INTEGER NOT NULL,
        visible_at INTEGER NOT NULL,
        owner TEXT,
        PRIMARY KEY(grp, seq)) WITHOUT ROWID;
      CREATE INDEX IF NOT EXISTS pending_by_key ON pending(grp, key, seq) WHERE key IS NOT NULL;
      CREATE INDEX IF NOT EXISTS pending_by_visibility ON pending(grp, visible_at);
    )sql");
    db.exec("COMMIT");
  } catch (...) {
    sqlite3_exec(db.get(), "ROLLBACK", nullptr, nullptr, nullptr);
    throw;
  }
}

Db open_database(const Options& options) {
  // Allocation statistics cost a global mutex on every SQLite allocation; ferry reads none.
  static std::once_flag configured;
  std::call_once(configured, [] { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
  std::filesystem::path path(options.path);
  if (path.has_parent_path()) {
    std::error_code ec;
    std::filesystem::create_directories(path.parent_path(), ec);
    if (ec)
      throw Error(Errc::storage, "cannot create directory " + path.parent_path().string() + " for the database: " +
                                     ec.message());
  }
  Db db(options.path, true);
  sqlite3_busy_timeout(db.get(), static_cast<int>(options.busy_timeout.count()));
  check_format(db);
  db.exec("PRAGMA journal_mode = WAL");
  db.exec(options.sync_full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
  db.exec("PRAGMA cache_size = -16384");
  // Checkpoints run on the watcher thread, off the commit path (see run_watcher).
  db.exec("PRAGMA wal_autocheckpoint = 0");
  create_schema(db);
  check_format(db);
  return db;
}

class Subscription;

// The state every handle of one open database shares: the writer thread and its queue,
// the wake-up signal for waiting consumers, and the watcher of other processes' writes.
class Engine : public std::enable_shared_from_this<Engine> {
 public:
  explicit Engine(Options options) : options_(std::move(options)) {}

  void start(Db db) {
    writer_ = std::make_unique<Writer>(std::move(db), options_.sync_full);
    watch_db_ = std::make_unique<Db>(options_.path, false);
    wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    writer_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "ferry-sq-write");
      run_writer();
    });
    watcher_thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "ferry-sq-watch");
      run_watcher();
    });
  }

  ~Engine() { shutdown(); }

  const Options& options() const { return options_; }

  void publish(const std::string& topic, std::vector<Message> messages, PublishCallback done) {
    if (!valid_name(topic))
      throw Error(Errc::invalid_argument,
                  "topic '" + topic + "' is not valid: use 1 to 200 characters from A-Z a-z 0-9 . _ -");
    for (auto& m : messages) stamp(m);
    std::size_t n = messages.size();
    Op op;
    op.messages = n;
    op.wakes_consumers = true;
    op.apply = [topic, messages = std::move(messages)](Writer& w) {
      std::int64_t id = w.topic_id(topic);
      for (const auto& m : messages) w.insert(id, m);
    };
    op.done = std::move(done);
    std::unique_lock lock(mutex_);
    auto deadline = SteadyClock::now() + options_.publish_timeout;
    bool room = space_cv_.wait_until(lock, deadline, [&] {
      return closed_ || in_flight_ == 0 || in_flight_ + n <= options_.max_in_flight;
    });
    Status failure;
    if (closed_) failure = {Errc::closed, "publish to '" + topic + "' after the sqlite broker was closed"};
    else if (!room)
      failure = {Errc::timeout, "publish to '" + topic + "' timed out after " +
                                    std::to_string(options_.publish_timeout.count()) + "ms waiting for room: " +
                                    std::to_string(in_flight_) + " messages are waiting to be written to " +
                                    options_.path + " (is the disk slow or another process holding the lock?)"};
    if (!failure.ok()) {
      lock.unlock();
      if (op.done) op.done(failure);
      return;
    }
    in_flight_ += n;
    queue_.push_back(std::move(op));
    lock.unlock();
    writer_cv_.notify_one();
  }

  // Runs `fn` on the writer thread inside a transaction and waits for the commit.
  template <typename Fn>
  auto call(Fn fn) -> decltype(fn(std::declval<Writer&>())) {
    using R = decltype(fn(std::declval<Writer&>()));
    auto promise = std::make_shared<std::promise<R>>();
    auto result = std::make_shared<std::optional<R>>();
    Op op;
    op.apply = [fn = std::move(fn), result](Writer& w) { result->emplace(fn(w)); };
    op.done = [promise, result](const Status& s) {
      if (s.ok()) promise->set_value(std::move(**result));
      else promise->set_exception(std::make_exception_ptr(Error(s)));
    };
    auto future = promise->get_future();
    if (!enqueue(std::move(op))) throw Error(Errc::closed, "the sqlite broker on " + options_.path + " is closed");
    return future.get();
  }

  // Queues a write whose outcome nobody waits for (settlements); failures are logged.
  void post(std::function<void(Writer&)> fn, bool wakes_consumers) {
    Op op;
    op.apply = std::move(fn);
    op.wakes_consumers = wakes_consumers;
    op.done = [path = options_.path](const Status& s) {
      if (!s.ok()) spdlog::warn("sqlite broker {}: a settlement was not written ({}); the message will be redelivered",
                                path, s.message);
    };
    enqueue(std::move(op));
  }

  // Waits until every write queued before the call has committed.
  void barrier() {
    auto promise = std::make_shared<std::promise<void>>();
    auto future = promise->get_future();
    Op op;
    op.apply = [](Writer&) {};
    op.done = [promise](const Status&) { promise->set_value(); };
    if (enqueue(std::move(op))) future.wait();
  }

  std::uint64_t generation() {
    std::lock_guard lock(wake_mutex_);
    return generation_;
  }

  // Waits until something may have changed since `seen`, or until `until`.
  void wait_change(std::uint64_t seen, SteadyClock::time_point until) {
    std::unique_lock lock(wake_mutex_);
    wake_cv_.wait_until(lock, until, [&] { return generation_ != seen || stopping_wake_; });
  }

  void wake_consumers() {
    {
      std::lock_guard lock(wake_mutex_);
      ++generation_;
    }
    wake_cv_.notify_all();
  }

  void track(const std::shared_ptr<Subscription>& s) {
    std::lock_guard lock(mutex_);
    subscriptions_.push_back(s);
  }

  bool closed() {
    std::lock_guard lock(mutex_);
    return closed_;
  }

  // Closes subscriptions, writes everything queued, stops the threads.
  void shutdown();

 private:
  bool enqueue(Op op) {
    {
      std::lock_guard lock(mutex_);
      if (writer_stopped_) return false;
      queue_.push_back(std::move(op));
    }
    writer_cv_.notify_one();
    return true;
  }

  void run_writer();
  void run_watcher();
  void execute(std::vector<Op>& batch);
  Status run_transaction(std::vector<Op>& batch, std::vector<Status>& outcomes, bool isolate);

  Options options_;
  std::unique_ptr<Writer> writer_;
  std::unique_ptr<Db> watch_db_;
  std::thread writer_thread_, watcher_thread_;
  int wake_fd_ = -1;

  std::mutex mutex_;
  std::condition_variable writer_cv_, space_cv_;
  std::deque<Op> queue_;
  std::size_t in_flight_ = 0;
  bool closed_ = false;
  bool writer_stopping_ = false;
  bool writer_stopped_ = false;
  std::vector<std::weak_ptr<Subscription>> subscriptions_;

  std::mutex wake_mutex_;
  std::condition_variable wake_cv_;
  std::uint64_t generation_ = 0;
  bool stopping_wake_ = false;

  SteadyClock::time_point next_retention_ = SteadyClock::now();
};

void Engine::run_writer() {
  std::vector<Op> batch;
  while (true) {
    {
      std::unique_lock lock(mutex_);
      writer_cv_.wait(lock, [&] { return !queue_.empty() || writer_stopping_; });
      if (queue_.empty()) {
        writer_stopped_ = true;
        return;
      }
      std::size_t messages = 0;
      while (!queue_.empty() && (batch.empty() || messages + queue_.front().messages <= kMaxOpsMessagesPerCommit)) {
        messages += queue_.front().messages;
        batch.push_back(std::move(queue_.front()));
        queue_.pop_front();
      }
    }
    execute(batch);
    batch.clear();
  }
}

// Runs the batch in one transaction. The fast path runs the operations back to back; if
// one of them fails, the transaction is rolled back and run again with a savepoint around
// each operation, so that only the failing one fails.
Status Engine::run_transaction(std::vector<Op>& batch, std::vector<Status>& outcomes, bool isolate) {
  bool durable = std::any_of(batch.begin(), batch.end(), [](const Op& op) { return op.messages > 0 || op.durable; });
  try {
    writer_->begin(durable);
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!isolate) {
        batch[i].apply(*writer_);
        continue;
      }
      try {
        writer_->savepoint();
        batch[i].apply(*writer_);
        writer_->release_savepoint();
      } catch (const Error& e) {
        writer_->rollback_savepoint();
        outcomes[i] = {e.code(), e.what()};
      } catch (const std::exception& e) {
        writer_->rollback_savepoint();
        outcomes[i] = {Errc::internal, e.what()};
      }
    }
    if (SteadyClock::now() >= next_retention_) {
      writer_->savepoint();
      try {
        writer_->enforce_retention();
        writer_->release_savepoint();
      } catch (const std::exception& e) {
        writer_->rollback_savepoint();
        spdlog::warn("sqlite broker {}: retention failed: {}", options_.path, e.what());
      }
      next_retention_ = SteadyClock::now() + options_.retention_interval;
    }
    writer_->commit();
    return {};
  } catch (const std::exception& e) {
    writer_->rollback();
    if (!isolate) return run_transaction(batch, outcomes, true);
    const auto* error = dynamic_cast<const Error*>(&e);
    return {error ? error->code() : Errc::internal, "writing to " + options_.path + " failed: " + e.what()};
  }
}

void Engine::execute(std::vector<Op>& batch) {
  std::vector<Status> outcomes(batch.size());
  bool wake = false;
  std::size_t published = 0;
  Status commit = run_transaction(batch, outcomes, false);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    published += batch[i].messages;
    if (commit.ok() && outcomes[i].ok() && batch[i].wakes_consumers) wake = true;
  }
  if (published) {
    {
      std::lock_guard lock(mutex_);
      in_flight_ -= published;
    }
    space_cv_.notify_all();
  }
  if (wake) wake_consumers();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (!batch[i].done) continue;
    const Status& s = commit.ok() ? outcomes[i] : commit;
    try {
      batch[i].done(s);
    } catch (const std::exception& e) {
      spdlog::error("sqlite broker {}: a completion callback threw: {}", options_.path, e.what());
    }
  }
}

// Wakes consumers when another process commits: inotify reports writes to the WAL file,
// and PRAGMA data_version tells whether they came from another connection. Also moves
// the WAL's pages into the database (checkpoints), so that commits never wait for it.
void Engine::run_watcher() {
  int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  std::filesystem::path path = std::filesystem::absolute(options_.path);
  std::string wal = path.filename().string() + "-wal";
  if (fd >= 0) inotify_add_watch(fd, path.parent_path().c_str(), IN_MODIFY | IN_CREATE | IN_MOVED_TO);
  Statement version(watch_db_->get(), "PRAGMA data_version");
  auto read_version = [&] {
    std::int64_t v = 0;
    try {
      if (version.step()) v = version.int64(0);
      version.reset();
    } catch (const std::exception&) {
    }
    return v;
  };
  std::int64_t last = read_version();
  auto next_checkpoint = SteadyClock::now();
  auto checkpoint = [&] {
    if (SteadyClock::now() < next_checkpoint) return;
    next_checkpoint = SteadyClock::now() + Ms{100};
    // PASSIVE copies what it can without blocking writers; errors only delay it.
    sqlite3_wal_checkpoint_v2(watch_db_->get(), nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
  };
  alignas(inotify_event) char buffer[4096];
  while (true) {
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {fd, POLLIN, 0}};
    int n = poll(fds, fd >= 0 ? 2 : 1, 100);
    checkpoint();
    if (n > 0 && (fds[0].revents & POLLIN)) break;
    bool relevant = n == 0;  // a slow periodic look as well, for file systems without inotify
    if (n > 0 && (fds[1].revents & POLLIN)) {
      ssize_t len;
      while ((len = read(fd, buffer, sizeof buffer)) > 0) {
        for (char* p = buffer; p < buffer + len;) {
          auto* event = reinterpret_cast<inotify_event*>(p);
          if (event->len && wal == event->name) relevant = true;
          p += sizeof(inotify_event) + event->len;
        }
      }
    }
    if (!relevant) continue;
    std::int64_t now = read_version();
    if (now != last) {
      last = now;
      wake_consumers();
      // One wake-up per few milliseconds is prompt enough and spares a write-heavy peer.
      std::this_thread::sleep_for(Ms{2});
    }
  }
  if (fd >= 0) close(fd);
}

// The per-subscriber state and the Settler its deliveries point to.
class Subscription : public Settler, public std::enable_shared_from_this<Subscription> {
 public:
  Subscription(std::shared_ptr<Engine> engine, SubscribeOptions options)
      : engine_(std::move(engine)), options_(std::move(options)), owner_(make_uuid()) {
    dead_letter_topic_ = options_.effective_dead_letter_topic();
    auto ids = engine_->call([topic = options_.topic, group = options_.group, ephemeral = options_.ephemeral](Writer& w) {
      std::int64_t t = w.topic_id(topic);
      return std::pair{t, w.group_id(t, group, ephemeral)};
    });
    topic_id_ = ids.first;
    group_id_ = ids.second;
  }

  std::optional<Delivery> receive(Ms timeout) {
    auto deadline = SteadyClock::now() + timeout;
    while (true) {
      std::uint64_t seen = engine_->generation();
      std::optional<std::int64_t> next_visible;
      {
        std::unique_lock lock(mutex_);
        if (closed_) return std::nullopt;
        if (!buffer_.empty()) return take(lock);
        int room = options_.prefetch - static_cast<int>(outstanding_.size());
        if (room > 0) {
          lock.unlock();
          ClaimResult result;
          {
            std::lock_guard claim_lock(claim_mutex_);
            result = claim(room);
          }
          lock.lock();
          next_visible = result.next_visible_ms;
          for (auto& c : result.claimed) buffer_.push_back(std::move(c));
          if (closed_) {
            release_buffer(lock);
            return std::nullopt;
          }
          if (!buffer_.empty()) return take(lock);
        }
      }
      auto until = std::min(deadline, SteadyClock::now() + Ms{1000});
      if (next_visible) {
        auto delta = Ms{std::max<std::int64_t>(0, *next_visible - now_ms())};
        until = std::min(until, SteadyClock::now() + delta);
      }
      if (SteadyClock::now() >= deadline) return std::nullopt;
      engine_->wait_change(seen, until);
    }
  }

  void settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept override {
    int attempt = 0;
    bool was_full = false;
    {
      std::lock_guard lock(mutex_);
      auto it = outstanding_.find(static_cast<std::int64_t>(token));
      if (it == outstanding_.end()) return;  // released by close(): it will be redelivered
      attempt = it->second;
      was_full = static_cast<int>(outstanding_.size()) >= options_.prefetch;
      outstanding_.erase(it);
    }
    auto seq = static_cast<std::int64_t>(token);
    engine_->post(
        [self = shared_from_this(), seq, attempt, outcome, delay, reason](Writer& w) {
          w.settle(self->group_id_, seq, attempt, self->owner_, outcome, delay, reason, self->options_.topic,
                   self->options_.group, self->dead_letter_topic_);
        },
        outcome != Outcome::ack);
    if (was_full) engine_->wake_consumers();  // a receiver may be waiting for prefetch room
  }

  void close() {
    std::vector<std::pair<std::int64_t, int>> unsettled;
    std::vector<std::pair<std::int64_t, int>> unreceived;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      for (auto& [seq, attempt] : outstanding_) unsettled.emplace_back(seq, attempt);
      for (auto& c : buffer_) unreceived.emplace_back(c.seq, c.attempt);
      outstanding_.clear();
      buffer_.clear();
    }
    if (options_.ephemeral) {
      engine_->post([self = shared_from_this()](Writer& w) { w.drop_group(self->group_id_); }, false);
      engine_->barrier();
    } else if (!unsettled.empty() || !unreceived.empty()) {
      engine_->post(
          [self = shared_from_this(), unsettled, unreceived](Writer& w) {
            for (auto [seq, attempt] : unsettled) w.release(self->group_id_, seq, attempt, self->owner_, 0, false);
            for (auto [seq, attempt] : unreceived) w.release(self->group_id_, seq, attempt, self->owner_, 0, true);
          },
          true);
      engine_->barrier();
    }
    engine_->wake_consumers();
  }

 private:
  ClaimResult claim(int room) {
    return engine_->call([self = shared_from_this(), room](Writer& w) {
      return w.claim(self->group_id_, self->topic_id_, room, self->options_.ack_timeout, self->owner_);
    });
  }

  std::optional<Delivery> take(std::unique_lock<std::mutex>&) {
    Claimed c = std::move(buffer_.front());
    buffer_.pop_front();
    outstanding_.emplace(c.seq, c.attempt);
    return Delivery(std::move(c.message), options_.topic, options_.group, c.attempt, weak_from_this(),
                    static_cast<std::uint64_t>(c.seq));
  }

  void release_buffer(std::unique_lock<std::mutex>&) {
    std::vector<std::pair<std::int64_t, int>> unreceived;
    for (auto& c : buffer_) unreceived.emplace_back(c.seq, c.attempt);
    buffer_.clear();
    engine_->post(
        [self = shared_from_this(), unreceived](Writer& w) {
          for (auto [seq, attempt] : unreceived) w.release(self->group_id_, seq, attempt, self->owner_, 0, true);
        },
        true);
  }

  std::shared_ptr<Engine> engine_;
  SubscribeOptions options_;
  std::string owner_;
  std::string dead_letter_topic_;
  std::int64_t topic_id_ = 0;
  std::int64_t group_id_ = 0;

  std::mutex claim_mutex_;
  std::mutex mutex_;
  std::deque<Claimed> buffer_;
  std::map<std::int64_t, int> outstanding_;  // seq -> attempt, received and not settled
  bool closed_ = false;
};

void Engine::shutdown() {
  std::vector<std::shared_ptr<Subscription>> open;
  {
    std::lock_guard lock(mutex_);
    if (writer_stopped_ && !writer_thread_.joinable()) return;
    closed_ = true;
    for (auto& weak : subscriptions_)
      if (auto s = weak.lock()) open.push_back(std::move(s));
    subscriptions_.clear();
  }
  space_cv_.notify_all();
  for (auto& s : open) s->close();
  {
    std::lock_guard lock(mutex_);
    writer_stopping_ = true;
  }
  writer_cv_.notify_all();
  if (writer_thread_.joinable()) writer_thread_.join();
  if (wake_fd_ >= 0) {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = write(wake_fd_, &one, sizeof one);
  }
  if (watcher_thread_.joinable()) watcher_thread_.join();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  wake_fd_ = -1;
  {
    std::lock_guard lock(wake_mutex_);
    stopping_wake_ = true;
  }
  wake_cv_.notify_all();
}

class SqliteSubscriber : public Subscriber {
 public:
  explicit SqliteSubscriber(std::shared_ptr<Subscription> s) : s_(std::move(s)) {}
  ~SqliteSubscriber() override { s_->close(); }
  std::optional<Delivery> receive(Ms timeout) override { return s_->receive(timeout); }
  void close() override { s_->close(); }

 private:
  std::shared_ptr<Subscription> s_;
};

class SqlitePublisher : public Publisher {
 public:
  explicit SqlitePublisher(Engine& engine) : engine_(engine) {}
  void publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) override {
    engine_.publish(topic, std::move(messages), std::move(done));
  }
  void close() override { engine_.barrier(); }

 private:
  Engine& engine_;
};

class SqliteBroker : public Broker, public Admin {
 public:
  explicit SqliteBroker(const Url& url) : url_(url) {
    Options options = Options::from_url(url);
    Db db = open_database(options);
    engine_ = std::make_shared<Engine>(std::move(options));
    engine_->start(std::move(db));
    publisher_ = std::make_unique<SqlitePublisher>(*engine_);
  }
  ~SqliteBroker() override { close(); }

  const Url& url() const override { return url_; }

  Capabilities capabilities() const override {
    Capabilities c;
    c.per_key_order = true;
    c.native_delay = true;
    c.native_dead_letter = true;
    c.persistent = true;
    c.multi_process_groups = true;
    c.late_group_sees_history = true;
    c.redelivers_on_close = true;
    return c;
  }

  Publisher& publisher() override { return *publisher_; }

  std::unique_ptr<Subscriber> subscribe(const SubscribeOptions& options) override {
    options.validate();
    if (engine_->closed()) throw Error(Errc::closed, "subscribe on a closed sqlite broker " + url_.masked());
    auto s = std::make_shared<Subscription>(engine_, options);
    engine_->track(s);
    return std::make_unique<SqliteSubscriber>(std::move(s));
  }

  Status ping() override {
    try {
      engine_->call([](Writer& w) {
        Statement s(w.db().get(), "SELECT 1 FROM ferry_meta LIMIT 1");
        s.step();
        return 0;
      });
      return {};
    } catch (const Error& e) {
      return {e.code(), e.what()};
    }
  }

  void close() override { engine_->shutdown(); }

  Admin* admin() override { return this; }

  std::vector<TopicStats> stats() override {
    return engine_->call([](Writer& w) {
      std::vector<TopicStats> out;
      std::map<std::int64_t, std::size_t> index;
      Statement topics(w.db().get(),
                       "SELECT t.id, t.name, (SELECT COUNT(*) FROM messages m WHERE m.topic = t.id) FROM topics t "
                       "ORDER BY t.name");
      while (topics.step()) {
        index[topics.int64(0)] = out.size();
        out.push_back({topics.text(1), static_cast<std::uint64_t>(topics.int64(2)), {}});
      }
      Statement groups(w.db().get(),
                       "SELECT g.topic, g.name, "
                       "(SELECT COUNT(*) FROM pending p WHERE p.grp = g.id) + "
                       "(SELECT COUNT(*) FROM messages m WHERE m.topic = g.topic AND m.seq > g.cursor), "
                       "(SELECT COUNT(*) FROM pending p WHERE p.grp = g.id AND p.owner IS NOT NULL AND "
                       " p.visible_at > ?1) FROM groups g ORDER BY g.name");
      groups.bind(1, now_ms());
      while (groups.step()) {
        auto it = index.find(groups.int64(0));
        if (it == index.end()) continue;
        out[it->second].groups.push_back({groups.text(1), static_cast<std::uint64_t>(groups.int64(2)),
                                          static_cast<std::uint64_t>(groups.int64(3))});
      }
      return out;
    });
  }

  std::vector<Message> peek(const std::string& topic, std::size_t limit) override {
    return engine_->call([topic, limit](Writer& w) {
      std::vector<Message> out;
      auto id = w.find_topic(topic);
      if (!id) return out;
      Statement s(w.db().get(), "SELECT seq FROM messages WHERE topic = ?1 ORDER BY seq LIMIT ?2");
      s.bind(1, *id).bind(2, static_cast<std::int64_t>(limit));
      std::vector<std::int64_t> seqs;
      while (s.step()) seqs.push_back(s.int64(0));
      for (auto seq : seqs)
        if (auto m = w.load(seq)) out.push_back(std::move(*m));
      return out;
    });
  }

  std::uint64_t purge(const std::string& topic) override {
    return engine_->call([topic](Writer& w) -> std::uint64_t {
      auto id = w.find_topic(topic);
      if (!id) return 0;
      Statement del(w.db().get(), "DELETE FROM messages WHERE topic = ?1");
      del.bind(1, *id).run();
      auto removed = static_cast<std::uint64_t>(w.db().changes());
      Statement pending(w.db().get(), "DELETE FROM pending WHERE grp IN (SELECT id FROM groups WHERE topic = ?1)");
      pending.bind(1, *id).run();
      return removed;
    });
  }

 private:
  Url url_;
  std::shared_ptr<Engine> engine_;
  std::unique_ptr<SqlitePublisher> publisher_;
};

}  // namespace

void register_scheme() {
  Broker::register_scheme("sqlite", [](const Url& url) -> std::shared_ptr<Broker> {
    return std::make_shared<SqliteBroker>(url);
  });
}

}  // namespace ferry::sqlite
