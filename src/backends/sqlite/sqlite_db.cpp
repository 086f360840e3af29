#include "sqlite_db.hpp"

namespace ferry::sqlite {

Errc errc_for(int code) noexcept {
  switch (code & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT: return Errc::not_ferry_data;
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return Errc::unavailable;
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_IOERR:
    case SQLITE_FULL: return Errc::storage;
    case SQLITE_MISUSE:
    case SQLITE_RANGE:
    case SQLITE_ERROR: return Errc::internal;
    default: return Errc::storage;
  }
}

void throw_sqlite(sqlite3* db, int code, std::string_view context) {
  std::string message = std::string(context) + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(code));
  const char* file = db ? sqlite3_db_filename(db, "main") : nullptr;
  if (file && *file && context.find(file) == std::string_view::npos) message += std::string(" (") + file + ")";
  if ((code & 0xff) == SQLITE_BUSY)
    message += " (another process holds the database's write lock; raise busy_timeout or retry)";
  else if ((code & 0xff) == SQLITE_FULL)
    message += " (the disk is full; free space and retry)";
  throw Error(errc_for(code), message);
}

Statement::Statement(sqlite3* db, std::string_view sql) : db_(db) {
  sqlite3_stmt* raw = nullptr;
  int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &raw, nullptr);
  if (rc != SQLITE_OK) throw_sqlite(db, rc, "cannot prepare '" + std::string(sql.substr(0, 60)) + "'");
  stmt_.reset(raw);
}

Statement& Statement::bind(int index, std::int64_t value) {
  if (int rc = sqlite3_bind_int64(stmt_.get(), index, value); rc != SQLITE_OK) fail(rc);
  return *this;
}

Statement& Statement::bind(int index, std::string_view text) {
  if (int rc = sqlite3_bind_text64(stmt_.get(), index, text.data(), text.size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      rc != SQLITE_OK)
    fail(rc);
  return *this;
}

Statement& Statement::bind_blob(int index, std::string_view bytes) {
  if (int rc = sqlite3_bind_blob64(stmt_.get(), index, bytes.data(), bytes.size(), SQLITE_TRANSIENT); rc != SQLITE_OK)
    fail(rc);
  return *this;
}

Statement& Statement::bind_null(int index) {
  if (int rc = sqlite3_bind_null(stmt_.get(), index); rc != SQLITE_OK) fail(rc);
  return *this;
}

Statement& Statement::bind_optional(int index, const std::optional<std::string>& text) {
  return text ? bind(index, std::string_view(*text)) : bind_null(index);
}

bool Statement::step() {
  int rc = sqlite3_step(stmt_.get());
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  sqlite3_reset(stmt_.get());
  fail(rc);
}

std::int64_t Statement::run() {
  while (step()) {
  }
  const std::int64_t changed = sqlite3_changes64(db_);
  reset();
  return changed;
}

void Statement::reset() noexcept {
  sqlite3_reset(stmt_.get());
  sqlite3_clear_bindings(stmt_.get());
}

std::int64_t Statement::int64(int column) const { return sqlite3_column_int64(stmt_.get(), column); }

bool Statement::is_null(int column) const { return sqlite3_column_type(stmt_.get(), column) == SQLITE_NULL; }

std::string Statement::text(int column) const {
  auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_.get(), column));
  return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_.get(), column))) : std::string();
}

std::string Statement::blob(int column) const {
  auto* p = static_cast<const char*>(sqlite3_column_blob(stmt_.get(), column));
  return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(stmt_.get(), column))) : std::string();
}

void Statement::fail(int code) const { throw_sqlite(db_, code, "database statement failed"); }

Db::Db(const std::string& path, bool create, int busy_timeout_ms) : path_(path) {
  sqlite3* raw = nullptr;
  int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  db_.reset(raw);
  if (rc != SQLITE_OK) throw_sqlite(raw, rc, "cannot open database " + path);
  sqlite3_extended_result_codes(raw, 1);
  if (busy_timeout_ms > 0) sqlite3_busy_timeout(raw, busy_timeout_ms);
}

void Db::exec(std::string_view sql) {
  std::string copy(sql);
  char* err = nullptr;
  int rc = sqlite3_exec(db_.get(), copy.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string message = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    throw Error(errc_for(rc), "database " + path_ + ": '" + copy.substr(0, 60) + "' failed: " + message);
  }
}

}  // namespace ferry::sqlite
