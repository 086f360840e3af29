#pragma once
// ferry::Delivery: one message handed to a consumer, with the means to settle it.
//
// A delivery is settled at most once: ack() (done), nack(delay) (deliver again after the
// delay, with attempt() + 1) or reject(reason) (move to the group's dead-letter topic
// with the headers ferry-error, ferry-attempts and ferry-original-topic). Settling a
// second time does nothing. A delivery dropped without being settled is redelivered:
// when its subscriber closes or, if the consumer died, when its lease runs out.
//
// A Delivery is move-only and may be settled from any thread; it must not be used from
// two threads at once. It may outlive its Subscriber: settling it then does nothing
// and the message is redelivered.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "ferry/message.hpp"

namespace ferry {

enum class Outcome { ack, nack, reject };

// Implemented by backends: receives the settlement of the delivery with this token.
class Settler {
 public:
  virtual ~Settler() = default;
  virtual void settle(std::uint64_t token, Outcome outcome, std::chrono::milliseconds delay,
                      const std::string& reason) noexcept = 0;
};

class Delivery {
 public:
  Delivery(Message message, std::string topic, std::string group, int attempt,
           std::weak_ptr<Settler> settler, std::uint64_t token);
  Delivery(Delivery&& other) noexcept;
  Delivery& operator=(Delivery&& other) noexcept;
  Delivery(const Delivery&) = delete;
  Delivery& operator=(const Delivery&) = delete;
  ~Delivery();

  const Message& message() const noexcept { return message_; }
  Message& message() noexcept { return message_; }
  const std::string& topic() const noexcept { return topic_; }
  const std::string& group() const noexcept { return group_; }
  // 1 on the first delivery, 2 on the first redelivery, and so on.
  int attempt() const noexcept { return attempt_; }
  bool settled() const noexcept { return settled_; }

  void ack();
  void nack(std::chrono::milliseconds delay = std::chrono::milliseconds{0});
  void reject(const std::string& reason);

 private:
  void settle(Outcome outcome, std::chrono::milliseconds delay, const std::string& reason);

  Message message_;
  std::string topic_;
  std::string group_;
  int attempt_ = 1;
  std::weak_ptr<Settler> settler_;
  std::uint64_t token_ = 0;
  bool settled_ = false;
};

}  // namespace ferry
