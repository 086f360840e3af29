#pragma once
// ferry::Admin: inspection and maintenance that a backend offers when it can
// (Broker::admin() returns nullptr otherwise). Thread-safe.

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/message.hpp"

namespace ferry {

struct GroupStats {
  std::string group;
  std::uint64_t backlog = 0;    // published, not yet acked or rejected by this group
  std::uint64_t in_flight = 0;  // delivered and not yet settled
};

struct TopicStats {
  std::string topic;
  std::uint64_t messages = 0;  // retained messages
  std::vector<GroupStats> groups;
};

class Admin {
 public:
  virtual ~Admin() = default;
  virtual std::vector<TopicStats> stats() = 0;
  // Up to `limit` retained messages of a topic, oldest first, without consuming them.
  virtual std::vector<Message> peek(const std::string& topic, std::size_t limit) = 0;
  // Deletes every retained message of a topic and its groups' state; returns how many.
  virtual std::uint64_t purge(const std::string& topic) = 0;
};

}  // namespace ferry
