// The io thread, one nsqd connection (handshake, TLS, heartbeats, framing) and a tiny
// HTTP GET for nsqlookupd.

#include <fcntl.h>
#include <pthread.h>
#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>

#include "client.hpp"
#include "tls.hpp"

namespace ferry::nsq {

namespace json = boost::json;

// ---------------------------------------------------------------------------------------
// Engine

Engine::Engine(Options options)
    : options_(std::move(options)),
      tls_(options_.tls ? std::make_unique<TlsContext>(options_) : nullptr),
      work_(asio::make_work_guard(io_)) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ferry-nsq-io");
    while (true) {
      try {
        io_.run();
        return;
      } catch (const std::exception& e) {  // a handler threw: log it and keep serving the others
        spdlog::error("nsq: an io handler threw: {}", e.what());
      }
    }
  });
}

Engine::~Engine() {
  stop();
}

void Engine::post(std::function<void()> fn) {
  asio::post(io_, std::move(fn));
}

bool Engine::run(const std::function<void()>& fn) {
  if (on_io_thread()) {
    fn();
    return true;
  }
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return false;
  }
  auto done = std::make_shared<std::promise<void>>();
  auto future = done->get_future();
  asio::post(io_, [&fn, done] {
    fn();
    done->set_value();
  });
  while (future.wait_for(Ms{50}) != std::future_status::ready) {
    std::lock_guard lock(mutex_);
    if (stopped_) return false;
  }
  return true;
}

void Engine::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
  }
  work_.reset();
  io_.stop();
  if (thread_.joinable()) {
    if (thread_.get_id() == std::this_thread::get_id())
      thread_.detach();
    else
      thread_.join();
  }
}

// ---------------------------------------------------------------------------------------
// Connection

Connection::Connection(Engine& engine, const Options& options, Endpoint endpoint, Ms msg_timeout, std::string role)
    : engine_(engine),
      options_(options),
      endpoint_(std::move(endpoint)),
      msg_timeout_(msg_timeout),
      role_(std::move(role)),
      resolver_(engine.io()),
      socket_(engine.io()),
      deadline_(engine.io()),
      liveness_(engine.io()),
      reader_(options.max_frame_size()) {}

Connection::~Connection() = default;

std::string Connection::describe() const {
  return "nsqd " + endpoint_.str();
}

void Connection::start(ReadyHandler ready, FrameHandler frame, ClosedHandler closed) {
  on_ready_ = std::move(ready);
  on_frame_ = std::move(frame);
  on_closed_ = std::move(closed);
  deadline_.expires_after(options_.connect_timeout);
  deadline_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (ec || self->state_ == State::ready || self->state_ == State::draining || self->state_ == State::closed) return;
    self->fail({Errc::unavailable, "timed out after " + std::to_string(self->options_.connect_timeout.count()) +
                                       "ms connecting to " + self->describe()});
  });
  resolver_.async_resolve(
      endpoint_.host, std::to_string(endpoint_.port),
      [self = shared_from_this()](const boost::system::error_code& ec, const tcp::resolver::results_type& results) {
        if (self->state_ == State::closed) return;
        if (ec) {
          self->fail({Errc::unavailable, "cannot resolve " + self->endpoint_.host + ": " + ec.message()});
          return;
        }
        asio::async_connect(self->socket_, results, [self](const boost::system::error_code& ec2, const tcp::endpoint&) {
          if (self->state_ == State::closed) return;
          if (ec2) {
            self->fail({Errc::unavailable, "cannot connect to " + self->describe() + " (" + ec2.message() + ")"});
            return;
          }
          self->on_connected();
        });
      });
}

void Connection::on_connected() {
  boost::system::error_code ignored;
  // Connecting on loopback to a port nobody listens on can connect the socket to itself
  // (TCP simultaneous open, when the kernel picks that very port as the local one): that
  // is "connection refused", and holding the port would keep the nsqd from starting.
  if (socket_.local_endpoint(ignored) == socket_.remote_endpoint(ignored)) {
    fail({Errc::unavailable, "cannot connect to " + describe() + " (connection refused)"});
    return;
  }
  // A process that forks and execs must not take the connection with it.
  const int fd = socket_.native_handle();
  ::fcntl(fd, F_SETFD, ::fcntl(fd, F_GETFD) | FD_CLOEXEC);
  socket_.set_option(tcp::no_delay(true), ignored);
  reached_ = true;
  state_ = State::identifying;
  json::object identify;
  identify["client_id"] = options_.client_id;
  identify["hostname"] = options_.hostname;
  identify["user_agent"] = "ferry/" FERRY_NSQ_VERSION;
  identify["feature_negotiation"] = true;
  identify["heartbeat_interval"] = options_.heartbeat.count() > 0 ? options_.heartbeat.count() : -1;
  // nsqd's default buffer, flushed to consumers within 25 ms rather than its default 250 ms.
  identify["output_buffer_size"] = 16384;
  identify["output_buffer_timeout"] = 25;
  if (msg_timeout_.count() > 0) identify["msg_timeout"] = msg_timeout_.count();
  if (options_.tls) identify["tls_v1"] = true;
  std::string hello(kMagicV2);
  hello += encode_command("IDENTIFY", json::serialize(identify));
  last_read_ = SteadyClock::now();
  send(std::move(hello));
  read();
}

void Connection::read() {
  auto on_read = [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
    if (self->state_ == State::closed) return;
    if (ec) {
      if (self->state_ == State::draining)
        self->close({});
      else if (self->state_ == State::confirming_tls)  // TLS 1.3: nsqd checks a client certificate now
        self->fail(
            {Errc::unavailable, self->describe() + " ended the TLS connection before its OK (" + ec.message() + ")" +
                                    (self->options_.tls_cert.empty()
                                         ? "; if nsqd wants a client certificate, give it as tls_cert= and tls_key="
                                         : "")});
      else
        self->fail({Errc::unavailable, "connection to " + self->describe() + " lost (" + ec.message() + ")"});
      return;
    }
    self->on_read(n);
  };
  if (tls_)
    tls_->stream.async_read_some(asio::buffer(read_buffer_), std::move(on_read));
  else
    socket_.async_read_some(asio::buffer(read_buffer_), std::move(on_read));
}

void Connection::on_read(std::size_t n) {
  last_read_ = SteadyClock::now();
  reader_.feed(std::string_view(read_buffer_.data(), n));
  while (auto frame = reader_.next()) {
    handle(*frame);
    if (state_ == State::closed) return;
  }
  if (reader_.failed()) {
    fail({Errc::protocol, describe() + " broke the NSQ protocol: " + reader_.error()});
    return;
  }
  if (state_ == State::securing) return;  // the TLS handshake reads next, then read() again
  read();
}

void Connection::handle(Frame& frame) {
  if (frame.type == FrameType::response && frame.data == kHeartbeat) {
    send(encode_command("NOP"));
    return;
  }
  if (state_ == State::identifying || state_ == State::confirming_tls || state_ == State::authenticating) {
    handshake_frame(frame);
    return;
  }
  if (frame.type == FrameType::error) frame.data += tls_hint(frame.data);
  if (on_frame_) on_frame_(frame);
}

std::string Connection::tls_hint(std::string_view error) const {
  // nsqd --tls-required refuses every command but IDENTIFY on a plain connection, fatally.
  if (tls_ || error.find("TLS required") == std::string_view::npos) return {};
  return "; " + describe() +
         " accepts only TLS connections: add tls=true to the nsq:// URL (and tls_ca=<file> "
         "unless a CA the system trusts signed its certificate)";
}

void Connection::handshake_frame(Frame& frame) {
  if (frame.type == FrameType::error) {
    const char* command = state_ == State::identifying ? "IDENTIFY" : state_ == State::confirming_tls ? "TLS" : "AUTH";
    fail({errc_for(frame.data), describe() + " refused " + command + ": " + frame.data + tls_hint(frame.data)});
    return;
  }
  if (frame.type != FrameType::response) {
    fail({Errc::protocol, describe() + " sent a message before the handshake finished"});
    return;
  }
  if (state_ == State::identifying) {
    bool tls_offered = false;
    if (frame.data != kOk) {
      try {
        auto value = json::parse(frame.data);
        const auto& o = value.as_object();
        if (auto* v = o.if_contains("max_rdy_count"); v && v->is_int64())
          negotiated_.max_rdy_count = static_cast<int>(v->as_int64());
        if (auto* v = o.if_contains("msg_timeout"); v && v->is_int64()) negotiated_.msg_timeout = Ms{v->as_int64()};
        if (auto* v = o.if_contains("max_msg_timeout"); v && v->is_int64())
          negotiated_.max_msg_timeout = Ms{v->as_int64()};
        if (auto* v = o.if_contains("auth_required"); v && v->is_bool()) negotiated_.auth_required = v->as_bool();
        if (auto* v = o.if_contains("version"); v && v->is_string()) negotiated_.version = std::string(v->as_string());
        if (auto* v = o.if_contains("tls_v1"); v && v->is_bool()) tls_offered = v->as_bool();
      } catch (const std::exception& e) {
        fail({Errc::protocol, describe() + " answered IDENTIFY with neither OK nor JSON: " + e.what()});
        return;
      }
    }
    if (tls_offered && !options_.tls) {
      fail({Errc::protocol, describe() + " turned TLS on although ferry did not ask for it (tls_v1)"});
      return;
    }
    if (options_.tls) {
      if (!tls_offered) {
        // Never fall back to plain text when the URL asked for TLS.
        fail({Errc::unavailable, describe() + " does not offer TLS, which the URL asks for (tls=true): start nsqd with "
                                              "--tls-cert and --tls-key, or drop the tls options from the URL"});
        return;
      }
      start_tls();
      return;
    }
  } else if (state_ == State::confirming_tls) {
    if (frame.data != kOk) {
      fail({Errc::protocol, describe() + " answered the TLS handshake with '" + frame.data + "' instead of OK"});
      return;
    }
  }
  if (state_ != State::authenticating) {
    identified();
    return;
  }
  // The AUTH answer: ready.
  become_ready();
}

void Connection::identified() {
  if (negotiated_.auth_required) {
    if (options_.auth_secret.empty()) {
      fail({Errc::unavailable, describe() + " requires AUTH; give the secret in the URL as auth_secret=..."});
      return;
    }
    state_ = State::authenticating;
    send(encode_command("AUTH", options_.auth_secret));
    return;
  }
  become_ready();
}

void Connection::become_ready() {
  state_ = State::ready;
  deadline_.cancel();
  arm_liveness();
  if (auto ready = std::move(on_ready_)) {
    on_ready_ = nullptr;
    ready({});
  }
}

// As the spec has it: after an IDENTIFY answer with "tls_v1": true the client starts the
// TLS handshake at once, and nsqd answers OK over TLS when it is done.
void Connection::start_tls() {
  if (reader_.buffered() != 0) {  // nsqd sends nothing more until the client's hello
    fail({Errc::protocol, describe() + " sent data after its IDENTIFY answer, before the TLS handshake"});
    return;
  }
  if (!engine_.tls()) {
    fail({Errc::internal, "no TLS context for " + describe()});
    return;
  }
  state_ = State::securing;
  tls_ = std::make_unique<TlsStream>(socket_, *engine_.tls(), endpoint_.host);
  tls_->stream.async_handshake(
      asio::ssl::stream_base::client, [self = shared_from_this()](const boost::system::error_code& ec) {
        if (self->state_ == State::closed) return;
        if (ec) {
          self->fail({Errc::unavailable, "TLS handshake with " + self->describe() +
                                             " failed: " + tls_failure(*self->tls_, ec, self->options_)});
          return;
        }
        self->negotiated_.tls = true;
        self->state_ = State::confirming_tls;
        self->write();
        self->read();
      });
}

void Connection::arm_liveness() {
  if (options_.heartbeat.count() <= 0) return;
  liveness_.expires_after(options_.heartbeat);
  liveness_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (ec || self->state_ != State::ready) return;
    const auto silent = SteadyClock::now() - self->last_read_;
    if (silent > 2 * self->options_.heartbeat + Ms{1000}) {
      self->fail({Errc::unavailable, self->describe() + " sent nothing, not even a heartbeat, for " +
                                         std::to_string(std::chrono::duration_cast<Ms>(silent).count()) +
                                         "ms; closing the connection"});
      return;
    }
    self->arm_liveness();
  });
}

void Connection::send(std::string bytes) {
  if (state_ == State::closed || shutdown_after_write_) return;
  if (pending_.empty())
    pending_ = std::move(bytes);
  else
    pending_ += bytes;
  write();
}

void Connection::write() {
  if (write_in_progress_ || state_ == State::closed || state_ == State::connecting || state_ == State::securing) return;
  if (pending_.empty()) {
    if (shutdown_after_write_) {
      // Over TLS too: the TCP half-close ends the session (nsqd reads it as the end of the
      // stream); a TLS close_notify would need a read of its own while ours is pending.
      boost::system::error_code ignored;
      socket_.shutdown(tcp::socket::shutdown_send, ignored);
    }
    return;
  }
  writing_.swap(pending_);
  pending_.clear();
  write_in_progress_ = true;
  auto on_written = [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
    self->write_in_progress_ = false;
    if (self->state_ == State::closed) return;
    if (ec) {
      self->fail({Errc::unavailable, "writing to " + self->describe() + " failed (" + ec.message() + ")"});
      return;
    }
    if (self->writing_.capacity() > (1u << 20))
      std::string().swap(self->writing_);
    else
      self->writing_.clear();
    self->write();
  };
  if (tls_)
    asio::async_write(tls_->stream, asio::buffer(writing_), std::move(on_written));
  else
    asio::async_write(socket_, asio::buffer(writing_), std::move(on_written));
}

void Connection::close_gracefully() {
  if (state_ == State::closed || state_ == State::draining) return;
  if (state_ != State::ready) {
    close({});
    return;
  }
  state_ = State::draining;
  shutdown_after_write_ = true;
  liveness_.cancel();
  deadline_.expires_after(Ms{2000});
  deadline_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
    if (!ec) self->close({});
  });
  write();
}

void Connection::close(const Status& reason) {
  fail(reason);
}

void Connection::fail(const Status& reason) {
  if (state_ == State::closed) return;
  state_ = State::closed;
  boost::system::error_code ignored;
  deadline_.cancel();
  liveness_.cancel();
  resolver_.cancel();
  socket_.close(ignored);
  pending_.clear();
  // Handlers run from the queue, never from inside the caller's own call into us.
  if (auto ready = std::move(on_ready_)) {
    on_ready_ = nullptr;
    on_closed_ = nullptr;
    on_frame_ = nullptr;
    asio::post(engine_.io(), [ready = std::move(ready), reason] { ready(reason); });
    return;
  }
  on_frame_ = nullptr;
  if (auto closed = std::move(on_closed_)) {
    on_closed_ = nullptr;
    asio::post(engine_.io(), [closed = std::move(closed), reason] { closed(reason); });
  }
}

// ---------------------------------------------------------------------------------------
// HTTP GET for nsqlookupd

namespace {

class HttpRequest : public std::enable_shared_from_this<HttpRequest> {
 public:
  HttpRequest(Engine& engine, Endpoint endpoint, std::string method, std::string target, Ms timeout,
              std::function<void(const Status&, int, std::string)> done)
      : endpoint_(std::move(endpoint)),
        method_(std::move(method)),
        target_(std::move(target)),
        timeout_(timeout),
        resolver_(engine.io()),
        socket_(engine.io()),
        timer_(engine.io()),
        done_(std::move(done)) {}

  void start() {
    timer_.expires_after(timeout_);
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec)
        self->finish({Errc::timeout, "http://" + self->endpoint_.str() + " did not answer within " +
                                         std::to_string(self->timeout_.count()) + "ms"});
    });
    resolver_.async_resolve(
        endpoint_.host, std::to_string(endpoint_.port),
        [self = shared_from_this()](const boost::system::error_code& ec, const tcp::resolver::results_type& results) {
          if (ec) return self->finish({Errc::unavailable, "cannot resolve " + self->endpoint_.host});
          asio::async_connect(
              self->socket_, results, [self](const boost::system::error_code& ec2, const tcp::endpoint&) {
                if (ec2)
                  return self->finish({Errc::unavailable, "cannot connect to http://" + self->endpoint_.str() + " (" +
                                                              ec2.message() + ")"});
                self->send();
              });
        });
  }

 private:
  void send() {
    request_ = method_ + " " + target_ + " HTTP/1.0\r\nHost: " + endpoint_.str() +
               "\r\nAccept: application/vnd.nsq; version=1.0\r\nUser-Agent: ferry/" FERRY_NSQ_VERSION
               "\r\nContent-Length: 0\r\n\r\n";
    asio::async_write(
        socket_, asio::buffer(request_), [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
          if (ec) return self->finish({Errc::unavailable, "writing to http://" + self->endpoint_.str() + " failed"});
          self->read();
        });
  }

  void read() {
    socket_.async_read_some(
        asio::buffer(buffer_), [self = shared_from_this()](const boost::system::error_code& ec, std::size_t n) {
          self->response_.append(self->buffer_.data(), n);
          if (self->response_.size() > (8u << 20))
            return self->finish({Errc::protocol, "http://" + self->endpoint_.str() + " answered too much"});
          if (ec == asio::error::eof) return self->finish({});
          if (ec)
            return self->finish(
                {Errc::unavailable, "reading from http://" + self->endpoint_.str() + " failed (" + ec.message() + ")"});
          self->read();
        });
  }

  void finish(const Status& s) {
    if (!done_) return;
    auto done = std::move(done_);
    done_ = nullptr;
    timer_.cancel();
    boost::system::error_code ignored;
    socket_.close(ignored);
    resolver_.cancel();
    if (!s.ok()) return done(s, 0, {});
    // "HTTP/1.x CODE reason\r\n" headers "\r\n\r\n" body
    auto space = response_.find(' ');
    auto split = response_.find("\r\n\r\n");
    if (response_.compare(0, 5, "HTTP/") != 0 || space == std::string::npos || split == std::string::npos)
      return done({Errc::protocol, endpoint_.str() + " sent something other than HTTP"}, 0, {});
    int code = std::atoi(response_.c_str() + space + 1);
    done({}, code, response_.substr(split + 4));
  }

  Endpoint endpoint_;
  std::string method_;
  std::string target_;
  Ms timeout_;
  tcp::resolver resolver_;
  tcp::socket socket_;
  asio::steady_timer timer_;
  std::function<void(const Status&, int, std::string)> done_;
  std::string request_;
  std::string response_;
  std::array<char, 16384> buffer_{};
};

}  // namespace

void http_request(Engine& engine, const Endpoint& endpoint, const std::string& method, const std::string& target,
                  Ms timeout, std::function<void(const Status&, int, std::string)> done) {
  std::make_shared<HttpRequest>(engine, endpoint, method, target, timeout, std::move(done))->start();
}

void http_get(Engine& engine, const Endpoint& endpoint, const std::string& target, Ms timeout,
              std::function<void(const Status&, int, std::string)> done) {
  http_request(engine, endpoint, "GET", target, timeout, std::move(done));
}

std::vector<Endpoint> parse_producers(std::string_view text, bool http_ports) {
  std::vector<Endpoint> out;
  try {
    auto value = json::parse(text);
    const json::object* o = &value.as_object();
    if (auto* data = o->if_contains("data"); data && data->is_object()) o = &data->as_object();
    const auto* producers = o->if_contains("producers");
    if (!producers) return out;
    for (const auto& p : producers->as_array()) {
      const auto& po = p.as_object();
      Endpoint e;
      if (auto* a = po.if_contains("broadcast_address"); a && a->is_string())
        e.host = std::string(a->as_string());
      else if (auto* b = po.if_contains("address"); b && b->is_string())
        e.host = std::string(b->as_string());
      e.port = static_cast<int>(po.at(http_ports ? "http_port" : "tcp_port").to_number<std::int64_t>());
      if (!e.host.empty() && e.port > 0 && e.port < 65536) out.push_back(std::move(e));
    }
  } catch (const std::exception& e) {
    throw Error(Errc::protocol, std::string("nsqlookupd answered with unexpected JSON: ") + e.what());
  }
  return out;
}

}  // namespace ferry::nsq
