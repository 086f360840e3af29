#pragma once
// The options of an amqp:// or amqps:// URL (see include/ferry/backends/amqp.hpp).

#include <chrono>
#include <cstddef>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "ferry/url.hpp"

namespace ferry::amqp::detail {

using Ms = std::chrono::milliseconds;

enum class ExchangeType { fanout, direct, topic };

struct Options {
  bool tls = false;
  std::vector<HostPort> hosts{};  // every port filled in
  std::string user{"guest"};
  std::string password{"guest"};
  std::string vhost{"/"};

  ExchangeType exchange_type = ExchangeType::fanout;
  std::string routing_key{};                         // empty: the topic's name
  std::map<std::string, std::string> queue_names{};  // group -> queue
  std::optional<int> prefetch{};
  int connections = 4;
  int confirm_window = 512;
  std::size_t max_in_flight = 0;  // 0 until from_url: 2 x connections x confirm_window
  Ms publish_timeout{5'000};
  Ms connect_timeout{5'000};
  int heartbeat_s = 10;

  std::string cacert{}, cert{}, key{};
  bool verify = true;

  // "amqp://user:***@host:port/vhost", for messages.
  std::string display{};

  // Throws Error(bad_url | invalid_argument).
  static Options from_url(const Url& url);

  const char* exchange_type_name() const;
  // The routing key a message to `topic` is published with and its queues are bound with.
  std::string routing_key_for(const std::string& topic) const;
  // The queue of a group.
  std::string queue_for(const std::string& topic, const std::string& group) const;
};

}  // namespace ferry::amqp::detail
