#pragma once
// A protocol-level NSQ test peer: a small nsqd-compatible TCP server (and an optional
// nsqlookupd-like HTTP endpoint), written from the NSQ TCP protocol specification and the
// nsqd / nsqlookupd HTTP API docs, for ferry's tests and `ferry dev nsq`. It is not nsqd:
// everything is in memory, one process, no disk queue, no compression.
//
// What it does as nsqd does (nsqd 1.2/1.3 behaviour where the spec is silent):
//   - magic "  V2"; IDENTIFY (JSON; feature negotiation answers with JSON; heartbeat_interval
//     -1 or 1000..max, msg_timeout 1000..max_msg_timeout, else E_BAD_BODY); AUTH when an
//     auth secret is configured (E_AUTH_FIRST before it, E_UNAUTHORIZED for a wrong one)
//   - TLS with a certificate (nsqd's --tls-cert / --tls-key): IDENTIFY with tls_v1 and
//     feature negotiation is answered "tls_v1": true, then the server side of the TLS
//     handshake, then OK over TLS; tls_required (--tls-required) refuses every command but
//     IDENTIFY on a plain connection with a fatal "E_INVALID cannot X in current state (TLS
//     required)"; tls_client_ca (--tls-client-auth-policy=require-verify with
//     --tls-root-ca-file) wants a client certificate signed by that CA
//   - topics and channels created on first use; names [.a-zA-Z0-9_-]{1,64} with an
//     optional "#ephemeral" suffix; an ephemeral channel is deleted with its last client
//   - PUB / MPUB (atomic) / DPUB answered OK; each message is copied to every channel the
//     topic has at that moment; a topic without channels holds its messages for the
//     first channel created
//   - fan-out between channels, round-robin among a channel's clients, never more
//     messages in flight to a client than its RDY (RDY caps in-flight, as in nsqd >= 1.0;
//     RDY starts at 0 after SUB)
//   - in flight until FIN, REQ (immediately or after its delay, clamped to
//     max_req_timeout) or the client's msg_timeout (then requeued); TOUCH resets the
//     timeout (never past max_msg_timeout after delivery); attempts counted per delivery
//   - E_FIN_FAILED / E_REQ_FAILED / E_TOUCH_FAILED (not fatal) for an id that is not in
//     flight to this client; every other error closes the connection after it is sent
//   - heartbeats every heartbeat interval; a client silent for two intervals is closed;
//     a disconnected client's in-flight messages wait for their timeout (as in nsqd)
//   - CLS → CLOSE_WAIT, after which nothing more is sent to that client
//   - HTTP (optional): GET /ping, /info, /stats?format=json (nsqd 1.x shape), POST
//     /topic/empty?topic= and /channel/empty?topic=&channel=
//
// Thread-safety: every method may be called from any thread. The peer runs one thread
// ("nsq-peer-io").

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

namespace ferry::nsq_peer {

struct PeerOptions {
  std::string host = "127.0.0.1";
  int port = 0;        // 0: a free port (kept across stop() / start())
  int http_port = -1;  // -1: no HTTP endpoint; 0: a free port
  std::chrono::milliseconds msg_timeout{60'000};
  std::chrono::milliseconds max_msg_timeout{15 * 60'000};
  std::chrono::milliseconds max_req_timeout{60 * 60'000};
  std::chrono::milliseconds default_heartbeat{30'000};
  std::chrono::milliseconds max_heartbeat{60'000};
  std::size_t max_msg_size = 1'048'576;
  std::size_t max_body_size = 5'242'880;
  int max_rdy_count = 2500;
  std::string auth_secret{};  // non-empty: clients must AUTH with it
  std::string tls_cert{};     // PEM certificate chain and key: TLS offered to clients that ask
  std::string tls_key{};
  bool tls_required = false;    // plain connections may only IDENTIFY
  std::string tls_client_ca{};  // non-empty: clients must present a certificate it signed
};

// What the peer holds for one channel, for tests.
struct ChannelStats {
  std::string name{};
  std::uint64_t depth = 0;      // ready to deliver
  std::uint64_t deferred = 0;   // waiting for a REQ or DPUB delay
  std::uint64_t in_flight = 0;  // delivered, not finished
  std::uint64_t clients = 0;
  std::uint64_t message_count = 0;  // messages the channel received
  std::uint64_t requeue_count = 0;
  std::uint64_t timeout_count = 0;
  std::uint64_t finish_count = 0;
};

struct TopicStats {
  std::string name{};
  std::uint64_t depth = 0;  // held while the topic has no channel
  std::uint64_t message_count = 0;
  std::vector<ChannelStats> channels{};
};

struct PeerStats {
  std::vector<TopicStats> topics{};
  std::uint64_t clients = 0;
  std::uint64_t connections_accepted = 0;
  std::uint64_t heartbeat_disconnects = 0;
  std::uint64_t max_in_flight_seen_over_rdy = 0;  // must stay 0: in-flight > RDY never sent
  std::uint64_t tls_connections = 0;              // connections upgraded to TLS
};

class Peer {
 public:
  explicit Peer(PeerOptions options = {});
  ~Peer();
  Peer(const Peer&) = delete;
  Peer& operator=(const Peer&) = delete;

  // Binds and serves. Throws std::runtime_error if the port cannot be bound or the TLS
  // files cannot be loaded.
  void start();
  // Closes every connection and forgets every topic, channel and message (an in-memory
  // nsqd that restarts). start() again serves on the same ports.
  void stop();
  bool running() const;

  int port() const;
  int http_port() const;        // -1 when there is no HTTP endpoint
  std::string address() const;  // "127.0.0.1:PORT"
  std::string url() const;      // "nsq://127.0.0.1:PORT"

  PeerStats stats() const;
  std::set<std::string> topics() const;
  // Closes every client connection abruptly (RST-free close), keeping the data.
  void drop_connections();
  // While silent, the peer sends no heartbeats and drops no silent client: a hung nsqd as
  // its clients see it (commands are still answered).
  void set_silent(bool silent);

 private:
  friend class Client;  // a connection, in nsq_peer.cpp
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// An nsqlookupd stand-in: an HTTP endpoint answering GET /lookup?topic=, /nodes, /ping
// from the peers registered with it (a peer is listed for a topic once it has it, as
// nsqd registers topics with nsqlookupd). Thread-safe.
class Lookupd {
 public:
  Lookupd();
  ~Lookupd();
  Lookupd(const Lookupd&) = delete;
  Lookupd& operator=(const Lookupd&) = delete;

  void add(Peer& peer);
  void remove(Peer& peer);
  int port() const;
  std::string address() const;  // "127.0.0.1:PORT"

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::nsq_peer
