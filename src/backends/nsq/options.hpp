#pragma once
// nsq:// URL options (documented in include/ferry/backends/nsq.hpp).

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "ferry/url.hpp"

namespace ferry::nsq {

struct Endpoint {
  std::string host{};
  int port = 0;
  std::string str() const { return host + ":" + std::to_string(port); }
  bool operator<(const Endpoint& o) const { return host != o.host ? host < o.host : port < o.port; }
  bool operator==(const Endpoint& o) const = default;
};

struct Options {
  std::vector<Endpoint> nsqd{};     // TCP addresses, in failover order for publishing
  std::vector<Endpoint> lookupd{};  // HTTP addresses of nsqlookupd
  std::vector<Endpoint> http{};     // HTTP addresses of the nsqd, for Admin (empty: derived)
  std::chrono::milliseconds lookupd_poll{10'000};
  std::size_t max_in_flight = 10'000;  // publishes not yet confirmed, at most
  std::chrono::milliseconds publish_timeout{5'000};
  std::chrono::milliseconds msg_timeout{0};     // 0: each subscription's ack_timeout
  std::chrono::milliseconds heartbeat{30'000};  // 0: heartbeats off
  int max_attempts = 0;                         // 0: no limit
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds max_backoff{5'000};
  std::size_t max_message_size = 1'048'576;  // nsqd --max-msg-size
  std::size_t max_body_size = 5'242'880;     // nsqd --max-body-size
  std::string auth_secret{};
  std::string client_id{};
  // TLS (IDENTIFY tls_v1): asked for when `tls`; the server's certificate is checked
  // against `tls_ca` (empty: the system's CAs) and the nsqd host name unless
  // `tls_insecure`; `tls_cert` / `tls_key` are a client certificate, when nsqd wants one.
  bool tls = false;
  bool tls_insecure = false;
  std::string tls_ca{};
  std::string tls_cert{};
  std::string tls_key{};
  std::string hostname{};
  std::string masked_url{};

  // Throws Error(bad_url | invalid_argument) naming the option.
  static Options from_url(const Url& url);
  // The largest frame accepted from nsqd.
  std::size_t max_frame_size() const { return max_message_size + 64 * 1024; }
};

}  // namespace ferry::nsq
