#pragma once
// A delivery whose settlement is recorded, for testing middleware without a broker.

#include <chrono>
#include <memory>
#include <string>

#include "ferry/delivery.hpp"
#include "ferry/router/handler.hpp"

namespace ferry::testing {

struct RecordingSettler : Settler {
  Outcome outcome{};
  std::chrono::milliseconds delay{};
  std::string reason;
  int settlements = 0;
  void settle(std::uint64_t, Outcome o, std::chrono::milliseconds d, const std::string& r) noexcept override {
    outcome = o;
    delay = d;
    reason = r;
    ++settlements;
  }
};

struct Fixture {
  explicit Fixture(int attempt = 1, std::string id = "m-1")
      : settler(std::make_shared<RecordingSettler>()),
        delivery(make_message(std::move(id)), "orders", "billing", attempt, settler, 1),
        request(delivery, "bill", "memory") {}

  static Message make_message(std::string id) {
    Message m;
    m.id = std::move(id);
    m.payload = "payload";
    return m;
  }

  std::shared_ptr<RecordingSettler> settler;
  Delivery delivery;
  Request request;
};

}  // namespace ferry::testing
