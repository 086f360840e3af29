#pragma once
// Helpers for the kafka:// integration tests: one mock cluster per test process, and a
// runner for the python3-kafka scripts.

#include <chrono>
#include <cstdio>
#include <string>

#include "ferry/backends/kafka.hpp"

namespace ferry::kafka::testing {

// Three mock brokers, started on first use, for the whole test process.
inline MockCluster& cluster() {
  static MockCluster instance(3);
  return instance;
}

// A URL for the shared cluster with ferry and librdkafka options appended ("&k=v...").
inline std::string url(const std::string& extra = {}) {
  return cluster().url() + extra;
}

// "topic-<n>-<random>": unique within and across runs.
std::string unique(const std::string& stem);

// Debian's python3 with kafka-python, or "" if there is none.
std::string python_with_kafka();

struct ProcessRun {
  int exit_code = -1;
  std::string output;  // standard output and error
};
// Runs `command` through the shell, at most `timeout`.
ProcessRun run(const std::string& command, std::chrono::seconds timeout);

}  // namespace ferry::kafka::testing
