// The NSQ test peer. See nsq_peer.hpp for what it implements.

#include "nsq_peer.hpp"

#include <fcntl.h>
#include <pthread.h>

#include <atomic>
#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/json.hpp>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>
#include <unordered_map>

#include "frame.hpp"

namespace ferry::nsq_peer {

class Client;

namespace {

namespace asio = boost::asio;
namespace json = boost::json;
using tcp = asio::ip::tcp;
using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;
using nsq::Command;
using nsq::FrameType;
using nsq::MessageId;

constexpr const char* kVersion = "1.3.0-ferry-test-peer";
constexpr Ms kTick{5};

// Keeps the peer's sockets out of processes the test starts (ferry serve would otherwise
// inherit the listening socket and hold the port across a restart).
void close_on_exec(int fd) {
  ::fcntl(fd, F_SETFD, ::fcntl(fd, F_GETFD) | FD_CLOEXEC);
}

std::map<std::string, std::string> parse_query(std::string_view query) {
  std::map<std::string, std::string> out;
  while (!query.empty()) {
    auto amp = query.find('&');
    auto item = query.substr(0, amp);
    auto eq = item.find('=');
    out.emplace(std::string(item.substr(0, eq)), eq == std::string_view::npos ? "" : std::string(item.substr(eq + 1)));
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return out;
}

// A minimal HTTP/1.x server: one request per connection, answered and closed.
class HttpServer {
 public:
  using Handler = std::function<std::pair<int, std::string>(const std::string& path,
                                                            const std::map<std::string, std::string>& query)>;

  HttpServer(asio::io_context& io, const std::string& host, int port, Handler handler)
      : acceptor_(io), handler_(std::move(handler)) {
    tcp::endpoint endpoint(asio::ip::make_address(host), static_cast<unsigned short>(port));
    acceptor_.open(endpoint.protocol());
    close_on_exec(acceptor_.native_handle());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(endpoint);
    acceptor_.listen();
    accept();
  }

  int port() const { return acceptor_.local_endpoint().port(); }
  void close() {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
  }

 private:
  struct Session : std::enable_shared_from_this<Session> {
    explicit Session(tcp::socket s, Handler& h) : socket(std::move(s)), handler(h) {}
    tcp::socket socket;
    Handler& handler;
    std::string request;
    std::string response;
    std::array<char, 4096> buffer{};

    void read() {
      socket.async_read_some(asio::buffer(buffer),
                             [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                               if (ec) return;
                               self->request.append(self->buffer.data(), n);
                               if (self->request.size() > 65536) return;
                               if (self->request.find("\r\n\r\n") == std::string::npos) return self->read();
                               self->answer();
                             });
    }

    void answer() {
      // "GET /path?query HTTP/1.1"
      auto first = request.find(' ');
      auto second = request.find(' ', first + 1);
      std::string target = request.substr(first + 1, second - first - 1);
      auto q = target.find('?');
      std::string path = target.substr(0, q);
      auto query = q == std::string::npos ? std::map<std::string, std::string>{} : parse_query(target.substr(q + 1));
      auto [code, body] = handler(path, query);
      const char* reason = code == 200 ? "OK" : code == 404 ? "Not Found" : "Error";
      response = "HTTP/1.1 " + std::to_string(code) + " " + reason +
                 "\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: " + std::to_string(body.size()) +
                 "\r\nConnection: close\r\n\r\n" + body;
      asio::async_write(socket, asio::buffer(response),
                        [self = shared_from_this()](boost::system::error_code, std::size_t) {
                          boost::system::error_code ignored;
                          self->socket.shutdown(tcp::socket::shutdown_both, ignored);
                          self->socket.close(ignored);
                        });
    }
  };

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec) return;
      close_on_exec(socket.native_handle());
      std::make_shared<Session>(std::move(socket), handler_)->read();
      accept();
    });
  }

  tcp::acceptor acceptor_;
  Handler handler_;
};

struct Msg {
  MessageId id{};
  std::string body;
  std::int64_t timestamp_ns = 0;
  std::uint16_t attempts = 0;
};
using MsgPtr = std::shared_ptr<Msg>;

struct Flight {
  MsgPtr msg;
  std::weak_ptr<Client> client;
  SteadyClock::time_point deadline{};
  SteadyClock::time_point delivered_at{};
};

struct Channel {
  std::string name;
  bool ephemeral = false;
  std::deque<MsgPtr> queue;
  std::multimap<SteadyClock::time_point, MsgPtr> deferred;
  std::unordered_map<std::string, Flight> in_flight;
  std::vector<std::weak_ptr<Client>> clients;
  std::size_t next_client = 0;
  std::uint64_t message_count = 0, requeue_count = 0, timeout_count = 0, finish_count = 0;
};

struct Topic {
  std::string name;
  std::map<std::string, std::unique_ptr<Channel>> channels;
  std::deque<std::pair<MsgPtr, Ms>> held;  // while there is no channel
  std::uint64_t message_count = 0;
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string id_string(const MessageId& id) {
  return std::string(id.data(), id.size());
}

}  // namespace

// ---------------------------------------------------------------------------------------

class Peer::Impl {
 public:
  explicit Impl(PeerOptions o) : options(std::move(o)), tick(io) {
    work.emplace(asio::make_work_guard(io));
    thread = std::thread([this] {
      pthread_setname_np(pthread_self(), "nsq-peer-io");
      io.run();
    });
  }

  ~Impl() {
    call([this] { shutdown(); });
    work.reset();
    io.stop();
    thread.join();
  }

  template <typename Fn>
  void call(Fn fn) {
    if (io.get_executor().running_in_this_thread()) {
      fn();
      return;
    }
    std::promise<void> done;
    std::exception_ptr error;
    asio::post(io, [&] {
      try {
        fn();
      } catch (...) {
        error = std::current_exception();
      }
      done.set_value();
    });
    done.get_future().wait();
    if (error) std::rethrow_exception(error);
  }

  // All below: io thread.
  void startup();
  void shutdown();
  void accept();
  void on_tick();
  void on_command(Client& client, Command& command);
  void remove_client(const std::shared_ptr<Client>& client);
  Topic& topic_for(const std::string& name);
  Channel& channel_for(Topic& topic, const std::string& name);
  void put(Topic& topic, std::vector<std::string> bodies, Ms defer);
  void enqueue(Channel& channel, MsgPtr msg, Ms defer);
  void dispatch(Channel& channel);
  PeerStats collect() const;
  std::string stats_json() const;

  PeerOptions options;
  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::thread thread;
  asio::steady_timer tick;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::unique_ptr<HttpServer> http;
  std::map<std::string, std::unique_ptr<Topic>> topics_by_name;
  std::set<std::shared_ptr<Client>> clients;
  std::uint64_t next_message = 0;
  bool serving = false;
  int bound_port = 0;
  int bound_http_port = -1;
  std::uint64_t accepted = 0;
  std::uint64_t heartbeat_disconnects = 0;
  std::uint64_t over_rdy = 0;
  std::uint64_t tls_connections = 0;
  bool hung = false;                        // set_silent()
  std::unique_ptr<asio::ssl::context> tls;  // when options.tls_cert is set

  mutable std::mutex names_mutex;  // topic_names, read by other threads
  std::set<std::string> topic_names;
};

class Client : public std::enable_shared_from_this<Client> {
 public:
  enum class State { init, subscribed, closing };

  Client(Peer::Impl& peer, tcp::socket socket)
      : peer_(peer), socket_(std::move(socket)), reader_(65536, peer.options.max_body_size) {}

  void start() {
    boost::system::error_code ignored;
    socket_.set_option(tcp::no_delay(true), ignored);
    heartbeat = peer_.options.default_heartbeat;
    msg_timeout = peer_.options.msg_timeout;
    last_read = SteadyClock::now();
    next_heartbeat = last_read + heartbeat;
    read();
  }

  bool ready_for_messages() const {
    return !closed && !closing_after_write && !upgrading() && state == State::subscribed && in_flight < rdy;
  }

  bool secure() const { return tls_ != nullptr && !handshaking_; }
  bool upgrading() const { return tls_pending_ || handshaking_; }

  // After the IDENTIFY answer now queued is written: the server side of the TLS handshake,
  // then OK over TLS (nsqd's order). Nothing is read or written in between.
  void upgrade_to_tls() {
    tls_pending_ = true;
    if (!writing_now) start_tls();
  }

  void send_response(std::string_view data) { send(nsq::encode_frame(FrameType::response, data)); }

  // Sends an error frame; a fatal one closes the connection once it is written.
  void send_error(const std::string& text, bool fatal) {
    send(nsq::encode_frame(FrameType::error, text));
    if (fatal) {
      closing_after_write = true;
      if (!writing_now) finish();
    }
  }

  void send(std::string bytes) {
    if (closed) return;
    out += bytes;
    write();
  }

  void close() {
    if (closed) return;
    closed = true;
    tls_pending_ = false;
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  State state = State::init;
  bool identified = false;
  bool authed = false;
  bool closed = false;
  bool closing_after_write = false;
  int rdy = 0;
  int in_flight = 0;
  Ms heartbeat{0};
  Ms msg_timeout{0};
  SteadyClock::time_point last_read{};
  SteadyClock::time_point next_heartbeat{};
  std::string topic;
  std::string channel;

 private:
  void read() {
    auto on_read = [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
      if (self->closed) return;
      if (ec) {
        self->peer_.remove_client(self);
        return;
      }
      self->last_read = SteadyClock::now();
      self->reader_.feed(std::string_view(self->buffer_.data(), n));
      while (!self->closing_after_write && !self->closed && !self->upgrading()) {
        auto command = self->reader_.next();
        if (!command) break;
        self->peer_.on_command(*self, *command);
      }
      if (self->closed) return;
      if (self->reader_.failed()) {
        self->send_error(self->reader_.error(), true);
        return;
      }
      if (!self->closing_after_write && !self->upgrading()) self->read();
    };
    if (tls_)
      tls_->async_read_some(asio::buffer(buffer_), std::move(on_read));
    else
      socket_.async_read_some(asio::buffer(buffer_), std::move(on_read));
  }

  void write() {
    if (writing_now || out.empty() || closed || upgrading()) return;
    writing_.swap(out);
    out.clear();
    writing_now = true;
    auto on_written = [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
      self->writing_now = false;
      self->writing_.clear();
      if (self->closed) return;
      if (ec) {
        self->peer_.remove_client(self);
        return;
      }
      if (self->tls_pending_)
        self->start_tls();
      else if (!self->out.empty())
        self->write();
      else if (self->closing_after_write)
        self->finish();
    };
    if (tls_)
      asio::async_write(*tls_, asio::buffer(writing_), std::move(on_written));
    else
      asio::async_write(socket_, asio::buffer(writing_), std::move(on_written));
  }

  void start_tls() {
    tls_pending_ = false;
    handshaking_ = true;
    tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, *peer_.tls);
    tls_->async_handshake(asio::ssl::stream_base::server, [self = shared_from_this()](boost::system::error_code ec) {
      self->handshaking_ = false;
      if (self->closed) return;
      if (ec) {  // a client that does not trust the certificate, or has none when one is wanted
        self->peer_.remove_client(self);
        return;
      }
      ++self->peer_.tls_connections;
      self->send_response(nsq::kOk);
      self->read();
    });
  }

  void finish() {
    auto self = shared_from_this();
    peer_.remove_client(self);
  }

  Peer::Impl& peer_;
  tcp::socket socket_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;  // over socket_, once upgraded
  bool tls_pending_ = false;
  bool handshaking_ = false;
  nsq::CommandReader reader_;
  std::array<char, 65536> buffer_{};
  std::string out;
  std::string writing_;
  bool writing_now = false;
};

void Peer::Impl::startup() {
  if (serving) return;
  if (!options.tls_cert.empty() && !tls) {
    auto context = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                         asio::ssl::context::no_sslv3);
    context->use_certificate_chain_file(options.tls_cert);
    context->use_private_key_file(options.tls_key, asio::ssl::context::pem);
    if (!options.tls_client_ca.empty()) {
      context->load_verify_file(options.tls_client_ca);
      context->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
    }
    tls = std::move(context);
  }
  tcp::endpoint endpoint(asio::ip::make_address(options.host), static_cast<unsigned short>(options.port));
  acceptor = std::make_unique<tcp::acceptor>(io);
  acceptor->open(endpoint.protocol());
  close_on_exec(acceptor->native_handle());
  acceptor->set_option(tcp::acceptor::reuse_address(true));
  acceptor->bind(endpoint);
  acceptor->listen();
  bound_port = acceptor->local_endpoint().port();
  options.port = bound_port;
  if (options.http_port >= 0) {
    http = std::make_unique<HttpServer>(
        io, options.host, options.http_port,
        [this](const std::string& path, const std::map<std::string, std::string>& query) {
          using Answer = std::pair<int, std::string>;
          if (path == "/ping") return Answer{200, "OK"};
          if (path == "/info") return Answer{200, json::serialize(json::object{{"version", kVersion}})};
          if (path == "/stats") return Answer{200, stats_json()};
          if (path == "/topic/empty" || path == "/channel/empty") {
            auto t = query.find("topic");
            auto topic = t == query.end() ? topics_by_name.end() : topics_by_name.find(t->second);
            if (topic == topics_by_name.end()) return Answer{404, R"({"message":"TOPIC_NOT_FOUND"})"};
            if (path == "/topic/empty") {
              topic->second->held.clear();
              return Answer{200, ""};
            }
            auto c = query.find("channel");
            auto channel = c == query.end() ? topic->second->channels.end() : topic->second->channels.find(c->second);
            if (channel == topic->second->channels.end()) return Answer{404, R"({"message":"CHANNEL_NOT_FOUND"})"};
            Channel& ch = *channel->second;
            ch.queue.clear();
            ch.deferred.clear();
            for (auto& [id, flight] : ch.in_flight)
              if (auto client = flight.client.lock()) --client->in_flight;
            ch.in_flight.clear();
            return Answer{200, ""};
          }
          return Answer{404, R"({"message":"NOT_FOUND"})"};
        });
    bound_http_port = http->port();
    options.http_port = bound_http_port;
  }
  serving = true;
  accept();
  tick.expires_after(kTick);
  tick.async_wait([this](boost::system::error_code ec) {
    if (!ec) on_tick();
  });
}

void Peer::Impl::shutdown() {
  if (!serving) return;
  serving = false;
  boost::system::error_code ignored;
  acceptor->close(ignored);
  acceptor.reset();
  if (http) http->close();
  http.reset();
  tick.cancel();
  auto all = clients;
  for (auto& c : all) c->close();
  clients.clear();
  topics_by_name.clear();
  std::lock_guard lock(names_mutex);
  topic_names.clear();
}

void Peer::Impl::accept() {
  acceptor->async_accept([this](boost::system::error_code ec, tcp::socket socket) {
    if (ec || !serving) return;
    close_on_exec(socket.native_handle());
    ++accepted;
    auto client = std::make_shared<Client>(*this, std::move(socket));
    clients.insert(client);
    client->start();
    accept();
  });
}

void Peer::Impl::remove_client(const std::shared_ptr<Client>& client) {
  client->close();
  if (!clients.erase(client)) return;
  if (client->state == Client::State::init) return;
  auto t = topics_by_name.find(client->topic);
  if (t == topics_by_name.end()) return;
  auto c = t->second->channels.find(client->channel);
  if (c == t->second->channels.end()) return;
  Channel& channel = *c->second;
  std::erase_if(channel.clients, [&](const std::weak_ptr<Client>& w) {
    auto p = w.lock();
    return !p || p == client;
  });
  // Its in-flight messages wait for their timeout, as in nsqd.
  if (channel.ephemeral && channel.clients.empty())
    t->second->channels.erase(c);
  else
    dispatch(channel);
}

Topic& Peer::Impl::topic_for(const std::string& name) {
  auto& slot = topics_by_name[name];
  if (!slot) {
    slot = std::make_unique<Topic>();
    slot->name = name;
    std::lock_guard lock(names_mutex);
    topic_names.insert(name);
  }
  return *slot;
}

Channel& Peer::Impl::channel_for(Topic& topic, const std::string& name) {
  auto& slot = topic.channels[name];
  if (!slot) {
    slot = std::make_unique<Channel>();
    slot->name = name;
    slot->ephemeral = ends_with(name, nsq::kEphemeralSuffix);
    if (topic.channels.size() == 1) {  // the first channel receives what the topic held
      auto held = std::move(topic.held);
      topic.held.clear();
      for (auto& [msg, defer] : held) enqueue(*slot, msg, defer);
    }
  }
  return *slot;
}

void Peer::Impl::enqueue(Channel& channel, MsgPtr msg, Ms defer) {
  ++channel.message_count;
  if (defer.count() > 0)
    channel.deferred.emplace(SteadyClock::now() + defer, std::move(msg));
  else
    channel.queue.push_back(std::move(msg));
}

void Peer::Impl::put(Topic& topic, std::vector<std::string> bodies, Ms defer) {
  const auto now_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (auto& body : bodies) {
    auto msg = std::make_shared<Msg>();
    const std::string id = nsq::hex_id(++next_message);
    std::copy(id.begin(), id.end(), msg->id.begin());
    msg->body = std::move(body);
    msg->timestamp_ns = now_ns;
    ++topic.message_count;
    if (topic.channels.empty()) {
      topic.held.emplace_back(std::move(msg), defer);
      continue;
    }
    bool first = true;
    for (auto& [name, channel] : topic.channels) {
      // Every channel gets its own copy (attempts are counted per channel).
      enqueue(*channel, first ? msg : std::make_shared<Msg>(*msg), defer);
      first = false;
    }
  }
  for (auto& [name, channel] : topic.channels) dispatch(*channel);
}

void Peer::Impl::dispatch(Channel& channel) {
  const auto now = SteadyClock::now();
  while (!channel.queue.empty() && !channel.clients.empty()) {
    std::shared_ptr<Client> target;
    const std::size_t n = channel.clients.size();
    for (std::size_t i = 0; i < n; ++i) {
      auto candidate = channel.clients[(channel.next_client + i) % n].lock();
      if (candidate && candidate->ready_for_messages()) {
        target = std::move(candidate);
        channel.next_client = (channel.next_client + i + 1) % n;
        break;
      }
    }
    if (!target) return;
    MsgPtr msg = std::move(channel.queue.front());
    channel.queue.pop_front();
    if (msg->attempts < 65535) ++msg->attempts;
    ++target->in_flight;
    if (target->in_flight > target->rdy) ++over_rdy;
    channel.in_flight[id_string(msg->id)] = {msg, target, now + target->msg_timeout, now};
    nsq::WireMessage wire{msg->timestamp_ns, msg->attempts, msg->id, msg->body};
    target->send(nsq::encode_frame(FrameType::message, nsq::encode_message(wire)));
  }
}

void Peer::Impl::on_tick() {
  if (!serving) return;
  const auto now = SteadyClock::now();
  for (auto& [tname, topic] : topics_by_name) {
    for (auto& [cname, channel] : topic->channels) {
      bool changed = false;
      for (auto it = channel->in_flight.begin(); it != channel->in_flight.end();) {
        if (it->second.deadline > now) {
          ++it;
          continue;
        }
        if (auto c = it->second.client.lock()) --c->in_flight;
        channel->queue.push_back(std::move(it->second.msg));
        ++channel->timeout_count;
        it = channel->in_flight.erase(it);
        changed = true;
      }
      while (!channel->deferred.empty() && channel->deferred.begin()->first <= now) {
        channel->queue.push_back(std::move(channel->deferred.begin()->second));
        channel->deferred.erase(channel->deferred.begin());
        changed = true;
      }
      if (changed) dispatch(*channel);
    }
  }
  std::vector<std::shared_ptr<Client>> silent;
  for (auto& c : clients) {
    if (c->heartbeat.count() <= 0 || c->closed || hung) continue;
    if (now - c->last_read > 2 * c->heartbeat) {
      silent.push_back(c);
    } else if (now >= c->next_heartbeat) {
      c->send_response(nsq::kHeartbeat);
      c->next_heartbeat = now + c->heartbeat;
    }
  }
  for (auto& c : silent) {
    ++heartbeat_disconnects;
    remove_client(c);
  }
  tick.expires_after(kTick);
  tick.async_wait([this](boost::system::error_code ec) {
    if (!ec) on_tick();
  });
}

void Peer::Impl::on_command(Client& client, Command& command) {
  const auto& words = command.words;
  const std::string& name = words[0];
  auto fatal = [&](const std::string& text) { client.send_error(text, true); };
  auto parse_int = [](const std::string& text, long long& out) {
    if (text.empty() || text.size() > 18) return false;
    std::size_t i = text[0] == '-' ? 1 : 0;
    if (i == text.size()) return false;
    for (std::size_t j = i; j < text.size(); ++j)
      if (text[j] < '0' || text[j] > '9') return false;
    out = std::stoll(text);
    return true;
  };
  auto needs_auth = [&] {
    if (options.auth_secret.empty() || client.authed) return false;
    fatal("E_AUTH_FIRST AUTH required before " + name);
    return true;
  };
  auto find_flight = [&](const std::string& id) -> std::pair<Channel*, Flight*> {
    auto t = topics_by_name.find(client.topic);
    if (t == topics_by_name.end()) return {nullptr, nullptr};
    auto c = t->second->channels.find(client.channel);
    if (c == t->second->channels.end()) return {nullptr, nullptr};
    auto f = c->second->in_flight.find(id);
    if (f == c->second->in_flight.end() || f->second.client.lock().get() != &client) return {c->second.get(), nullptr};
    return {c->second.get(), &f->second};
  };

  if (name != "IDENTIFY" && options.tls_required && !client.secure())
    return fatal("E_INVALID cannot " + name + " in current state (TLS required)");

  if (name == "NOP") return;

  if (name == "IDENTIFY") {
    if (client.state != Client::State::init || client.identified)
      return fatal("E_INVALID cannot IDENTIFY in current state");
    json::object o;
    try {
      o = json::parse(command.body).as_object();
    } catch (const std::exception&) {
      return fatal("E_BAD_BODY IDENTIFY failed to decode JSON body");
    }
    auto int_field = [&](const char* key) -> long long {
      auto* v = o.if_contains(key);
      return v && v->is_int64() ? v->as_int64() : 0;
    };
    const long long heartbeat = int_field("heartbeat_interval");
    if (heartbeat == -1)
      client.heartbeat = Ms{0};
    else if (heartbeat == 0)
      client.heartbeat = options.default_heartbeat;
    else if (heartbeat >= 1000 && heartbeat <= options.max_heartbeat.count())
      client.heartbeat = Ms{heartbeat};
    else
      return fatal("E_BAD_BODY IDENTIFY heartbeat interval (" + std::to_string(heartbeat) + ") is invalid");
    client.next_heartbeat = SteadyClock::now() + client.heartbeat;
    // Accepted and ignored (the peer writes at once), but range-checked as nsqd does.
    const long long buffer_size = int_field("output_buffer_size");
    if (buffer_size != -1 && buffer_size != 0 && (buffer_size < 64 || buffer_size > 65536))
      return fatal("E_BAD_BODY IDENTIFY output buffer size (" + std::to_string(buffer_size) + ") is invalid");
    const long long buffer_timeout = int_field("output_buffer_timeout");
    if (buffer_timeout < -1 || buffer_timeout > 1000)
      return fatal("E_BAD_BODY IDENTIFY output buffer timeout (" + std::to_string(buffer_timeout) + ") is invalid");
    const long long timeout = int_field("msg_timeout");
    if (timeout != 0) {
      if (timeout < 1000 || timeout > options.max_msg_timeout.count())
        return fatal("E_BAD_BODY IDENTIFY msg timeout (" + std::to_string(timeout) + ") is invalid");
      client.msg_timeout = Ms{timeout};
    }
    client.identified = true;
    auto* negotiation = o.if_contains("feature_negotiation");
    if (!negotiation || !negotiation->is_bool() || !negotiation->as_bool()) return client.send_response(nsq::kOk);
    auto* tls_v1 = o.if_contains("tls_v1");
    const bool upgrade = tls && tls_v1 && tls_v1->is_bool() && tls_v1->as_bool();
    json::object answer{{"max_rdy_count", options.max_rdy_count},
                        {"version", kVersion},
                        {"max_msg_timeout", options.max_msg_timeout.count()},
                        {"msg_timeout", client.msg_timeout.count()},
                        {"tls_v1", upgrade},
                        {"deflate", false},
                        {"deflate_level", 0},
                        {"max_deflate_level", 6},
                        {"snappy", false},
                        {"sample_rate", 0},
                        {"auth_required", !options.auth_secret.empty()},
                        {"output_buffer_size", 16384},
                        {"output_buffer_timeout", 250}};
    client.send_response(json::serialize(answer));
    if (upgrade) client.upgrade_to_tls();
    return;
  }

  if (name == "AUTH") {
    if (client.state != Client::State::init) return fatal("E_INVALID cannot AUTH in current state");
    if (options.auth_secret.empty()) return fatal("E_AUTH_DISABLED AUTH disabled");
    if (client.authed) return fatal("E_INVALID AUTH already set");
    if (command.body != options.auth_secret) return fatal("E_UNAUTHORIZED AUTH no authorizations found");
    client.authed = true;
    return client.send_response(R"({"identity":"ferry-test","identity_url":"","permission_count":1})");
  }

  if (name == "SUB") {
    if (needs_auth()) return;
    if (client.state != Client::State::init) return fatal("E_INVALID cannot SUB in current state");
    if (words.size() < 3) return fatal("E_INVALID SUB insufficient number of parameters");
    if (!nsq::valid_nsq_name(words[1])) return fatal("E_BAD_TOPIC SUB topic name \"" + words[1] + "\" is not valid");
    if (!nsq::valid_nsq_name(words[2]))
      return fatal("E_BAD_CHANNEL SUB channel name \"" + words[2] + "\" is not valid");
    Topic& topic = topic_for(words[1]);
    Channel& channel = channel_for(topic, words[2]);
    client.state = Client::State::subscribed;
    client.topic = words[1];
    client.channel = words[2];
    client.rdy = 0;  // RDY 0 until the client says otherwise
    channel.clients.push_back(client.shared_from_this());
    return client.send_response(nsq::kOk);
  }

  if (name == "RDY") {
    if (client.state == Client::State::closing) return;  // ignored while closing, as nsqd does
    if (client.state != Client::State::subscribed) return fatal("E_INVALID cannot RDY in current state");
    long long count = 1;
    if (words.size() > 1 && !parse_int(words[1], count))
      return fatal("E_INVALID RDY could not parse count " + words[1]);
    if (count < 0 || count > options.max_rdy_count)
      return fatal("E_INVALID RDY count " + std::to_string(count) + " out of range 0-" +
                   std::to_string(options.max_rdy_count));
    client.rdy = static_cast<int>(count);
    auto [channel, flight] = find_flight("");
    if (channel) dispatch(*channel);
    return;
  }

  if (name == "FIN" || name == "REQ" || name == "TOUCH") {
    if (client.state != Client::State::subscribed && client.state != Client::State::closing)
      return fatal("E_INVALID cannot " + name + " in current state");
    if (words.size() < (name == "REQ" ? 3u : 2u)) return fatal("E_INVALID " + name + " insufficient number of params");
    if (words[1].size() != nsq::kMessageIdSize) return fatal("E_INVALID " + name + " invalid message ID");
    long long timeout = 0;
    if (name == "REQ") {
      if (!parse_int(words[2], timeout)) return fatal("E_INVALID REQ could not parse timeout " + words[2]);
      timeout = std::clamp<long long>(timeout, 0, options.max_req_timeout.count());
    }
    auto [channel, flight] = find_flight(words[1]);
    if (!flight) {
      const std::string code = name == "FIN" ? "E_FIN_FAILED" : name == "REQ" ? "E_REQ_FAILED" : "E_TOUCH_FAILED";
      return client.send_error(code + " " + name + " " + words[1] + " failed ID not in flight", false);
    }
    if (name == "TOUCH") {
      const auto now = SteadyClock::now();
      flight->deadline = std::min(now + client.msg_timeout, flight->delivered_at + options.max_msg_timeout);
      return;
    }
    MsgPtr msg = flight->msg;
    channel->in_flight.erase(words[1]);
    --client.in_flight;
    if (name == "FIN") {
      ++channel->finish_count;
    } else {
      ++channel->requeue_count;
      if (timeout > 0)
        channel->deferred.emplace(SteadyClock::now() + Ms{timeout}, std::move(msg));
      else
        channel->queue.push_back(std::move(msg));
    }
    dispatch(*channel);
    return;
  }

  if (name == "CLS") {
    if (client.state != Client::State::subscribed) return fatal("E_INVALID cannot CLS in current state");
    client.state = Client::State::closing;
    client.rdy = 0;
    return client.send_response(nsq::kCloseWait);
  }

  if (name == "PUB" || name == "DPUB" || name == "MPUB") {
    if (needs_auth()) return;
    if (words.size() < (name == "DPUB" ? 3u : 2u))
      return fatal("E_INVALID " + name + " insufficient number of parameters");
    if (!nsq::valid_nsq_name(words[1]))
      return fatal("E_BAD_TOPIC " + name + " topic name \"" + words[1] + "\" is not valid");
    long long defer = 0;
    if (name == "DPUB") {
      if (!parse_int(words[2], defer)) return fatal("E_INVALID DPUB could not parse timeout " + words[2]);
      if (defer < 0 || defer > options.max_req_timeout.count())
        return fatal("E_INVALID DPUB timeout " + std::to_string(defer) + " out of range 0-" +
                     std::to_string(options.max_req_timeout.count()));
    }
    std::vector<std::string> bodies;
    if (name == "MPUB") {
      try {
        bodies = nsq::parse_mpub_body(command.body, options.max_msg_size);
      } catch (const std::exception& e) {
        return fatal(e.what());
      }
    } else {
      if (command.body.empty()) return fatal("E_BAD_MESSAGE " + name + " invalid message body size 0");
      if (command.body.size() > options.max_msg_size)
        return fatal("E_BAD_MESSAGE " + name + " message too big " + std::to_string(command.body.size()) + " > " +
                     std::to_string(options.max_msg_size));
      bodies.push_back(std::move(command.body));
    }
    put(topic_for(words[1]), std::move(bodies), Ms{defer});
    return client.send_response(nsq::kOk);
  }

  fatal("E_INVALID invalid command " + name);
}

PeerStats Peer::Impl::collect() const {
  PeerStats out;
  out.clients = clients.size();
  out.connections_accepted = accepted;
  out.heartbeat_disconnects = heartbeat_disconnects;
  out.max_in_flight_seen_over_rdy = over_rdy;
  out.tls_connections = tls_connections;
  for (const auto& [tname, topic] : topics_by_name) {
    TopicStats t;
    t.name = tname;
    t.depth = topic->held.size();
    t.message_count = topic->message_count;
    for (const auto& [cname, channel] : topic->channels) {
      ChannelStats c;
      c.name = cname;
      c.depth = channel->queue.size();
      c.deferred = channel->deferred.size();
      c.in_flight = channel->in_flight.size();
      c.clients = channel->clients.size();
      c.message_count = channel->message_count;
      c.requeue_count = channel->requeue_count;
      c.timeout_count = channel->timeout_count;
      c.finish_count = channel->finish_count;
      t.channels.push_back(std::move(c));
    }
    out.topics.push_back(std::move(t));
  }
  return out;
}

std::string Peer::Impl::stats_json() const {
  json::array topics;
  for (const auto& t : collect().topics) {
    json::array channels;
    for (const auto& c : t.channels) {
      channels.push_back(json::object{{"channel_name", c.name},
                                      {"depth", c.depth},
                                      {"backend_depth", 0},
                                      {"in_flight_count", c.in_flight},
                                      {"deferred_count", c.deferred},
                                      {"message_count", c.message_count},
                                      {"requeue_count", c.requeue_count},
                                      {"timeout_count", c.timeout_count},
                                      {"client_count", c.clients},
                                      {"clients", json::array{}},
                                      {"paused", false}});
    }
    topics.push_back(json::object{{"topic_name", t.name},
                                  {"channels", std::move(channels)},
                                  {"depth", t.depth},
                                  {"backend_depth", 0},
                                  {"message_count", t.message_count},
                                  {"paused", false}});
  }
  return json::serialize(json::object{
      {"version", kVersion}, {"health", "OK"}, {"topics", std::move(topics)}, {"producers", json::array{}}});
}

// ---------------------------------------------------------------------------------------

Peer::Peer(PeerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}
Peer::~Peer() = default;

void Peer::start() {
  // On a restart the port is fixed, and a client's connection attempt to it on loopback
  // may hold it for a moment (a socket connected to itself): retry for up to a second.
  for (int attempt = 0;; ++attempt) {
    try {
      impl_->call([this] { impl_->startup(); });
      return;
    } catch (const std::exception& e) {
      impl_->call([this] {
        impl_->acceptor.reset();
        impl_->http.reset();
      });
      if (attempt < 50 && impl_->options.port != 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds{20});
        continue;
      }
      throw std::runtime_error(std::string("nsq test peer cannot listen: ") + e.what());
    }
  }
}

void Peer::stop() {
  impl_->call([this] { impl_->shutdown(); });
}

bool Peer::running() const {
  bool serving = false;
  impl_->call([&] { serving = impl_->serving; });
  return serving;
}

int Peer::port() const {
  int port = 0;
  impl_->call([&] { port = impl_->bound_port; });
  return port;
}

int Peer::http_port() const {
  int port = -1;
  impl_->call([&] { port = impl_->bound_http_port; });
  return port;
}

std::string Peer::address() const {
  return impl_->options.host + ":" + std::to_string(port());
}
std::string Peer::url() const {
  return "nsq://" + address();
}

PeerStats Peer::stats() const {
  PeerStats out;
  impl_->call([&] { out = impl_->collect(); });
  return out;
}

std::set<std::string> Peer::topics() const {
  std::lock_guard lock(impl_->names_mutex);
  return impl_->topic_names;
}

void Peer::set_silent(bool silent) {
  impl_->call([this, silent] { impl_->hung = silent; });
}

void Peer::drop_connections() {
  impl_->call([this] {
    auto all = impl_->clients;
    for (auto& c : all) impl_->remove_client(c);
  });
}

// ---------------------------------------------------------------------------------------

class Lookupd::Impl {
 public:
  Impl() {
    work.emplace(asio::make_work_guard(io));
    server = std::make_unique<HttpServer>(
        io, "127.0.0.1", 0, [this](const std::string& path, const std::map<std::string, std::string>& query) {
          return answer(path, query);
        });
    thread = std::thread([this] {
      pthread_setname_np(pthread_self(), "nsq-lookupd-io");
      io.run();
    });
  }
  ~Impl() {
    asio::post(io, [this] { server->close(); });
    work.reset();
    io.stop();
    thread.join();
  }

  std::pair<int, std::string> answer(const std::string& path, const std::map<std::string, std::string>& query) {
    std::vector<Peer*> peers;
    {
      std::lock_guard lock(mutex);
      peers = registered;
    }
    auto producer = [](Peer& p) {
      return json::object{{"remote_address", p.address()},           {"hostname", "localhost"},
                          {"broadcast_address", "127.0.0.1"},        {"tcp_port", p.port()},
                          {"http_port", std::max(p.http_port(), 0)}, {"version", kVersion}};
    };
    if (path == "/ping") return {200, "OK"};
    if (path == "/nodes") {
      json::array producers;
      for (auto* p : peers)
        if (p->running()) producers.push_back(producer(*p));
      return {200, json::serialize(json::object{{"producers", std::move(producers)}})};
    }
    if (path == "/lookup") {
      auto topic = query.find("topic");
      if (topic == query.end()) return {400, R"({"message":"MISSING_ARG_TOPIC"})"};
      json::array producers;
      for (auto* p : peers)
        if (p->running() && p->topics().count(topic->second)) producers.push_back(producer(*p));
      if (producers.empty()) return {404, R"({"message":"TOPIC_NOT_FOUND"})"};
      return {200, json::serialize(json::object{{"channels", json::array{}}, {"producers", std::move(producers)}})};
    }
    return {404, R"({"message":"NOT_FOUND"})"};
  }

  asio::io_context io;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  std::mutex mutex;
  std::vector<Peer*> registered;
};

Lookupd::Lookupd() : impl_(std::make_unique<Impl>()) {}
Lookupd::~Lookupd() = default;

void Lookupd::add(Peer& peer) {
  std::lock_guard lock(impl_->mutex);
  impl_->registered.push_back(&peer);
}

void Lookupd::remove(Peer& peer) {
  std::lock_guard lock(impl_->mutex);
  std::erase(impl_->registered, &peer);
}

int Lookupd::port() const {
  return impl_->server->port();
}
std::string Lookupd::address() const {
  return "127.0.0.1:" + std::to_string(port());
}

}  // namespace ferry::nsq_peer
