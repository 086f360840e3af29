#pragma once
// amqp:// and amqps:// — RabbitMQ (AMQP 0-9-1) through rabbitmq-c.
//
//   amqp://guest:guest@localhost:5672/               vhost "/"
//   amqp://app:secret@rabbit1:5672,rabbit2:5672/prod  vhost "prod"; hosts tried in order
//   amqps://app:secret@rabbit:5671/?cacert=/etc/ssl/rabbit-ca.pem
//
// The password is never logged or put in an error: messages show the URL masked.
//
// Query options (all optional; an unknown one is an Error(invalid_argument) at open):
//   exchange_type=fanout   type of every exchange ferry declares: fanout (the default),
//                          direct or topic
//   routing_key=KEY        direct/topic only: the key messages are published with and
//                          queues are bound with (default: the topic's name)
//   queue.GROUP=NAME       the group GROUP consumes the queue NAME instead of
//                          "<topic>.<group>" (to adopt an existing queue)
//   prefetch=N             replaces SubscribeOptions::prefetch (basic.qos) for every
//                          subscriber of this broker handle
//   connections=4          publisher connections, each with its own thread (1 to 64)
//   confirm_window=512     publishes sent and not yet confirmed, per connection
//   max_in_flight=N        publishes accepted and not yet confirmed, for the handle
//                          (default 2 x connections x confirm_window); past it a
//                          publish waits up to publish_timeout, then fails
//   publish_timeout=5s     how long a publish may wait for room, then to be sent, then
//                          for its confirm, before it fails with Errc::timeout
//   connect_timeout=5s     TCP connect, TLS and AMQP handshakes, and every RPC
//   heartbeat=10s          AMQP heartbeat interval (0 disables it)
//   amqps:// only: cacert=PATH (CA bundle), cert=PATH and key=PATH (client certificate),
//                  verify=true|false (peer certificate and host name; default true)
//
// Topology, declared by subscribe() (every name durable unless the group is ephemeral):
//   exchange  <topic>                       one per topic, exchange_type
//   queue     <topic>.<group>               bound to it: the group's messages
//   queue     <topic>.<group>.retry         no consumer; per-message TTL (expiration),
//                                           dead-letters back to <topic>.<group> through
//                                           the default exchange: nack(delay)
//   exchange  <dlq>                         the dead-letter topic (SubscribeOptions::
//                                           dead_letter_topic, by default
//                                           <topic>.<group>.dlq), a ferry topic like any
//   queue     <dlq>.ferry-dlq-replay        bound to it, so that dead letters are kept
//                                           until read: `ferry dlq replay|list|purge`
//                                           use this group
// A publisher declares only the exchange of the topic it publishes to. Redeclaring a
// name that exists with other settings (another exchange type, a queue with other
// arguments) fails with Error(invalid_argument) quoting the broker's PRECONDITION_FAILED.
// The seed's layout — direct exchange "order_exchange", routing key "order_created",
// queue "order_queue" — is
//   amqp://guest:guest@localhost:5672/?exchange_type=direct&routing_key=order_created&queue.orders=order_queue
// with topic "order_exchange" and group "orders".
//
// Guarantees:
//   - A publish completes when the broker has confirmed it (publisher confirms): the
//     message is persistent (delivery mode 2), was published mandatory, and reached
//     every queue bound to the topic. A topic with no group yet has no queue: such a
//     publish fails with Errc::unavailable, "unroutable: no queue bound to exchange …"
//     (RabbitMQ would drop the message). Create a group first (subscribe and close).
//   - Message fields: id → message_id; timestamp → timestamp (seconds) plus the header
//     ferry-timestamp-ms; key → header ferry-key; headers → the AMQP headers table
//     (long strings); the header "content-type" also sets content_type. Received
//     headers that are not strings are rendered as text; tables and arrays, x-death
//     and ferry's own wire headers are dropped. A message without message_id gets a
//     fresh UUID.
//   - Every group gets every message; the subscribers of a group, in any process,
//     share its queue. No per-key order: RabbitMQ hands one queue to several consumers.
//   - ack → basic.ack. nack(delay) → a copy goes to the retry queue with expiration =
//     delay (delay 0: straight back to the group's queue), carrying the attempt count
//     in the header ferry-delivery-count; once the broker confirms the copy the
//     original is acked. reject(reason) → a copy with ferry-error, ferry-attempts,
//     ferry-original-topic and ferry-original-group is published to the dead-letter
//     topic; once confirmed the original is acked. Neither is atomic: a crash between
//     the two delivers the message twice (at least once), never zero times.
//   - attempt() = 1 + ferry-delivery-count, + 1 if the broker flags the delivery as
//     redelivered (a subscriber closed or died holding it). A redelivery is therefore
//     always attempt >= 2; a message prefetched but never received by a subscriber that
//     closed also comes back as attempt 2.
//   - Leases: a delivery held longer than SubscribeOptions::ack_timeout (counted from
//     receive(), or from its arrival while it waits in the prefetch buffer) is handed
//     back: a copy with attempt + 1 (+ 0 if it was never received) is queued and the
//     original acked; settling the stale delivery afterwards does nothing.
//   - Per-message TTL expires only at the head of the retry queue: a long delay can hold
//     back a shorter one queued behind it (never forever; never lost).
//   - Messages and queues survive a broker restart. A group created later does not see
//     messages published before it existed.
//
// Threads and connections (rabbitmq-c is blocking and a connection is not thread-safe;
// every connection is used by exactly one thread, named below):
//   - Publisher: a pool of `connections` connections, each owned by a thread
//     "ferry-amqp-pub<N>" with a request queue and a confirm window. Channel 1 publishes
//     in confirm mode; channel 2 declares exchanges. A publishing thread is pinned to
//     one connection (round robin on its first publish), so its messages keep their
//     order, and concurrent publishers spread over the pool instead of queueing behind
//     one socket (a connection that is down hands its publishers to one that is up).
//     The owner thread writes up to `confirm_window` messages (a burst corked into full
//     TCP segments), reads confirms (basic.ack/nack, multiple=true included, matched
//     by delivery tag) and basic.return (matched by message id), and runs completion
//     callbacks on itself.
//     Connection 0 connects when the broker is opened (open() fails with
//     Errc::unavailable if it cannot); the others on their first publish.
//   - Subscriber: one connection and one thread "ferry-amqp-sub" per subscriber, which
//     declares the topology, consumes (basic.qos prefetch, manual ack) on channel 1 and
//     publishes nack/reject copies in confirm mode on channel 2. receive() takes from
//     its buffer; ack/nack/reject from any thread are queued to it, since only the
//     connection's own thread may write to the socket; it acks a run of settled
//     deliveries with one basic.ack (multiple) when no lower delivery is still held.
//     close() completes queued settlements (waiting up to publish_timeout for copies
//     to be confirmed), then closes the connection: the broker requeues the rest.
//   - Every method of Broker, Publisher and Subscriber is thread-safe, as the core
//     headers say; completion callbacks run on the "ferry-amqp-pub<N>" threads.
//   - Admin calls open a short-lived connection on the calling thread.
//   - Reconnection: a lost connection is retried with backoff (100 ms doubling to 2 s)
//     by its own thread; subscribers declare the topology again and resume consuming;
//     their unsettled deliveries come back from the broker, and settling the old ones
//     does nothing. While a publisher connection is down, a publish fails at once with
//     Errc::unavailable ("cannot reach amqp://guest:***@host:5672/ (connection
//     refused); is RabbitMQ running?"), trying the connection again if its last attempt
//     is over 100 ms old. Publishes sent but unconfirmed when the connection drops fail
//     with Errc::unavailable: they may or may not have been stored. Nothing the broker
//     confirmed is lost.
//
// Admin (Broker::admin()): stats() covers the topics and groups this handle has used
// (backlog = ready messages from a passive queue.declare; in_flight is not known and
// reads 0); peek() reads the dead-letter queue "<topic>.ferry-dlq-replay" if there is
// one, else the queue of a group of the topic this handle knows, with basic.get and
// hands the messages back (they are then flagged redelivered); purge() empties the
// same queues.
//
// TLS (amqps://) goes through rabbitmq-c's OpenSSL socket; the integration tests run
// against a TLS listener with a certificate made by the test fixture.

#include <string_view>

namespace ferry::amqp {

// The group of a dead-letter topic whose queue subscribe() declares with every group,
// so that dead letters are kept until someone reads them. It is the group
// `ferry dlq replay` consumes with.
inline constexpr std::string_view dead_letter_keeper_group = "ferry-dlq-replay";

// Makes "amqp://" and "amqps://" known to ferry::Broker::open().
void register_scheme();

}  // namespace ferry::amqp
