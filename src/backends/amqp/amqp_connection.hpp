#pragma once
// One AMQP connection through rabbitmq-c, owned by one thread at a time.
//
// Connection wraps amqp_connection_state_t (RAII: the destructor destroys it and closes
// its socket) and turns rabbitmq-c's replies into ferry errors that say what happened:
// a server channel.close or connection.close is answered with its -ok, the channel or
// the connection is marked closed, and Error carries the broker's reply text. Every
// method may throw ferry::Error; none is thread-safe.

#include <amqp.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "amqp_options.hpp"
#include "ferry/error.hpp"

namespace ferry::amqp::detail {

struct StateDeleter {
  void operator()(amqp_connection_state_t state) const noexcept { amqp_destroy_connection(state); }
};
using StateHandle = std::unique_ptr<amqp_connection_state_t_, StateDeleter>;

inline amqp_bytes_t bytes_of(std::string_view s) noexcept {
  return amqp_bytes_t{s.size(), const_cast<char*>(s.data())};
}
inline std::string string_of(amqp_bytes_t b) {
  return b.len ? std::string(static_cast<const char*>(b.bytes), b.len) : std::string();
}

// Counts of a queue from queue.declare-ok.
struct QueueCounts {
  std::uint32_t messages = 0;
  std::uint32_t consumers = 0;
};

// Arguments of a queue that dead-letters expired messages into another queue.
struct DeadLetterTo {
  std::string queue;
};

class Connection {
 public:
  // Connects to the first reachable host and logs in. Throws Error(unavailable) with a
  // reason such as "cannot reach amqp://guest:***@127.0.0.1:5672/ (connection refused);
  // is RabbitMQ running?".
  static std::unique_ptr<Connection> open(const Options& options);

  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  amqp_connection_state_t state() const noexcept { return state_.get(); }
  int fd() const noexcept;
  bool alive() const noexcept { return alive_; }
  const std::string& lost_reason() const noexcept { return lost_reason_; }
  // Marks the connection unusable; later calls fail with `why`.
  void mark_lost(std::string why);
  const Options& options() const noexcept { return options_; }

  // Sends connection.close and waits briefly for close-ok. Never throws.
  void close() noexcept;

  void open_channel(amqp_channel_t channel);
  void close_channel(amqp_channel_t channel) noexcept;
  void confirm_select(amqp_channel_t channel);
  void qos(amqp_channel_t channel, int prefetch);

  void declare_exchange(amqp_channel_t channel, const std::string& name);
  QueueCounts declare_queue(amqp_channel_t channel, const std::string& name, bool durable, bool auto_delete,
                            const std::optional<DeadLetterTo>& dead_letter = std::nullopt);
  // Counts of an existing queue, or nothing if it does not exist (the channel is then
  // closed by the broker and must be opened again).
  std::optional<QueueCounts> inspect_queue(amqp_channel_t channel, const std::string& name);
  void bind_queue(amqp_channel_t channel, const std::string& queue, const std::string& exchange,
                  const std::string& routing_key);
  std::string consume(amqp_channel_t channel, const std::string& queue);
  // A round trip: a passive declare of the exchange amq.direct.
  void ping(amqp_channel_t channel);
  std::uint32_t purge_queue(amqp_channel_t channel, const std::string& queue);
  void delete_queue(amqp_channel_t channel, const std::string& queue);

  // The reason a channel was closed by the broker, once it has been (reset by open_channel).
  std::optional<std::string> channel_closed(amqp_channel_t channel) const;

  // Answers a channel.close or connection.close that arrived as a frame; returns a
  // message for it. Marks the channel or connection closed.
  std::string answer_close(const amqp_frame_t& frame);

  // Reads the next frame, waiting up to `timeout` (zero: only what is already there).
  // Returns AMQP_STATUS_OK, AMQP_STATUS_TIMEOUT, or marks the connection lost and
  // returns the error.
  int next_frame(amqp_frame_t& frame, std::chrono::milliseconds timeout);
  // Frees the memory of decoded frames once none is queued.
  void release_buffers() noexcept;

  // Describes a rabbitmq-c status code for a message.
  static std::string describe_status(int status);

 private:
  Connection(const Options& options, StateHandle state);
  // Throws Error for a reply that is not normal; `what` names the operation.
  void check(amqp_rpc_reply_t reply, amqp_channel_t channel, const std::string& what);

  Options options_;
  StateHandle state_;
  bool alive_ = true;
  std::string lost_reason_;
  std::map<amqp_channel_t, std::string> closed_channels_;  // closed by the broker, and why
};

}  // namespace ferry::amqp::detail
