#include "rabbitmq_fixture.hpp"

#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "test_certificates.hpp"

namespace ferry::testing {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

constexpr const char* kServer = "/usr/lib/rabbitmq/bin/rabbitmq-server";
constexpr const char* kEpmd = "/usr/bin/epmd";

int free_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
    throw std::runtime_error("cannot find a free port");
  ::close(fd);
  return ntohs(addr.sin_port);
}

bool accepts(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<std::uint16_t>(port));
  bool ok = fd >= 0 && connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  if (fd >= 0) ::close(fd);
  return ok;
}

std::string read_file(const fs::path& path, std::size_t tail) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return text.size() > tail ? text.substr(text.size() - tail) : text;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

// argv/envp storage that outlives fork().
struct Exec {
  std::vector<std::string> args, env;
  std::vector<char*> argv, envp;
  void freeze() {
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
  }
};

// Forks a child in its own process group, optionally as another user, with output
// appended to `log`. Only async-signal-safe calls between fork and exec.
int spawn(Exec& exec, const fs::path& log, const fs::path& cwd, bool drop, unsigned uid, unsigned gid) {
  exec.freeze();
  std::string log_path = log.string(), cwd_path = cwd.string();
  pid_t pid = fork();
  if (pid < 0) throw std::runtime_error("fork failed");
  if (pid == 0) {
    setpgid(0, 0);
    int fd = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      ::close(fd);
    }
    int null = open("/dev/null", O_RDONLY);
    if (null >= 0) dup2(null, 0);
    if (chdir(cwd_path.c_str()) != 0) _exit(126);
    if (drop) {
      gid_t g = gid;
      if (setgroups(1, &g) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(125);
    }
    execve(exec.argv[0], exec.argv.data(), exec.envp.data());
    _exit(127);
  }
  setpgid(pid, pid);
  return pid;
}

// Waits for `pid` to exit, up to `limit`; true if it did.
bool reap(int pid, std::chrono::milliseconds limit) {
  auto deadline = SteadyClock::now() + limit;
  while (true) {
    int status = 0;
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (SteadyClock::now() >= deadline) return false;
    std::this_thread::sleep_for(20ms);
  }
}

std::unique_ptr<RabbitMq>& node() {
  static std::unique_ptr<RabbitMq> instance;
  return instance;
}

}  // namespace

RabbitMq::RabbitMq() {
  std::random_device random;
  std::string suffix = std::to_string(random() % 1'000'000'000);
  dir_ = fs::temp_directory_path() / ("ferry-rabbitmq-" + suffix);
  fs::create_directories(dir_ / "mnesia");
  fs::create_directories(dir_ / "log");
  node_ = "ferry-test-" + suffix + "@localhost";
  port_ = free_port();
  tls_port_ = free_port();
  dist_port_ = free_port();
  epmd_port_ = free_port();

  drop_privileges_ = geteuid() == 0;
  if (drop_privileges_) {
    passwd* pw = getpwnam("rabbitmq");
    if (pw == nullptr)
      throw std::runtime_error("user 'rabbitmq' not found: install rabbitmq-server (scripts/deps.sh test)");
    uid_ = pw->pw_uid;
    gid_ = pw->pw_gid;
  }
  make_certificates();
  write_file(dir_ / "enabled_plugins", "[].\n");
  write_file(dir_ / "rabbitmq-env.conf", "");
  write_file(dir_ / "rabbitmq.conf", "listeners.ssl.1 = 127.0.0.1:" + std::to_string(tls_port_) + "\n" +
                                         "ssl_options.cacertfile = " + (dir_ / "ca.pem").string() + "\n" +
                                         "ssl_options.certfile = " + (dir_ / "server.pem").string() + "\n" +
                                         "ssl_options.keyfile = " + (dir_ / "server.key").string() + "\n" +
                                         "ssl_options.verify = verify_none\n"
                                         "ssl_options.fail_if_no_peer_cert = false\n"
                                         "disk_free_limit.absolute = 10MB\n"
                                         "log.console = false\n"
                                         "log.file.level = info\n");
  if (drop_privileges_) {
    for (const auto& entry : fs::recursive_directory_iterator(dir_))
      if (chown(entry.path().c_str(), uid_, gid_) != 0) throw std::runtime_error("chown failed");
    if (chown(dir_.c_str(), uid_, gid_) != 0) throw std::runtime_error("chown failed");
  }
}

RabbitMq::~RabbitMq() {
  try {
    if (running()) stop();
  } catch (...) {
  }
  if (epmd_pid_ > 0) {
    ::kill(-epmd_pid_, SIGKILL);
    reap(epmd_pid_, 5s);
    epmd_pid_ = -1;
  }
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

void RabbitMq::make_certificates() {
  make_test_certificates(dir_);
}

void RabbitMq::start_epmd() {
  if (epmd_pid_ > 0) return;
  Exec exec;
  exec.args = {kEpmd, "-port", std::to_string(epmd_port_)};
  exec.env = {"PATH=/usr/bin:/bin", "HOME=" + dir_.string()};
  epmd_pid_ = spawn(exec, dir_ / "log" / "epmd.log", dir_, drop_privileges_, uid_, gid_);
  auto deadline = SteadyClock::now() + 10s;
  while (!accepts(epmd_port_)) {
    if (SteadyClock::now() > deadline) throw std::runtime_error("epmd did not start:\n" + log_tail());
    std::this_thread::sleep_for(20ms);
  }
}

void RabbitMq::start() {
  if (running()) return;
  if (!fs::exists(kServer))
    throw std::runtime_error(std::string(kServer) + " is missing: install rabbitmq-server (scripts/deps.sh test)");
  start_epmd();
  const std::string d = dir_.string();
  Exec exec;
  exec.args = {kServer};
  exec.env = {
      "PATH=/usr/lib/rabbitmq/bin:/usr/bin:/bin:/usr/sbin:/sbin",
      "HOME=" + d,
      "LANG=C.UTF-8",
      "LC_ALL=C.UTF-8",
      "RABBITMQ_CONF_ENV_FILE=" + d + "/rabbitmq-env.conf",
      "RABBITMQ_CONFIG_FILE=" + d + "/rabbitmq.conf",
      "RABBITMQ_ADVANCED_CONFIG_FILE=" + d + "/advanced.config",
      "RABBITMQ_MNESIA_BASE=" + d + "/mnesia",
      "RABBITMQ_LOG_BASE=" + d + "/log",
      "RABBITMQ_LOGS=" + d + "/log/node.log",
      "RABBITMQ_PID_FILE=" + d + "/node.pid",
      "RABBITMQ_ENABLED_PLUGINS_FILE=" + d + "/enabled_plugins",
      "RABBITMQ_FEATURE_FLAGS_FILE=" + d + "/feature_flags",
      "RABBITMQ_NODENAME=" + node_,
      "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
      "RABBITMQ_NODE_PORT=" + std::to_string(port_),
      "RABBITMQ_DIST_PORT=" + std::to_string(dist_port_),
      "ERL_EPMD_PORT=" + std::to_string(epmd_port_),
  };
  pid_ = spawn(exec, dir_ / "console.log", dir_, drop_privileges_, uid_, gid_);
  const auto deadline = SteadyClock::now() + 90s;
  while (!accepts(port_)) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      throw std::runtime_error("rabbitmq-server exited while starting:\n" + log_tail());
    }
    if (SteadyClock::now() > deadline) {
      kill();
      throw std::runtime_error("rabbitmq-server did not accept connections within 90 s:\n" + log_tail());
    }
    std::this_thread::sleep_for(50ms);
  }
}

void RabbitMq::stop() {
  if (!running()) return;
  ::kill(pid_, SIGTERM);  // the script stops the node gracefully
  if (!reap(pid_, 30s)) ::kill(-pid_, SIGKILL);
  ::kill(-pid_, SIGKILL);  // whatever of the group is left (erl_child_setup, inet_gethost)
  reap(pid_, 5s);
  pid_ = -1;
  // The node is gone once its port is closed.
  auto deadline = SteadyClock::now() + 10s;
  while (accepts(port_) && SteadyClock::now() < deadline) std::this_thread::sleep_for(20ms);
}

void RabbitMq::kill() {
  if (!running()) return;
  ::kill(-pid_, SIGKILL);
  reap(pid_, 10s);
  pid_ = -1;
  auto deadline = SteadyClock::now() + 10s;
  while (accepts(port_) && SteadyClock::now() < deadline) std::this_thread::sleep_for(20ms);
}

std::string RabbitMq::url(const std::string& query) const {
  return "amqp://guest:guest@127.0.0.1:" + std::to_string(port_) + "/" + query;
}

std::string RabbitMq::tls_url(const std::string& more) const {
  return "amqps://guest:guest@localhost:" + std::to_string(tls_port_) + "/?cacert=" + ca_file() + more;
}

std::string RabbitMq::log_tail(std::size_t bytes) const {
  return read_file(dir_ / "log" / "node.log", bytes) + "\n--- console ---\n" + read_file(dir_ / "console.log", bytes);
}

std::optional<QueueCounts> queue_counts(int port, const std::string& queue) {
  amqp_connection_state_t conn = amqp_new_connection();
  amqp_socket_t* socket = amqp_tcp_socket_new(conn);
  std::optional<QueueCounts> out;
  if (socket && amqp_socket_open(socket, "127.0.0.1", port) == AMQP_STATUS_OK &&
      amqp_login(conn, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest").reply_type ==
          AMQP_RESPONSE_NORMAL) {
    amqp_channel_open(conn, 1);
    if (amqp_get_rpc_reply(conn).reply_type == AMQP_RESPONSE_NORMAL) {
      auto* ok = amqp_queue_declare(conn, 1, amqp_bytes_t{queue.size(), const_cast<char*>(queue.data())}, 1, 0, 0, 0,
                                    amqp_empty_table);
      if (ok != nullptr) out = QueueCounts{ok->message_count, ok->consumer_count};
    }
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  } else {
    throw std::runtime_error("cannot connect to RabbitMQ on port " + std::to_string(port));
  }
  amqp_destroy_connection(conn);
  return out;
}

int run_python(const std::string& script, const std::vector<std::string>& args, std::string& output) {
  fs::path dir = fs::temp_directory_path();
  std::random_device random;
  fs::path log = dir / ("ferry-python-" + std::to_string(random()) + ".log");
  Exec exec;
  exec.args = {"/usr/bin/python3", "-c", script};
  exec.args.insert(exec.args.end(), args.begin(), args.end());
  exec.env = {"PATH=/usr/bin:/bin", "LC_ALL=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1"};
  int pid = spawn(exec, log, dir, false, 0, 0);
  int status = 0;
  waitpid(pid, &status, 0);
  output = read_file(log, 1 << 20);
  fs::remove(log);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

RabbitMq& rabbitmq() {
  auto& n = node();
  if (!n) throw std::runtime_error("the RabbitMQ node was not started: call ferry::testing::use_rabbitmq()");
  return *n;
}

void RabbitMqEnvironment::SetUp() {
  try {
    node() = std::make_unique<RabbitMq>();
    node()->start();
  } catch (const std::exception& e) {
    FAIL() << "cannot start RabbitMQ for the tests: " << e.what();
  }
}

void RabbitMqEnvironment::TearDown() {
  node().reset();
}

bool use_rabbitmq() {
  static const bool added = [] {
    ::testing::AddGlobalTestEnvironment(new RabbitMqEnvironment);
    return true;
  }();
  return added;
}

}  // namespace ferry::testing
