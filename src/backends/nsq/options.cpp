#include "options.hpp"

#include <unistd.h>

#include "ferry/error.hpp"

namespace ferry::nsq {
namespace {

Endpoint parse_endpoint(const std::string& text, int default_port, const std::string& what) {
  Endpoint e;
  auto colon = text.rfind(':');
  if (colon == std::string::npos || (text.front() == '[' && text.back() == ']')) {
    e.host = text;
    e.port = default_port;
  } else {
    e.host = text.substr(0, colon);
    auto port = parse_count(text.substr(colon + 1), what + " port");
    if (port < 1 || port > 65535) throw Error(Errc::invalid_argument, what + " port in '" + text + "' is out of range");
    e.port = static_cast<int>(port);
  }
  if (e.host.size() > 2 && e.host.front() == '[' && e.host.back() == ']') e.host = e.host.substr(1, e.host.size() - 2);
  if (e.host.empty()) throw Error(Errc::invalid_argument, what + " '" + text + "' has no host");
  return e;
}

std::string local_hostname() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0) return "localhost";
  return name;
}

}  // namespace

Options Options::from_url(const Url& url) {
  Options o;
  o.masked_url = url.masked();
  bool tls_given = false;
  for (const auto& hp : url.hosts()) {
    if (hp.host.empty()) continue;
    o.nsqd.push_back({hp.host, hp.port.value_or(4150)});
  }
  if (!url.user().empty() || !url.password().empty())
    throw Error(Errc::invalid_argument,
                "nsq URL " + url.masked() + " has a user or password; NSQ authenticates with auth_secret=...");
  for (const auto& [key, value] : url.query()) {
    const std::string what = "nsq option " + key;
    if (key == "lookupd" || key == "http") {
      auto& list = key == "lookupd" ? o.lookupd : o.http;
      std::size_t pos = 0;
      while (pos <= value.size()) {
        auto comma = value.find(',', pos);
        auto item = value.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
        if (!item.empty()) list.push_back(parse_endpoint(item, key == "lookupd" ? 4161 : 4151, what));
        if (comma == std::string::npos) break;
        pos = comma + 1;
      }
      if (list.empty())
        throw Error(Errc::invalid_argument,
                    "nsq option " + key + " is empty; give host:" + (key == "lookupd" ? "4161" : "4151"));
    } else if (key == "lookupd_poll") {
      o.lookupd_poll = parse_duration(value, what);
      if (o.lookupd_poll < std::chrono::milliseconds{100})
        throw Error(Errc::invalid_argument, "nsq option lookupd_poll must be at least 100ms");
    } else if (key == "max_in_flight") {
      o.max_in_flight = static_cast<std::size_t>(parse_count(value, what));
      if (o.max_in_flight == 0) throw Error(Errc::invalid_argument, "nsq option max_in_flight must be at least 1");
    } else if (key == "publish_timeout") {
      o.publish_timeout = parse_duration(value, what);
    } else if (key == "msg_timeout") {
      o.msg_timeout = parse_duration(value, what);
      if (o.msg_timeout < std::chrono::milliseconds{1000})
        throw Error(Errc::invalid_argument, "nsq option msg_timeout must be at least 1s (nsqd's minimum)");
    } else if (key == "heartbeat") {
      if (value == "off") {
        o.heartbeat = std::chrono::milliseconds{0};
      } else {
        o.heartbeat = parse_duration(value, what);
        if (o.heartbeat < std::chrono::milliseconds{1000} || o.heartbeat > std::chrono::milliseconds{60'000})
          throw Error(Errc::invalid_argument,
                      "nsq option heartbeat must be between 1s and 60s (nsqd's default --max-heartbeat-interval) "
                      "or off");
      }
    } else if (key == "max_attempts") {
      auto n = parse_count(value, what);
      if (n > 65535) throw Error(Errc::invalid_argument, "nsq option max_attempts must be at most 65535");
      o.max_attempts = static_cast<int>(n);
    } else if (key == "connect_timeout") {
      o.connect_timeout = parse_duration(value, what);
      if (o.connect_timeout < std::chrono::milliseconds{10})
        throw Error(Errc::invalid_argument, "nsq option connect_timeout must be at least 10ms");
    } else if (key == "max_backoff") {
      o.max_backoff = parse_duration(value, what);
      if (o.max_backoff < std::chrono::milliseconds{10})
        throw Error(Errc::invalid_argument, "nsq option max_backoff must be at least 10ms");
    } else if (key == "max_message_size") {
      o.max_message_size = static_cast<std::size_t>(parse_count(value, what));
      if (o.max_message_size < 1024 || o.max_message_size > (1u << 30))
        throw Error(Errc::invalid_argument, "nsq option max_message_size must be between 1024 and 1073741824");
    } else if (key == "max_body_size") {
      o.max_body_size = static_cast<std::size_t>(parse_count(value, what));
      if (o.max_body_size < 1024 || o.max_body_size > (1u << 30))
        throw Error(Errc::invalid_argument, "nsq option max_body_size must be between 1024 and 1073741824");
    } else if (key == "auth_secret") {
      o.auth_secret = value;
    } else if (key == "client_id") {
      o.client_id = value;
    } else if (key == "tls") {
      o.tls = parse_bool(value, what);
      tls_given = true;
    } else if (key == "tls_insecure") {
      o.tls_insecure = parse_bool(value, what);
    } else if (key == "tls_ca" || key == "tls_cert" || key == "tls_key") {
      if (value.empty()) throw Error(Errc::invalid_argument, what + " is empty; give a PEM file");
      (key == "tls_ca" ? o.tls_ca : key == "tls_cert" ? o.tls_cert : o.tls_key) = value;
    } else {
      throw Error(Errc::invalid_argument,
                  "unknown nsq option '" + key + "' in " + url.masked() +
                      "; known: lookupd, http, lookupd_poll, max_in_flight, publish_timeout, msg_timeout, heartbeat, "
                      "max_attempts, connect_timeout, max_backoff, max_message_size, max_body_size, auth_secret, "
                      "client_id, tls, tls_ca, tls_cert, tls_key, tls_insecure");
    }
  }
  // The other tls_ options ask for TLS too; a URL that turns it off and configures it is a
  // mistake, not a request for plain text.
  const bool tls_configured = o.tls_insecure || !o.tls_ca.empty() || !o.tls_cert.empty() || !o.tls_key.empty();
  if (tls_configured && tls_given && !o.tls)
    throw Error(Errc::invalid_argument, "nsq URL " + url.masked() + " sets tls=false and tls_ options; drop one");
  if (tls_configured) o.tls = true;
  if (o.tls_cert.empty() != o.tls_key.empty())
    throw Error(Errc::invalid_argument,
                "nsq options tls_cert and tls_key go together (a client certificate and its key)");
  if (o.tls_insecure && !o.tls_ca.empty())
    throw Error(Errc::invalid_argument,
                "nsq options tls_insecure and tls_ca contradict each other: tls_insecure "
                "skips the certificate check that tls_ca is for");
  if (o.nsqd.empty() && o.lookupd.empty())
    throw Error(Errc::bad_url, "bad broker URL '" + url.masked() +
                                   "': name an nsqd (nsq://host:4150) or an nsqlookupd (nsq://?lookupd=host:4161)");
  o.hostname = local_hostname();
  if (o.client_id.empty()) o.client_id = o.hostname.substr(0, o.hostname.find('.'));
  return o;
}

}  // namespace ferry::nsq
