#include "amqp_options.hpp"

#include "ferry/error.hpp"
#include "ferry/subscriber.hpp"

namespace ferry::amqp::detail {
namespace {

constexpr const char* kKnown =
    "exchange_type, routing_key, queue.<group>, prefetch, connections, confirm_window, max_in_flight, "
    "publish_timeout, connect_timeout, heartbeat, cacert, cert, key, verify";

[[noreturn]] void bad(const std::string& what) {
  throw Error(Errc::invalid_argument, what);
}

int bounded(const std::string& value, const std::string& name, long long low, long long high) {
  long long n = parse_count(value, "amqp option " + name);
  if (n < low || n > high)
    bad("amqp option " + name + "=" + value + " must be between " + std::to_string(low) + " and " +
        std::to_string(high));
  return static_cast<int>(n);
}

}  // namespace

Options Options::from_url(const Url& url) {
  Options o;
  o.tls = url.scheme() == "amqps";
  if (url.hosts().empty() || url.hosts().front().host.empty())
    throw Error(Errc::bad_url, "bad broker URL '" + url.masked() +
                                   "': name the RabbitMQ host, e.g. amqp://guest:guest@localhost:5672/");
  for (const auto& h : url.hosts()) {
    HostPort hp = h;
    if (!hp.port) hp.port = o.tls ? 5671 : 5672;
    o.hosts.push_back(std::move(hp));
  }
  if (!url.user().empty()) {
    o.user = url.user();
    o.password = url.password();
  }
  const std::string& path = url.path();
  if (path.size() > 1) o.vhost = path.substr(1);

  for (const auto& [key, value] : url.query()) {
    const std::string name = "amqp option " + key;
    if (key == "exchange_type") {
      if (value == "fanout")
        o.exchange_type = ExchangeType::fanout;
      else if (value == "direct")
        o.exchange_type = ExchangeType::direct;
      else if (value == "topic")
        o.exchange_type = ExchangeType::topic;
      else
        bad(name + "='" + value + "' must be fanout, direct or topic");
    } else if (key == "routing_key") {
      if (value.size() > 255) bad(name + " is longer than 255 bytes");
      o.routing_key = value;
    } else if (key.starts_with("queue.")) {
      std::string group = key.substr(6);
      if (!valid_name(group)) bad(name + ": '" + group + "' is not a valid group name");
      if (value.empty() || value.size() > 200) bad(name + " must name a queue of 1 to 200 bytes");
      o.queue_names[group] = value;
    } else if (key == "prefetch") {
      o.prefetch = bounded(value, key, 1, 65535);
    } else if (key == "connections") {
      o.connections = bounded(value, key, 1, 64);
    } else if (key == "confirm_window") {
      o.confirm_window = bounded(value, key, 1, 1'000'000);
    } else if (key == "max_in_flight") {
      o.max_in_flight = static_cast<std::size_t>(bounded(value, key, 1, 100'000'000));
    } else if (key == "publish_timeout") {
      o.publish_timeout = parse_duration(value, name);
      if (o.publish_timeout < Ms{1}) bad(name + " must be at least 1ms");
    } else if (key == "connect_timeout") {
      o.connect_timeout = parse_duration(value, name);
      if (o.connect_timeout < Ms{10}) bad(name + " must be at least 10ms");
    } else if (key == "heartbeat") {
      auto d = parse_duration(value, name);
      if (d.count() != 0 && d < Ms{1000}) bad(name + " must be 0 (off) or at least 1s");
      if (d > Ms{65'535'000}) bad(name + " must be at most 65535s");
      o.heartbeat_s = static_cast<int>(d.count() / 1000);
    } else if (key == "cacert" || key == "cert" || key == "key" || key == "verify") {
      if (!o.tls) bad(name + " applies to amqps:// URLs only");
      if (key == "cacert")
        o.cacert = value;
      else if (key == "cert")
        o.cert = value;
      else if (key == "key")
        o.key = value;
      else
        o.verify = parse_bool(value, name);
    } else {
      bad("unknown amqp option '" + key + "' in " + url.masked() + "; known: " + kKnown);
    }
  }
  if (o.max_in_flight == 0)
    o.max_in_flight = 2 * static_cast<std::size_t>(o.connections) * static_cast<std::size_t>(o.confirm_window);
  if (o.cert.empty() != o.key.empty()) bad("amqp options cert and key go together: give both or neither");
  if (o.routing_key.size() && o.exchange_type == ExchangeType::fanout)
    bad("amqp option routing_key needs exchange_type=direct or topic (a fanout exchange ignores keys)");

  o.display = url.scheme() + "://";
  o.display += o.user + ":***@";
  for (std::size_t i = 0; i < o.hosts.size(); ++i) {
    if (i) o.display += ',';
    const auto& h = o.hosts[i];
    o.display += (h.host.find(':') != std::string::npos ? "[" + h.host + "]" : h.host) + ":" + std::to_string(*h.port);
  }
  o.display += o.vhost == "/" ? "/" : "/" + o.vhost;
  return o;
}

const char* Options::exchange_type_name() const {
  switch (exchange_type) {
    case ExchangeType::direct:
      return "direct";
    case ExchangeType::topic:
      return "topic";
    case ExchangeType::fanout:
      break;
  }
  return "fanout";
}

std::string Options::routing_key_for(const std::string& topic) const {
  return routing_key.empty() ? topic : routing_key;
}

std::string Options::queue_for(const std::string& topic, const std::string& group) const {
  if (auto it = queue_names.find(group); it != queue_names.end()) return it->second;
  return topic + "." + group;
}

}  // namespace ferry::amqp::detail
