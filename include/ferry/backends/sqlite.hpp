#pragma once
// sqlite:// — ferry's embedded, durable broker: one SQLite database file (WAL mode)
// shared by every process on the machine that opens it.
//
//   sqlite://./ferry-data/ferry.db          relative path
//   sqlite:///var/lib/ferry/ferry.db        absolute path
//
// Query options (all optional):
//   sync=full|normal      fsync on every commit (full, the default: a confirmed publish
//                         survives a power cut) or only at checkpoints (normal: survives a
//                         process crash, not a power cut)
//   busy_timeout=5s       how long to wait for another process's write lock
//   max_in_flight=100000  publishes queued and not yet committed, at most
//   publish_timeout=5s    how long a publish may wait for room in that queue
//   retention_interval=200ms how often fully acked messages are deleted
//
// Guarantees: a publish completes after the transaction holding it has committed;
// concurrent publishes share transactions (group commit). Every group receives every
// message; the consumers of a group, in any process, share its messages. A delivery is
// leased for SubscribeOptions::ack_timeout; when the lease runs out (the consumer died)
// it goes to another consumer. Messages with the same key reach a group in order, one at
// a time. A message every group has acked or rejected is deleted. A group created later
// receives every message still retained.
//
// Threads: each open Broker runs one writer thread (all writes of the process go through
// it, batched into transactions) and one watcher thread (inotify on the database's WAL
// file, to wake consumers when another process writes).

namespace ferry::sqlite {

// Makes "sqlite://" known to ferry::Broker::open().
void register_scheme();

}  // namespace ferry::sqlite
