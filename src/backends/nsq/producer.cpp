// Publishing: PUB, MPUB and DPUB pipelined on one connection, answered in order.

#include <spdlog/spdlog.h>

#include "client.hpp"

namespace ferry::nsq {
namespace {

constexpr Ms kMaxDefer{3'600'000};  // nsqd's default --max-req-timeout bounds DPUB

// Completes a batch split into several commands: ok once all parts are, or the first failure.
struct BatchState {
  std::size_t remaining = 0;
  bool failed = false;
  PublishCallback done;
};

void run_callback(const PublishCallback& done, const Status& s) {
  if (!done) return;
  try {
    done(s);
  } catch (const std::exception& e) {
    spdlog::error("nsq: a publish completion callback threw: {}", e.what());
  } catch (...) {
    spdlog::error("nsq: a publish completion callback threw");
  }
}

void check_topic(const std::string& topic) {
  if (!valid_name(topic) || !valid_nsq_name(topic))
    throw Error(Errc::invalid_argument,
                "topic '" + topic + "' is not valid for NSQ: use 1 to 64 characters from A-Z a-z 0-9 . _ -");
}

}  // namespace

Producer::Producer(std::shared_ptr<Engine> engine, const Options& options)
    : engine_(std::move(engine)), options_(options), addresses_(options.nsqd) {}

void Producer::publish(const std::string& topic, std::vector<Message> messages, PublishCallback done, Ms defer) {
  check_topic(topic);
  if (defer < Ms{0} || defer > kMaxDefer)
    throw Error(Errc::invalid_argument, "a deferred publish's delay must be between 0 and 1h (nsqd's max-req-timeout)");
  std::vector<std::string> bodies;
  bodies.reserve(messages.size());
  for (auto& m : messages) {
    stamp(m);
    bodies.push_back(encode_envelope(m));
    if (bodies.back().size() > options_.max_message_size) {
      run_callback(done,
                   {Errc::invalid_argument,
                    "message " + m.id + " for topic '" + topic + "' takes " + std::to_string(bodies.back().size()) +
                        " bytes in NSQ, over max_message_size=" + std::to_string(options_.max_message_size) +
                        " (nsqd's --max-msg-size; raise both to send larger messages)"});
      return;
    }
  }
  if (bodies.empty()) {
    run_callback(done, {});
    return;
  }

  // Commands: DPUB per message when deferred, PUB for one, MPUB within max_body_size.
  std::vector<Pending> parts;
  if (defer.count() > 0) {
    for (auto& body : bodies)
      parts.push_back({encode_command("DPUB " + topic + " " + std::to_string(defer.count()), body), 1, {}});
  } else if (bodies.size() == 1) {
    parts.push_back({encode_command("PUB " + topic, bodies[0]), 1, {}});
  } else {
    std::size_t first = 0;
    while (first < bodies.size()) {
      std::size_t size = 4 + mpub_overhead(bodies[first].size());
      std::size_t last = first + 1;
      while (last < bodies.size() && size + mpub_overhead(bodies[last].size()) <= options_.max_body_size)
        size += mpub_overhead(bodies[last++].size());
      if (last - first == 1)
        parts.push_back({encode_command("PUB " + topic, bodies[first]), 1, {}});
      else
        parts.push_back({encode_mpub(topic, bodies, first, last), last - first, {}});
      first = last;
    }
  }
  if (parts.size() == 1) {
    parts[0].done = std::move(done);
  } else {
    auto batch = std::make_shared<BatchState>();
    batch->remaining = parts.size();
    batch->done = std::move(done);
    for (auto& part : parts) {
      part.done = [batch](const Status& s) {
        if (batch->failed) return;
        if (!s.ok()) {
          batch->failed = true;
          run_callback(batch->done, s);
        } else if (--batch->remaining == 0) {
          run_callback(batch->done, s);
        }
      };
    }
  }

  const std::size_t n = bodies.size();
  std::unique_lock lock(mutex_);
  if (!closed_ && !engine_->on_io_thread()) {  // the io thread cannot wait for itself
    space_.wait_for(lock, options_.publish_timeout,
                    [&] { return closed_ || in_flight_ == 0 || in_flight_ + n <= options_.max_in_flight; });
  }
  Status failure;
  if (closed_) {
    failure = {Errc::closed, "publish to '" + topic + "' after the nsq broker " + options_.masked_url + " was closed"};
  } else if (in_flight_ != 0 && in_flight_ + n > options_.max_in_flight && !engine_->on_io_thread()) {
    failure = {Errc::timeout,
               "publish to '" + topic + "' timed out after " + std::to_string(options_.publish_timeout.count()) +
                   "ms waiting for room: " + std::to_string(in_flight_) + " publishes are unconfirmed (max_in_flight=" +
                   std::to_string(options_.max_in_flight) + "); is nsqd slow or unreachable?"};
  }
  if (!failure.ok()) {
    lock.unlock();
    for (auto& part : parts) run_callback(part.done, failure);
    return;
  }
  in_flight_ += n;
  // Posted under the lock: close() sets closed_ under it too, so its drain is queued after.
  auto shared_parts = std::make_shared<std::vector<Pending>>(std::move(parts));
  engine_->post([self = shared_from_this(), shared_parts] {
    for (auto& part : *shared_parts) self->enqueue(std::move(part));
  });
}

void Producer::publish_internal(const std::string& topic, std::string body, PublishCallback done) {
  enqueue({encode_command("PUB " + topic, body), 0, std::move(done)});
}

void Producer::enqueue(Pending pending) {
  if (io_closed_ && !drained_) {
    complete(pending, {Errc::closed, "publish after the nsq broker " + options_.masked_url + " was closed"});
    return;
  }
  if (conn_ && conn_->ready()) {
    conn_->send(std::move(pending.bytes));
    pending.bytes.clear();
    sent_.push_back(std::move(pending));
    return;
  }
  queued_.push_back(std::move(pending));
  ensure_connected();
}

void Producer::with_addresses(std::function<void(std::vector<Endpoint>)> fn) {
  if (!options_.nsqd.empty()) {
    fn(options_.nsqd);
    return;
  }
  // Only nsqlookupd is known: publish to the nsqd it lists in /nodes.
  struct Round {
    std::size_t remaining = 0;
    std::set<Endpoint> found;
    std::function<void(std::vector<Endpoint>)> fn;
  };
  auto round = std::make_shared<Round>();
  round->remaining = options_.lookupd.size();
  round->fn = std::move(fn);
  for (const auto& lookupd : options_.lookupd) {
    http_get(*engine_, lookupd, "/nodes", options_.connect_timeout,
             [round, lookupd](const Status& s, int code, std::string body) {
               if (s.ok() && code == 200) {
                 try {
                   for (auto& e : parse_producers(body)) round->found.insert(std::move(e));
                 } catch (const Error& e) {
                   spdlog::warn("nsq: nsqlookupd {} /nodes: {}", lookupd.str(), e.what());
                 }
               }
               if (--round->remaining == 0) round->fn({round->found.begin(), round->found.end()});
             });
  }
}

void Producer::ensure_connected() {
  if (connecting_ || (conn_ && conn_->ready()) || (io_closed_ && queued_.empty())) return;
  connecting_ = true;
  with_addresses([weak = weak_from_this()](std::vector<Endpoint> addresses) {
    auto self = weak.lock();
    if (!self) return;
    if (!addresses.empty()) self->addresses_ = std::move(addresses);
    self->attempt(0);
  });
}

void Producer::attempt(std::size_t tries) {
  if (addresses_.empty()) {
    on_ready(nullptr, {Errc::unavailable, "no nsqd to publish to: nsqlookupd lists none"}, tries);
    return;
  }
  const Endpoint endpoint = addresses_[current_ % addresses_.size()];
  auto conn = std::make_shared<Connection>(*engine_, options_, endpoint, Ms{0}, "producer");
  // The connection's handlers hold the producer weakly: a connection still closing when
  // the io thread stops must not keep the producer (and the engine) alive.
  std::weak_ptr<Connection> weak = conn;
  std::weak_ptr<Producer> weak_self = weak_from_this();
  conn->start(
      [weak_self, weak, tries](const Status& s) {
        if (auto self = weak_self.lock()) self->on_ready(weak.lock(), s, tries);
      },
      [weak_self, weak](Frame& frame) {
        auto self = weak_self.lock();
        auto c = weak.lock();
        if (self && c) self->on_frame(c, frame);
      },
      [weak_self, weak](const Status& s) {
        if (auto self = weak_self.lock()) self->on_closed(weak.lock(), s);
      });
  conn_ = conn;
}

void Producer::on_ready(const std::shared_ptr<Connection>& conn, const Status& s, std::size_t tries) {
  if (s.ok() && conn) {
    connecting_ = false;
    last_failure_ = {};
    spdlog::debug("nsq: publishing to {}", conn->describe());
    while (!queued_.empty()) {
      Pending p = std::move(queued_.front());
      queued_.pop_front();
      conn->send(std::move(p.bytes));
      p.bytes.clear();
      sent_.push_back(std::move(p));
    }
    auto waiters = std::move(connect_waiters_);
    connect_waiters_.clear();
    for (auto& w : waiters) w({});
    return;
  }
  if (conn_ == conn) conn_.reset();
  last_failure_ = s;
  ++current_;
  if (tries + 1 < addresses_.size()) {
    spdlog::debug("nsq: {}; trying the next nsqd", s.message);
    attempt(tries + 1);
    return;
  }
  connecting_ = false;
  Status failure{Errc::unavailable, "cannot publish to " + options_.masked_url + ": " + s.message +
                                        (conn && conn->reached() ? "" : "; is nsqd running?")};
  fail_queued(failure);
  auto waiters = std::move(connect_waiters_);
  connect_waiters_.clear();
  for (auto& w : waiters) w(failure);
  check_drained();
}

void Producer::on_frame(const std::shared_ptr<Connection>& conn, Frame& frame) {
  if (conn != conn_) return;
  if (frame.type == FrameType::message) {
    conn->close({Errc::protocol, conn->describe() + " sent a message to a publishing connection"});
    return;
  }
  if (sent_.empty()) {
    if (frame.type == FrameType::error)
      spdlog::warn("nsq: {} sent an error nobody asked for: {}", conn->describe(), frame.data);
    else
      conn->close({Errc::protocol, conn->describe() + " answered a command that was not sent: " + frame.data});
    return;
  }
  Pending p = std::move(sent_.front());
  sent_.pop_front();
  if (frame.type == FrameType::error) {
    complete(p, {errc_for(frame.data), conn->describe() + " refused the publish: " + frame.data});
    if (sent_.empty()) check_drained();
    return;
  }
  if (frame.data != kOk) {
    complete(p, {Errc::protocol, conn->describe() + " answered a publish with '" + frame.data + "'"});
    conn->close({Errc::protocol, "unexpected answer"});
    return;
  }
  complete(p, {});
  if (sent_.empty()) check_drained();
}

void Producer::on_closed(const std::shared_ptr<Connection>& conn, const Status& s) {
  if (!conn || conn != conn_) return;
  conn_.reset();
  if (!s.ok() && !io_closed_) spdlog::warn("nsq: publishing connection: {}", s.message);
  Status lost{Errc::unavailable,
              "the connection to " + conn->describe() + " ended before nsqd confirmed the publish (" +
                  (s.ok() ? std::string("closed") : s.message) + "); it may or may not have been published"};
  auto sent = std::move(sent_);
  sent_.clear();
  for (auto& p : sent) complete(p, lost);
  if (!queued_.empty() || !io_closed_) ensure_connected();
  check_drained();
}

void Producer::complete(Pending& pending, const Status& s) {
  if (pending.messages) {
    {
      std::lock_guard lock(mutex_);
      in_flight_ -= pending.messages;
    }
    space_.notify_all();
  }
  auto done = std::move(pending.done);
  pending.done = nullptr;
  run_callback(done, s);
}

void Producer::fail_queued(const Status& s) {
  auto queued = std::move(queued_);
  queued_.clear();
  for (auto& p : queued) complete(p, s);
}

void Producer::check_drained() {
  if (!io_closed_ || !drained_ || !sent_.empty() || !queued_.empty() || connecting_) return;
  auto drained = std::move(drained_);
  drained_ = nullptr;
  if (conn_) {
    auto conn = std::move(conn_);
    conn_.reset();
    conn->close_gracefully();
  }
  drained();
}

Status Producer::connect_now(Ms timeout) {
  auto promise = std::make_shared<std::promise<Status>>();
  auto future = promise->get_future();
  bool ran = engine_->run([&] {
    if (conn_ && conn_->ready()) {
      promise->set_value({});
      return;
    }
    connect_waiters_.push_back([promise](const Status& s) { promise->set_value(s); });
    ensure_connected();
  });
  if (!ran) return {Errc::closed, "the nsq broker " + options_.masked_url + " is closed"};
  if (future.wait_for(timeout) != std::future_status::ready)
    return {Errc::timeout,
            "no connection to an nsqd of " + options_.masked_url + " within " + std::to_string(timeout.count()) + "ms"};
  return future.get();
}

bool Producer::closed() {
  std::lock_guard lock(mutex_);
  return closed_;
}

void Producer::close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
  }
  space_.notify_all();
  auto promise = std::make_shared<std::promise<void>>();
  auto future = promise->get_future();
  const bool inline_close = engine_->on_io_thread();
  bool ran = engine_->run([&] {
    io_closed_ = true;
    drained_ = [promise] { promise->set_value(); };
    check_drained();
  });
  if (!ran || inline_close) return;
  if (future.wait_for(options_.publish_timeout + Ms{1000}) == std::future_status::ready) return;
  engine_->run([&] {  // nsqd did not answer in time: give up on what is left
    drained_ = nullptr;
    Status late{Errc::timeout, "nsqd did not confirm the publish before the nsq broker was closed"};
    auto sent = std::move(sent_);
    sent_.clear();
    for (auto& p : sent) complete(p, late);
    fail_queued(late);
    if (conn_) conn_->close({});
    conn_.reset();
  });
}

}  // namespace ferry::nsq
