#pragma once
// Names of topics and groups that no other test, test process or earlier run uses on a
// shared broker: `stem-PID-N`.
#include <unistd.h>

#include <atomic>
#include <string>

namespace ferry::testing {

inline std::string unique_name(const std::string& stem) {
  static std::atomic<int> n{0};
  return stem + "-" + std::to_string(::getpid()) + "-" + std::to_string(++n);
}

}  // namespace ferry::testing
