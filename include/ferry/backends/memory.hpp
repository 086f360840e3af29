#pragma once
// memory:// — an in-process broker for tests and examples.
//
// Keeps the whole delivery contract (fan-out between groups, load balancing inside a
// group, per-key order, leases, nack with delay, reject to the dead-letter topic) with
// nothing persisted: the messages live as long as the Broker object. A publish
// completes as soon as the message is stored in memory. All methods are thread-safe.
//
// Publishing: the completion callback runs on the calling thread before
// publish_batch_async returns. An invalid topic name is a programming error and throws
// Error(invalid_argument) at the call; after close() the callback gets Errc::closed.
// Consuming: a group starts at the oldest retained message; a message every group has
// acked or rejected is dropped (a topic with no group keeps everything). Nothing is
// fetched ahead of receive(), so SubscribeOptions::prefetch has no effect. A dead letter
// is a copy of the message (same id, key, payload and timestamp) with the headers
// ferry-error, ferry-attempts, ferry-original-topic and ferry-original-group added.
// Broker::admin() is always available.
//
//   memory://            a new, private broker
//   memory://name        the broker registered under `name` in this process, shared by
//                        every open() of the same URL while one of them is alive; each
//                        open() returns its own handle (closing it closes only its own
//                        publisher and subscribers)

namespace ferry::memory {

// Makes "memory://" known to ferry::Broker::open().
void register_scheme();

}  // namespace ferry::memory
