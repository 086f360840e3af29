#pragma once
// ferry::app::HttpServer: an asynchronous HTTP/1.1 server (Boost.Beast, kept out of this
// header) that hands each request to one handler function.
//
// Threads: one io_context run by `threads` threads. Every connection is a session that
// owns itself (shared_from_this) and runs on its own strand; connections are kept alive
// between requests. The handler is called on the session's strand and must not block:
// it answers later, from any thread, through the Responder it is given (exactly once;
// later calls are ignored). A handler that has not answered within `handler_timeout`
// gets `timeout_response` sent for it.
//
// Bodies over `body_limit` are answered 413 without being read (Content-Length is checked
// before the body arrives); the connection is then closed after a short lingering drain so
// the client sees the answer. Unparseable requests get 400 and a close.
//
// Shutdown: stop_accepting() closes the listener and every idle connection; requests in
// flight are answered (with Connection: close). wait_idle() waits for the last
// connection; stop() stops the threads. Every Responder must have been called or
// destroyed before the HttpServer is destroyed.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ferry::app {

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // path and query, as sent
  std::string content_type;
  std::optional<std::string> idempotency_key;
  std::optional<std::string> traceparent;  // W3C Trace Context header, as sent
  std::string body;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Sends the response of one request; callable from any thread, once.
using Responder = std::function<void(HttpResponse)>;
using HttpHandler = std::function<void(HttpRequest&& request, Responder respond)>;

struct HttpServerOptions {
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;  // 0: any free port
  int threads = 1;
  std::size_t body_limit = 64 * 1024;
  std::chrono::milliseconds idle_timeout{60'000};
  std::chrono::milliseconds handler_timeout{10'000};
  HttpResponse timeout_response{503,
                                "application/json",
                                R"({"error":"unavailable","detail":"the request timed out; retry later"})",
                                {{"Retry-After", "1"}}};
};

// Counts of answered requests, for /metrics.
struct HttpCounts {
  std::string method;
  int status = 0;
  std::uint64_t count = 0;
};

class HttpServer {
 public:
  HttpServer(HttpServerOptions options, HttpHandler handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds, listens and starts the threads. Throws Error(invalid_argument) for a host that
  // does not resolve and Error(unavailable) when the address cannot be bound.
  void start();
  // The bound address, "127.0.0.1:8080" or "[::1]:8080" (the real port when 0 was asked).
  std::string local_address() const;

  void stop_accepting();
  // Waits until no connection is left or the deadline passes; true when none is left.
  bool wait_idle(std::chrono::steady_clock::time_point deadline);
  // Requests being handled (the handler was called and has not answered) right now.
  std::uint64_t requests_in_flight() const;
  std::uint64_t connections() const;
  // Stops the threads; connections still open are dropped.
  void stop();

  std::vector<HttpCounts> counts() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::app
