#pragma once
// ferry::Capabilities: what a backend guarantees beyond the contract every backend keeps
// (at-least-once delivery, fan-out between groups, load balancing inside a group, nack
// with redelivery, reject to a dead-letter topic). The conformance suite reads these to
// decide which of its cases apply.

namespace ferry {

struct Capabilities {
  // Messages with the same key are delivered to a group in publish order, one at a time.
  bool per_key_order = false;
  // nack(delay) is held by the broker itself rather than by a timer in the client.
  bool native_delay = false;
  // reject() moves the message to the dead-letter topic inside the broker, atomically.
  bool native_dead_letter = false;
  // Published messages survive a restart of the broker.
  bool persistent = false;
  // Consumers of one group in several processes share the group's messages.
  bool multi_process_groups = false;
  // A group created after messages were published still receives them.
  bool late_group_sees_history = false;
  // Unacknowledged deliveries of a closed subscriber come back at once (not after a lease).
  bool redelivers_on_close = true;
};

}  // namespace ferry
