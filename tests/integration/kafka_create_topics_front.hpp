#pragma once
// A Kafka-protocol front for librdkafka's mock cluster that adds the one API ferry uses and
// the mock lacks: CreateTopics (librdkafka 2.0.2's mock neither advertises nor handles it,
// and names broker 0, which does not exist, as its controller).
//
// The front listens on one loopback port per mock broker and passes every request through
// to that broker, except:
//  - ApiVersions (v0-v2) answers also advertise CreateTopics v2-v4, and Metadata and
//    FindCoordinator at most v2;
//  - Metadata (v1, v2) and FindCoordinator (v0-v2) answers name the front's ports instead of
//    the brokers', so clients keep talking through the front, and Metadata names a broker
//    that exists as the controller;
//  - CreateTopics (v2-v4) is answered by the front, as a Kafka broker would: it creates
//    the topic in the mock cluster with the requested partitions and replication, or
//    answers TOPIC_ALREADY_EXISTS, INVALID_PARTITIONS or INVALID_REPLICATION_FACTOR.
// Everything else (Produce, Fetch, the group protocol, ...) is the mock's own work.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ferry/backends/kafka.hpp"

namespace ferry::kafka::testing {

class CreateTopicsFront {
 public:
  explicit CreateTopicsFront(MockCluster& cluster);
  ~CreateTopicsFront();
  CreateTopicsFront(const CreateTopicsFront&) = delete;
  CreateTopicsFront& operator=(const CreateTopicsFront&) = delete;

  // "127.0.0.1:port,..." of the front.
  std::string bootstrap() const;

  // One topic of a CreateTopics request, and what the front answered (0: created).
  struct Request {
    std::string topic;
    int partitions = 0;
    int replication = 0;
    bool validate_only = false;
    int error = 0;
  };
  std::vector<Request> requests() const;

  // How many requests with this API key (0 Produce, 1 Fetch, 10 FindCoordinator, ...) came
  // through the front.
  int passed(int api_key) const;

  // The topic's partition count as the mock cluster has it (asked directly, listing all
  // topics, so asking creates nothing), or nullopt if there is no such topic. (The mock puts
  // a replica of every partition on every broker, whatever the replication asked.)
  std::optional<int> partitions(const std::string& topic) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::kafka::testing
