#pragma once
// ferry::app::OrderStore: the order service's own SQLite file (default
// ./ferry-data/orders.db, WAL), separate from any broker and shared by every process of
// the service on the machine (`ferry serve` and any number of `ferry consume`).
//
// Tables: orders (id, user_id, product_ids, state accepted|processed, created_at,
// processed_at), idempotency_keys (key, fingerprint, order_id, state pending|done) and
// processed_messages (message_id, order_id, processed_at, processor).
//
// Threads: "order-store" writes, "order-ckpt" checkpoints the WAL in the background.
// Writes go through one writer thread per OrderStore: whatever is queued when it wakes
// is written in one transaction (group commit), so the HTTP path never waits on a
// commit of its own. Asynchronous calls return at once and run their callback on that
// writer thread after the commit: callbacks must be short and must not call blocking
// OrderStore methods. Reads use a pool of read connections and may run on any thread.
// Every method is thread-safe.
//
// Guarantees:
//  - an order never moves from processed back to accepted;
//  - mark_processed is idempotent: a message id, or an order, is processed at most once
//    across every process sharing the file; a repeat reports ProcessOutcome::duplicate;
//  - an idempotency key is bound to the first request's fingerprint and order id forever.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ferry/error.hpp"
#include "order.hpp"

namespace ferry::app {

struct OrderStoreOptions {
  std::string path = "./ferry-data/orders.db";
  // How long a write waits for another process holding the file's write lock.
  std::chrono::milliseconds busy_timeout{10'000};
  // Full: fsync at every commit (processed marks survive a power cut). Normal: survive a
  // process crash only.
  bool sync_full = false;
  // Operations written in one transaction, at most.
  std::size_t max_batch = 4096;

  // Throws Error(invalid_argument).
  void validate() const;
};

struct OrderRecord {
  std::string id;
  std::string user_id;
  std::vector<std::string> product_ids;
  std::string state;  // "accepted" or "processed"
  std::string created_at;
  std::optional<std::string> processed_at;
};

// What reserve_key found.
enum class KeyClaim {
  reserved,  // the key is new: it is now bound to the caller's order id and fingerprint
  done,      // the same request was already accepted as `order_id`
  pending,   // the same request was reserved as `order_id` but never confirmed (it failed,
             // or its process died): the caller may publish `order_id` again
  conflict,  // the key is bound to a different request
};

struct KeyReservation {
  KeyClaim claim = KeyClaim::reserved;
  std::string order_id;
};

enum class ProcessOutcome { processed, duplicate };

class OrderStore {
 public:
  using DoneCallback = std::function<void(const Status&)>;
  using ReserveCallback = std::function<void(const Status&, const KeyReservation&)>;

  // Opens or creates the file and its schema; throws Error(storage | not_ferry_data |
  // unavailable) naming the path.
  explicit OrderStore(OrderStoreOptions options);
  ~OrderStore();
  OrderStore(const OrderStore&) = delete;
  OrderStore& operator=(const OrderStore&) = delete;

  const std::string& path() const noexcept;

  // Binds `key` to (fingerprint, order_id) unless it is bound already; asynchronous.
  void reserve_key(std::string key, std::string fingerprint, std::string order_id, ReserveCallback done);

  // Stores the order as accepted unless it exists (insert-if-absent: a processed order
  // stays processed) and marks its idempotency key done; asynchronous.
  void record_accepted(OrderCreated event, std::optional<std::string> key, DoneCallback done);

  // Marks the order processed, inserting it from the event if it is missing; blocks until
  // committed. Throws Error(storage | unavailable | closed).
  ProcessOutcome mark_processed(const OrderCreated& event, const std::string& message_id, const std::string& processor);

  // The order, or nothing for an unknown id. Throws Error(storage | unavailable).
  std::optional<OrderRecord> find(const std::string& order_id);

  // ok when the file can be read now.
  Status ping();

  // Completes every write already queued; later writes fail with Errc::closed.
  void close();

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::app
