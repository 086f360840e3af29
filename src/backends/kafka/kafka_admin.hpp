#pragma once
// ferry::Admin for kafka:// (what it reports is in include/ferry/backends/kafka.hpp):
// watermarks and committed offsets through the Broker's producer handle, peeks through a
// temporary consumer. Thread-safe: every call makes its own requests and queues.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ferry/admin.hpp"
#include "kafka_producer.hpp"

namespace ferry::kafka::detail {

// A group this Broker handle consumes a topic with, and its unsettled deliveries.
struct Subscribed {
  std::string topic;
  std::string group;
  std::uint64_t in_flight = 0;
};

class KafkaAdmin : public Admin {
 public:
  using SubscribedFn = std::function<std::vector<Subscribed>()>;
  KafkaAdmin(std::shared_ptr<Producer> producer, SubscribedFn subscribed);

  // Throw Error(closed) after the Broker closed, Error(unavailable | timeout) when the
  // cluster does not answer.
  std::vector<TopicStats> stats() override;
  std::vector<Message> peek(const std::string& topic, std::size_t limit) override;
  std::uint64_t purge(const std::string& topic) override;

 private:
  rd_kafka_t* handle() const;

  std::shared_ptr<Producer> producer_;
  SubscribedFn subscribed_;
};

}  // namespace ferry::kafka::detail
