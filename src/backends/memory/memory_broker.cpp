// memory:// — the in-process broker. The contract is in include/ferry/backends/memory.hpp.
//
// Model. A topic is an append-only sequence of messages numbered from 0. A group keeps a
// cursor (the first number it has never taken) and, for the messages it has taken but
// not yet acked or rejected, a Slot. A slot is `waiting` (an earlier message with the
// same key is still open), `ready` (deliverable now), `in_flight` (leased to one
// subscriber until `due`) or `delayed` (nacked with a delay, deliverable at `due`).
// Every open message with a key sits in its key's queue; only the head of a queue can be
// ready, in flight or delayed, which is what keeps per-key order.
//
// Locking. One mutex per broker state guards everything: topics, groups, slots and the
// open/closed flags of every handle, publisher and subscriber on that state. Each group
// has a condition variable its receivers wait on; they sleep until the earliest of their
// deadline and the group's next timer (lease end or nack delay), and are woken by
// publishes, settlements and hand-backs.

#include "ferry/backends/memory.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ferry/broker.hpp"

namespace ferry::memory {
namespace {

using SteadyClock = std::chrono::steady_clock;
using SteadyTime = SteadyClock::time_point;
using std::chrono::milliseconds;

// The longest wait, lease or delay honoured; longer ones are clamped so that time points
// never overflow.
constexpr milliseconds max_wait{std::chrono::hours{24 * 365}};

enum class SlotState { waiting, ready, in_flight, delayed };

struct Slot {
  SlotState state = SlotState::ready;
  int attempts = 0;         // deliveries made so far
  std::uint64_t token = 0;  // the current delivery, while in flight
  std::uint64_t owner = 0;  // the subscriber holding it, while in flight
  SteadyTime due{};         // lease end (in flight) or redelivery time (delayed)
};

struct Group {
  explicit Group(std::string n, std::uint64_t start) : name(std::move(n)), cursor(start) {}

  std::string name;
  std::uint64_t cursor;                                              // first number never taken
  std::map<std::uint64_t, Slot> open;                                // taken, not acked or rejected
  std::set<std::uint64_t> ready;                                     // open slots deliverable now
  std::set<std::pair<SteadyTime, std::uint64_t>> timers;             // (due, number) of in-flight and delayed slots
  std::unordered_map<std::string, std::deque<std::uint64_t>> keys;   // open numbers per key, oldest first
  std::unordered_map<std::uint64_t, std::uint64_t> in_flight;        // token -> number
  std::multiset<SteadyTime> sleepers;                                // wake-up times of blocked receivers
  std::condition_variable wake;

  // The lowest number this group still needs.
  std::uint64_t low_watermark() const { return open.empty() ? cursor : std::min(open.begin()->first, cursor); }

  // Adds a timer and wakes receivers that would otherwise sleep past it.
  void add_timer(SteadyTime due, std::uint64_t number) {
    timers.emplace(due, number);
    if (!sleepers.empty() && due < *sleepers.rbegin()) wake.notify_all();
  }
};

struct Topic {
  explicit Topic(std::string n) : name(std::move(n)) {}

  std::string name;
  std::uint64_t first = 0;  // number of messages.front()
  std::deque<Message> messages;
  std::map<std::string, std::unique_ptr<Group>, std::less<>> groups;

  std::uint64_t end() const { return first + messages.size(); }
  const Message& at(std::uint64_t number) const { return messages[number - first]; }
};

// Everything one broker holds. Shared by every handle opened on the same name and by
// every subscriber, so that it lives as long as any of them. All members and all
// methods require `mutex` to be held.
struct State {
  std::mutex mutex;
  std::map<std::string, std::unique_ptr<Topic>, std::less<>> topics;
  std::uint64_t last_token = 0;
  std::uint64_t last_subscriber = 0;

  Topic& topic(const std::string& name) {
    auto it = topics.find(name);
    if (it == topics.end()) it = topics.emplace(name, std::make_unique<Topic>(name)).first;
    return *it->second;
  }

  // A group created now starts at the oldest retained message: it sees the history.
  Group& group(Topic& t, const std::string& name) {
    auto it = t.groups.find(name);
    if (it == t.groups.end()) it = t.groups.emplace(name, std::make_unique<Group>(name, t.first)).first;
    return *it->second;
  }

  void append(Topic& t, std::vector<Message>&& batch) {
    for (auto& m : batch) t.messages.push_back(std::move(m));
    for (auto& [_, g] : t.groups) g->wake.notify_all();
  }

  // Drops the messages every group has acked or rejected; with no group, keeps all.
  static void trim(Topic& t) {
    if (t.groups.empty()) return;
    std::uint64_t low = t.end();
    for (const auto& [_, g] : t.groups) low = std::min(low, g->low_watermark());
    while (t.first < low && !t.messages.empty()) {
      t.messages.pop_front();
      ++t.first;
    }
  }

  // Turns due timers into ready slots: expired leases and elapsed nack delays.
  static void expire(Group& g, SteadyTime now) {
    bool any = false;
    while (!g.timers.empty() && g.timers.begin()->first <= now) {
      std::uint64_t number = g.timers.begin()->second;
      g.timers.erase(g.timers.begin());
      Slot& slot = g.open.at(number);
      if (slot.state == SlotState::in_flight) {
        g.in_flight.erase(slot.token);
        slot.token = 0;
        slot.owner = 0;
      }
      slot.state = SlotState::ready;
      g.ready.insert(number);
      any = true;
    }
    if (any) g.wake.notify_all();
  }

  // The number of the next message the group may hand out, or none. Oldest first;
  // a message whose key has an older open message waits for it.
  static std::optional<std::uint64_t> take(const Topic& t, Group& g) {
    if (!g.ready.empty()) {
      std::uint64_t number = *g.ready.begin();
      g.ready.erase(g.ready.begin());
      return number;
    }
    while (g.cursor < t.end()) {
      std::uint64_t number = g.cursor++;
      Slot& slot = g.open[number];
      const Message& m = t.at(number);
      if (m.key) {
        auto& queue = g.keys[*m.key];
        queue.push_back(number);
        if (queue.size() > 1) {
          slot.state = SlotState::waiting;
          continue;
        }
      }
      return number;
    }
    return std::nullopt;
  }

  // Leases message `number` to subscriber `owner`; returns the delivery's token.
  std::uint64_t lease(Group& g, std::uint64_t number, std::uint64_t owner, milliseconds ack_timeout) {
    Slot& slot = g.open.at(number);
    slot.state = SlotState::in_flight;
    ++slot.attempts;
    slot.token = ++last_token;
    slot.owner = owner;
    slot.due = SteadyClock::now() + std::min(ack_timeout, max_wait);
    g.in_flight.emplace(slot.token, number);
    g.add_timer(slot.due, number);
    return slot.token;
  }

  // Puts an in-flight slot back for immediate redelivery.
  static void hand_back(Group& g, std::uint64_t number) {
    Slot& slot = g.open.at(number);
    g.timers.erase({slot.due, number});
    g.in_flight.erase(slot.token);
    slot.state = SlotState::ready;
    slot.token = 0;
    slot.owner = 0;
    g.ready.insert(number);
  }

  // Forgets an acked or rejected message and lets the next one with its key go.
  static void finish(Topic& t, Group& g, std::uint64_t number) {
    g.open.erase(number);
    if (const auto& key = t.at(number).key) {
      auto it = g.keys.find(*key);
      auto& queue = it->second;
      queue.pop_front();  // only a queue's head is ever delivered, so it is `number`
      if (queue.empty()) {
        g.keys.erase(it);
      } else if (Slot& next = g.open.at(queue.front()); next.state == SlotState::waiting) {
        next.state = SlotState::ready;
        g.ready.insert(queue.front());
      }
    }
    trim(t);
  }
};

std::string closed_message(const Url& url, const char* what) {
  return std::string(what) + " of " + url.masked() + " is closed";
}

// Depth of publish callbacks running on this thread; close() called from inside one
// must not wait for the publish that is running it.
thread_local int callback_depth = 0;

// A subscriber's shared state and the Settler its deliveries point to. Every member
// after `id_` is guarded by state_->mutex.
class SubscriberCore final : public Settler, public std::enable_shared_from_this<SubscriberCore> {
 public:
  SubscriberCore(std::shared_ptr<State> state, Topic& topic, Group& group, SubscribeOptions options,
                 std::uint64_t id)
      : state_(std::move(state)), topic_(&topic), group_(&group), options_(std::move(options)), id_(id) {}

  std::optional<Delivery> receive(milliseconds timeout) {
    timeout = std::clamp(timeout, milliseconds{0}, max_wait);
    std::unique_lock lock(state_->mutex);
    const SteadyTime deadline = SteadyClock::now() + timeout;
    while (true) {
      if (closed_) return std::nullopt;
      const SteadyTime now = SteadyClock::now();
      State::expire(*group_, now);
      if (auto number = State::take(*topic_, *group_)) {
        std::uint64_t token = state_->lease(*group_, *number, id_, options_.ack_timeout);
        return Delivery(topic_->at(*number), topic_->name, group_->name, group_->open.at(*number).attempts,
                        weak_from_this(), token);
      }
      if (now >= deadline) return std::nullopt;
      SteadyTime wake = deadline;
      if (!group_->timers.empty()) wake = std::min(wake, group_->timers.begin()->first);
      auto sleeper = group_->sleepers.insert(wake);
      group_->wake.wait_until(lock, wake);
      group_->sleepers.erase(sleeper);
    }
  }

  // Hands this subscriber's unsettled deliveries back to the group at once.
  void close() {
    std::lock_guard lock(state_->mutex);
    if (closed_) return;
    closed_ = true;
    std::vector<std::uint64_t> mine;
    for (const auto& [token, number] : group_->in_flight)
      if (group_->open.at(number).owner == id_) mine.push_back(number);
    for (std::uint64_t number : mine) State::hand_back(*group_, number);
    group_->wake.notify_all();
  }

  // A settlement counts only for the delivery still in flight under this token: one
  // whose lease ran out (and may have gone to another consumer), or that close()
  // handed back, is ignored.
  void settle(std::uint64_t token, Outcome outcome, milliseconds delay, const std::string& reason) noexcept override {
    try {
      std::lock_guard lock(state_->mutex);
      if (closed_) return;
      auto it = group_->in_flight.find(token);
      if (it == group_->in_flight.end()) return;
      const std::uint64_t number = it->second;
      Slot& slot = group_->open.at(number);
      if (slot.owner != id_) return;
      group_->in_flight.erase(it);
      group_->timers.erase({slot.due, number});
      slot.token = 0;
      slot.owner = 0;
      switch (outcome) {
        case Outcome::ack:
          State::finish(*topic_, *group_, number);
          break;
        case Outcome::reject: {
          Message copy = topic_->at(number);
          copy.headers.insert_or_assign(header::error, reason);
          copy.headers.insert_or_assign(header::attempts, std::to_string(slot.attempts));
          copy.headers.insert_or_assign(header::original_topic, topic_->name);
          copy.headers.insert_or_assign(header::original_group, group_->name);
          std::vector<Message> batch;
          batch.push_back(std::move(copy));
          state_->append(state_->topic(options_.effective_dead_letter_topic()), std::move(batch));
          State::finish(*topic_, *group_, number);
          break;
        }
        case Outcome::nack:
          if (delay <= milliseconds{0}) {
            slot.state = SlotState::ready;
            group_->ready.insert(number);
          } else {
            slot.state = SlotState::delayed;
            slot.due = SteadyClock::now() + std::min(delay, max_wait);
            group_->add_timer(slot.due, number);
          }
          break;
      }
      group_->wake.notify_all();
    } catch (...) {
      // Out of memory: the settlement is lost and the lease brings the message back.
    }
  }

 private:
  std::shared_ptr<State> state_;
  Topic* topic_;
  Group* group_;
  const SubscribeOptions options_;
  const std::uint64_t id_;
  bool closed_ = false;
};

class MemorySubscriber final : public Subscriber {
 public:
  explicit MemorySubscriber(std::shared_ptr<SubscriberCore> core) : core_(std::move(core)) {}
  ~MemorySubscriber() override { core_->close(); }

  std::optional<Delivery> receive(milliseconds timeout) override { return core_->receive(timeout); }
  void close() override { core_->close(); }

 private:
  std::shared_ptr<SubscriberCore> core_;
};

// Completes every publish on the calling thread, before publish_batch_async returns.
class MemoryPublisher final : public Publisher {
 public:
  MemoryPublisher(std::shared_ptr<State> state, const Url& url) : state_(std::move(state)), url_(url) {}

  void publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) override {
    if (!valid_name(topic))
      throw Error(Errc::invalid_argument,
                  "topic '" + topic + "' is not valid: use 1 to 200 characters from A-Z a-z 0-9 . _ -");
    for (auto& m : messages) stamp(m);
    Status status;
    {
      std::lock_guard lock(state_->mutex);
      if (closed_) {
        status = {Errc::closed, "publish to '" + topic + "' failed: " + closed_message(url_, "the publisher")};
      } else {
        ++active_;
        if (!messages.empty()) state_->append(state_->topic(topic), std::move(messages));
      }
    }
    struct Finish {
      MemoryPublisher* self;
      bool counted;
      ~Finish() {
        --callback_depth;
        if (!counted) return;
        std::lock_guard lock(self->state_->mutex);
        if (--self->active_ == 0) self->idle_.notify_all();
      }
    } finish{this, status.ok()};
    ++callback_depth;
    if (done) done(status);
  }

  void close() override {
    std::unique_lock lock(state_->mutex);
    closed_ = true;
    if (callback_depth == 0) idle_.wait(lock, [&] { return active_ == 0; });
  }

 private:
  std::shared_ptr<State> state_;
  const Url url_;
  std::condition_variable idle_;
  bool closed_ = false;  // guarded by state_->mutex
  int active_ = 0;       // publishes whose callback has not returned; guarded by state_->mutex
};

class MemoryBroker final : public Broker, public Admin {
 public:
  MemoryBroker(Url url, std::shared_ptr<State> state)
      : url_(std::move(url)), state_(std::move(state)), publisher_(state_, url_) {}
  ~MemoryBroker() override { close(); }

  const Url& url() const override { return url_; }

  Capabilities capabilities() const override {
    Capabilities c;
    c.per_key_order = true;
    c.native_delay = true;
    c.native_dead_letter = true;
    c.persistent = false;
    c.multi_process_groups = false;
    c.late_group_sees_history = true;
    c.redelivers_on_close = true;
    return c;
  }

  Publisher& publisher() override { return publisher_; }

  std::unique_ptr<Subscriber> subscribe(const SubscribeOptions& options) override {
    options.validate();
    std::lock_guard lock(state_->mutex);
    if (closed_) throw Error(Errc::closed, "cannot subscribe: " + closed_message(url_, "the broker handle"));
    Topic& topic = state_->topic(options.topic);
    Group& group = state_->group(topic, options.group);
    auto core = std::make_shared<SubscriberCore>(state_, topic, group, options, ++state_->last_subscriber);
    std::erase_if(subscribers_, [](const auto& weak) { return weak.expired(); });
    subscribers_.push_back(core);
    return std::make_unique<MemorySubscriber>(std::move(core));
  }

  Status ping() override {
    std::lock_guard lock(state_->mutex);
    if (closed_) return {Errc::closed, closed_message(url_, "the broker handle")};
    return Status::success();
  }

  void close() override {
    publisher_.close();
    std::vector<std::weak_ptr<SubscriberCore>> subscribers;
    {
      std::lock_guard lock(state_->mutex);
      closed_ = true;
      subscribers.swap(subscribers_);
    }
    for (auto& weak : subscribers)
      if (auto core = weak.lock()) core->close();
  }

  Admin* admin() override { return this; }

  std::vector<TopicStats> stats() override {
    std::lock_guard lock(state_->mutex);
    const SteadyTime now = SteadyClock::now();
    std::vector<TopicStats> out;
    for (const auto& [name, topic] : state_->topics) {
      TopicStats ts{name, topic->messages.size(), {}};
      for (const auto& [group_name, group] : topic->groups) {
        State::expire(*group, now);
        ts.groups.push_back({group_name, group->open.size() + (topic->end() - group->cursor), group->in_flight.size()});
      }
      out.push_back(std::move(ts));
    }
    return out;
  }

  std::vector<Message> peek(const std::string& topic, std::size_t limit) override {
    std::lock_guard lock(state_->mutex);
    auto it = state_->topics.find(topic);
    if (it == state_->topics.end()) return {};
    const auto& messages = it->second->messages;
    std::size_t n = std::min(limit, messages.size());
    return {messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(n)};
  }

  // Deliveries in flight when a topic is purged settle as no-ops.
  std::uint64_t purge(const std::string& topic) override {
    std::lock_guard lock(state_->mutex);
    auto it = state_->topics.find(topic);
    if (it == state_->topics.end()) return 0;
    Topic& t = *it->second;
    std::uint64_t count = t.messages.size();
    t.first = t.end();
    t.messages.clear();
    for (auto& [_, g] : t.groups) {
      g->cursor = t.first;
      g->open.clear();
      g->ready.clear();
      g->timers.clear();
      g->keys.clear();
      g->in_flight.clear();
      g->wake.notify_all();
    }
    return count;
  }

 private:
  const Url url_;
  std::shared_ptr<State> state_;
  MemoryPublisher publisher_;
  std::vector<std::weak_ptr<SubscriberCore>> subscribers_;  // guarded by state_->mutex
  bool closed_ = false;                                     // guarded by state_->mutex
};

// memory://name → the state registered under that name while anything holds it.
std::shared_ptr<State> state_for(const Url& url) {
  const std::string& name = url.location();
  if (name.empty()) return std::make_shared<State>();
  static std::mutex mutex;
  static std::map<std::string, std::weak_ptr<State>> named;
  std::lock_guard lock(mutex);
  std::erase_if(named, [](const auto& entry) { return entry.second.expired(); });
  auto& weak = named[name];
  auto state = weak.lock();
  if (!state) {
    state = std::make_shared<State>();
    weak = state;
  }
  return state;
}

std::shared_ptr<Broker> open(const Url& url) {
  if (!url.query().empty())
    throw Error(Errc::invalid_argument, "memory:// takes no query options, got '" + url.query().begin()->first +
                                            "' in " + url.masked());
  return std::make_shared<MemoryBroker>(url, state_for(url));
}

}  // namespace

void register_scheme() { Broker::register_scheme("memory", open); }

}  // namespace ferry::memory
