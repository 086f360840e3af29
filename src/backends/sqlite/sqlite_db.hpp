#pragma once
// RAII over sqlite3 handles, private to ferry: the sqlite backend and the order service's
// store (ferry_app) use it. A Db and its Statements belong to one thread at a time.
// Failures throw ferry::Error with SQLite's message and the database file.

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "ferry/error.hpp"

namespace ferry::sqlite {

struct DbCloser {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const noexcept { sqlite3_finalize(stmt); }
};

// Maps an SQLite result code to ferry's error kinds.
Errc errc_for(int sqlite_code) noexcept;

class Statement {
 public:
  Statement() = default;
  Statement(sqlite3* db, std::string_view sql);

  Statement& bind(int index, std::int64_t value);
  Statement& bind(int index, std::string_view text);
  Statement& bind_blob(int index, std::string_view bytes);
  Statement& bind_null(int index);
  Statement& bind_optional(int index, const std::optional<std::string>& text);

  // Steps once: true while a row is available.
  bool step();
  // Steps to completion, then resets for reuse; returns the rows changed.
  std::int64_t run();
  void reset() noexcept;

  std::int64_t int64(int column) const;
  bool is_null(int column) const;
  std::string text(int column) const;
  std::string blob(int column) const;

 private:
  [[noreturn]] void fail(int code) const;
  sqlite3* db_ = nullptr;
  std::unique_ptr<sqlite3_stmt, StmtFinalizer> stmt_;
};

class Db {
 public:
  // Opens (creating when allowed) the file; throws Error with the path and the reason.
  // A busy_timeout_ms above 0 makes statements wait that long for another connection's lock.
  Db(const std::string& path, bool create, int busy_timeout_ms = 0);
  sqlite3* get() const noexcept { return db_.get(); }
  void exec(std::string_view sql);
  Statement prepare(std::string_view sql) { return Statement(db_.get(), sql); }
  std::int64_t changes() const noexcept { return sqlite3_changes64(db_.get()); }
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  std::unique_ptr<sqlite3, DbCloser> db_;
};

// Throws Error(errc_for(code)) with the database's message and `context`.
[[noreturn]] void throw_sqlite(sqlite3* db, int code, std::string_view context);

}  // namespace ferry::sqlite
