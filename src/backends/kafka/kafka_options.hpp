#pragma once
// kafka:// options: ferry's own keys and the librdkafka properties passed through
// (documented in include/ferry/backends/kafka.hpp), validated when the URL is opened.

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "ferry/url.hpp"
#include "kafka_handles.hpp"

namespace ferry::kafka::detail {

using Ms = std::chrono::milliseconds;

enum class TopicCreation { admin, auto_create, off };

struct Options {
  std::string bootstrap;  // "host:port,..."
  std::string masked_url;
  int partitions = 3;
  int replication = -1;
  TopicCreation create_topics = TopicCreation::admin;
  Ms publish_timeout{10'000};
  Ms join_timeout{30'000};
  Ms commit_interval{1'000};
  Ms revoke_grace{2'000};
  Ms member_linger{5'000};
  Ms admin_timeout{10'000};
  std::vector<std::string> groups;  // reported by Admin::stats() besides the subscribed and listed ones

  using Properties = std::vector<std::pair<std::string, std::string>>;
  Properties common;    // both clients
  Properties producer;  // "producer." keys
  Properties consumer;  // "consumer." keys

  // Throws Error(bad_url | invalid_argument) naming the offending key.
  static Options from_url(const Url& url);

  // The producer's configuration, with ferry's settings and the passed-through properties.
  // Callbacks are set by the caller. Throws Error(invalid_argument).
  ConfPtr producer_conf() const;
  // A consumer's configuration; `group` empty for a consumer without a group.
  ConfPtr consumer_conf(const std::string& group) const;
  // Makes clients of these options without brokers and drops them: librdkafka's checks of
  // properties against each other, and of producer./consumer. properties the client would
  // ignore. Throws Error(invalid_argument).
  void check_clients() const;
};

// Sets one property; throws Error(invalid_argument) naming it (its value masked if secret).
void set_property(rd_kafka_conf_t* conf, const std::string& key, const std::string& value);

}  // namespace ferry::kafka::detail
