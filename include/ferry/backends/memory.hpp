#pragma once
// memory:// — an in-process broker for tests and examples.
//
// Keeps the whole delivery contract (fan-out between groups, load balancing inside a
// group, per-key order, leases, nack with delay, reject to the dead-letter topic) with
// nothing persisted: the messages live as long as the Broker object. A publish
// completes as soon as the message is stored in memory. All methods are thread-safe.
//
//   memory://            a new, private broker
//   memory://name        the broker registered under `name` in this process, shared by
//                        every open() of the same URL while one of them is alive

namespace ferry::memory {

// Makes "memory://" known to ferry::Broker::open().
void register_scheme();

}  // namespace ferry::memory
