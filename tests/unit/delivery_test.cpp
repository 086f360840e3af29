#include <gtest/gtest.h>

#include <mutex>
#include <vector>

#include "ferry/delivery.hpp"

namespace ferry {
namespace {

using std::chrono::milliseconds;

struct Settlement {
  std::uint64_t token;
  Outcome outcome;
  milliseconds delay;
  std::string reason;
};

class RecordingSettler final : public Settler {
 public:
  void settle(std::uint64_t token, Outcome outcome, milliseconds delay, const std::string& reason) noexcept override {
    std::lock_guard lock(mutex_);
    calls_.push_back({token, outcome, delay, reason});
  }
  std::vector<Settlement> calls() const {
    std::lock_guard lock(mutex_);
    return calls_;
  }

 private:
  mutable std::mutex mutex_;
  std::vector<Settlement> calls_;
};

Delivery make_delivery(const std::shared_ptr<RecordingSettler>& settler, std::uint64_t token = 7) {
  return Delivery(Message::with_payload("p"), "orders", "billing", 2, settler, token);
}

TEST(Delivery, CarriesWhatItWasGiven) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery d = make_delivery(settler);
  EXPECT_EQ(d.message().payload, "p");
  EXPECT_EQ(d.topic(), "orders");
  EXPECT_EQ(d.group(), "billing");
  EXPECT_EQ(d.attempt(), 2);
  EXPECT_FALSE(d.settled());
}

TEST(Delivery, SettlesOnceWithTheFirstOutcome) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery d = make_delivery(settler, 41);
  d.ack();
  d.ack();
  d.nack(milliseconds{5});
  d.reject("late");
  EXPECT_TRUE(d.settled());
  auto calls = settler->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].token, 41u);
  EXPECT_EQ(calls[0].outcome, Outcome::ack);
}

TEST(Delivery, NackPassesTheDelayAndClampsNegativeOnes) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery a = make_delivery(settler, 1);
  Delivery b = make_delivery(settler, 2);
  a.nack(milliseconds{250});
  b.nack(milliseconds{-10});
  auto calls = settler->calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].outcome, Outcome::nack);
  EXPECT_EQ(calls[0].delay, milliseconds{250});
  EXPECT_EQ(calls[1].delay, milliseconds{0});
}

TEST(Delivery, RejectPassesTheReason) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery d = make_delivery(settler);
  d.reject("schema_version 9 is unknown");
  auto calls = settler->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].outcome, Outcome::reject);
  EXPECT_EQ(calls[0].reason, "schema_version 9 is unknown");
}

TEST(Delivery, MovedFromDoesNotSettle) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery a = make_delivery(settler, 3);
  Delivery b(std::move(a));
  a.ack();  // NOLINT(bugprone-use-after-move): the moved-from delivery must be inert
  EXPECT_TRUE(settler->calls().empty());
  EXPECT_EQ(b.message().payload, "p");
  b.ack();
  ASSERT_EQ(settler->calls().size(), 1u);
  EXPECT_EQ(settler->calls()[0].token, 3u);
}

TEST(Delivery, MoveAssignmentTransfersTheRightToSettle) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery a = make_delivery(settler, 4);
  Delivery b = make_delivery(settler, 5);
  b = std::move(a);  // b's own delivery is dropped unsettled, to be redelivered
  a.reject("x");     // NOLINT(bugprone-use-after-move)
  b.nack();
  auto calls = settler->calls();
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].token, 4u);
  EXPECT_EQ(calls[0].outcome, Outcome::nack);
}

TEST(Delivery, MovingASettledDeliveryKeepsItSettled) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery a = make_delivery(settler);
  a.ack();
  Delivery b(std::move(a));
  EXPECT_TRUE(b.settled());
  b.ack();
  EXPECT_EQ(settler->calls().size(), 1u);
}

TEST(Delivery, DroppingUnsettledDoesNotSettle) {
  auto settler = std::make_shared<RecordingSettler>();
  { Delivery d = make_delivery(settler); }
  EXPECT_TRUE(settler->calls().empty());
}

TEST(Delivery, SettlingAfterTheSettlerIsGoneIsHarmless) {
  auto settler = std::make_shared<RecordingSettler>();
  Delivery d = make_delivery(settler);
  std::weak_ptr<RecordingSettler> weak = settler;
  settler.reset();
  ASSERT_TRUE(weak.expired());
  d.ack();
  EXPECT_TRUE(d.settled());
  d.reject("again");
}

}  // namespace
}  // namespace ferry
