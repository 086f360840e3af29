#include "amqp_subscription.hpp"

#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "amqp_codec.hpp"
#include "amqp_connection.hpp"
#include "ferry/backends/amqp.hpp"

namespace ferry::amqp::detail {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr amqp_channel_t kConsumeChannel = 1;
constexpr amqp_channel_t kCopyChannel = 2;
constexpr Ms kFirstBackoff{100};
constexpr Ms kMaxBackoff{2000};
constexpr Ms kIdlePoll{250};
constexpr Ms kWarnEvery{5000};

std::string quoted(const std::string& s) {
  return "'" + s + "'";
}

}  // namespace

GroupNames GroupNames::of(const Options& options, const SubscribeOptions& s) {
  GroupNames n;
  n.exchange = s.topic;
  n.queue = options.queue_for(s.topic, s.group);
  n.retry_queue = n.queue + ".retry";
  n.dead_letter = s.effective_dead_letter_topic();
  n.keeper_queue = options.queue_for(n.dead_letter, std::string(dead_letter_keeper_group));
  for (const std::string* name : {&n.exchange, &n.queue, &n.retry_queue, &n.dead_letter, &n.keeper_queue}) {
    if (name->size() > 255)
      throw Error(Errc::invalid_argument, "the AMQP name '" + name->substr(0, 60) + "…' that topic '" + s.topic +
                                              "' and group '" + s.group +
                                              "' make is longer than 255 bytes; use shorter names");
  }
  return n;
}

Subscription::Subscription(std::shared_ptr<const Options> options, SubscribeOptions subscribe)
    : options_(std::move(options)), subscribe_(std::move(subscribe)) {
  names_ = GroupNames::of(*options_, subscribe_);
  prefetch_ = std::clamp(options_->prefetch.value_or(subscribe_.prefetch), 1, 65535);
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) throw Error(Errc::internal, "eventfd failed: " + std::string(std::strerror(errno)));
}

Subscription::~Subscription() {
  close();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void Subscription::start() {
  auto started = started_.get_future();
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ferry-amqp-sub");
    run();
  });
  // Connecting and declaring are bounded by connect_timeout each; this bound is a backstop.
  const auto limit = options_->connect_timeout * 12 + Ms{2000};
  if (started.wait_for(limit) != std::future_status::ready) {
    close();
    throw Error(Errc::timeout, "subscribing to '" + subscribe_.topic + "' as group '" + subscribe_.group + "' on " +
                                   options_->display + " took longer than " + std::to_string(limit.count()) + "ms");
  }
  Status status = started.get();
  if (!status.ok()) {
    close();
    throw Error(status.code, "subscribing to '" + subscribe_.topic + "' as group '" + subscribe_.group +
                                 "' failed: " + status.message);
  }
}

void Subscription::run() {
  Ms backoff = kFirstBackoff;
  bool first = true;
  SteadyClock::time_point last_warning{};
  while (true) {
    {
      std::lock_guard lock(mutex_);
      if (closed_) break;
    }
    std::unique_ptr<Connection> conn;
    try {
      conn = Connection::open(*options_);
      setup(*conn);
    } catch (const Error& e) {
      if (conn) conn->close();
      if (first) {
        started_.set_value({e.code(), e.what()});
        return;
      }
      if (SteadyClock::now() - last_warning >= kWarnEvery) {
        last_warning = SteadyClock::now();
        spdlog::warn("amqp subscriber {}/{}: {}; retrying", subscribe_.topic, subscribe_.group, e.what());
      }
      wait_io(nullptr, backoff);
      backoff = std::min(kMaxBackoff, backoff * 2);
      continue;
    }
    if (first) {
      first = false;
      started_.set_value(Status::success());
    } else {
      spdlog::info("amqp subscriber {}/{}: consuming again from {}", subscribe_.topic, subscribe_.group,
                   options_->display);
    }
    backoff = kFirstBackoff;
    Served how = serve(*conn);
    discard_generation();
    if (how == Served::closed) break;
    spdlog::warn("amqp subscriber {}/{}: {}; reconnecting", subscribe_.topic, subscribe_.group, conn->lost_reason());
  }
}

void Subscription::setup(Connection& conn) {
  const bool ephemeral = subscribe_.ephemeral;
  conn.open_channel(kConsumeChannel);
  conn.declare_exchange(kConsumeChannel, names_.exchange);
  conn.declare_queue(kConsumeChannel, names_.queue, !ephemeral, ephemeral);
  conn.bind_queue(kConsumeChannel, names_.queue, names_.exchange, options_->routing_key_for(names_.exchange));
  conn.declare_queue(kConsumeChannel, names_.retry_queue, !ephemeral, false, DeadLetterTo{names_.queue});
  dead_letter_declared_ = false;
  if (!ephemeral) declare_dead_letter(conn, kConsumeChannel);
  conn.qos(kConsumeChannel, prefetch_);
  conn.open_channel(kCopyChannel);
  conn.confirm_select(kCopyChannel);
  copies_.clear();
  first_copy_tag_ = 1;
  acked_upto_ = 0;
  incoming_.active = false;
  returning_ = false;
  conn.consume(kConsumeChannel, names_.queue);
}

void Subscription::declare_dead_letter(Connection& conn, std::uint16_t channel) {
  conn.declare_exchange(channel, names_.dead_letter);
  conn.declare_queue(channel, names_.keeper_queue, true, false);
  conn.bind_queue(channel, names_.keeper_queue, names_.dead_letter, options_->routing_key_for(names_.dead_letter));
  dead_letter_declared_ = true;
}

Subscription::Served Subscription::serve(Connection& conn) {
  {
    std::lock_guard lock(mutex_);
    generation_of_conn_ = ++generation_;
  }
  next_lease_check_ = SteadyClock::now();
  std::deque<Settlement> work;
  std::vector<std::uint64_t> acks;
  while (true) {
    if (!conn.alive()) return Served::lost;
    bool closing = false;
    {
      std::lock_guard lock(mutex_);
      work.swap(settlements_);
      closing = closed_;
    }
    acks.clear();
    for (auto& s : work) {
      if (!conn.alive()) break;
      if (s.outcome == Outcome::ack && !s.lease_expired) {
        if (s.entry.generation == generation_of_conn_) acks.push_back(s.entry.tag);
        continue;
      }
      perform(conn, s);
    }
    work.clear();
    if (!acks.empty() && conn.alive()) send_acks(conn, acks);
    if (!conn.alive()) return Served::lost;
    read_frames(conn, Ms{0});
    if (!conn.alive()) return Served::lost;
    if (closing) {
      finish(conn);
      return Served::closed;
    }
    check_leases();
    auto until_lease = std::chrono::duration_cast<Ms>(next_lease_check_ - SteadyClock::now());
    wait_io(&conn, std::clamp(until_lease, Ms{1}, kIdlePoll));
  }
}

void Subscription::read_frames(Connection& conn, Ms first_wait) {
  amqp_frame_t frame;
  Ms wait = first_wait;
  while (conn.alive()) {
    int rc = conn.next_frame(frame, wait);
    wait = Ms{0};
    if (rc != AMQP_STATUS_OK) break;
    handle(conn, frame);
  }
  if (conn.alive()) conn.release_buffers();
}

void Subscription::handle(Connection& conn, const amqp_frame_t& frame) {
  switch (frame.frame_type) {
    case AMQP_FRAME_METHOD:
      switch (frame.payload.method.id) {
        case AMQP_BASIC_DELIVER_METHOD: {
          auto* m = static_cast<amqp_basic_deliver_t*>(frame.payload.method.decoded);
          incoming_.active = true;
          incoming_.have_header = false;
          incoming_.tag = m->delivery_tag;
          incoming_.redelivered = m->redelivered != 0;
          incoming_.message = Message{};
          break;
        }
        case AMQP_BASIC_ACK_METHOD:
          if (frame.channel == kCopyChannel) {
            auto* m = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
            on_copy_confirm(conn, m->delivery_tag, m->multiple != 0, true);
          }
          break;
        case AMQP_BASIC_NACK_METHOD:
          if (frame.channel == kCopyChannel) {
            auto* m = static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
            on_copy_confirm(conn, m->delivery_tag, m->multiple != 0, false);
          }
          break;
        case AMQP_BASIC_RETURN_METHOD: {
          auto* m = static_cast<amqp_basic_return_t*>(frame.payload.method.decoded);
          returning_ = true;
          return_body_left_ = 0;
          return_text_ = "unroutable: no queue bound to exchange '" + string_of(m->exchange) + "' takes routing key '" +
                         string_of(m->routing_key) + "' (" + string_of(m->reply_text) + ")";
          break;
        }
        case AMQP_BASIC_CANCEL_METHOD:
          conn.mark_lost("the broker cancelled the consumer of queue '" + names_.queue + "' (was it deleted?)");
          break;
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD: {
          std::string why = conn.answer_close(frame);
          conn.mark_lost(why);
          break;
        }
        default:
          break;
      }
      break;
    case AMQP_FRAME_HEADER: {
      auto* p = static_cast<amqp_basic_properties_t*>(frame.payload.properties.decoded);
      if (frame.channel == kConsumeChannel && incoming_.active) {
        Decoded d = decode(*p);
        incoming_.message = std::move(d.message);
        incoming_.deliveries = d.deliveries;
        incoming_.size = frame.payload.properties.body_size;
        incoming_.have_header = true;
        incoming_.message.payload.reserve(static_cast<std::size_t>(incoming_.size));
        if (incoming_.size == 0) deliver(conn);
      } else if (frame.channel == kCopyChannel && returning_) {
        if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) {
          std::string id = string_of(p->message_id);
          for (auto& c : copies_) {
            if (!c.resolved && c.returned.empty() && c.message_id == id) {
              c.returned = return_text_;
              break;
            }
          }
        }
        return_body_left_ = frame.payload.properties.body_size;
        if (return_body_left_ == 0) returning_ = false;
      }
      break;
    }
    case AMQP_FRAME_BODY: {
      const amqp_bytes_t& b = frame.payload.body_fragment;
      if (frame.channel == kConsumeChannel && incoming_.active && incoming_.have_header) {
        incoming_.message.payload.append(static_cast<const char*>(b.bytes), b.len);
        if (incoming_.message.payload.size() >= incoming_.size) deliver(conn);
      } else if (frame.channel == kCopyChannel && returning_) {
        return_body_left_ -= std::min<std::uint64_t>(return_body_left_, b.len);
        if (return_body_left_ == 0) returning_ = false;
      }
      break;
    }
    default:
      break;
  }
}

void Subscription::deliver(Connection&) {
  incoming_.active = false;
  const int attempt = incoming_.deliveries + 1 + (incoming_.redelivered ? 1 : 0);
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;  // the broker requeues it when the channel closes
    const std::uint64_t token = next_token_++;
    Entry e;
    e.tag = incoming_.tag;
    e.generation = generation_;
    e.attempt = attempt;
    e.message = std::move(incoming_.message);
    e.deadline = SteadyClock::now() + subscribe_.ack_timeout;
    entries_.emplace(token, std::move(e));
    ready_.push_back(token);
  }
  ready_cv_.notify_one();
}

std::optional<Delivery> Subscription::receive(Ms timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  std::unique_lock lock(mutex_);
  while (true) {
    if (closed_) return std::nullopt;
    while (!ready_.empty()) {
      const std::uint64_t token = ready_.front();
      ready_.pop_front();
      auto it = entries_.find(token);
      if (it == entries_.end()) continue;  // its lease ran out while it waited
      Entry& e = it->second;
      e.received = true;
      e.deadline = SteadyClock::now() + subscribe_.ack_timeout;
      return Delivery(e.message, subscribe_.topic, subscribe_.group, e.attempt, weak_from_this(), token);
    }
    if (ready_cv_.wait_until(lock, deadline) == std::cv_status::timeout && ready_.empty()) return std::nullopt;
  }
}

void Subscription::settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept {
  try {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      auto it = entries_.find(token);
      if (it == entries_.end() || !it->second.received) return;  // stale: its lease ran out or the connection changed
      Settlement s;
      s.entry = std::move(it->second);
      s.outcome = outcome;
      s.delay = delay;
      s.reason = reason;
      entries_.erase(it);
      settlements_.push_back(std::move(s));
    }
    if (sleeping_.load()) wake();
  } catch (const std::exception& e) {
    spdlog::error("amqp subscriber {}/{}: settling a delivery failed: {}", subscribe_.topic, subscribe_.group,
                  e.what());
  }
}

void Subscription::perform(Connection& conn, Settlement& s) {
  std::uint64_t generation;
  {
    std::lock_guard lock(mutex_);
    generation = generation_;
  }
  if (s.entry.generation != generation) return;  // delivered on a lost connection: the broker has it back
  Entry& e = s.entry;
  switch (s.outcome) {
    case Outcome::ack: {
      int rc = amqp_basic_ack(conn.state(), kConsumeChannel, e.tag, 0);
      if (rc != AMQP_STATUS_OK)
        conn.mark_lost("connection to " + options_->display + " lost while acking (" + Connection::describe_status(rc) +
                       ")");
      return;
    }
    case Outcome::nack: {
      // A lease that ran out before receive() does not count as an attempt.
      const int deliveries = s.lease_expired && !e.received ? e.attempt - 1 : e.attempt;
      if (s.delay.count() > 0) {
        publish_copy(conn, "", names_.retry_queue, e.message, deliveries, s.delay.count(), e.tag,
                     "the retry queue " + quoted(names_.retry_queue));
      } else {
        publish_copy(conn, "", names_.queue, e.message, deliveries, 0, e.tag, "the queue " + quoted(names_.queue));
      }
      return;
    }
    case Outcome::reject: {
      if (!dead_letter_declared_) {
        try {
          declare_dead_letter(conn, kCopyChannel);
        } catch (const Error& err) {
          spdlog::error(
              "amqp subscriber {}/{}: cannot declare the dead-letter topic '{}': {}; message {} goes back "
              "to the queue",
              subscribe_.topic, subscribe_.group, names_.dead_letter, err.what(), e.message.id);
          if (conn.alive()) {
            if (conn.channel_closed(kCopyChannel))
              conn.mark_lost("the copy channel was closed");
            else
              amqp_basic_nack(conn.state(), kConsumeChannel, e.tag, 0, 1);
          }
          return;
        }
      }
      Message m = std::move(e.message);
      m.headers.insert_or_assign(header::error, s.reason);
      m.headers.insert_or_assign(header::attempts, std::to_string(e.attempt));
      m.headers.insert_or_assign(header::original_topic, subscribe_.topic);
      m.headers.insert_or_assign(header::original_group, subscribe_.group);
      publish_copy(conn, names_.dead_letter, options_->routing_key_for(names_.dead_letter), m, 0, 0, e.tag,
                   "the dead-letter topic " + quoted(names_.dead_letter));
      return;
    }
  }
}

// Acks with one basic.ack (multiple) every tag below the lowest delivery still held,
// and the rest one by one: fewer frames for the broker to handle.
void Subscription::send_acks(Connection& conn, std::vector<std::uint64_t>& tags) {
  std::sort(tags.begin(), tags.end());
  std::uint64_t lowest_held = UINT64_MAX;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [token, e] : entries_)
      if (e.generation == generation_of_conn_) lowest_held = std::min(lowest_held, e.tag);
    for (const auto& s : settlements_)
      if (s.entry.generation == generation_of_conn_) lowest_held = std::min(lowest_held, s.entry.tag);
  }
  for (const auto& c : copies_)
    if (!c.resolved) lowest_held = std::min(lowest_held, c.original_tag);
  std::size_t below = 0;
  while (below < tags.size() && tags[below] < lowest_held && tags[below] > acked_upto_) ++below;
  int rc = AMQP_STATUS_OK;
  std::size_t next = 0;
  if (below >= 2) {
    rc = amqp_basic_ack(conn.state(), kConsumeChannel, tags[below - 1], 1);
    acked_upto_ = tags[below - 1];
    next = below;
  }
  for (; next < tags.size() && rc == AMQP_STATUS_OK; ++next)
    rc = amqp_basic_ack(conn.state(), kConsumeChannel, tags[next], 0);
  if (rc != AMQP_STATUS_OK)
    conn.mark_lost("connection to " + options_->display + " lost while acking (" + Connection::describe_status(rc) +
                   ")");
}

void Subscription::publish_copy(Connection& conn, const std::string& exchange, const std::string& routing_key,
                                const Message& message, int deliveries, long long expiration_ms,
                                std::uint64_t original_tag, std::string where) {
  Encoded encoded;
  encoded.encode(message, deliveries, expiration_ms);
  int rc = amqp_basic_publish(conn.state(), kCopyChannel, bytes_of(exchange), bytes_of(routing_key), 1, 0,
                              encoded.properties(), encoded.body());
  if (rc != AMQP_STATUS_OK) {
    conn.mark_lost("connection to " + options_->display + " lost while moving a message (" +
                   Connection::describe_status(rc) + ")");
    return;
  }
  copies_.push_back(PendingCopy{original_tag, message.id, std::move(where), {}, false});
}

void Subscription::on_copy_confirm(Connection& conn, std::uint64_t tag, bool multiple, bool ok) {
  if (tag < first_copy_tag_) return;
  const std::uint64_t last = tag - first_copy_tag_;
  if (last >= copies_.size()) return;
  for (std::uint64_t i = multiple ? 0 : last; i <= last; ++i) {
    PendingCopy& c = copies_[i];
    if (c.resolved) continue;
    c.resolved = true;
    int rc;
    if (ok && c.returned.empty()) {
      rc = amqp_basic_ack(conn.state(), kConsumeChannel, c.original_tag, 0);
    } else {
      spdlog::warn("amqp subscriber {}/{}: could not move message {} to {} ({}); it goes back to the queue",
                   subscribe_.topic, subscribe_.group, c.message_id, c.where,
                   ok ? c.returned : std::string("the broker refused it"));
      rc = amqp_basic_nack(conn.state(), kConsumeChannel, c.original_tag, 0, 1);
    }
    if (rc != AMQP_STATUS_OK) {
      conn.mark_lost("connection to " + options_->display + " lost while acking (" + Connection::describe_status(rc) +
                     ")");
      return;
    }
  }
  while (!copies_.empty() && copies_.front().resolved) {
    copies_.pop_front();
    ++first_copy_tag_;
  }
}

void Subscription::check_leases() {
  const auto now = SteadyClock::now();
  if (now < next_lease_check_) return;
  const Ms step = std::min<Ms>(kIdlePoll, subscribe_.ack_timeout);
  auto next = now + step;
  std::size_t expired = 0;
  {
    std::lock_guard lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.deadline > now) {
        next = std::min(next, it->second.deadline);
        ++it;
        continue;
      }
      Settlement s;
      s.entry = std::move(it->second);
      s.outcome = Outcome::nack;
      s.lease_expired = true;
      settlements_.push_back(std::move(s));
      it = entries_.erase(it);
      ++expired;
    }
  }
  if (expired)
    spdlog::debug("amqp subscriber {}/{}: {} lease(s) ran out after {}ms; handing them back", subscribe_.topic,
                  subscribe_.group, expired, subscribe_.ack_timeout.count());
  next_lease_check_ = next;
}

void Subscription::finish(Connection& conn) {
  // Settlements made before close() have been performed; wait for their copies.
  const auto deadline = SteadyClock::now() + options_->publish_timeout;
  while (conn.alive() && !copies_.empty() && SteadyClock::now() < deadline) read_frames(conn, Ms{50});
  if (!copies_.empty())
    spdlog::warn(
        "amqp subscriber {}/{}: {} nack/reject copies unconfirmed at close; their messages go back to the "
        "queue",
        subscribe_.topic, subscribe_.group, copies_.size());
  if (subscribe_.ephemeral && conn.alive()) {
    try {
      if (conn.channel_closed(kCopyChannel)) conn.open_channel(kCopyChannel);
      conn.delete_queue(kCopyChannel, names_.queue);
      conn.delete_queue(kCopyChannel, names_.retry_queue);
    } catch (const Error& e) {
      spdlog::warn("amqp subscriber {}/{}: deleting the ephemeral group's queues failed: {}", subscribe_.topic,
                   subscribe_.group, e.what());
    }
  }
  conn.close();
}

void Subscription::discard_generation() {
  std::lock_guard lock(mutex_);
  entries_.clear();
  ready_.clear();
  settlements_.clear();
}

void Subscription::close() {
  std::lock_guard close_lock(close_mutex_);
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    ready_.clear();
  }
  ready_cv_.notify_all();
  wake();
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

void Subscription::wake() {
  std::uint64_t one = 1;
  [[maybe_unused]] auto n = write(wake_fd_, &one, sizeof one);
}

void Subscription::wait_io(Connection* conn, Ms timeout) {
  if (conn && (amqp_frames_enqueued(conn->state()) || amqp_data_in_buffer(conn->state()))) return;
  sleeping_.store(true);
  {
    std::lock_guard lock(mutex_);
    if (!settlements_.empty() || closed_) {
      sleeping_.store(false);
      return;
    }
  }
  pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {conn ? conn->fd() : -1, POLLIN, 0}};
  poll(fds, conn ? 2 : 1, static_cast<int>(timeout.count()));
  sleeping_.store(false);
  std::uint64_t value;
  [[maybe_unused]] auto n = ::read(wake_fd_, &value, sizeof value);
}

}  // namespace ferry::amqp::detail
