#pragma once
// ferry::Broker: a connection to one message broker, opened from a URL.
//
//   auto broker = ferry::Broker::open("sqlite://./ferry-data/ferry.db");
//   broker->publisher().publish("orders", ferry::Message::with_payload("..."));
//   auto sub = broker->subscribe({.topic = "orders", .group = "billing"});
//
// Backends register their URL scheme (see include/ferry/backends/); core knows none of
// them. A Broker is shared (std::shared_ptr) and thread-safe. close() flushes the
// publisher and closes every subscriber; the destructor calls it.

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ferry/admin.hpp"
#include "ferry/capabilities.hpp"
#include "ferry/error.hpp"
#include "ferry/publisher.hpp"
#include "ferry/subscriber.hpp"
#include "ferry/url.hpp"

namespace ferry {

class Broker {
 public:
  using Factory = std::function<std::shared_ptr<Broker>(const Url&)>;

  // Opens the broker the URL names. Throws Error(bad_url | unknown_scheme |
  // invalid_argument | unavailable | not_ferry_data) with a one-line reason.
  static std::shared_ptr<Broker> open(std::string_view url);
  // Makes a scheme known to open(). Registering a scheme again replaces its factory.
  static void register_scheme(const std::string& scheme, Factory factory);
  static std::vector<std::string> schemes();

  virtual ~Broker() = default;

  virtual const Url& url() const = 0;
  virtual Capabilities capabilities() const = 0;
  virtual Publisher& publisher() = 0;
  virtual std::unique_ptr<Subscriber> subscribe(const SubscribeOptions& options) = 0;
  // ok when the broker is reachable now.
  virtual Status ping() = 0;
  virtual void close() = 0;
  virtual Admin* admin() { return nullptr; }
};

}  // namespace ferry
