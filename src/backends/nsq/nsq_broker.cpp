// nsq:// as a ferry::Broker.

#include <spdlog/spdlog.h>

#include <algorithm>
#include <boost/json.hpp>

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

// Admin over nsqd's HTTP API: GET /stats?format=json, POST /topic/empty and
// /channel/empty. NSQ cannot show messages without consuming them, so peek() refuses.
class NsqAdmin : public Admin {
 public:
  explicit NsqAdmin(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}

  std::vector<TopicStats> stats() override {
    std::map<std::string, TopicStats> merged;
    for (const auto& [endpoint, body] : request_all("GET", "/stats?format=json")) {
      for (auto& t : parse_stats(endpoint, body)) {
        auto [it, added] = merged.try_emplace(t.topic, std::move(t));
        if (added) continue;
        it->second.messages += t.messages;
        for (auto& g : t.groups) {
          auto same = std::find_if(it->second.groups.begin(), it->second.groups.end(),
                                   [&](const GroupStats& x) { return x.group == g.group; });
          if (same == it->second.groups.end()) {
            it->second.groups.push_back(std::move(g));
          } else {
            same->backlog += g.backlog;
            same->in_flight += g.in_flight;
          }
        }
      }
    }
    std::vector<TopicStats> out;
    for (auto& [name, t] : merged) out.push_back(std::move(t));
    return out;
  }

  std::vector<Message> peek(const std::string& topic, std::size_t) override {
    throw Error(Errc::invalid_argument, "NSQ cannot show the messages of '" + topic +
                                            "' without consuming them; subscribe with an ephemeral group instead");
  }

  std::uint64_t purge(const std::string& topic) override {
    std::uint64_t removed = 0;
    auto post = [&](const Endpoint& endpoint, const std::string& target) {
      auto [status, body] = request_one(endpoint, "POST", target);
      if (!status.ok()) throw Error(status.code, "cannot purge '" + topic + "': " + status.message);
    };
    for (const auto& [endpoint, body] : request_all("GET", "/stats?format=json&topic=" + topic)) {
      for (const auto& t : parse_stats(endpoint, body)) {
        if (t.topic != topic) continue;
        removed += t.messages;
        post(endpoint, "/topic/empty?topic=" + topic);
        for (const auto& g : t.groups) post(endpoint, "/channel/empty?topic=" + topic + "&channel=" + g.group);
      }
    }
    return removed;
  }

 private:
  // nsqd's HTTP addresses: the http= option, nsqlookupd's /nodes, or each nsqd's TCP port + 1
  // (nsqd's defaults are 4150 and 4151).
  std::vector<Endpoint> endpoints() {
    const Options& o = engine_->options();
    if (!o.http.empty()) return o.http;
    std::set<Endpoint> found;
    for (const auto& lookupd : o.lookupd) {
      auto [status, body] = request_one(lookupd, "GET", "/nodes");
      if (!status.ok()) continue;
      try {
        for (auto& e : parse_producers(body, true)) found.insert(std::move(e));
      } catch (const Error&) {
      }
    }
    for (const auto& n : o.nsqd) found.insert({n.host, n.port + 1});
    return {found.begin(), found.end()};
  }

  std::pair<Status, std::string> request_one(const Endpoint& endpoint, const std::string& method,
                                             const std::string& target) {
    auto promise = std::make_shared<std::promise<std::pair<Status, std::string>>>();
    auto future = promise->get_future();
    const Ms timeout = engine_->options().connect_timeout;
    if (!engine_->run([&] {
          http_request(*engine_, endpoint, method, target, timeout,
                       [promise, endpoint, target](const Status& s, int code, std::string body) {
                         if (s.ok() && code != 200)
                           promise->set_value({{Errc::unavailable, "nsqd http://" + endpoint.str() + target +
                                                                       " answered HTTP " + std::to_string(code)},
                                               std::move(body)});
                         else
                           promise->set_value({s, std::move(body)});
                       });
        }))
      throw Error(Errc::closed, "the nsq broker " + engine_->options().masked_url + " is closed");
    if (future.wait_for(timeout + Ms{1000}) != std::future_status::ready)
      return {{Errc::timeout, "http://" + endpoint.str() + " did not answer"}, {}};
    return future.get();
  }

  // Every nsqd's answer; throws Error(unavailable) when none answered.
  std::vector<std::pair<Endpoint, std::string>> request_all(const std::string& method, const std::string& target) {
    std::vector<std::pair<Endpoint, std::string>> out;
    Status last;
    for (const auto& endpoint : endpoints()) {
      auto [status, body] = request_one(endpoint, method, target);
      if (status.ok())
        out.emplace_back(endpoint, std::move(body));
      else
        last = status;
    }
    if (out.empty())
      throw Error(Errc::unavailable, "no nsqd HTTP API of " + engine_->options().masked_url + " answered (" +
                                         (last.ok() ? std::string("none known") : last.message) +
                                         "); give its address with http=host:4151");
    return out;
  }

  static std::vector<TopicStats> parse_stats(const Endpoint& endpoint, const std::string& body) {
    namespace json = boost::json;
    std::vector<TopicStats> out;
    try {
      auto value = json::parse(body);
      const json::object* o = &value.as_object();
      if (auto* data = o->if_contains("data"); data && data->is_object()) o = &data->as_object();
      auto number = [](const json::object& x, const char* key) -> std::uint64_t {
        auto* v = x.if_contains(key);
        return v && v->is_number() ? v->to_number<std::uint64_t>() : 0;
      };
      for (const auto& tv : o->at("topics").as_array()) {
        const auto& t = tv.as_object();
        TopicStats topic;
        topic.topic = std::string(t.at("topic_name").as_string());
        std::uint64_t largest = 0;
        if (auto* channels = t.if_contains("channels")) {
          for (const auto& cv : channels->as_array()) {
            const auto& c = cv.as_object();
            GroupStats g;
            g.group = std::string(c.at("channel_name").as_string());
            g.in_flight = number(c, "in_flight_count");
            g.backlog = number(c, "depth") + number(c, "deferred_count") + g.in_flight;
            largest = std::max(largest, g.backlog);
            topic.groups.push_back(std::move(g));
          }
        }
        // Each channel holds its own copy: the topic retains what it still holds plus
        // the largest channel backlog.
        topic.messages = number(t, "depth") + largest;
        out.push_back(std::move(topic));
      }
    } catch (const std::exception& e) {
      throw Error(Errc::protocol, "nsqd http://" + endpoint.str() + "/stats answered unexpected JSON: " + e.what());
    }
    return out;
  }

  std::shared_ptr<Engine> engine_;
};

class NsqBroker : public Broker {
 public:
  explicit NsqBroker(const Url& url) : url_(url) {
    engine_ = std::make_shared<Engine>(Options::from_url(url));
    const Options& options = engine_->options();
    producer_ = std::make_shared<Producer>(engine_, options);
    admin_ = NsqAdmin(engine_);
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

  Admin* admin() override { return &admin_; }

  Producer& producer() { return *producer_; }

 private:
  Url url_;
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Producer> producer_;
  std::unique_ptr<NsqPublisher> publisher_;
  NsqAdmin admin_{nullptr};
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
