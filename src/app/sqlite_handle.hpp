#pragma once
// RAII over sqlite3 handles for the order store; private to ferry_app. A Connection and
// its Statements belong to one thread at a time. Failures throw ferry::Error(storage)
// with the file name and SQLite's message.

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace ferry::app::sql {

struct ConnectionCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StatementFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};

class Statement {
 public:
  Statement() = default;
  Statement(sqlite3* db, std::string_view sql);

  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, std::string_view text);
  Statement& bind_null(int index);

  // Steps once: true while a row is available. Reset before reuse.
  bool step();
  // Steps to completion and resets; returns the rows changed.
  std::int64_t run();
  void reset() noexcept;

  std::int64_t int64(int column) const;
  bool is_null(int column) const;
  std::string text(int column) const;

 private:
  [[noreturn]] void fail(int code) const;
  sqlite3* db_ = nullptr;
  std::unique_ptr<sqlite3_stmt, StatementFinalizer> stmt_;
};

class Connection {
 public:
  // Opens the file read-write, creating it when `create`; throws Error(storage).
  Connection(const std::string& path, bool create, int busy_timeout_ms);

  sqlite3* get() const noexcept { return db_.get(); }
  const std::string& path() const noexcept { return path_; }
  void exec(std::string_view sql);
  Statement prepare(std::string_view sql) { return Statement(db_.get(), sql); }

 private:
  std::string path_;
  std::unique_ptr<sqlite3, ConnectionCloser> db_;
};

// Throws Error(storage) with SQLite's message for `code` and `context`.
[[noreturn]] void throw_sqlite(sqlite3* db, int code, std::string_view context);

}  // namespace ferry::app::sql
