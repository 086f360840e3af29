#include "e2e_support.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <cstring>
#include <fstream>
#include <random>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace ferry::e2e {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;

int decode_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

int spawn(const std::vector<std::string>& args, const std::string& log_path, const std::string& cwd) {
  std::vector<std::string> argv_storage;
  argv_storage.push_back(ferry_binary());
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The child's environment: ours, without FERRY_* settings that would change its flags.
  std::vector<std::string> env_storage;
  for (char** e = environ; *e; ++e)
    if (std::string_view(*e).rfind("FERRY_", 0) != 0) env_storage.emplace_back(*e);
  std::vector<char*> envp;
  for (auto& e : env_storage) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  if (!cwd.empty()) posix_spawn_file_actions_addchdir_np(&actions, cwd.c_str());
  pid_t pid = -1;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) throw std::runtime_error("cannot start " + ferry_binary() + ": " + std::strerror(rc));
  return pid;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace

std::string ferry_binary() {
  return FERRY_BINARY;
}

TempDir::TempDir() {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path();
  for (int i = 0; i < 100; ++i) {
    auto candidate = base / ("ferry-e2e-" + std::to_string(::getpid()) + "-" + std::to_string(rd() % 1000000));
    if (std::filesystem::create_directory(candidate)) {
      path_ = candidate;
      return;
    }
  }
  throw std::runtime_error("cannot create a temporary directory");
}

TempDir::~TempDir() {
  std::error_code ec;
  if (!std::getenv("FERRY_E2E_KEEP")) std::filesystem::remove_all(path_, ec);
}

FerryProcess::FerryProcess(std::vector<std::string> args, std::string log_path, std::string cwd)
    : log_path_(std::move(log_path)) {
  pid_ = spawn(args, log_path_, cwd);
}

FerryProcess::~FerryProcess() {
  if (running()) {
    ::kill(pid_, SIGKILL);
    wait_exit(10s);
  }
}

std::string FerryProcess::log() const {
  return read_file(log_path_);
}

bool FerryProcess::running() {
  if (status_) return false;
  int status = 0;
  pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    status_ = decode_status(status);
    return false;
  }
  return r == 0;
}

std::optional<std::string> FerryProcess::wait_for_log(const std::string& pattern, std::chrono::milliseconds timeout) {
  std::regex re(pattern);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    std::string text = log();
    std::smatch m;
    if (std::regex_search(text, m, re)) return m.size() > 1 ? m[1].str() : m[0].str();
    if (!running() || std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(20ms);
  }
}

std::uint16_t FerryProcess::wait_listening(std::chrono::milliseconds timeout) {
  auto port = wait_for_log(R"(listening on 127\.0\.0\.1:([0-9]+))", timeout);
  return port ? static_cast<std::uint16_t>(std::stoi(*port)) : 0;
}

void FerryProcess::signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

std::optional<int> FerryProcess::wait_exit(std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (running()) {
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(10ms);
  }
  return status_;
}

ToolResult run_ferry(const std::vector<std::string>& args, const std::string& cwd, std::chrono::milliseconds timeout) {
  std::string log_path =
      (std::filesystem::path(cwd) / ("tool-" + std::to_string(std::random_device{}()) + ".log")).string();
  ToolResult result;
  {
    FerryProcess p(args, log_path, cwd);
    auto code = p.wait_exit(timeout);
    result.exit_code = code ? *code : -1;
  }
  result.output = read_file(log_path);
  std::filesystem::remove(log_path);
  return result;
}

class HttpClient::Impl {
 public:
  explicit Impl(std::uint16_t port) : port_(port) {}

  HttpResult request(const std::string& method, const std::string& target, const std::string& body,
                     const std::map<std::string, std::string>& headers) {
    HttpResult result;
    for (int attempt = 0; attempt < 2; ++attempt) {
      bool fresh = false;
      try {
        if (!stream_) {
          connect();
          fresh = true;
        }
        stream_->expires_after(30s);
        http::request<http::string_body> req{http::string_to_verb(method), target, 11};
        req.set(http::field::host, "127.0.0.1");
        for (const auto& [name, value] : headers) req.set(name, value);
        req.body() = body;
        req.prepare_payload();
        http::write(*stream_, req);
        http::response_parser<http::string_body> parser;
        parser.body_limit(16 * 1024 * 1024);
        http::read(*stream_, buffer_, parser);
        auto& res = parser.get();
        result.status = static_cast<int>(res.result_int());
        result.body = res.body();
        for (const auto& field : res) {
          std::string name(field.name_string());
          for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          result.headers[name] = std::string(field.value());
        }
        if (!res.keep_alive()) stream_.reset();
        return result;
      } catch (const std::exception& e) {
        stream_.reset();
        buffer_.clear();
        result.error = e.what();
        // A kept-alive connection may have been closed by the server meanwhile: retry once
        // on a fresh one. A fresh connection that fails is reported.
        if (fresh) return result;
      }
    }
    return result;
  }

  HttpResult raw(const std::string& bytes) {
    HttpResult result;
    try {
      net::io_context ioc;
      beast::tcp_stream stream(ioc);
      stream.expires_after(10s);
      stream.connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port_));
      net::write(stream, net::buffer(bytes));
      beast::flat_buffer buffer;
      http::response<http::string_body> res;
      http::read(stream, buffer, res);
      result.status = static_cast<int>(res.result_int());
      result.body = res.body();
    } catch (const std::exception& e) {
      result.error = e.what();
    }
    return result;
  }

 private:
  void connect() {
    stream_ = std::make_unique<beast::tcp_stream>(ioc_);
    stream_->expires_after(30s);
    stream_->connect(tcp::endpoint(net::ip::make_address("127.0.0.1"), port_));
  }

  std::uint16_t port_;
  net::io_context ioc_;
  std::unique_ptr<beast::tcp_stream> stream_;
  beast::flat_buffer buffer_;
};

HttpClient::HttpClient(std::uint16_t port) : impl_(new Impl(port)) {}
HttpClient::~HttpClient() {
  delete impl_;
}

HttpResult HttpClient::request(const std::string& method, const std::string& target, const std::string& body,
                               const std::map<std::string, std::string>& headers) {
  return impl_->request(method, target, body, headers);
}

HttpResult HttpClient::post_json(const std::string& target, const std::string& body,
                                 const std::map<std::string, std::string>& headers) {
  auto all = headers;
  all.emplace("Content-Type", "application/json");
  return request("POST", target, body, all);
}

HttpResult HttpClient::raw(const std::string& bytes) {
  return impl_->raw(bytes);
}

std::string json_field(const std::string& json, const std::string& name) {
  boost::json::error_code ec;
  auto v = boost::json::parse(json, ec);
  if (ec || !v.is_object()) return {};
  auto* f = v.get_object().if_contains(name);
  if (!f || !f->is_string()) return {};
  return std::string(f->get_string());
}

std::vector<std::string> wait_processed(std::uint16_t port, std::vector<std::string> ids,
                                        std::chrono::milliseconds timeout) {
  HttpClient client(port);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!ids.empty() && std::chrono::steady_clock::now() < deadline) {
    std::vector<std::string> still;
    for (const auto& id : ids) {
      auto r = client.get("/orders/" + id);
      if (r.status != 200 || json_field(r.body, "state") != "processed") still.push_back(id);
    }
    ids.swap(still);
    if (!ids.empty()) std::this_thread::sleep_for(std::chrono::milliseconds{100});
  }
  return ids;
}

std::string order_body(const std::string& user, int products) {
  std::string body = R"({"user_id":")" + user + R"(","product_ids":[)";
  for (int i = 0; i < products; ++i) body += (i ? "," : "") + std::string("\"sku-") + std::to_string(i) + "\"";
  return body + "]}";
}

std::int64_t store_count(const std::string& store_path, const std::string& sql) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(store_path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) != SQLITE_OK) {
    sqlite3_close(db);
    throw std::runtime_error("cannot open " + store_path);
  }
  sqlite3_busy_timeout(db, 5000);
  sqlite3_stmt* stmt = nullptr;
  std::int64_t value = -1;
  if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr) == SQLITE_OK && sqlite3_step(stmt) == SQLITE_ROW)
    value = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return value;
}

}  // namespace ferry::e2e
