#pragma once
// nsq:// — NSQ through ferry's own client (Boost.Asio), written from the NSQ TCP protocol
// specification and the nsqd / nsqlookupd HTTP API documentation. No other NSQ library.
//
//   nsq://127.0.0.1:4150                       one nsqd
//   nsq://n1:4150,n2:4150                      publish to n1, fail over to n2; consume from both
//   nsq://n1:4150?lookupd=l1:4161,l2:4161      publish to n1; consume from every nsqd that
//                                              nsqlookupd lists for the topic
//   nsq://?lookupd=l1:4161                     also publish through nsqlookupd's /nodes
//   nsq://n1:4150?tls=true&tls_ca=/etc/nsq/ca.pem   TLS, nsqd's certificate checked (below)
//
// Query options (all optional; an unknown key is an Error(invalid_argument) from open):
//   lookupd=host:4161[,host:4161]  nsqlookupd HTTP addresses; subscribers then discover
//                         nsqd by polling GET /lookup?topic=..., connect to new ones and
//                         leave (CLS) those no longer listed
//   lookupd_poll=10s      how often (±10 % jitter) nsqlookupd is polled
//   http=host:4151[,...]  nsqd HTTP addresses for Broker::admin() (default: those nsqlookupd's
//                         /nodes lists, and each nsqd's TCP port + 1, nsqd's default layout)
//   max_in_flight=10000   publishes sent or queued and not yet confirmed, at most; past it a
//                         publish waits up to publish_timeout, then fails with Errc::timeout.
//                         (NSQ's consumer-side "max in flight" is SubscribeOptions::prefetch.)
//   publish_timeout=5s    that wait; also how long close() waits for confirmations
//   msg_timeout=          nsqd's server-side message timeout (IDENTIFY msg_timeout) for
//                         consumer connections: how soon a dead consumer's messages come back.
//                         Default: each subscription's SubscribeOptions::ack_timeout (at
//                         least 1 s, nsqd's minimum). The lease itself is ack_timeout, kept
//                         by ferry: when ack_timeout is longer, ferry sends TOUCH every
//                         msg_timeout/2 for each unsettled delivery until the lease ends (within
//                         nsqd's --max-msg-timeout, 15 min by default); see Guarantees
//   heartbeat=30s         IDENTIFY heartbeat_interval (1s..60s, or off); ferry answers each
//                         _heartbeat_ with NOP and drops a connection silent for two intervals
//   max_attempts=0        a message delivered this many times without being acked (its
//                         consumers crashed, or nacked it) is moved to the dead-letter topic
//                         by the subscriber that receives it next, instead of being handed out
//                         again. 0: no limit (the router's retry middleware decides)
//   connect_timeout=5s    TCP connect + IDENTIFY (+ AUTH), and each nsqlookupd request
//   max_backoff=5s        longest wait between a subscriber's reconnection attempts (it
//                         starts at 100 ms and doubles, ±20 % jitter)
//   max_message_size=1048576  nsqd's --max-msg-size: larger messages fail at publish with
//                         Errc::invalid_argument instead of being sent (nsqd would close the
//                         connection); also bounds the frames ferry accepts (+64 KiB)
//   max_body_size=5242880 nsqd's --max-body-size: a batch is split into MPUBs within it
//   auth_secret=...       sent with AUTH when nsqd's IDENTIFY answer says auth_required
//                         (masked in logs and errors)
//   client_id=            IDENTIFY client_id (default: the short host name)
//   tls=false             ask nsqd for TLS (IDENTIFY tls_v1) on every connection, publishing
//                         and consuming; see TLS below. Implied by the other tls_ options
//   tls_ca=FILE           PEM CA certificate(s) that nsqd's certificate must chain to
//                         (default: the system's CAs)
//   tls_cert=FILE, tls_key=FILE  a client certificate and its key (PEM), for an nsqd run
//                         with --tls-client-auth-policy
//   tls_insecure=false    skip checking nsqd's certificate (name and chain): for tests and
//                         development only; anyone on the path can then read the traffic
//
// TLS: with tls=true ferry sends "tls_v1": true in IDENTIFY; when nsqd (started with
// --tls-cert and --tls-key) answers "tls_v1": true, the connection does the TLS handshake
// at once (TLS 1.2 at least, OpenSSL) and reads nsqd's OK over TLS, as the NSQ TCP spec
// says; AUTH, if nsqd asks, follows over TLS. nsqd's certificate must chain to tls_ca and
// name the host ferry connected to (the URL's host, or the broadcast_address nsqlookupd
// lists): a host name by DNS name, an IP address by IP address. What fails says why and
// what to do:
//   - nsqd answers "tls_v1": false (no certificate configured): Error(unavailable) "does not
//     offer TLS"; ferry never falls back to plain text when the URL asked for TLS.
//   - the certificate is not accepted (unknown CA, wrong name, expired): Error(unavailable)
//     "TLS handshake with nsqd H:P failed: its certificate was not accepted (...)".
//   - nsqd runs with --tls-required and the URL has no tls=true: nsqd accepts IDENTIFY and
//     then refuses every command, fatally; the publish or subscribe fails with nsqd's
//     E_INVALID "... (TLS required)" followed by "add tls=true to the nsq:// URL".
//   - nsqd wants a client certificate and there is none: the connection ends before nsqd's
//     OK, and the error says to give tls_cert= and tls_key=.
// The option values are files read once, at Broker::open (a missing or unreadable one is
// an Error(invalid_argument) naming the option). Closing a TLS connection half-closes TCP
// without a TLS close_notify (nsqd reads it as the end of the stream). The HTTP requests
// to nsqlookupd and nsqd's HTTP port (Admin) stay plain HTTP.
//
// Mapping: topic = NSQ topic; group = NSQ channel (an ephemeral group is the channel
// "<group>#ephemeral", which nsqd deletes with its last consumer). NSQ names are at most
// 64 characters, so topics, groups (with the suffix) and dead-letter topics ("<topic>.
// <group>.dlq") longer than that are refused with Errc::invalid_argument.
//
// Message bodies: NSQ bodies are opaque bytes, so ferry publishes each message in a small
// envelope that keeps its id, key, headers and timestamp (layout in
// src/backends/nsq/frame.hpp; docs/nsq.md):
//   [4] 0xFE 'F' 'R' 'Y'  [1] version 1  [1] flags (bit 0: has key)
//   [8] timestamp, ms since the epoch   [2] id length, id   [4] key length, key (if flagged)
//   [4] headers length, headers (ferry::encode_headers)   payload: the rest
// A body that is not such an envelope (from another NSQ client) is delivered as the
// payload, with no key or headers, the NSQ message id (16 hex characters) as the id and
// the NSQ timestamp. Other NSQ clients see ferry's envelope as the body. A 1 MiB payload
// plus its envelope exceeds nsqd's default --max-msg-size of exactly 1 MiB: raise it.
//
// Guarantees:
//   - Publish completes on nsqd's OK for the PUB (one message), MPUB (a batch, atomically;
//     split into several MPUBs past max_body_size, each atomic, sent in order) or DPUB
//     (publish_deferred below), and fails with nsqd's E_* error text otherwise (E_BAD_* and
//     E_INVALID as Errc::invalid_argument, others Errc::unavailable). Commands are
//     pipelined on one connection and matched to nsqd's answers in order. If that
//     connection fails, the next nsqd address is tried; publishes that were written but
//     not confirmed fail with Errc::unavailable ("may or may not have been published");
//     when no nsqd is reachable a publish fails at once after one round of attempts.
//     nsqd keeps messages in memory up to --mem-queue-size per topic and channel and only
//     the overflow on disk: an OK is not durability (see Capabilities below).
//   - Consume: one connection per nsqd per subscriber, SUB topic channel, then RDY: the
//     subscriber's prefetch is split evenly over its connections (never more in total;
//     fewer than one per connection rotates every 5 s; at most nsqd's max_rdy_count).
//     ack → FIN; nack(delay) → REQ id delay (0..1 h, nsqd's default --max-req-timeout);
//     reject(reason) → the message (id, key, headers, payload) plus ferry-error,
//     ferry-attempts, ferry-original-topic and ferry-original-group is PUB'd to the
//     dead-letter topic, and the original FIN'd only once that PUB is confirmed (REQ'd
//     after 1 s if it fails). attempt() is nsqd's attempts field.
//   - Leases: a delivery still unsettled SubscribeOptions::ack_timeout after it arrived is
//     handed back by ferry (REQ id 0), and that connection gets RDY 0 for one lease (at
//     least 1 s, or until the application settles something) so that another consumer
//     gets it; its late settlement does nothing. If nsqd timed it out first (msg_timeout
//     set shorter and TOUCH lost), a late FIN is answered E_FIN_FAILED, which ferry
//     ignores. A lost connection's unsettled deliveries come back after msg_timeout (nsqd
//     does not requeue on disconnect); settling them does nothing.
//   - Close: CLS; after nsqd's CLOSE_WAIT (or 2 s), every delivery still held — received
//     and unsettled, or buffered and not yet received — is handed back with REQ 0 before
//     the connection is closed, so it is redelivered at once (with attempts + 1).
//   - Reconnection: a subscriber's lost connection is retried with backoff and resumes
//     with SUB and RDY; a publisher reconnects at the next publish (or at once after a
//     loss). Heartbeats are answered with NOP.
//
// Capabilities: per_key_order=false (nsqd hands messages out in no key order);
// native_delay=true (REQ with a timeout, DPUB); native_dead_letter=false (ferry
// publishes dead letters itself); persistent=false (nsqd keeps up to --mem-queue-size
// messages per topic and channel in memory only, so a restart can lose confirmed
// messages; ferry does not claim what nsqd does not promise); multi_process_groups=true;
// late_group_sees_history=false (nsqd copies a message to the channels that exist when
// it is published; exception: while a topic has no channel at all, nsqd holds its
// messages and the first channel created receives them); redelivers_on_close=true.
//
// Threads: each open Broker runs one thread, "ferry-nsq-io", which owns every socket and
// timer and runs publish completion callbacks (keep them short; they must not block on
// another publish). Publisher, Subscriber, Delivery and Broker methods are thread-safe
// and may be called from any thread; settlements and publishes are handed to the io
// thread (asio::post). Subscriber::receive() waits on a condition variable.
//
// Admin (ferry stats, dlq purge): stats() merges GET /stats?format=json of every nsqd (a
// group's backlog = depth + deferred + in flight; a topic's messages = what the topic
// itself holds + its largest channel backlog, since each channel has its own copy);
// purge() POSTs /topic/empty and /channel/empty for each channel; peek() throws
// Error(invalid_argument): NSQ cannot show messages without consuming them.
//
// Not supported: snappy and deflate compression (never requested), sample_rate, nsqd's
// HTTP publishing API, HTTPS to nsqlookupd and nsqd's HTTP port, peek (so `ferry dlq
// list`), nsqlookupd's TCP protocol.

#include <chrono>
#include <string>
#include <vector>

#include "ferry/broker.hpp"

namespace ferry::nsq {

// Makes "nsq://" known to ferry::Broker::open().
void register_scheme();

// Publishes with DPUB: nsqd holds each message for `delay` (0..1 h) before delivering it.
// `broker` must have been opened from an nsq:// URL (else Error(invalid_argument)).
void publish_deferred(Broker& broker, const std::string& topic, std::vector<Message> messages,
                      std::chrono::milliseconds delay, PublishCallback done);

}  // namespace ferry::nsq
