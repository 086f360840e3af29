#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include "amqp_codec.hpp"
#include "amqp_connection.hpp"
#include "amqp_options.hpp"
#include "amqp_publisher.hpp"
#include "amqp_subscription.hpp"
#include "ferry/backends/amqp.hpp"
#include "ferry/broker.hpp"

namespace ferry::amqp {
namespace {

using namespace detail;

constexpr amqp_channel_t kAdminChannel = 1;

class AmqpSubscriber : public Subscriber {
 public:
  explicit AmqpSubscriber(std::shared_ptr<Subscription> s) : s_(std::move(s)) {}
  ~AmqpSubscriber() override { s_->close(); }
  std::optional<Delivery> receive(std::chrono::milliseconds timeout) override { return s_->receive(timeout); }
  void close() override { s_->close(); }

 private:
  std::shared_ptr<Subscription> s_;
};

class AmqpBroker : public Broker, public Admin {
 public:
  explicit AmqpBroker(const Url& url)
      : url_(url), options_(std::make_shared<const Options>(Options::from_url(url))), publisher_(options_) {
    publisher_.start();
  }
  ~AmqpBroker() override { close(); }

  const Url& url() const override { return url_; }

  Capabilities capabilities() const override {
    Capabilities c;
    c.per_key_order = false;       // one queue, several consumers
    c.native_delay = true;         // the retry queue's per-message TTL
    c.native_dead_letter = false;  // a confirmed copy, then an ack: not atomic
    c.persistent = true;
    c.multi_process_groups = true;
    c.late_group_sees_history = false;
    c.redelivers_on_close = true;
    return c;
  }

  Publisher& publisher() override { return publisher_; }

  std::unique_ptr<Subscriber> subscribe(const SubscribeOptions& options) override {
    options.validate();
    {
      std::lock_guard lock(mutex_);
      if (closed_) throw Error(Errc::closed, "subscribe on a closed amqp broker handle for " + options_->display);
    }
    auto s = std::make_shared<Subscription>(options_, options);
    s->start();
    std::lock_guard lock(mutex_);
    if (closed_) {
      s->close();
      throw Error(Errc::closed, "subscribe on a closed amqp broker handle for " + options_->display);
    }
    std::erase_if(subscriptions_, [](const std::weak_ptr<Subscription>& w) { return w.expired(); });
    subscriptions_.push_back(s);
    groups_[options.topic].insert(options.group);
    return std::make_unique<AmqpSubscriber>(std::move(s));
  }

  Status ping() override { return publisher_.ping(); }

  void close() override {
    std::vector<std::shared_ptr<Subscription>> open;
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      for (auto& w : subscriptions_)
        if (auto s = w.lock()) open.push_back(std::move(s));
      subscriptions_.clear();
    }
    for (auto& s : open) s->close();
    publisher_.close();
  }

  Admin* admin() override { return this; }

  std::vector<TopicStats> stats() override {
    std::map<std::string, std::set<std::string>> known;
    {
      std::lock_guard lock(mutex_);
      known = groups_;
    }
    for (const auto& t : publisher_.topics()) known[t];
    auto conn = admin_connection();
    std::vector<TopicStats> out;
    for (const auto& [topic, groups] : known) {
      TopicStats t;
      t.topic = topic;
      if (auto keeper = inspect(*conn, keeper_queue(topic))) t.messages = keeper->messages;
      for (const auto& group : groups) {
        auto counts = inspect(*conn, options_->queue_for(topic, group));
        if (!counts) continue;
        t.groups.push_back({group, counts->messages, 0});
        t.messages = std::max<std::uint64_t>(t.messages, counts->messages);
      }
      out.push_back(std::move(t));
    }
    conn->close();
    return out;
  }

  std::vector<Message> peek(const std::string& topic, std::size_t limit) override {
    auto conn = admin_connection();
    std::vector<Message> out;
    auto queue = queue_to_read(*conn, topic);
    if (!queue) {
      conn->close();
      return out;
    }
    while (out.size() < limit) {
      amqp_rpc_reply_t reply = amqp_basic_get(conn->state(), kAdminChannel, bytes_of(*queue), 0);
      if (reply.reply_type != AMQP_RESPONSE_NORMAL || reply.reply.id != AMQP_BASIC_GET_OK_METHOD) break;
      amqp_message_t message;
      reply = amqp_read_message(conn->state(), kAdminChannel, &message, 0);
      if (reply.reply_type != AMQP_RESPONSE_NORMAL) break;
      Decoded d = decode(message.properties);
      d.message.payload = string_of(message.body);
      amqp_destroy_message(&message);
      out.push_back(std::move(d.message));
    }
    // Closing the channel hands every message got back to the queue.
    conn->close_channel(kAdminChannel);
    conn->close();
    return out;
  }

  std::uint64_t purge(const std::string& topic) override {
    auto conn = admin_connection();
    std::vector<std::string> queues{keeper_queue(topic)};
    {
      std::lock_guard lock(mutex_);
      if (auto it = groups_.find(topic); it != groups_.end())
        for (const auto& g : it->second) queues.push_back(options_->queue_for(topic, g));
    }
    std::uint64_t removed = 0;
    for (const auto& q : queues) {
      if (!inspect(*conn, q)) continue;
      removed += conn->purge_queue(kAdminChannel, q);
    }
    conn->close();
    return removed;
  }

 private:
  std::string keeper_queue(const std::string& topic) const {
    return options_->queue_for(topic, std::string(dead_letter_keeper_group));
  }

  std::unique_ptr<Connection> admin_connection() {
    {
      std::lock_guard lock(mutex_);
      if (closed_) throw Error(Errc::closed, "the amqp broker handle for " + options_->display + " is closed");
    }
    auto conn = Connection::open(*options_);
    conn->open_channel(kAdminChannel);
    return conn;
  }

  // Counts of a queue, or nothing if it does not exist (reopening the channel).
  static std::optional<QueueCounts> inspect(Connection& conn, const std::string& queue) {
    auto counts = conn.inspect_queue(kAdminChannel, queue);
    if (!counts) conn.open_channel(kAdminChannel);
    return counts;
  }

  std::optional<std::string> queue_to_read(Connection& conn, const std::string& topic) {
    if (inspect(conn, keeper_queue(topic))) return keeper_queue(topic);
    std::set<std::string> groups;
    {
      std::lock_guard lock(mutex_);
      if (auto it = groups_.find(topic); it != groups_.end()) groups = it->second;
    }
    for (const auto& g : groups) {
      auto q = options_->queue_for(topic, g);
      if (inspect(conn, q)) return q;
    }
    return std::nullopt;
  }

  Url url_;
  std::shared_ptr<const Options> options_;
  PublisherPool publisher_;

  std::mutex mutex_;
  bool closed_ = false;
  std::vector<std::weak_ptr<Subscription>> subscriptions_;
  std::map<std::string, std::set<std::string>> groups_;  // topics and groups subscribed through this handle
};

}  // namespace

void register_scheme() {
  auto factory = [](const Url& url) -> std::shared_ptr<Broker> { return std::make_shared<AmqpBroker>(url); };
  Broker::register_scheme("amqp", factory);
  Broker::register_scheme("amqps", factory);
}

}  // namespace ferry::amqp
