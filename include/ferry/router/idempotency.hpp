#pragma once
// Idempotency stores for the Dedup middleware: remember which message ids were
// processed, for a while. Both implementations are thread-safe.

#include <chrono>
#include <memory>
#include <string>

namespace ferry {

class IdempotencyStore {
 public:
  virtual ~IdempotencyStore() = default;
  // True if `key` was remembered and its time to live has not run out.
  virtual bool seen(const std::string& key) = 0;
  // Remembers `key` for `ttl`.
  virtual void remember(const std::string& key, std::chrono::milliseconds ttl) = 0;
};

// In process memory; for tests and single-process consumers.
std::shared_ptr<IdempotencyStore> make_memory_idempotency_store();

// In an SQLite file (created if missing), shared by the processes of one machine and
// kept across restarts. Expired keys are deleted as new ones are remembered. Throws
// Error(storage | not_ferry_data) when the file cannot be used.
std::shared_ptr<IdempotencyStore> make_sqlite_idempotency_store(const std::string& path);

}  // namespace ferry
