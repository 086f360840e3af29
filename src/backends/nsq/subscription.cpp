// Consuming: SUB on every nsqd of the topic, RDY spread over them, FIN / REQ / TOUCH for
// settlements, dead letters published by ferry, CLS on close.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <random>

#include "client.hpp"

namespace ferry::nsq {
namespace {

constexpr Ms kMaxReq{3'600'000};        // nsqd's default --max-req-timeout
constexpr Ms kMaxMsgTimeout{900'000};   // nsqd's default --max-msg-timeout
constexpr Ms kCloseWaitTimeout{2'000};  // how long close() waits for CLOSE_WAIT
constexpr Ms kRotate{5'000};            // RDY rotation when prefetch < connections
constexpr Ms kDeadLetterRetry{1'000};

Ms jitter(Ms base, double fraction) {
  thread_local std::mt19937 random{std::random_device{}()};
  std::uniform_real_distribution<double> d(1.0 - fraction, 1.0 + fraction);
  return Ms{static_cast<std::int64_t>(static_cast<double>(base.count()) * d(random))};
}

}  // namespace

std::string nsq_dead_letter_topic(const std::string& name) {
  if (name.size() <= kMaxNameLength) return name;
  // Too long for NSQ: keep a readable prefix and make it unique with a hash of the whole.
  std::uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) hash = (hash ^ c) * 1099511628211ull;
  const std::string suffix = "-" + hex_id(hash).substr(8) + ".dlq";
  return name.substr(0, kMaxNameLength - suffix.size()) + suffix;
}

namespace {

void check_name(const std::string& name, const char* what) {
  if (!valid_nsq_name(name))
    throw Error(Errc::invalid_argument, std::string(what) + " '" + name +
                                            "' is not valid for NSQ: at most 64 characters from A-Z a-z 0-9 . _ - "
                                            "(an ephemeral group's '#ephemeral' suffix counts too)");
}

}  // namespace

Subscription::Subscription(std::shared_ptr<Engine> engine, std::shared_ptr<Producer> producer, const Options& options,
                           SubscribeOptions subscribe)
    : engine_(std::move(engine)), producer_(std::move(producer)), options_(options), subscribe_(std::move(subscribe)) {
  channel_ = subscribe_.group + (subscribe_.ephemeral ? std::string(kEphemeralSuffix) : std::string());
  check_name(subscribe_.topic, "topic");
  check_name(channel_, "group");
  if (!subscribe_.dead_letter_topic.empty()) check_name(subscribe_.dead_letter_topic, "dead-letter topic");
  dead_letter_topic_ = nsq_dead_letter_topic(subscribe_.effective_dead_letter_topic());
  if (options_.msg_timeout.count() > 0)
    server_msg_timeout_ = options_.msg_timeout;
  else
    server_msg_timeout_ = std::clamp(subscribe_.ack_timeout, Ms{1000}, kMaxMsgTimeout);
  lease_ = subscribe_.ack_timeout;
}

void Subscription::start() {
  auto started = std::make_shared<std::promise<void>>();
  auto future = started->get_future();
  bool ran = engine_->run([&] {
    on_started_ = [started] { started->set_value(); };
    if (options_.lookupd.empty()) {
      for (const auto& endpoint : options_.nsqd) {
        auto& link = links_[endpoint];
        link.endpoint = endpoint;
        awaiting_first_.insert(endpoint);
      }
      lookup_done_ = true;
      for (auto& [endpoint, link] : links_) connect(link);
    } else {
      poll_lookupd();
    }
    touch_timer_ = std::make_shared<asio::steady_timer>(engine_->io());
    lease_tick();
  });
  if (!ran) throw Error(Errc::closed, "subscribe on a closed nsq broker " + options_.masked_url);
  const Ms wait = options_.connect_timeout * 2 + Ms{1000};
  const bool answered = future.wait_for(wait) == std::future_status::ready;
  Status error;
  bool subscribed = false;
  engine_->run([&] {
    on_started_ = nullptr;
    error = start_error_;
    subscribed = any_subscribed_;
  });
  if (subscribed || (answered && error.ok())) return;
  close();
  if (error.ok())
    error = {Errc::unavailable,
             "no nsqd of " + options_.masked_url + " answered SUB within " + std::to_string(wait.count()) + "ms"};
  throw Error(error.code,
              "cannot subscribe to '" + subscribe_.topic + "' as group '" + subscribe_.group + "': " + error.message);
}

void Subscription::first_answer(const Endpoint& endpoint, const Status& s) {
  if (s.ok()) any_subscribed_ = true;
  if (awaiting_first_.erase(endpoint) == 0) return;
  if (!s.ok() && (start_error_.ok() || s.code == Errc::invalid_argument)) start_error_ = s;
  if (awaiting_first_.empty() && lookup_done_ && on_started_) {
    auto started = std::move(on_started_);
    on_started_ = nullptr;
    started();
  }
}

void Subscription::connect(Link& link) {
  auto conn = std::make_shared<Connection>(*engine_, options_, link.endpoint, server_msg_timeout_, "consumer");
  link.conn = conn;
  link.subscribed = false;
  link.rdy = 0;
  link.in_flight = 0;
  std::weak_ptr<Subscription> weak_self = weak_from_this();
  std::weak_ptr<Connection> weak = conn;
  const Endpoint endpoint = link.endpoint;
  conn->start(
      [weak_self, weak, endpoint](const Status& s) {
        if (auto self = weak_self.lock()) self->on_conn_ready(endpoint, weak.lock(), s);
      },
      [weak_self, weak, endpoint](Frame& frame) {
        auto self = weak_self.lock();
        auto c = weak.lock();
        if (self && c) self->on_frame(endpoint, c, frame);
      },
      [weak_self, weak, endpoint](const Status& s) {
        if (auto self = weak_self.lock()) self->on_closed(endpoint, weak.lock(), s);
      });
}

Subscription::Link* Subscription::link_for(const std::shared_ptr<Connection>& conn) {
  if (!conn) return nullptr;
  auto it = links_.find(conn->endpoint());
  if (it == links_.end() || it->second.conn != conn) return nullptr;
  return &it->second;
}

void Subscription::on_conn_ready(const Endpoint& endpoint, const std::shared_ptr<Connection>& conn, const Status& s) {
  auto it = links_.find(endpoint);
  if (it == links_.end() || !conn || it->second.conn != conn) {
    if (conn) conn->close({});
    return;
  }
  Link& link = it->second;
  if (!s.ok()) {
    link.conn.reset();
    spdlog::warn("nsq subscriber {}/{}: {}", subscribe_.topic, channel_, s.message);
    first_answer(endpoint, s);
    if (io_closing_) {
      links_.erase(it);
      if (links_.empty() && on_all_closed_) {
        auto done = std::move(on_all_closed_);
        on_all_closed_ = nullptr;
        done();
      }
      return;
    }
    schedule_reconnect(link);
    return;
  }
  if (io_closing_) {
    conn->close_gracefully();
    return;
  }
  conn->send(encode_command("SUB " + subscribe_.topic + " " + channel_));
}

void Subscription::on_frame(const Endpoint& endpoint, const std::shared_ptr<Connection>& conn, Frame& frame) {
  Link* link = link_for(conn);
  if (!link) return;
  switch (frame.type) {
    case FrameType::response:
      if (!link->subscribed) {
        if (frame.data != kOk) {
          conn->close({Errc::protocol, conn->describe() + " answered SUB with '" + frame.data + "'"});
          return;
        }
        link->subscribed = true;
        link->backoff = Ms{0};
        spdlog::debug("nsq subscriber {}/{}: subscribed on {}", subscribe_.topic, channel_, conn->describe());
        first_answer(endpoint, {});
        if (link->closing || io_closing_) {  // closed meanwhile: leave at once
          link->closing = true;
          conn->send(encode_command("CLS"));
          return;
        }
        distribute_rdy();
      } else if (frame.data == kCloseWait) {
        finish_link(*link);
      }
      return;
    case FrameType::error:
      if (!link->subscribed) {
        Status refused{errc_for(frame.data),
                       conn->describe() + " refused SUB " + subscribe_.topic + " " + channel_ + ": " + frame.data};
        first_answer(endpoint, refused);
        conn->close(refused);
        return;
      }
      if (!error_is_fatal(frame.data)) {
        // A FIN, REQ or TOUCH for a message nsqd had already timed out and handed on.
        spdlog::debug("nsq subscriber {}/{}: {} says {}", subscribe_.topic, channel_, conn->describe(), frame.data);
      } else {
        spdlog::warn("nsq subscriber {}/{}: {} says {}", subscribe_.topic, channel_, conn->describe(), frame.data);
      }
      return;
    case FrameType::message:
      on_message(*link, frame);
      return;
  }
}

Message Subscription::decode(const WireMessage& wire) const {
  if (auto m = decode_envelope(wire.body)) return std::move(*m);
  Message m;  // a body from another NSQ client: the payload as it is
  m.id = std::string(id_view(wire.id));
  m.payload = wire.body;
  m.timestamp =
      Clock::time_point(std::chrono::duration_cast<Clock::duration>(std::chrono::nanoseconds(wire.timestamp_ns)));
  return m;
}

void Subscription::on_message(Link& link, Frame& frame) {
  auto wire = parse_message(frame.data);
  if (!wire) return;  // the frame reader refuses short message frames
  ++link.in_flight;
  ++link.since_rdy;
  const std::uint64_t token = ++next_token_;
  const auto now = SteadyClock::now();
  InFlight f{link.conn, wire->id, wire->attempts, {}, now, now, false};
  if (io_closing_ || link.closing) {  // arrived after CLS was sent: handed back at CLOSE_WAIT
    in_flight_.emplace(token, std::move(f));
    return;
  }
  if (options_.max_attempts > 0 && wire->attempts > options_.max_attempts) {
    f.body = std::move(wire->body);
    in_flight_.emplace(token, std::move(f));
    dead_letter(token,
                "delivered " + std::to_string(wire->attempts - 1) +
                    " times without being acked (max_attempts=" + std::to_string(options_.max_attempts) + ")",
                wire->attempts - 1);
    return;
  }
  Message message = decode(*wire);
  f.body = std::move(wire->body);
  in_flight_.emplace(token, std::move(f));
  {
    std::lock_guard lock(mutex_);
    buffer_.push_back({std::move(message), wire->attempts, token});
  }
  cv_.notify_one();
}

std::optional<Delivery> Subscription::receive(Ms timeout) {
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, timeout, [&] { return closed_ || !buffer_.empty(); });
  if (closed_ || buffer_.empty()) return std::nullopt;
  Ready ready = std::move(buffer_.front());
  buffer_.pop_front();
  lock.unlock();
  return Delivery(std::move(ready.message), subscribe_.topic, subscribe_.group, ready.attempt, weak_from_this(),
                  ready.token);
}

void Subscription::settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept {
  try {
    // Held weakly: a settlement queued after the broker closed must not keep this alive.
    engine_->post([weak = weak_from_this(), token, outcome, delay, reason] {
      if (auto self = weak.lock()) self->do_settle(token, outcome, delay, reason);
    });
  } catch (const std::exception& e) {
    spdlog::error("nsq subscriber {}/{}: a settlement was dropped: {}", subscribe_.topic, channel_, e.what());
  }
}

void Subscription::do_settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) {
  auto it = in_flight_.find(token);
  if (it == in_flight_.end() || it->second.settling) return;  // handed back already, or being dead-lettered
  if (outcome == Outcome::reject) {
    dead_letter(token, reason, it->second.attempts);
    return;
  }
  Link* link = link_for(it->second.conn);
  const std::string id(id_view(it->second.id));
  in_flight_.erase(it);
  if (!link) return;  // its connection is gone: nsqd redelivers after msg_timeout
  if (outcome == Outcome::ack) {
    link->conn->send(encode_command("FIN " + id));
  } else {
    const auto ms = std::clamp(delay, Ms{0}, kMaxReq).count();
    link->conn->send(encode_command("REQ " + id + " " + std::to_string(ms)));
  }
  --link->in_flight;
  if (link->stalled_until != SteadyClock::time_point{}) {  // the application is making progress again
    link->stalled_until = {};
    distribute_rdy();
    return;
  }
  // nsqd before 1.0 counted RDY down per message: top it up (harmless for later versions).
  if (link->rdy > 0 && link->since_rdy >= std::max(1, link->rdy / 2) && !link->closing) send_rdy(*link, link->rdy);
}

void Subscription::dead_letter(std::uint64_t token, const std::string& reason, int attempts) {
  auto it = in_flight_.find(token);
  if (it == in_flight_.end()) return;
  it->second.settling = true;
  WireMessage wire;
  wire.id = it->second.id;
  wire.body = it->second.body;
  Message message = decode(wire);
  if (message.timestamp == Clock::time_point{}) message.timestamp = Clock::now();
  message.headers.insert_or_assign(header::error, reason);
  message.headers.insert_or_assign(header::attempts, std::to_string(attempts));
  message.headers.insert_or_assign(header::original_topic, subscribe_.topic);
  message.headers.insert_or_assign(header::original_group, subscribe_.group);
  std::string body = encode_envelope(message);
  std::weak_ptr<Subscription> weak = weak_from_this();
  producer_->publish_internal(dead_letter_topic_, std::move(body), [weak, token, id = message.id](const Status& s) {
    auto self = weak.lock();
    if (!self) return;
    auto found = self->in_flight_.find(token);
    if (found == self->in_flight_.end()) return;
    Link* link = self->link_for(found->second.conn);
    const std::string nsq_id(id_view(found->second.id));
    self->in_flight_.erase(found);
    if (!s.ok())
      spdlog::warn(
          "nsq subscriber {}/{}: could not move message {} to dead-letter topic {} ({}); it will be "
          "delivered again",
          self->subscribe_.topic, self->channel_, id, self->dead_letter_topic_, s.message);
    if (!link) return;
    if (s.ok())
      link->conn->send(encode_command("FIN " + nsq_id));
    else
      link->conn->send(encode_command("REQ " + nsq_id + " " + std::to_string(kDeadLetterRetry.count())));
    --link->in_flight;
  });
}

void Subscription::distribute_rdy() {
  if (io_closing_) return;
  std::vector<Link*> active;
  for (auto& [endpoint, link] : links_) {
    if (!link.conn || !link.subscribed || link.closing) continue;
    if (link.stalled_until != SteadyClock::time_point{}) {
      if (link.rdy != 0) send_rdy(link, 0);
      continue;
    }
    active.push_back(&link);
  }
  if (active.empty()) return;
  const int n = static_cast<int>(active.size());
  const int total = subscribe_.prefetch;
  std::vector<int> want(active.size(), 0);
  if (total >= n) {
    for (int i = 0; i < n; ++i) want[static_cast<std::size_t>(i)] = total / n + (i < total % n ? 1 : 0);
  } else {
    // Fewer credits than connections: give one to `total` of them, rotating, so that every
    // nsqd is drained in turn.
    for (int i = 0; i < n; ++i)
      want[static_cast<std::size_t>(i)] =
          static_cast<int>((static_cast<std::size_t>(i) + rotation_) % static_cast<std::size_t>(n)) < total ? 1 : 0;
    if (!rotate_timer_) {
      rotate_timer_ = std::make_shared<asio::steady_timer>(engine_->io());
      rotate_timer_->expires_after(kRotate);
      rotate_timer_->async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
        auto self = weak.lock();
        if (ec || !self) return;
        self->rotate_timer_.reset();
        ++self->rotation_;
        self->distribute_rdy();
      });
    }
  }
  // Lower first, then raise, so the sum never exceeds the prefetch.
  for (int pass = 0; pass < 2; ++pass) {
    for (std::size_t i = 0; i < active.size(); ++i) {
      int w = std::min(want[i], active[i]->conn->negotiated().max_rdy_count);
      if (w == active[i]->rdy) continue;
      if ((pass == 0) == (w < active[i]->rdy)) send_rdy(*active[i], w);
    }
  }
}

void Subscription::send_rdy(Link& link, int count) {
  link.conn->send(encode_command("RDY " + std::to_string(count)));
  link.rdy = count;
  link.since_rdy = 0;
}

void Subscription::drop_link_deliveries(const std::shared_ptr<Connection>& conn) {
  std::set<std::uint64_t> dropped;
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (it->second.conn == conn) {
      dropped.insert(it->first);
      it = in_flight_.erase(it);
    } else {
      ++it;
    }
  }
  if (dropped.empty()) return;
  std::lock_guard lock(mutex_);
  std::erase_if(buffer_, [&](const Ready& r) { return dropped.count(r.token) > 0; });
}

void Subscription::on_closed(const Endpoint& endpoint, const std::shared_ptr<Connection>& conn, const Status& s) {
  auto it = links_.find(endpoint);
  if (it == links_.end() || !conn || it->second.conn != conn) return;
  Link& link = it->second;
  // Deliveries of a lost connection cannot be settled any more: nsqd redelivers them after
  // msg_timeout. Unreceived ones leave the buffer now.
  drop_link_deliveries(conn);
  link.conn.reset();
  link.subscribed = false;
  link.rdy = 0;
  link.in_flight = 0;
  if (link.close_timer) link.close_timer->cancel();
  if (io_closing_ || link.closing || !link.wanted) {
    links_.erase(it);
    if (io_closing_ && links_.empty() && on_all_closed_) {
      auto done = std::move(on_all_closed_);
      on_all_closed_ = nullptr;
      done();
    }
    distribute_rdy();
    return;
  }
  spdlog::warn("nsq subscriber {}/{}: {}; reconnecting", subscribe_.topic, channel_,
               s.ok() ? conn->describe() + " closed the connection" : s.message);
  first_answer(endpoint, s.ok() ? Status{Errc::unavailable, conn->describe() + " closed the connection"} : s);
  schedule_reconnect(link);
  distribute_rdy();
}

void Subscription::schedule_reconnect(Link& link) {
  if (io_closing_) return;
  link.backoff = link.backoff.count() == 0 ? Ms{100} : std::min(link.backoff * 2, options_.max_backoff);
  if (!link.retry) link.retry = std::make_shared<asio::steady_timer>(engine_->io());
  link.retry->expires_after(jitter(link.backoff, 0.2));
  const Endpoint endpoint = link.endpoint;
  link.retry->async_wait([weak = weak_from_this(), endpoint](const boost::system::error_code& ec) {
    auto self = weak.lock();
    if (ec || !self || self->io_closing_) return;
    auto it = self->links_.find(endpoint);
    if (it == self->links_.end() || it->second.conn || !it->second.wanted) return;
    self->connect(it->second);
  });
}

void Subscription::finish_link(Link& link) {
  // After CLOSE_WAIT nsqd sends nothing more: hand back everything still held, then leave.
  if (link.close_timer) link.close_timer->cancel();
  if (!link.conn) return;
  std::string commands;
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    if (it->second.conn == link.conn) {
      if (!it->second.settling) commands += encode_command("REQ " + std::string(id_view(it->second.id)) + " 0");
      it = in_flight_.erase(it);
    } else {
      ++it;
    }
  }
  if (!commands.empty()) link.conn->send(std::move(commands));
  link.conn->close_gracefully();
}

void Subscription::start_close() {
  if (io_closing_) return;
  io_closing_ = true;
  for (auto* timer : {&touch_timer_, &poll_timer_, &rotate_timer_})
    if (*timer) (*timer)->cancel();
  if (on_started_) {
    auto started = std::move(on_started_);
    on_started_ = nullptr;
    started();
  }
  for (auto it = links_.begin(); it != links_.end();) {
    Link& link = it->second;
    if (link.retry) link.retry->cancel();
    if (!link.conn) {
      it = links_.erase(it);
      continue;
    }
    link.closing = true;
    if (link.subscribed) {
      link.conn->send(encode_command("CLS"));
      link.close_timer = std::make_shared<asio::steady_timer>(engine_->io());
      link.close_timer->expires_after(kCloseWaitTimeout);
      const Endpoint endpoint = it->first;
      link.close_timer->async_wait([weak = weak_from_this(), endpoint](const boost::system::error_code& ec) {
        auto self = weak.lock();
        if (ec || !self) return;
        auto found = self->links_.find(endpoint);
        if (found != self->links_.end()) self->finish_link(found->second);
      });
    }
    // Not subscribed yet: the SUB answer sends CLS (or the connection fails).
    ++it;
  }
  if (links_.empty() && on_all_closed_) {
    auto done = std::move(on_all_closed_);
    on_all_closed_ = nullptr;
    done();
  }
}

void Subscription::close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    buffer_.clear();  // still in flight on the io thread: handed back there
  }
  cv_.notify_all();
  if (engine_->on_io_thread()) {
    start_close();
    return;
  }
  auto all_closed = std::make_shared<std::promise<void>>();
  auto future = all_closed->get_future();
  bool ran = engine_->run([&] {
    on_all_closed_ = [all_closed] { all_closed->set_value(); };
    start_close();
  });
  if (ran) future.wait_for(kCloseWaitTimeout + Ms{2500});
  engine_->run([&] { on_all_closed_ = nullptr; });
}

void Subscription::lease_tick() {
  if (io_closing_ || !touch_timer_) return;
  const auto now = SteadyClock::now();
  const auto half = server_msg_timeout_ / 2;
  std::set<Link*> stalled;
  std::set<std::uint64_t> expired;
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    InFlight& f = it->second;
    Link* link = link_for(f.conn);
    if (!link || link->closing || f.settling) {
      ++it;
      continue;
    }
    if (now >= f.delivered_at + lease_) {
      // The lease ran out with the message unsettled: hand it back now, so that another
      // consumer gets it, and pause this connection (RDY 0, sent first) so that it is not
      // this one.
      if (link->rdy != 0) send_rdy(*link, 0);
      link->stalled_until = now + std::max(lease_, Ms{1000});
      link->conn->send(encode_command("REQ " + std::string(id_view(f.id)) + " 0"));
      --link->in_flight;
      stalled.insert(link);
      expired.insert(it->first);
      it = in_flight_.erase(it);
      continue;
    }
    // nsqd would time it out before the lease ends: TOUCH.
    if (now - f.touched_at >= half && f.touched_at + server_msg_timeout_ < f.delivered_at + lease_) {
      link->conn->send(encode_command("TOUCH " + std::string(id_view(f.id))));
      f.touched_at = now;
    }
    ++it;
  }
  if (!expired.empty()) {
    std::lock_guard lock(mutex_);
    std::erase_if(buffer_, [&](const Ready& r) { return expired.count(r.token) > 0; });
  }
  for (Link* link : stalled)
    spdlog::debug("nsq subscriber {}/{}: a delivery outlived its {}ms lease; pausing {} for as long", subscribe_.topic,
                  channel_, lease_.count(), link->endpoint.str());
  if (!stalled.empty()) distribute_rdy();
  for (auto& [endpoint, link] : links_) {
    if (link.stalled_until != SteadyClock::time_point{} && now >= link.stalled_until) {
      link.stalled_until = {};
      distribute_rdy();
    }
  }
  Ms period = std::clamp(std::min(lease_, server_msg_timeout_) / 4, Ms{25}, Ms{1000});
  touch_timer_->expires_after(period);
  touch_timer_->async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    auto self = weak.lock();
    if (!ec && self) self->lease_tick();
  });
}

void Subscription::poll_lookupd() {
  struct Round {
    std::size_t remaining = 0;
    std::set<Endpoint> found;
    bool any_answered = false;
    std::string error;
  };
  auto round = std::make_shared<Round>();
  round->remaining = options_.lookupd.size();
  std::weak_ptr<Subscription> weak = weak_from_this();
  for (const auto& lookupd : options_.lookupd) {
    http_get(*engine_, lookupd, "/lookup?topic=" + subscribe_.topic, options_.connect_timeout,
             [weak, round, lookupd](const Status& s, int code, std::string body) {
               if (s.ok() && code == 200) {
                 try {
                   for (auto& e : parse_producers(body)) round->found.insert(std::move(e));
                   round->any_answered = true;
                 } catch (const Error& e) {
                   round->error = e.what();
                 }
               } else if (s.ok() && code == 404) {  // the topic is not produced anywhere yet
                 round->any_answered = true;
               } else {
                 round->error =
                     s.ok() ? "nsqlookupd " + lookupd.str() + " answered HTTP " + std::to_string(code) : s.message;
               }
               if (--round->remaining > 0) return;
               auto self = weak.lock();
               if (!self || self->io_closing_) return;
               if (!round->any_answered)
                 spdlog::warn("nsq subscriber {}/{}: no nsqlookupd answered ({}); keeping the nsqd already known",
                              self->subscribe_.topic, self->channel_, round->error);
               if (round->any_answered)
                 self->on_lookup(std::move(round->found));
               else
                 self->on_lookup_failed();
             });
  }
}

void Subscription::on_lookup_failed() {
  if (!lookup_done_) {
    lookup_done_ = true;
    if (awaiting_first_.empty() && on_started_) {
      start_error_ = {Errc::unavailable, "no nsqlookupd of " + options_.masked_url + " answered /lookup"};
      auto started = std::move(on_started_);
      on_started_ = nullptr;
      started();
    }
  }
  schedule_poll();
}

void Subscription::on_lookup(std::set<Endpoint> found) {
  for (auto it = links_.begin(); it != links_.end(); ++it) {
    Link& link = it->second;
    if (found.count(it->first) || !link.wanted) continue;
    link.wanted = false;  // nsqlookupd no longer lists it: leave it cleanly
    spdlog::info("nsq subscriber {}/{}: nsqlookupd no longer lists nsqd {}; leaving it", subscribe_.topic, channel_,
                 it->first.str());
    if (link.retry) link.retry->cancel();
    if (link.conn && link.subscribed) {
      link.closing = true;
      link.conn->send(encode_command("CLS"));
    } else if (link.conn) {
      link.conn->close({});
    }
  }
  std::erase_if(links_, [](const auto& item) { return !item.second.conn && !item.second.wanted; });
  const bool first = !lookup_done_;
  for (const auto& endpoint : found) {
    auto [it, added] = links_.try_emplace(endpoint);
    if (!added) {
      if (!it->second.wanted) continue;  // still leaving
      continue;                          // connected, or reconnecting with backoff
    }
    it->second.endpoint = endpoint;
    if (first) awaiting_first_.insert(endpoint);
    spdlog::debug("nsq subscriber {}/{}: nsqlookupd lists nsqd {}", subscribe_.topic, channel_, endpoint.str());
    connect(it->second);
  }
  lookup_done_ = true;
  if (awaiting_first_.empty() && on_started_) {
    any_subscribed_ = true;  // nothing to subscribe to yet is not a failure
    auto started = std::move(on_started_);
    on_started_ = nullptr;
    started();
  }
  distribute_rdy();
  schedule_poll();
}

void Subscription::schedule_poll() {
  if (io_closing_) return;
  if (!poll_timer_) poll_timer_ = std::make_shared<asio::steady_timer>(engine_->io());
  poll_timer_->expires_after(jitter(options_.lookupd_poll, 0.1));
  poll_timer_->async_wait([weak = weak_from_this()](const boost::system::error_code& ec) {
    auto self = weak.lock();
    if (!ec && self && !self->io_closing_) self->poll_lookupd();
  });
}

}  // namespace ferry::nsq
