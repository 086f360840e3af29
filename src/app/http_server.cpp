#include "http_server.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <future>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ferry/error.hpp"

namespace ferry::app {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using SteadyClock = std::chrono::steady_clock;

constexpr std::size_t kHeaderLimit = 16 * 1024;
constexpr std::size_t kLingerBytes = 1024 * 1024;
constexpr std::chrono::seconds kLingerTime{2};
constexpr std::chrono::seconds kWriteTimeout{30};

std::string json_error(std::string_view error, std::string_view detail) {
  std::string out = R"({"error":")";
  out += error;
  out += R"(","detail":")";
  out += detail;  // callers pass fixed ASCII text without quotes
  out += "\"}";
  return out;
}

std::string format_endpoint(const tcp::endpoint& ep) {
  auto address = ep.address();
  std::string host = address.to_string();
  if (address.is_v6()) host = "[" + host + "]";
  return host + ":" + std::to_string(ep.port());
}

class Session;

// What every session shares with the server: options, handler, counters, registry. Held
// by shared_ptr so sessions destroyed with the io_context can still reach it.
struct Shared {
  HttpServerOptions options;
  HttpHandler handler;
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> connections{0};
  std::atomic<std::uint64_t> in_flight{0};

  std::mutex sessions_mutex;
  std::unordered_map<Session*, std::weak_ptr<Session>> sessions;

  std::mutex counts_mutex;
  std::map<std::pair<std::string, int>, std::uint64_t> counts;

  void count(const std::string& method, int status) {
    std::lock_guard lock(counts_mutex);
    ++counts[{method, status}];
  }
};

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, std::shared_ptr<Shared> shared)
      : stream_(std::move(socket)), timer_(stream_.get_executor()), shared_(std::move(shared)) {
    shared_->connections.fetch_add(1);
  }

  ~Session() {
    if (state_ == State::handling) shared_->in_flight.fetch_sub(1);
    {
      std::lock_guard lock(shared_->sessions_mutex);
      shared_->sessions.erase(this);
    }
    shared_->connections.fetch_sub(1);
  }

  void run() {
    {
      std::lock_guard lock(shared_->sessions_mutex);
      shared_->sessions.emplace(this, weak_from_this());
    }
    net::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::do_read, shared_from_this()));
  }

  // Closes the connection if it waits for a request; otherwise closes it after the
  // answer to the current one.
  void close_when_idle() {
    net::post(stream_.get_executor(), [self = shared_from_this()] {
      if (self->state_ == State::reading) {
        beast::error_code ec;
        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
        self->stream_.cancel();
      }
    });
  }

 private:
  enum class State { reading, handling, writing, closing };

  void do_read() {
    if (shared_->stopping.load()) return close();
    state_ = State::reading;
    parser_.emplace();
    parser_->body_limit(shared_->options.body_limit);
    parser_->header_limit(kHeaderLimit);
    stream_.expires_after(shared_->options.idle_timeout);
    http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_read, shared_from_this()));
  }

  void on_read(beast::error_code ec, std::size_t) {
    if (ec) {
      if (ec == http::error::body_limit) {
        // The request line is parsed before the Content-Length that exceeded the limit.
        method_ = std::string(parser_->get().method_string());
        if (method_.empty()) method_ = "?";
        target_ = std::string(parser_->get().target());
        version_ = parser_->get().version() == 10 ? 10 : 11;
        std::string detail = "the body exceeds the limit of " + std::to_string(shared_->options.body_limit) + " bytes";
        return send({413, "application/json", json_error("payload_too_large", detail), {}}, true, true);
      }
      bool protocol_error = ec.category() == http::make_error_code(http::error::bad_target).category() &&
                            ec != http::error::end_of_stream && ec != http::error::partial_message;
      if (protocol_error && state_ == State::reading) {
        method_ = "?";
        target_.clear();
        version_ = 11;
        int status = ec == http::error::header_limit ? 431 : 400;
        return send(
            {status, "application/json", json_error("bad_request", "malformed HTTP request: " + ec.message()), {}},
            true, false);
      }
      return close();
    }
    auto& req = parser_->get();
    keep_alive_ = req.keep_alive();
    version_ = req.version();
    HttpRequest request;
    request.method = std::string(req.method_string());
    request.target = std::string(req.target());
    if (auto it = req.find(http::field::content_type); it != req.end()) request.content_type = std::string(it->value());
    if (auto it = req.find("Idempotency-Key"); it != req.end()) request.idempotency_key = std::string(it->value());
    if (auto it = req.find("traceparent"); it != req.end()) request.traceparent = std::string(it->value());
    request.body = std::move(req.body());
    method_ = request.method;
    target_ = request.target;
    started_ = SteadyClock::now();

    state_ = State::handling;
    shared_->in_flight.fetch_add(1);
    std::uint64_t seq = ++seq_;
    auto self = shared_from_this();
    timer_.expires_after(shared_->options.handler_timeout);
    timer_.async_wait([self, seq](beast::error_code timer_ec) {
      if (timer_ec) return;
      spdlog::warn("http: {} {} not answered within {} ms; sent the timeout response", self->method_, self->target_,
                   self->shared_->options.handler_timeout.count());
      self->on_response(seq, self->shared_->options.timeout_response);
    });
    Responder respond = [self, seq](HttpResponse response) {
      net::post(self->stream_.get_executor(),
                [self, seq, response = std::move(response)]() mutable { self->on_response(seq, std::move(response)); });
    };
    try {
      shared_->handler(std::move(request), std::move(respond));
    } catch (const std::exception& e) {
      spdlog::error("http: the handler of {} {} threw: {}", method_, target_, e.what());
      on_response(seq, {500, "application/json", json_error("internal", "the server failed; see its log"), {}});
    }
  }

  void on_response(std::uint64_t seq, HttpResponse response) {
    if (seq != seq_ || state_ != State::handling) return;  // answered already (timeout) or stale
    timer_.cancel();
    shared_->in_flight.fetch_sub(1);
    if (spdlog::should_log(spdlog::level::debug)) {
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(SteadyClock::now() - started_).count();
      spdlog::debug("http: {} {} -> {} in {:.3f} ms", method_, target_, response.status, us / 1000.0);
    }
    bool close_after = !keep_alive_ || shared_->stopping.load();
    send(std::move(response), close_after, false);
  }

  void send(HttpResponse response, bool close_after, bool linger) {
    state_ = State::writing;
    shared_->count(method_, response.status);
    res_ = {};
    res_.version(version_);
    res_.result(static_cast<unsigned>(response.status));
    res_.set(http::field::server, "ferry");
    if (!response.body.empty() || !response.content_type.empty())
      res_.set(http::field::content_type, response.content_type);
    for (auto& [name, value] : response.headers) res_.set(name, value);
    res_.body() = std::move(response.body);
    res_.keep_alive(!close_after);
    res_.prepare_payload();
    stream_.expires_after(kWriteTimeout);
    http::async_write(stream_, res_,
                      beast::bind_front_handler(&Session::on_write, shared_from_this(), close_after, linger));
  }

  void on_write(bool close_after, bool linger, beast::error_code ec, std::size_t) {
    if (ec) return;
    if (!close_after) return do_read();
    if (linger) return linger_close();
    close();
  }

  void close() {
    state_ = State::closing;
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
  }

  // Half-closes, then discards what the client still sends for a while, so that closing
  // with unread input does not reset the connection before the client reads the answer.
  void linger_close() {
    close();
    stream_.expires_after(kLingerTime);
    discard();
  }

  void discard() {
    stream_.async_read_some(net::buffer(discard_), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->discarded_ += n;
      if (!ec && self->discarded_ < kLingerBytes) self->discard();
    });
  }

  beast::tcp_stream stream_;
  net::steady_timer timer_;
  std::shared_ptr<Shared> shared_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  State state_ = State::reading;
  bool keep_alive_ = true;
  unsigned version_ = 11;
  std::uint64_t seq_ = 0;
  std::string method_, target_;
  SteadyClock::time_point started_;
  std::array<char, 16 * 1024> discard_{};
  std::size_t discarded_ = 0;
};

}  // namespace

class HttpServer::Impl {
 public:
  Impl(HttpServerOptions options, HttpHandler handler)
      : ioc_(std::max(1, options.threads)), acceptor_(net::make_strand(ioc_)), shared_(std::make_shared<Shared>()) {
    shared_->options = std::move(options);
    shared_->handler = std::move(handler);
  }

  ~Impl() { stop(); }

  void start() {
    const auto& o = shared_->options;
    tcp::resolver resolver(ioc_);
    beast::error_code ec;
    auto results = resolver.resolve(o.host, std::to_string(o.port), tcp::resolver::passive, ec);
    if (ec || results.empty())
      throw Error(Errc::invalid_argument, "cannot resolve the listen host '" + o.host + "': " + ec.message());
    tcp::endpoint endpoint = results.begin()->endpoint();
    std::string where = format_endpoint(endpoint);
    acceptor_.open(endpoint.protocol(), ec);
    if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
    if (!ec) acceptor_.bind(endpoint, ec);
    if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
    if (ec) throw Error(Errc::unavailable, "cannot listen on " + where + ": " + ec.message());
    bound_ = acceptor_.local_endpoint();
    do_accept();
    for (int i = 0; i < std::max(1, o.threads); ++i) {
      threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "http-io");
        ioc_.run();
      });
    }
  }

  std::string local_address() const { return format_endpoint(bound_); }

  void stop_accepting() {
    if (shared_->stopping.exchange(true)) return;
    std::promise<void> closed;
    net::post(acceptor_.get_executor(), [this, &closed] {
      beast::error_code ec;
      acceptor_.close(ec);
      closed.set_value();
    });
    if (!threads_.empty()) closed.get_future().wait();
    std::vector<std::shared_ptr<Session>> open;
    {
      std::lock_guard lock(shared_->sessions_mutex);
      for (auto& [_, weak] : shared_->sessions)
        if (auto s = weak.lock()) open.push_back(std::move(s));
    }
    for (auto& s : open) s->close_when_idle();
  }

  bool wait_idle(SteadyClock::time_point deadline) {
    while (shared_->connections.load() > 0) {
      if (SteadyClock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds{5});
    }
    return true;
  }

  void stop() {
    ioc_.stop();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
    threads_.clear();
  }

  std::uint64_t in_flight() const { return shared_->in_flight.load(); }
  std::uint64_t connections() const { return shared_->connections.load(); }

  std::vector<HttpCounts> counts() const {
    std::vector<HttpCounts> out;
    std::lock_guard lock(shared_->counts_mutex);
    for (const auto& [key, n] : shared_->counts) out.push_back({key.first, key.second, n});
    return out;
  }

 private:
  void do_accept() {
    acceptor_.async_accept(net::make_strand(ioc_), beast::bind_front_handler(&Impl::on_accept, this));
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
      spdlog::warn("http: accept failed: {}", ec.message());
      if (ec == net::error::no_descriptors) {
        // Out of file descriptors: give connections time to close before accepting again.
        auto timer = std::make_shared<net::steady_timer>(acceptor_.get_executor(), std::chrono::milliseconds{50});
        timer->async_wait([this, timer](beast::error_code) {
          if (acceptor_.is_open()) do_accept();
        });
        return;
      }
      return do_accept();
    }
    beast::error_code opt_ec;
    socket.set_option(tcp::no_delay(true), opt_ec);
    std::make_shared<Session>(std::move(socket), shared_)->run();
    do_accept();
  }

  net::io_context ioc_;
  tcp::acceptor acceptor_;
  std::shared_ptr<Shared> shared_;
  tcp::endpoint bound_;
  std::vector<std::thread> threads_;
};

HttpServer::HttpServer(HttpServerOptions options, HttpHandler handler)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler))) {}
HttpServer::~HttpServer() = default;

void HttpServer::start() {
  impl_->start();
}
std::string HttpServer::local_address() const {
  return impl_->local_address();
}
void HttpServer::stop_accepting() {
  impl_->stop_accepting();
}
bool HttpServer::wait_idle(std::chrono::steady_clock::time_point deadline) {
  return impl_->wait_idle(deadline);
}
std::uint64_t HttpServer::requests_in_flight() const {
  return impl_->in_flight();
}
std::uint64_t HttpServer::connections() const {
  return impl_->connections();
}
void HttpServer::stop() {
  impl_->stop();
}
std::vector<HttpCounts> HttpServer::counts() const {
  return impl_->counts();
}

}  // namespace ferry::app
