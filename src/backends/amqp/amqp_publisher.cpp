#include "amqp_publisher.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <future>
#include <set>
#include <thread>

#include "amqp_codec.hpp"
#include "amqp_connection.hpp"
#include "ferry/subscriber.hpp"

namespace ferry::amqp::detail {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr amqp_channel_t kPublishChannel = 1;
constexpr amqp_channel_t kDeclareChannel = 2;
constexpr Ms kMinRetryGap{100};
constexpr Ms kFirstBackoff{100};
constexpr Ms kMaxBackoff{2000};
constexpr Ms kIdlePoll{100};
constexpr Ms kWarnEvery{5000};  // at most one "cannot reach" warning per connection this often

void run_callback(const PublishCallback& done, const Status& status) noexcept {
  if (!done) return;
  try {
    done(status);
  } catch (const std::exception& e) {
    spdlog::error("amqp publisher: a completion callback threw: {}", e.what());
  } catch (...) {
    spdlog::error("amqp publisher: a completion callback threw");
  }
}

std::string ms_text(Ms ms) {
  return std::to_string(ms.count()) + "ms";
}

}  // namespace

// One publish_batch_async call. Touched only by the thread of the link it was given to,
// after submission.
struct Batch {
  std::string topic;
  std::string routing_key;
  std::vector<Message> messages;
  PublishCallback done;
  SteadyClock::time_point deadline;  // to get room and to be sent
  std::size_t next = 0;              // the next message to send
  std::size_t unresolved = 0;        // messages neither confirmed nor failed
  bool finished = false;             // `done` has run
};

// One publisher connection and the thread that owns it.
class PublisherLink {
 public:
  enum class State { idle, up, down };

  PublisherLink(PublisherPool& pool, std::shared_ptr<const Options> options, int index)
      : pool_(pool), options_(std::move(options)), index_(index) {
    wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) throw Error(Errc::internal, "eventfd failed: " + std::string(std::strerror(errno)));
  }

  ~PublisherLink() {
    stop();
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  // Connects on the calling thread, before start(). Throws Error(unavailable).
  void connect_now() {
    conn_ = Connection::open(*options_);
    setup_channels();
    state_ = State::up;
    wanted_ = true;
    connected_once_ = true;
  }

  void start() {
    thread_ = std::thread([this] {
      std::string name = "ferry-amqp-pub" + std::to_string(index_);
      name.resize(std::min<std::size_t>(name.size(), 15));
      pthread_setname_np(pthread_self(), name.c_str());
      run();
    });
  }

  State state() const noexcept { return state_.load(); }

  void submit(std::shared_ptr<Batch> batch) {
    {
      std::lock_guard lock(mutex_);
      queue_.push_back(std::move(batch));
    }
    if (sleeping_.load()) wake();
  }

  std::future<Status> ping() {
    std::promise<Status> promise;
    auto future = promise.get_future();
    {
      std::lock_guard lock(mutex_);
      if (stopped_) {
        promise.set_value({Errc::closed, "the amqp publisher is closed"});
        return future;
      }
      pings_.push_back(std::move(promise));
    }
    wake();
    return future;
  }

  // Completes what was submitted (each publish within its deadline), closes the
  // connection and joins the thread.
  void stop() {
    std::lock_guard stop_lock(stop_mutex_);
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake();
    if (thread_.joinable()) thread_.join();
  }

 private:
  struct Slot {
    std::shared_ptr<Batch> batch;
    std::size_t index = 0;
    SteadyClock::time_point deadline{};  // for the confirm: publish_timeout after sending
    bool resolved = false;
    std::string returned;  // why the broker returned it, if it did
  };

  void wake() {
    std::uint64_t one = 1;
    [[maybe_unused]] auto n = write(wake_fd_, &one, sizeof one);
  }

  bool connected() const { return conn_ && conn_->alive(); }

  void setup_channels() {
    conn_->open_channel(kPublishChannel);
    conn_->confirm_select(kPublishChannel);
    conn_->open_channel(kDeclareChannel);
    window_.clear();
    first_tag_ = 1;
    unresolved_in_window_ = 0;
    declared_.clear();
    returning_ = false;
    return_body_left_ = 0;
  }

  void run() {
    while (true) {
      bool stopping = false;
      {
        std::lock_guard lock(mutex_);
        for (auto& b : queue_) sending_.push_back(std::move(b));
        queue_.clear();
        for (auto& p : pings_) pending_pings_.push_back(std::move(p));
        pings_.clear();
        stopping = stopping_;
        if (stopping && sending_.empty() && unresolved_in_window_ == 0 && pending_pings_.empty()) {
          stopped_ = true;
          break;
        }
      }
      if (conn_ && !conn_->alive()) on_lost();
      if (!conn_) {
        disconnected_step(stopping);
        continue;
      }
      answer_pings();
      if (connected()) send();
      if (connected()) expire();
      // Read only when the socket has something or the wait timed out (heartbeats):
      // an empty read costs system calls on every round.
      if (connected() && wait_io()) read();
    }
    if (conn_) {
      conn_->close();
      conn_.reset();
    }
    state_ = State::down;
  }

  void answer_pings() {
    if (pending_pings_.empty()) return;
    Status status;
    try {
      conn_->ping(kDeclareChannel);
    } catch (const Error& e) {
      status = {e.code(), e.what()};
      reopen_declare_channel();
    }
    for (auto& p : pending_pings_) p.set_value(status);
    pending_pings_.clear();
  }

  void reopen_declare_channel() {
    if (!connected() || !conn_->channel_closed(kDeclareChannel)) return;
    try {
      conn_->open_channel(kDeclareChannel);
    } catch (const Error&) {
    }
  }

  // The connection is down (or was never made): reconnect if it is time, and fail what
  // waits for it if that does not work.
  void disconnected_step(bool stopping) {
    const bool work = !sending_.empty() || !pending_pings_.empty();
    if (!wanted_ && !work && !stopping) {
      wait_wake(Ms{500});
      return;
    }
    wanted_ = true;
    const auto now = SteadyClock::now();
    const auto since = now - last_attempt_;
    const bool try_now = !stopping && (since >= backoff_ || (work && since >= kMinRetryGap));
    if (try_now || (stopping && work && since >= kMinRetryGap)) {
      last_attempt_ = now;
      try {
        conn_ = Connection::open(*options_);
        setup_channels();
        state_ = State::up;
        backoff_ = kFirstBackoff;
        if (connected_once_) spdlog::info("amqp publisher {}: reconnected to {}", index_, options_->display);
        connected_once_ = true;
        return;
      } catch (const Error& e) {
        conn_.reset();
        state_ = State::down;
        last_error_ = {e.code() == Errc::timeout ? Errc::unavailable : e.code(), e.what()};
        if (now - last_warning_ >= kWarnEvery) {
          spdlog::warn("amqp publisher {}: {}; retrying", index_, e.what());
          last_warning_ = now;
        }
        backoff_ = std::min(kMaxBackoff, backoff_ * 2);
      }
    }
    if (work) {
      if (last_error_.ok()) last_error_ = {Errc::unavailable, "cannot reach " + options_->display};
      while (!sending_.empty()) {
        auto batch = std::move(sending_.front());
        sending_.pop_front();
        fail(*batch, last_error_);
        drop_unsent(*batch);
      }
      for (auto& p : pending_pings_) p.set_value(last_error_);
      pending_pings_.clear();
    }
    if (!stopping) {
      auto left = std::chrono::duration_cast<Ms>(backoff_ - (SteadyClock::now() - last_attempt_));
      wait_wake(std::clamp(left, Ms{1}, Ms{500}));
    }
  }

  void on_lost() {
    const std::string why = conn_->lost_reason();
    spdlog::warn("amqp publisher {}: {}", index_, why);
    fail_window({Errc::unavailable, "the connection was lost before the broker confirmed the message (" + why +
                                        "); it may or may not have been stored"});
    conn_.reset();
    state_ = State::down;
    last_error_ = {Errc::unavailable, why};
    last_attempt_ = {};  // try again at once
    backoff_ = kFirstBackoff;
  }

  // Sends what the window allows. A burst of several messages is corked (TCP_CORK), so
  // that its frames leave in full segments: fewer packets for the broker to read.
  void send() {
    const bool burst =
        sending_.size() > 1 || (!sending_.empty() && sending_.front()->messages.size() - sending_.front()->next > 1);
    const bool cork = burst && unresolved_in_window_ + 1 < options_->confirm_window;
    if (cork) set_cork(true);
    send_window();
    if (cork && connected()) set_cork(false);
  }

  void set_cork(bool on) {
    int value = on ? 1 : 0;
    setsockopt(conn_->fd(), IPPROTO_TCP, TCP_CORK, &value, sizeof value);
  }

  void send_window() {
    while (connected() && !sending_.empty() && unresolved_in_window_ < options_->confirm_window) {
      Batch& b = *sending_.front();
      if (b.finished) {
        drop_unsent(b);
        sending_.pop_front();
        continue;
      }
      if (b.next == 0) {
        if (SteadyClock::now() > b.deadline) {
          fail(b, {Errc::timeout, "publish to '" + b.topic + "' timed out after " + ms_text(options_->publish_timeout) +
                                      " waiting for the confirm window of " + options_->display +
                                      " (is the broker slow or blocking publishers?)"});
          continue;
        }
        if (!declared_.count(b.topic) && !declare(b)) continue;
      }
      const std::size_t index = b.next;
      encoded_.encode(b.messages[index]);
      int rc = amqp_basic_publish(conn_->state(), kPublishChannel, bytes_of(b.topic), bytes_of(b.routing_key), 1, 0,
                                  encoded_.properties(), encoded_.body());
      if (rc != AMQP_STATUS_OK) {
        conn_->mark_lost("connection to " + options_->display + " lost while publishing (" +
                         Connection::describe_status(rc) + ")");
        return;
      }
      window_.push_back(Slot{sending_.front(), index, SteadyClock::now() + options_->publish_timeout, false, {}});
      ++unresolved_in_window_;
      if (++b.next == b.messages.size()) sending_.pop_front();
    }
  }

  // Declares the batch's exchange on the declare channel. False if the batch failed or
  // the connection was lost (the batch then waits for the next connection).
  bool declare(Batch& b) {
    try {
      conn_->declare_exchange(kDeclareChannel, b.topic);
      declared_.insert(b.topic);
      return true;
    } catch (const Error& e) {
      if (!connected()) return false;
      fail(b, {e.code(), "publish to '" + b.topic + "' failed: " + e.what()});
      reopen_declare_channel();
      return false;
    }
  }

  void read() {
    amqp_frame_t frame;
    while (connected()) {
      int rc = conn_->next_frame(frame, Ms{0});
      if (rc != AMQP_STATUS_OK) break;
      handle(frame);
    }
    if (connected()) conn_->release_buffers();
  }

  void handle(const amqp_frame_t& frame) {
    switch (frame.frame_type) {
      case AMQP_FRAME_METHOD:
        switch (frame.payload.method.id) {
          case AMQP_BASIC_ACK_METHOD: {
            auto* m = static_cast<amqp_basic_ack_t*>(frame.payload.method.decoded);
            if (frame.channel == kPublishChannel) on_confirm(m->delivery_tag, m->multiple, {});
            break;
          }
          case AMQP_BASIC_NACK_METHOD: {
            auto* m = static_cast<amqp_basic_nack_t*>(frame.payload.method.decoded);
            if (frame.channel == kPublishChannel)
              on_confirm(m->delivery_tag, m->multiple,
                         {Errc::unavailable, "the broker refused the message (basic.nack): it was not stored"});
            break;
          }
          case AMQP_BASIC_RETURN_METHOD: {
            auto* m = static_cast<amqp_basic_return_t*>(frame.payload.method.decoded);
            returning_ = true;
            return_body_left_ = 0;
            return_text_ = "unroutable: no queue bound to exchange '" + string_of(m->exchange) +
                           "' takes routing key '" + string_of(m->routing_key) + "' (" + string_of(m->reply_text) +
                           "); subscribe a group to the topic first";
            break;
          }
          case AMQP_CHANNEL_CLOSE_METHOD: {
            std::string why = conn_->answer_close(frame);
            if (frame.channel == kPublishChannel) {
              fail_window({Errc::unavailable, "publish failed: " + why});
              declared_.clear();
              try {
                conn_->open_channel(kPublishChannel);
                conn_->confirm_select(kPublishChannel);
              } catch (const Error& e) {
                conn_->mark_lost(e.what());
              }
            } else {
              reopen_declare_channel();
            }
            break;
          }
          case AMQP_CONNECTION_CLOSE_METHOD:
            conn_->answer_close(frame);
            break;
          default:
            break;
        }
        break;
      case AMQP_FRAME_HEADER:
        if (returning_ && frame.channel == kPublishChannel) {
          auto* p = static_cast<amqp_basic_properties_t*>(frame.payload.properties.decoded);
          if (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) on_return(string_of(p->message_id));
          return_body_left_ = frame.payload.properties.body_size;
          if (return_body_left_ == 0) returning_ = false;
        }
        break;
      case AMQP_FRAME_BODY:
        if (returning_ && frame.channel == kPublishChannel) {
          return_body_left_ -= std::min<std::uint64_t>(return_body_left_, frame.payload.body_fragment.len);
          if (return_body_left_ == 0) returning_ = false;
        }
        break;
      default:
        break;
    }
  }

  void on_confirm(std::uint64_t tag, bool multiple, const Status& status) {
    if (tag < first_tag_) return;
    std::uint64_t last = tag - first_tag_;
    if (last >= window_.size()) return;
    for (std::uint64_t i = multiple ? 0 : last; i <= last; ++i) resolve_slot(window_[i], status);
    while (!window_.empty() && window_.front().resolved) {
      window_.pop_front();
      ++first_tag_;
    }
  }

  void on_return(const std::string& message_id) {
    for (auto& slot : window_) {
      if (slot.resolved || !slot.returned.empty()) continue;
      if (slot.batch->messages[slot.index].id == message_id) {
        slot.returned = return_text_;
        return;
      }
    }
  }

  void resolve_slot(Slot& slot, const Status& status) {
    if (slot.resolved) return;
    slot.resolved = true;
    --unresolved_in_window_;
    if (status.ok() && !slot.returned.empty())
      resolve(*slot.batch, 1, {Errc::unavailable, slot.returned});
    else
      resolve(*slot.batch, 1, status);
    slot.batch.reset();
  }

  // Fails every unconfirmed message (the channel or connection is gone).
  void fail_window(const Status& status) {
    for (auto& slot : window_) resolve_slot(slot, status);
    window_.clear();
    first_tag_ = 1;
    unresolved_in_window_ = 0;
    returning_ = false;
  }

  // Fails the oldest unconfirmed messages whose confirm is overdue.
  void expire() {
    const auto now = SteadyClock::now();
    for (auto& slot : window_) {
      if (slot.resolved) continue;
      if (slot.deadline > now) break;
      resolve_slot(slot, {Errc::timeout, "no confirm from " + options_->display +
                                             " within publish_timeout=" + ms_text(options_->publish_timeout) +
                                             " (is the broker overloaded or blocking publishers?)"});
    }
  }

  void fail(Batch& b, const Status& status) {
    if (b.finished) return;
    b.finished = true;
    run_callback(b.done, status);
  }

  // Accounts for the messages of a finished batch that will never be sent.
  void drop_unsent(Batch& b) {
    std::size_t unsent = b.messages.size() - b.next;
    b.next = b.messages.size();
    if (unsent) resolve(b, unsent, {Errc::internal, "not sent"});
  }

  void resolve(Batch& b, std::size_t n, const Status& status) {
    if (!status.ok()) fail(b, status);
    b.unresolved -= n;
    if (b.unresolved == 0) {
      if (!b.finished) {
        b.finished = true;
        run_callback(b.done, Status::success());
      }
      pool_.release(b.messages.size());
    }
  }

  // Waits for the socket or, if the window has room, for new work. True when there is
  // something to read or the wait timed out.
  bool wait_io() {
    if (amqp_frames_enqueued(conn_->state()) || amqp_data_in_buffer(conn_->state())) return true;
    const bool room = unresolved_in_window_ < options_->confirm_window;
    if (room && !sending_.empty()) {
      // More to send (a batch was just failed or dropped): only look at the socket.
      pollfd fd{conn_->fd(), POLLIN, 0};
      return poll(&fd, 1, 0) > 0;
    }
    // With a full window new work cannot be sent anyway: publishers need not wake us.
    if (room) sleeping_.store(true);
    {
      std::lock_guard lock(mutex_);
      if ((room && !queue_.empty()) || !pings_.empty() || stopping_ != stopping_seen_) {
        stopping_seen_ = stopping_;
        sleeping_.store(false);
        return false;
      }
    }
    pollfd fds[2] = {{conn_->fd(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = poll(fds, 2, static_cast<int>(kIdlePoll.count()));
    sleeping_.store(false);
    if (n > 0 && (fds[1].revents & POLLIN)) drain_wake();
    return n == 0 || (fds[0].revents & (POLLIN | POLLHUP | POLLERR));
  }

  void wait_wake(Ms timeout) {
    sleeping_.store(true);
    {
      std::lock_guard lock(mutex_);
      if (!queue_.empty() || !pings_.empty() || stopping_ != stopping_seen_) {
        stopping_seen_ = stopping_;
        sleeping_.store(false);
        return;
      }
    }
    pollfd fd{wake_fd_, POLLIN, 0};
    poll(&fd, 1, static_cast<int>(timeout.count()));
    sleeping_.store(false);
    drain_wake();
  }

  void drain_wake() {
    std::uint64_t value;
    [[maybe_unused]] auto n = ::read(wake_fd_, &value, sizeof value);
  }

  PublisherPool& pool_;
  std::shared_ptr<const Options> options_;
  const int index_;
  int wake_fd_ = -1;
  std::thread thread_;
  std::mutex stop_mutex_;
  std::atomic<State> state_{State::idle};
  std::atomic<bool> sleeping_{false};

  // Shared with submitting threads, under mutex_.
  std::mutex mutex_;
  std::deque<std::shared_ptr<Batch>> queue_;
  std::vector<std::promise<Status>> pings_;
  bool stopping_ = false;
  bool stopped_ = false;

  // The thread's own.
  bool stopping_seen_ = false;
  std::unique_ptr<Connection> conn_;
  std::deque<std::shared_ptr<Batch>> sending_;
  std::vector<std::promise<Status>> pending_pings_;
  std::deque<Slot> window_;
  std::uint64_t first_tag_ = 1;  // delivery tag of window_.front()
  int unresolved_in_window_ = 0;
  std::set<std::string> declared_;
  Encoded encoded_;
  bool returning_ = false;
  std::uint64_t return_body_left_ = 0;
  std::string return_text_;
  bool wanted_ = false;
  bool connected_once_ = false;
  Status last_error_;
  SteadyClock::time_point last_attempt_{};
  SteadyClock::time_point last_warning_{};
  Ms backoff_ = kFirstBackoff;
};

PublisherPool::PublisherPool(std::shared_ptr<const Options> options) : options_(std::move(options)) {
  for (int i = 0; i < options_->connections; ++i) links_.push_back(std::make_unique<PublisherLink>(*this, options_, i));
}

PublisherPool::~PublisherPool() {
  close();
}

void PublisherPool::start() {
  links_.front()->connect_now();
  for (auto& link : links_) link->start();
}

void PublisherPool::publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) {
  if (!valid_name(topic))
    throw Error(Errc::invalid_argument,
                "topic '" + topic + "' is not valid: use 1 to 200 characters from A-Z a-z 0-9 . _ -");
  for (auto& m : messages) {
    stamp(m);
    if (auto why = unencodable(m); !why.empty())
      throw Error(Errc::invalid_argument, "cannot publish message " + m.id + " to '" + topic + "': " + why);
  }
  if (messages.empty()) {
    run_callback(done, Status::success());
    return;
  }
  const std::size_t n = messages.size();
  auto batch = std::make_shared<Batch>();
  batch->topic = topic;
  batch->routing_key = options_->routing_key_for(topic);
  batch->messages = std::move(messages);
  batch->done = std::move(done);
  batch->unresolved = n;
  batch->deadline = SteadyClock::now() + options_->publish_timeout;

  // A publishing thread keeps to one connection, so that its messages keep their order.
  static std::atomic<std::size_t> next_slot{0};
  thread_local const std::size_t slot = next_slot.fetch_add(1);

  std::unique_lock lock(mutex_);
  auto has_room = [&] { return closed_ || in_flight_ == 0 || in_flight_ + n <= options_->max_in_flight; };
  bool room = has_room();
  if (!room) {
    ++waiting_;
    room = room_.wait_until(lock, batch->deadline, has_room);
    --waiting_;
  }
  Status failure;
  if (closed_) {
    failure = {Errc::closed, "publish to '" + topic + "' after the amqp broker handle was closed"};
  } else if (!room) {
    failure = {Errc::timeout, "publish to '" + topic + "' timed out after " + ms_text(options_->publish_timeout) +
                                  " waiting for room: " + std::to_string(in_flight_) + " publishes to " +
                                  options_->display + " are unconfirmed (is the broker slow or blocking publishers?)"};
  }
  if (!failure.ok()) {
    lock.unlock();
    run_callback(batch->done, failure);
    return;
  }
  in_flight_ += n;
  if (std::find(topics_.begin(), topics_.end(), topic) == topics_.end() && topics_.size() < 10'000)
    topics_.push_back(topic);
  std::size_t pick = slot % links_.size();
  if (links_[pick]->state() == PublisherLink::State::down) {
    for (std::size_t i = 1; i < links_.size(); ++i) {
      std::size_t other = (pick + i) % links_.size();
      if (links_[other]->state() == PublisherLink::State::up) {
        pick = other;
        break;
      }
    }
  }
  // Submitted under the lock, so that close() cannot stop the link in between.
  links_[pick]->submit(std::move(batch));
}

void PublisherPool::release(std::size_t messages) {
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    in_flight_ -= std::min(in_flight_, messages);
    // Waiting publishers are woken once an eighth of the bound is free, not for every
    // confirm: each wake-up is a context switch, and they come in runs anyway.
    const std::size_t low_mark = options_->max_in_flight - options_->max_in_flight / 8;
    wake = waiting_ > 0 && (in_flight_ <= low_mark || in_flight_ == 0);
  }
  if (wake) room_.notify_all();
}

void PublisherPool::close() {
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
  }
  room_.notify_all();
  for (auto& link : links_) link->stop();
}

Status PublisherPool::ping() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return {Errc::closed, "the amqp broker handle for " + options_->display + " is closed"};
  }
  auto future = links_.front()->ping();
  const auto limit = options_->connect_timeout * 2 + Ms{1000};
  if (future.wait_for(limit) != std::future_status::ready)
    return {Errc::timeout, "no answer from " + options_->display + " within " + ms_text(limit)};
  return future.get();
}

std::vector<std::string> PublisherPool::topics() const {
  std::lock_guard lock(mutex_);
  return topics_;
}

}  // namespace ferry::amqp::detail
