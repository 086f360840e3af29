#include "ferry/delivery.hpp"

namespace ferry {

Delivery::Delivery(Message message, std::string topic, std::string group, int attempt,
                   std::weak_ptr<Settler> settler, std::uint64_t token)
    : message_(std::move(message)),
      topic_(std::move(topic)),
      group_(std::move(group)),
      attempt_(attempt),
      settler_(std::move(settler)),
      token_(token) {}

Delivery::Delivery(Delivery&& other) noexcept
    : message_(std::move(other.message_)),
      topic_(std::move(other.topic_)),
      group_(std::move(other.group_)),
      attempt_(other.attempt_),
      settler_(std::move(other.settler_)),
      token_(other.token_),
      settled_(other.settled_) {
  other.settled_ = true;
}

Delivery& Delivery::operator=(Delivery&& other) noexcept {
  if (this != &other) {
    message_ = std::move(other.message_);
    topic_ = std::move(other.topic_);
    group_ = std::move(other.group_);
    attempt_ = other.attempt_;
    settler_ = std::move(other.settler_);
    token_ = other.token_;
    settled_ = other.settled_;
    other.settled_ = true;
  }
  return *this;
}

Delivery::~Delivery() = default;

void Delivery::ack() { settle(Outcome::ack, std::chrono::milliseconds{0}, {}); }

void Delivery::nack(std::chrono::milliseconds delay) {
  settle(Outcome::nack, delay < std::chrono::milliseconds{0} ? std::chrono::milliseconds{0} : delay, {});
}

void Delivery::reject(const std::string& reason) { settle(Outcome::reject, std::chrono::milliseconds{0}, reason); }

void Delivery::settle(Outcome outcome, std::chrono::milliseconds delay, const std::string& reason) {
  if (settled_) return;
  settled_ = true;
  if (auto settler = settler_.lock()) settler->settle(token_, outcome, delay, reason);
}

}  // namespace ferry
