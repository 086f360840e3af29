#pragma once
// ferry::Subscriber: receives a group's share of a topic's messages.
//
// Every group receives every message published to the topic; the subscribers of one
// group share its messages. Delivery is at least once: a message is delivered again
// until it is acked or rejected.
//
// receive() is thread-safe: several threads may wait on one subscriber. close() may be
// called from any thread; it wakes waiting receivers, completes settlements already
// made, and hands unsettled deliveries back to the broker for redelivery.

#include <chrono>
#include <optional>
#include <string>

#include "ferry/delivery.hpp"

namespace ferry {

struct SubscribeOptions {
  std::string topic{};
  std::string group{};
  // Deliveries fetched ahead of receive() and not yet settled, at most.
  int prefetch = 64;
  // How long a delivery may stay unsettled before the broker gives it to another
  // consumer (a lease, or NSQ's msg_timeout).
  std::chrono::milliseconds ack_timeout{30'000};
  // Where reject() moves messages; empty means "<topic>.<group>.dlq".
  std::string dead_letter_topic{};
  // A throwaway group (for tools like `ferry tail`): it receives only messages published
  // after it was created, and it is deleted, with what it has not consumed, when its
  // subscriber closes. NSQ maps it to a "#ephemeral" channel.
  bool ephemeral = false;

  std::string effective_dead_letter_topic() const;
  // Throws Error(invalid_argument) for an empty or malformed topic or group.
  void validate() const;
};

class Subscriber {
 public:
  virtual ~Subscriber() = default;

  // The next delivery, or nothing if none arrived within the timeout or the subscriber
  // was closed. Throws ferry::Error if the broker failed in a way that will not heal.
  virtual std::optional<Delivery> receive(std::chrono::milliseconds timeout) = 0;
  virtual void close() = 0;
};

// Topic and group names: 1 to 200 characters from [A-Za-z0-9._-].
bool valid_name(std::string_view name) noexcept;

}  // namespace ferry
