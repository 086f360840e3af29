#pragma once
// Helpers for the end-to-end tests: a temporary directory, the ferry binary run as a
// child process with its output in a log file, and a small blocking HTTP client.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ferry::e2e {

using namespace std::chrono_literals;

// The ferry executable under test (a compile definition from CMake).
std::string ferry_binary();

// A fresh directory, removed with its contents on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const noexcept { return path_; }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// A `ferry` child process. Standard output and error go to `log_path`; standard input is
// /dev/null. The destructor kills (SIGKILL) and reaps a process still running.
class FerryProcess {
 public:
  FerryProcess(std::vector<std::string> args, std::string log_path, std::string cwd);
  ~FerryProcess();
  FerryProcess(const FerryProcess&) = delete;
  FerryProcess& operator=(const FerryProcess&) = delete;

  int pid() const noexcept { return pid_; }
  std::string log() const;
  // Waits until the log matches `pattern` (ECMAScript regex); returns the first capture
  // group (or the whole match), or nothing at the timeout or if the process exited.
  std::optional<std::string> wait_for_log(const std::string& pattern, std::chrono::milliseconds timeout);
  // Waits for "listening on HOST:PORT" and returns the port (0 on failure).
  std::uint16_t wait_listening(std::chrono::milliseconds timeout = 15s);
  void signal(int sig);
  // The exit code (128 + signal number if killed by a signal), or nothing at the timeout.
  std::optional<int> wait_exit(std::chrono::milliseconds timeout);
  bool running();

 private:
  int pid_ = -1;
  std::optional<int> status_;
  std::string log_path_;
};

struct ToolResult {
  int exit_code = -1;
  std::string output;  // standard output and error, interleaved
};
// Runs ferry to completion (at most `timeout`, then SIGKILL).
ToolResult run_ferry(const std::vector<std::string>& args, const std::string& cwd,
                     std::chrono::milliseconds timeout = 30s);

struct HttpResult {
  int status = 0;  // 0: no response (connection refused, reset, timeout)
  std::string body;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string error;
};

// One keep-alive HTTP/1.1 connection to 127.0.0.1:port, reopened after a failure.
// Not thread-safe: one per client thread.
class HttpClient {
 public:
  explicit HttpClient(std::uint16_t port);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  HttpResult request(const std::string& method, const std::string& target, const std::string& body = {},
                     const std::map<std::string, std::string>& headers = {});
  HttpResult post_json(const std::string& target, const std::string& body,
                       const std::map<std::string, std::string>& headers = {});
  HttpResult get(const std::string& target) { return request("GET", target); }
  // Sends raw bytes on a fresh connection and reads one response.
  HttpResult raw(const std::string& bytes);

 private:
  class Impl;
  Impl* impl_;
};

// A JSON string member of a JSON object text, or "" if absent.
std::string json_field(const std::string& json, const std::string& name);

// An order body for user `user` with `products` product ids.
std::string order_body(const std::string& user, int products = 2);

// Polls GET /orders/{id} on a service at `port` until every order is processed or the
// timeout passes; returns the ids that are not processed.
std::vector<std::string> wait_processed(std::uint16_t port, std::vector<std::string> ids,
                                        std::chrono::milliseconds timeout);

// Counts rows of the order store file with a query returning one integer.
std::int64_t store_count(const std::string& store_path, const std::string& sql);

}  // namespace ferry::e2e
