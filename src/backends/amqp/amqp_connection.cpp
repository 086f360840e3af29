#include "amqp_connection.hpp"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>

namespace ferry::amqp::detail {
namespace {

timeval to_timeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

std::string lower_first(std::string s) {
  if (!s.empty()) s[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(s[0])));
  return s;
}

// Why a TCP connection to host:port cannot be made, found with a plain connect of our
// own: rabbitmq-c reports only "a socket error occurred". Empty if it can be made.
std::string diagnose_tcp(const std::string& host, int port, std::chrono::milliseconds timeout) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  if (int rc = getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0)
    return "cannot resolve host '" + host + "': " + gai_strerror(rc);
  std::string why = "no address";
  for (addrinfo* a = found; a != nullptr; a = a->ai_next) {
    int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = lower_first(std::strerror(errno));
      continue;
    }
    int rc = connect(fd, a->ai_addr, a->ai_addrlen);
    int error = rc == 0 ? 0 : errno;
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int n = poll(&p, 1, static_cast<int>(timeout.count()));
      if (n == 0) {
        error = ETIMEDOUT;
      } else {
        socklen_t len = sizeof error;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len);
      }
    }
    ::close(fd);
    if (error == 0) {
      why.clear();
      break;
    }
    why = error == ETIMEDOUT ? "connect timed out after " + std::to_string(timeout.count()) + "ms"
                             : lower_first(std::strerror(error));
  }
  freeaddrinfo(found);
  return why;
}

Errc errc_for_reply(int code) {
  switch (code) {
    case AMQP_PRECONDITION_FAILED:
    case AMQP_NOT_ALLOWED:
    case AMQP_RESOURCE_LOCKED:
      return Errc::invalid_argument;
    default:
      return Errc::unavailable;
  }
}

std::string advice_for_reply(int code) {
  switch (code) {
    case AMQP_PRECONDITION_FAILED:
      return "; it already exists with other settings: open the URL with the settings it was declared with, or "
             "delete it";
    case AMQP_ACCESS_REFUSED:
      return "; check the user's permissions on the vhost";
    case AMQP_NOT_ALLOWED:
      return "; check that the vhost exists and the user may use it";
    case AMQP_RESOURCE_LOCKED:
      return "; another connection holds it exclusively";
    default:
      return "";
  }
}

}  // namespace

std::string Connection::describe_status(int status) {
  return amqp_error_string2(status);
}

std::unique_ptr<Connection> Connection::open(const Options& o) {
  std::string last_error = "no host";
  const timeval tv = to_timeval(o.connect_timeout);
  for (const auto& hp : o.hosts) {
    StateHandle state(amqp_new_connection());
    if (!state) throw Error(Errc::internal, "rabbitmq-c could not allocate a connection");
    amqp_socket_t* socket = o.tls ? amqp_ssl_socket_new(state.get()) : amqp_tcp_socket_new(state.get());
    if (socket == nullptr) throw Error(Errc::internal, "rabbitmq-c could not create a socket");
    if (o.tls) {
      if (!o.cacert.empty()) {
        if (int rc = amqp_ssl_socket_set_cacert(socket, o.cacert.c_str()); rc != AMQP_STATUS_OK)
          throw Error(Errc::invalid_argument,
                      "cannot load the CA certificates in '" + o.cacert + "' (" + describe_status(rc) + ")");
      }
      if (!o.cert.empty()) {
        if (int rc = amqp_ssl_socket_set_key(socket, o.cert.c_str(), o.key.c_str()); rc != AMQP_STATUS_OK)
          throw Error(Errc::invalid_argument, "cannot load the client certificate '" + o.cert + "' and key '" + o.key +
                                                  "' (" + describe_status(rc) + ")");
      }
      amqp_ssl_socket_set_verify_peer(socket, o.verify ? 1 : 0);
      amqp_ssl_socket_set_verify_hostname(socket, o.verify ? 1 : 0);
    }
    const std::string where = (o.tls ? "amqps://" : "amqp://") + hp.host + ":" + std::to_string(*hp.port);
    int rc = amqp_socket_open_noblock(socket, hp.host.c_str(), *hp.port, &tv);
    if (rc != AMQP_STATUS_OK) {
      std::string tcp = diagnose_tcp(hp.host, *hp.port, o.connect_timeout);
      if (!tcp.empty())
        last_error = tcp;
      else if (o.tls)
        last_error = "TLS handshake with " + where + " failed: " + describe_status(rc);
      else
        last_error = describe_status(rc);
      continue;
    }
    if (int fd = amqp_get_sockfd(state.get()); fd >= 0) {
      int one = 1;
      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      // A peer that stops acknowledging what we send breaks the connection instead of
      // blocking a writer for the kernel's default quarter of an hour.
      unsigned int user_timeout =
          static_cast<unsigned int>(std::max<long long>(o.connect_timeout.count(), o.heartbeat_s * 2000LL));
      setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
    }
    amqp_set_handshake_timeout(state.get(), &tv);
    amqp_set_rpc_timeout(state.get(), &tv);
    amqp_rpc_reply_t reply = amqp_login(state.get(), o.vhost.c_str(), 0, 131072, o.heartbeat_s, AMQP_SASL_METHOD_PLAIN,
                                        o.user.c_str(), o.password.c_str());
    if (reply.reply_type == AMQP_RESPONSE_NORMAL)
      return std::unique_ptr<Connection>(new Connection(o, std::move(state)));
    if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      auto* m = static_cast<amqp_connection_close_t*>(reply.reply.decoded);
      amqp_connection_close_ok_t ok{};
      amqp_send_method(state.get(), 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
      std::string text = string_of(m->reply_text);
      if (m->reply_code == AMQP_ACCESS_REFUSED)
        throw Error(Errc::unavailable,
                    "login to " + o.display + " refused (" + text + "); check the user name and password in the URL");
      throw Error(errc_for_reply(m->reply_code),
                  "opening " + o.display + " failed: " + text + advice_for_reply(m->reply_code));
    }
    if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
      last_error = "the AMQP handshake with " + where + " failed: " + describe_status(reply.library_error);
      if (reply.library_error == AMQP_STATUS_CONNECTION_CLOSED || reply.library_error == AMQP_STATUS_SOCKET_CLOSED)
        last_error += " (wrong user or password, or not an AMQP 0-9-1 port?)";
    } else {
      last_error = "the AMQP handshake with " + where + " failed";
    }
  }
  throw Error(Errc::unavailable, "cannot reach " + o.display + " (" + last_error + "); is RabbitMQ running?");
}

Connection::Connection(const Options& options, StateHandle state) : options_(options), state_(std::move(state)) {}

Connection::~Connection() = default;

int Connection::fd() const noexcept {
  return amqp_get_sockfd(state_.get());
}

void Connection::mark_lost(std::string why) {
  if (!alive_) return;
  alive_ = false;
  lost_reason_ = std::move(why);
}

void Connection::close() noexcept {
  if (!alive_) return;
  const timeval tv = to_timeval(std::chrono::milliseconds{1000});
  amqp_set_rpc_timeout(state_.get(), &tv);
  amqp_connection_close(state_.get(), AMQP_REPLY_SUCCESS);
  alive_ = false;
  lost_reason_ = "the connection was closed";
}

void Connection::check(amqp_rpc_reply_t reply, amqp_channel_t channel, const std::string& what) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL:
      return;
    case AMQP_RESPONSE_NONE:
      mark_lost("rabbitmq-c returned no reply");
      throw Error(Errc::protocol, what + " failed: rabbitmq-c returned no reply");
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: {
      std::string why = describe_status(reply.library_error);
      mark_lost("connection to " + options_.display + " lost (" + why + ")");
      throw Error(reply.library_error == AMQP_STATUS_TIMEOUT ? Errc::timeout : Errc::unavailable,
                  what + " failed: " + lost_reason_);
    }
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      break;
  }
  if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
    auto* m = static_cast<amqp_channel_close_t*>(reply.reply.decoded);
    const int code = m->reply_code;
    std::string text = string_of(m->reply_text);
    amqp_channel_close_ok_t ok{};
    amqp_send_method(state_.get(), channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    closed_channels_[channel] = text;
    throw Error(errc_for_reply(code), what + " failed: the broker says " + text + advice_for_reply(code));
  }
  if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
    auto* m = static_cast<amqp_connection_close_t*>(reply.reply.decoded);
    const int code = m->reply_code;
    std::string text = string_of(m->reply_text);
    amqp_connection_close_ok_t ok{};
    amqp_send_method(state_.get(), 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    mark_lost("the broker closed the connection to " + options_.display + ": " + text);
    throw Error(errc_for_reply(code), what + " failed: " + lost_reason_ + advice_for_reply(code));
  }
  mark_lost("unexpected reply from the broker");
  throw Error(Errc::protocol, what + " failed: unexpected reply method " + std::to_string(reply.reply.id));
}

std::string Connection::answer_close(const amqp_frame_t& frame) {
  if (frame.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
    auto* m = static_cast<amqp_channel_close_t*>(frame.payload.method.decoded);
    std::string text = string_of(m->reply_text);
    amqp_channel_close_ok_t ok{};
    amqp_send_method(state_.get(), frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    closed_channels_[frame.channel] = text;
    return "the broker closed channel " + std::to_string(frame.channel) + ": " + text;
  }
  auto* m = static_cast<amqp_connection_close_t*>(frame.payload.method.decoded);
  std::string text = string_of(m->reply_text);
  amqp_connection_close_ok_t ok{};
  amqp_send_method(state_.get(), 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
  mark_lost("the broker closed the connection to " + options_.display + ": " + text);
  return lost_reason_;
}

std::optional<std::string> Connection::channel_closed(amqp_channel_t channel) const {
  if (auto it = closed_channels_.find(channel); it != closed_channels_.end()) return it->second;
  return std::nullopt;
}

void Connection::open_channel(amqp_channel_t channel) {
  if (!alive_) throw Error(Errc::unavailable, lost_reason_);
  amqp_channel_open(state_.get(), channel);
  check(amqp_get_rpc_reply(state_.get()), channel, "opening channel " + std::to_string(channel));
  closed_channels_.erase(channel);
}

void Connection::close_channel(amqp_channel_t channel) noexcept {
  if (!alive_ || closed_channels_.count(channel)) return;
  amqp_rpc_reply_t reply = amqp_channel_close(state_.get(), channel, AMQP_REPLY_SUCCESS);
  if (reply.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION)
    mark_lost("connection to " + options_.display + " lost (" + describe_status(reply.library_error) + ")");
  closed_channels_[channel] = "closed by ferry";
}

void Connection::confirm_select(amqp_channel_t channel) {
  amqp_confirm_select(state_.get(), channel);
  check(amqp_get_rpc_reply(state_.get()), channel, "confirm.select");
}

void Connection::qos(amqp_channel_t channel, int prefetch) {
  amqp_basic_qos(state_.get(), channel, 0, static_cast<std::uint16_t>(prefetch), 0);
  check(amqp_get_rpc_reply(state_.get()), channel, "basic.qos");
}

void Connection::declare_exchange(amqp_channel_t channel, const std::string& name) {
  if (!alive_) throw Error(Errc::unavailable, lost_reason_);
  amqp_exchange_declare(state_.get(), channel, bytes_of(name), amqp_cstring_bytes(options_.exchange_type_name()), 0, 1,
                        0, 0, amqp_empty_table);
  check(amqp_get_rpc_reply(state_.get()), channel,
        "declaring " + std::string(options_.exchange_type_name()) + " exchange '" + name + "'");
}

QueueCounts Connection::declare_queue(amqp_channel_t channel, const std::string& name, bool durable, bool auto_delete,
                                      const std::optional<DeadLetterTo>& dead_letter) {
  if (!alive_) throw Error(Errc::unavailable, lost_reason_);
  amqp_table_entry_t entries[2];
  amqp_table_t args = amqp_empty_table;
  if (dead_letter) {
    entries[0].key = amqp_cstring_bytes("x-dead-letter-exchange");
    entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[0].value.value.bytes = amqp_cstring_bytes("");
    entries[1].key = amqp_cstring_bytes("x-dead-letter-routing-key");
    entries[1].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[1].value.value.bytes = bytes_of(dead_letter->queue);
    args.num_entries = 2;
    args.entries = entries;
  }
  auto* ok =
      amqp_queue_declare(state_.get(), channel, bytes_of(name), 0, durable ? 1 : 0, 0, auto_delete ? 1 : 0, args);
  check(amqp_get_rpc_reply(state_.get()), channel, "declaring queue '" + name + "'");
  return ok ? QueueCounts{ok->message_count, ok->consumer_count} : QueueCounts{};
}

std::optional<QueueCounts> Connection::inspect_queue(amqp_channel_t channel, const std::string& name) {
  if (!alive_) throw Error(Errc::unavailable, lost_reason_);
  auto* ok = amqp_queue_declare(state_.get(), channel, bytes_of(name), 1, 0, 0, 0, amqp_empty_table);
  amqp_rpc_reply_t reply = amqp_get_rpc_reply(state_.get());
  if (reply.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION && reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD &&
      static_cast<amqp_channel_close_t*>(reply.reply.decoded)->reply_code == AMQP_NOT_FOUND) {
    amqp_channel_close_ok_t close_ok{};
    amqp_send_method(state_.get(), channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &close_ok);
    closed_channels_[channel] = "queue not found";
    return std::nullopt;
  }
  check(reply, channel, "inspecting queue '" + name + "'");
  return ok ? QueueCounts{ok->message_count, ok->consumer_count} : QueueCounts{};
}

void Connection::bind_queue(amqp_channel_t channel, const std::string& queue, const std::string& exchange,
                            const std::string& routing_key) {
  amqp_queue_bind(state_.get(), channel, bytes_of(queue), bytes_of(exchange), bytes_of(routing_key), amqp_empty_table);
  check(amqp_get_rpc_reply(state_.get()), channel, "binding queue '" + queue + "' to exchange '" + exchange + "'");
}

std::string Connection::consume(amqp_channel_t channel, const std::string& queue) {
  auto* ok = amqp_basic_consume(state_.get(), channel, bytes_of(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
  check(amqp_get_rpc_reply(state_.get()), channel, "consuming from queue '" + queue + "'");
  return ok ? string_of(ok->consumer_tag) : std::string();
}

void Connection::ping(amqp_channel_t channel) {
  if (!alive_) throw Error(Errc::unavailable, lost_reason_);
  amqp_exchange_declare(state_.get(), channel, amqp_cstring_bytes("amq.direct"), amqp_cstring_bytes("direct"), 1, 0, 0,
                        0, amqp_empty_table);
  check(amqp_get_rpc_reply(state_.get()), channel, "ping");
}

std::uint32_t Connection::purge_queue(amqp_channel_t channel, const std::string& queue) {
  auto* ok = amqp_queue_purge(state_.get(), channel, bytes_of(queue));
  check(amqp_get_rpc_reply(state_.get()), channel, "purging queue '" + queue + "'");
  return ok ? ok->message_count : 0;
}

void Connection::delete_queue(amqp_channel_t channel, const std::string& queue) {
  amqp_queue_delete(state_.get(), channel, bytes_of(queue), 0, 0);
  check(amqp_get_rpc_reply(state_.get()), channel, "deleting queue '" + queue + "'");
}

int Connection::next_frame(amqp_frame_t& frame, std::chrono::milliseconds timeout) {
  if (!alive_) return AMQP_STATUS_CONNECTION_CLOSED;
  timeval tv = to_timeval(timeout);
  int rc = amqp_simple_wait_frame_noblock(state_.get(), &frame, &tv);
  if (rc == AMQP_STATUS_OK || rc == AMQP_STATUS_TIMEOUT) return rc;
  mark_lost("connection to " + options_.display + " lost (" + describe_status(rc) + ")");
  return rc;
}

void Connection::release_buffers() noexcept {
  if (!amqp_frames_enqueued(state_.get())) amqp_maybe_release_buffers(state_.get());
}

}  // namespace ferry::amqp::detail
