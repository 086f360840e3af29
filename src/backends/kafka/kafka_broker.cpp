// kafka:// — the Broker, its Publisher and Subscribers. The contract is in
// include/ferry/backends/kafka.hpp.

#include <spdlog/spdlog.h>

#include <map>
#include <mutex>
#include <utility>

#include "ferry/backends/kafka.hpp"
#include "ferry/broker.hpp"
#include "kafka_admin.hpp"
#include "kafka_consumer.hpp"
#include "kafka_producer.hpp"

namespace ferry::kafka {
namespace {

using detail::Member;
using detail::Ms;
using detail::Options;
using detail::Producer;
using detail::Subscription;

class KafkaPublisher : public Publisher {
 public:
  explicit KafkaPublisher(std::shared_ptr<Producer> producer) : producer_(std::move(producer)) {}
  void publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) override {
    producer_->publish(topic, messages, std::move(done));
  }
  // librdkafka copies what it sends: a message is published from where it is, whether
  // the caller keeps it or not, with no copy of ferry's.
  void publish_async(const std::string& topic, Message&& message, PublishCallback done) override {
    publish_async(topic, std::as_const(message), std::move(done));
  }
  void publish_async(const std::string& topic, const Message& message, PublishCallback done) override {
    producer_->publish(topic, {&message, 1}, std::move(done));
  }
  void close() override { producer_->close_publisher(); }

 private:
  std::shared_ptr<Producer> producer_;
};

class KafkaSubscriber : public Subscriber {
 public:
  explicit KafkaSubscriber(std::shared_ptr<Subscription> s) : s_(std::move(s)) {}
  ~KafkaSubscriber() override { s_->close(); }
  std::optional<Delivery> receive(Ms timeout) override { return s_->receive(timeout); }
  void close() override { s_->close(); }

 private:
  std::shared_ptr<Subscription> s_;
};

class KafkaBroker : public Broker {
 public:
  explicit KafkaBroker(const Url& url) : url_(url), options_(Options::from_url(url)) {
    producer_ = std::make_shared<Producer>(options_);
    publisher_ = std::make_unique<KafkaPublisher>(producer_);
    admin_ = std::make_unique<detail::KafkaAdmin>(producer_, [this] { return subscribed(); });
  }
  ~KafkaBroker() override { close(); }

  const Url& url() const override { return url_; }

  Capabilities capabilities() const override {
    Capabilities c;
    c.per_key_order = true;            // client-side: one unsettled message per key
    c.native_delay = false;            // nack delays are held in the member's memory
    c.native_dead_letter = false;      // ferry publishes the dead letter, then commits
    c.persistent = true;               // acks=all to the brokers' logs
    c.multi_process_groups = true;     // Kafka consumer groups
    c.late_group_sees_history = true;  // auto.offset.reset=earliest
    c.redelivers_on_close = true;      // to the member's other subscribers at once; to the group on leave
    return c;
  }

  Publisher& publisher() override { return *publisher_; }

  std::unique_ptr<Subscriber> subscribe(const SubscribeOptions& options) override {
    options.validate();
    check_open();
    if (Status s = producer_->ensure_topic(options.topic); !s.ok()) throw Error(s);
    if (options.ephemeral) {
      auto member = std::make_shared<Member>(options_, producer_, options.topic, std::string(), true);
      member->start();
      {
        std::lock_guard lock(mutex_);
        if (closed_) {
          member->close();
          throw closed_error();
        }
        ephemeral_.push_back(member);
      }
      auto sub = member->attach(options);
      if (!sub) throw closed_error();
      return std::make_unique<KafkaSubscriber>(std::move(sub));
    }
    const auto key = std::make_pair(options.topic, options.group);
    for (int attempt = 0; attempt < 3; ++attempt) {
      std::shared_ptr<Member> member;
      bool created = false;
      std::vector<std::shared_ptr<Member>> done;  // closed (joined) after the lock is let go
      {
        std::lock_guard lock(mutex_);
        if (closed_) throw closed_error();
        done = sweep();
        auto it = members_.find(key);
        if (it != members_.end() && !it->second->leaving()) {
          member = it->second;
        } else {
          if (it != members_.end()) retired_.push_back(std::move(it->second));
          member = std::make_shared<Member>(options_, producer_, options.topic, options.group, false);
          members_[key] = member;
          created = true;
        }
      }
      for (auto& m : done) m->close();
      try {
        if (created) member->start();
        member->wait_joined();
      } catch (...) {
        bool closing = false;
        {
          std::lock_guard lock(mutex_);
          if (auto it = members_.find(key); it != members_.end() && it->second == member) members_.erase(it);
          retired_.push_back(member);
          closing = closed_;
        }
        member->close();
        if (closing) throw closed_error();  // whatever the member said, the broker closed under it
        throw;
      }
      if (auto sub = member->attach(options)) return std::make_unique<KafkaSubscriber>(std::move(sub));
      // It started leaving (its linger ran out) just now: make a new one.
    }
    throw Error(Errc::internal, "could not attach to a consumer group member of '" + options.group + "'");
  }

  Status ping() override { return producer_->ping(Ms{2000}); }

  Admin* admin() override { return admin_.get(); }

  void close() override {
    std::map<std::pair<std::string, std::string>, std::shared_ptr<Member>> members;
    std::vector<std::shared_ptr<Member>> others;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      members.swap(members_);
      others.swap(retired_);
      for (auto& weak : ephemeral_)
        if (auto m = weak.lock()) others.push_back(std::move(m));
      ephemeral_.clear();
    }
    // Publishes stop first (those started are confirmed or failed); the members then may
    // still dead-letter (internal publishes) while deliveries out are being settled.
    producer_->close_publisher();
    for (auto& [_, m] : members) m->close();
    for (auto& m : others) m->close();
    producer_->close();
  }

 private:
  Error closed_error() const { return Error(Errc::closed, "subscribe on a closed kafka broker " + url_.masked()); }

  void check_open() {
    std::lock_guard lock(mutex_);
    if (closed_) throw closed_error();
  }

  // The groups this handle consumes with (not the ephemeral ones: they have no Kafka group).
  std::vector<detail::Subscribed> subscribed() {
    std::vector<std::shared_ptr<Member>> members;
    {
      std::lock_guard lock(mutex_);
      for (const auto& [_, m] : members_) members.push_back(m);
    }
    std::vector<detail::Subscribed> out;
    for (const auto& m : members)
      if (!m->leaving()) out.push_back({m->topic(), m->group(), m->in_flight()});
    return out;
  }

  // Forgets members that left the group (their linger ran out). Under mutex_; returns the
  // retired members to close (join) once it is let go, if there are many.
  std::vector<std::shared_ptr<Member>> sweep() {
    for (auto it = members_.begin(); it != members_.end();) {
      if (it->second->leaving()) {
        retired_.push_back(std::move(it->second));
        it = members_.erase(it);
      } else {
        ++it;
      }
    }
    std::erase_if(ephemeral_, [](const std::weak_ptr<Member>& w) { return w.expired(); });
    std::vector<std::shared_ptr<Member>> done;
    // Their threads have ended or are about to: join them outside the hot path rarely.
    if (retired_.size() > 16) done.swap(retired_);
    return done;
  }

  Url url_;
  Options options_;
  std::shared_ptr<Producer> producer_;
  std::unique_ptr<KafkaPublisher> publisher_;
  std::unique_ptr<detail::KafkaAdmin> admin_;
  std::mutex mutex_;
  bool closed_ = false;
  std::map<std::pair<std::string, std::string>, std::shared_ptr<Member>> members_;
  std::vector<std::shared_ptr<Member>> retired_;
  std::vector<std::weak_ptr<Member>> ephemeral_;
};

}  // namespace

void register_scheme() {
  Broker::register_scheme("kafka",
                          [](const Url& url) -> std::shared_ptr<Broker> { return std::make_shared<KafkaBroker>(url); });
}

}  // namespace ferry::kafka
