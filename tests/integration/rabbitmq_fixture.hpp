#pragma once
// A RabbitMQ node of the test's own (Debian's rabbitmq-server), in a temporary directory
// on free ports, with a TLS listener whose certificate the fixture makes with openssl.
//
// One node per test executable: RabbitMqEnvironment starts it before the first test and
// removes it, its epmd and its directory after the last. Tests use unique topic names
// instead of a node each. The node runs as the user "rabbitmq" when the tests run as
// root (the Debian package's user), else as the current user. It needs
// /usr/lib/rabbitmq/bin/rabbitmq-server, /usr/bin/epmd and openssl: scripts/deps.sh test
// installs them. A node that cannot start fails the tests; nothing is skipped.

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace ferry::testing {

class RabbitMq {
 public:
  // Makes the directory, the configuration and the certificates; does not start.
  RabbitMq();
  // Stops the node and its epmd and removes the directory.
  ~RabbitMq();
  RabbitMq(const RabbitMq&) = delete;
  RabbitMq& operator=(const RabbitMq&) = delete;

  // Starts the node (same data, same ports as before) and waits until it accepts AMQP
  // connections. Throws std::runtime_error with the end of the node's log.
  void start();
  // Stops the node gracefully (SIGTERM; SIGKILL after 30 s).
  void stop();
  // Kills the node at once (SIGKILL), as a crash would.
  void kill();
  void restart() {
    stop();
    start();
  }
  bool running() const noexcept { return pid_ > 0; }

  int port() const noexcept { return port_; }
  int tls_port() const noexcept { return tls_port_; }
  // amqp://guest:guest@127.0.0.1:PORT/ followed by `query` ("?..." or empty).
  std::string url(const std::string& query = "") const;
  // amqps://guest:guest@localhost:TLS_PORT/?cacert=CA followed by `more` ("&..." or empty).
  std::string tls_url(const std::string& more = "") const;
  std::string ca_file() const { return (dir_ / "ca.pem").string(); }
  const std::filesystem::path& dir() const noexcept { return dir_; }
  // The last `bytes` of the node's own log and its console output.
  std::string log_tail(std::size_t bytes = 4000) const;

 private:
  void make_certificates();
  void start_epmd();

  std::filesystem::path dir_;
  std::string node_;
  int port_ = 0, tls_port_ = 0, dist_port_ = 0, epmd_port_ = 0;
  int pid_ = -1;       // the rabbitmq-server script; leader of its process group
  int epmd_pid_ = -1;  // epmd, started by the fixture on its own port
  unsigned uid_ = 0, gid_ = 0;
  bool drop_privileges_ = false;
};

// Messages ready in a queue and its consumers, read with a passive queue.declare over a
// connection of its own (rabbitmq-c, not ferry); nothing if the queue does not exist.
struct QueueCounts {
  std::uint32_t messages = 0;
  std::uint32_t consumers = 0;
};
std::optional<QueueCounts> queue_counts(int port, const std::string& queue);

// Runs `/usr/bin/python3 -c script args...` (Debian's python3 with python3-pika);
// returns its exit code and puts its standard output and error in `output`.
int run_python(const std::string& script, const std::vector<std::string>& args, std::string& output);

// The node of this test executable (started by RabbitMqEnvironment).
RabbitMq& rabbitmq();

// Starts rabbitmq() before the first test, removes it after the last.
class RabbitMqEnvironment : public ::testing::Environment {
 public:
  void SetUp() override;
  void TearDown() override;
};

// Adds RabbitMqEnvironment to gtest, once however often it is called; call it before
// RUN_ALL_TESTS (a namespace-scope `const bool x = ferry::testing::use_rabbitmq();` in
// each test file does).
bool use_rabbitmq();

}  // namespace ferry::testing
