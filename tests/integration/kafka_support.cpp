#include "kafka_support.hpp"

#include <sys/wait.h>

#include <atomic>
#include <random>

namespace ferry::kafka::testing {

std::string unique(const std::string& stem) {
  static const unsigned seed = std::random_device{}();
  static std::atomic<int> counter{0};
  return stem + "-" + std::to_string(++counter) + "-" + std::to_string(seed % 100000);
}

std::string python_with_kafka() {
  for (const char* candidate : {"/usr/bin/python3", "python3"}) {
    ProcessRun r = run(std::string(candidate) + " -c 'import kafka'", std::chrono::seconds(30));
    if (r.exit_code == 0) return candidate;
  }
  return {};
}

ProcessRun run(const std::string& command, std::chrono::seconds timeout) {
  ProcessRun result;
  std::string full = "timeout -s KILL " + std::to_string(timeout.count()) + " " + command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (!pipe) return result;
  char buffer[4096];
  std::size_t n;
  while ((n = fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

}  // namespace ferry::kafka::testing
