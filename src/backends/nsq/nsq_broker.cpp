// nsq:// as a ferry::Broker.

#include <spdlog/spdlog.h>

#include "client.hpp"
#include "ferry/backends/nsq.hpp"
#include "ferry/broker.hpp"

namespace ferry::nsq {
namespace {

class NsqSubscriber : public Subscriber {
 public:
  explicit NsqSubscriber(std::shared_ptr<Subscription> s) : s_(std::move(s)) {}
  ~NsqSubscriber() override { s_->close(); }
  std::optional<Delivery> receive(Ms timeout) override { return s_->receive(timeout); }
  void close() override { s_->close(); }

 private:
  std::shared_ptr<Subscription> s_;
};

class NsqPublisher : public Publisher {
 public:
  explicit NsqPublisher(std::shared_ptr<Producer> producer) : producer_(std::move(producer)) {}
  void publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) override {
    producer_->publish(topic, std::move(messages), std::move(done));
  }
  void close() override { producer_->close(); }

 private:
  std::shared_ptr<Producer> producer_;
};

class NsqBroker : public Broker {
 public:
  explicit NsqBroker(const Url& url) : url_(url) {
    engine_ = std::make_shared<Engine>(Options::from_url(url));
    const Options& options = engine_->options();
    producer_ = std::make_shared<Producer>(engine_, options);
    publisher_ = std::make_unique<NsqPublisher>(producer_);
    const auto tries = std::max<std::size_t>(options.nsqd.size(), 1);
    Status s = producer_->connect_now(options.connect_timeout * static_cast<int>(tries) + Ms{1000});
    if (!s.ok()) {
      close();
      throw Error(Errc::unavailable, s.message);
    }
  }
  ~NsqBroker() override { close(); }

  const Url& url() const override { return url_; }

  Capabilities capabilities() const override {
    Capabilities c;
    c.per_key_order = false;
    c.native_delay = true;
    c.native_dead_letter = false;
    c.persistent = false;
    c.multi_process_groups = true;
    c.late_group_sees_history = false;
    c.redelivers_on_close = true;
    return c;
  }

  Publisher& publisher() override { return *publisher_; }

  std::unique_ptr<Subscriber> subscribe(const SubscribeOptions& options) override {
    options.validate();
    {
      std::lock_guard lock(mutex_);
      if (closed_) throw Error(Errc::closed, "subscribe on a closed nsq broker " + url_.masked());
    }
    auto s = std::make_shared<Subscription>(engine_, producer_, engine_->options(), options);
    s->start();
    {
      std::lock_guard lock(mutex_);
      if (closed_) {
        s->close();
        throw Error(Errc::closed, "subscribe on a closed nsq broker " + url_.masked());
      }
      std::erase_if(subscriptions_, [](const auto& w) { return w.expired(); });
      subscriptions_.push_back(s);
    }
    return std::make_unique<NsqSubscriber>(std::move(s));
  }

  Status ping() override {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return {Errc::closed, "the nsq broker " + url_.masked() + " is closed"};
    }
    return producer_->connect_now(engine_->options().connect_timeout);
  }

  void close() override {
    std::vector<std::shared_ptr<Subscription>> open;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      for (auto& w : subscriptions_)
        if (auto s = w.lock()) open.push_back(std::move(s));
      subscriptions_.clear();
    }
    for (auto& s : open) s->close();
    producer_->close();
    engine_->stop();
  }

  Producer& producer() { return *producer_; }

 private:
  Url url_;
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Producer> producer_;
  std::unique_ptr<NsqPublisher> publisher_;
  std::mutex mutex_;
  bool closed_ = false;
  std::vector<std::weak_ptr<Subscription>> subscriptions_;
};

}  // namespace

void register_scheme() {
  Broker::register_scheme("nsq",
                          [](const Url& url) -> std::shared_ptr<Broker> { return std::make_shared<NsqBroker>(url); });
}

void publish_deferred(Broker& broker, const std::string& topic, std::vector<Message> messages, Ms delay,
                      PublishCallback done) {
  auto* nsq = dynamic_cast<NsqBroker*>(&broker);
  if (!nsq)
    throw Error(Errc::invalid_argument, "publish_deferred needs an nsq:// broker, not " + broker.url().masked());
  nsq->producer().publish(topic, std::move(messages), std::move(done), delay);
}

}  // namespace ferry::nsq
