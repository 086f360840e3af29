// The conformance cases. See conformance.hpp for how a backend joins and for stress mode.

#include "conformance.hpp"

#include <algorithm>
#include <cstdlib>
#include <future>
#include <iterator>
#include <latch>
#include <random>
#include <sstream>
#include <thread>
#include <utility>

namespace ferry::testing {
namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::duration_cast;

milliseconds since(SteadyClock::time_point start) {
  return duration_cast<milliseconds>(SteadyClock::now() - start);
}

std::string describe(const std::set<std::string>& ids, std::size_t limit = 5) {
  std::ostringstream out;
  std::size_t n = 0;
  for (const auto& id : ids) {
    if (n++ == limit) {
      out << " …";
      break;
    }
    out << (n == 1 ? "" : ", ") << id;
  }
  return out.str();
}

std::set<std::string> minus(const std::set<std::string>& a, const std::set<std::string>& b) {
  std::set<std::string> out;
  std::set_difference(a.begin(), a.end(), b.begin(), b.end(), std::inserter(out, out.end()));
  return out;
}

// The capabilities of each backend, read once from a fresh broker.
Capabilities capabilities_of(const BackendSpec& spec) {
  static std::mutex mutex;
  static std::map<std::string, Capabilities> known;
  {
    std::lock_guard lock(mutex);
    if (auto it = known.find(spec.name); it != known.end()) return it->second;
  }
  Context probe(spec);
  Capabilities caps = probe.caps();
  std::lock_guard lock(mutex);
  known.emplace(spec.name, caps);
  return caps;
}

// Receives on its own thread, acking (or not) each delivery, until stopped or closed.
class Consumer {
 public:
  using Handler = std::function<void(Delivery&)>;

  Consumer(Subscriber& subscriber, Handler handler)
      : thread_([this, &subscriber, handler = std::move(handler)] {
          while (!stop_) {
            auto d = subscriber.receive(milliseconds{50});
            if (d) handler(*d);
          }
        }) {}
  ~Consumer() { stop(); }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

// A payload holding every byte value, NULs included, twice over.
std::string all_bytes() {
  std::string out;
  for (int round = 0; round < 2; ++round)
    for (int b = 0; b < 256; ++b) out.push_back(static_cast<char>(b));
  out += std::string("\0tail\0", 6);
  return out;
}

std::vector<Seen> drain_ids(Subscriber& subscriber, const std::set<std::string>& want, milliseconds timeout) {
  std::vector<Seen> seen;
  std::set<std::string> missing = want;
  const auto deadline = SteadyClock::now() + timeout;
  while (!missing.empty()) {
    auto left = duration_cast<milliseconds>(deadline - SteadyClock::now());
    if (left <= milliseconds{0}) break;
    auto d = subscriber.receive(left);
    if (!d) break;
    missing.erase(d->message().id);
    seen.push_back({d->message().id, d->attempt(), d->message()});
    d->ack();
  }
  return seen;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Helpers

void PrintTo(const BackendSpec& spec, std::ostream* out) { *out << "backend " << spec.name; }

std::string unique_name(const std::string& prefix) {
  static const std::uint32_t seed = [] {
    std::random_device device;
    return static_cast<std::uint32_t>(device());
  }();
  static std::atomic<std::uint64_t> counter{0};
  std::ostringstream out;
  out << prefix << '-' << std::hex << seed << '-' << std::dec << ++counter;
  return out.str();
}

std::shared_ptr<Broker> reopen(std::shared_ptr<Broker> broker, const std::string& url) {
  broker->close();
  broker.reset();
  return Broker::open(url);
}

int stress_factor() {
  const char* text = std::getenv("FERRY_STRESS");
  if (text == nullptr) return 1;
  int n = std::atoi(text);
  return std::clamp(n, 1, 64);
}

Context::Context(const BackendSpec& spec) : spec_(spec), url_(spec.make_url()) {
  broker_ = Broker::open(url_);
  caps_ = broker_->capabilities();
}

Context::~Context() {
  for (auto& b : extra_) b->close();
  extra_.clear();
  if (broker_) broker_->close();
  broker_.reset();
  if (spec_.cleanup) spec_.cleanup(url_);
}

milliseconds Context::patience() const { return spec_.patience * stress_factor(); }

std::string Context::name(const std::string& stem) { return unique_name(stem) + "-" + std::to_string(++names_); }

std::shared_ptr<Broker> Context::open_again() {
  extra_.push_back(Broker::open(url_));
  return extra_.back();
}

void Context::restart() {
  if (!spec_.restart) throw Error(Errc::invalid_argument, "backend '" + spec_.name + "' has no restart hook");
  broker_ = spec_.restart(std::move(broker_), url_);
}

std::unique_ptr<Subscriber> Context::subscribe(const std::string& topic, const std::string& group,
                                               const std::function<void(SubscribeOptions&)>& tweak) {
  SubscribeOptions options;
  options.topic = topic;
  options.group = group;
  if (tweak) tweak(options);
  return broker_->subscribe(options);
}

void Tally::add(const std::string& id) {
  {
    std::lock_guard lock(mutex_);
    ++counts_[id];
    ++total_;
  }
  changed_.notify_all();
}

std::size_t Tally::total() const {
  std::lock_guard lock(mutex_);
  return total_;
}

std::size_t Tally::distinct() const {
  std::lock_guard lock(mutex_);
  return counts_.size();
}

std::map<std::string, int> Tally::counts() const {
  std::lock_guard lock(mutex_);
  return counts_;
}

bool Tally::contains(const std::string& id) const {
  std::lock_guard lock(mutex_);
  return counts_.count(id) > 0;
}

bool Tally::wait_distinct(std::size_t n, milliseconds timeout) const {
  std::unique_lock lock(mutex_);
  return changed_.wait_for(lock, timeout, [&] { return counts_.size() >= n; });
}

std::vector<Seen> drain(Subscriber& subscriber, std::size_t count, milliseconds timeout) {
  std::vector<Seen> seen;
  std::set<std::string> acked;
  const auto deadline = SteadyClock::now() + timeout;
  while (acked.size() < count) {
    auto left = duration_cast<milliseconds>(deadline - SteadyClock::now());
    if (left <= milliseconds{0}) break;
    auto d = subscriber.receive(left);
    if (!d) break;
    acked.insert(d->message().id);
    seen.push_back({d->message().id, d->attempt(), d->message()});
    d->ack();
  }
  return seen;
}

std::optional<Delivery> receive_one(Subscriber& subscriber, milliseconds timeout) {
  return subscriber.receive(timeout);
}

std::vector<Message> make_messages(std::size_t count, const std::string& prefix) {
  std::vector<Message> out;
  out.reserve(count);
  for (std::size_t i = 0; i < count; ++i) out.push_back(Message::with_payload(prefix + "-" + std::to_string(i)));
  return out;
}

std::set<std::string> ids_of(const std::vector<Message>& messages) {
  std::set<std::string> out;
  for (const auto& m : messages) out.insert(m.id);
  return out;
}

std::set<std::string> ids_of(const std::vector<Seen>& seen) {
  std::set<std::string> out;
  for (const auto& s : seen) out.insert(s.id);
  return out;
}

void Conformance::SetUp() {
  const BackendSpec& spec = GetParam();
  ASSERT_TRUE(spec.register_scheme && spec.make_url) << "BackendSpec needs register_scheme and make_url";
  spec.register_scheme();
  caps_ = capabilities_of(spec);
}

void Conformance::run(const std::function<void(Context&)>& body) {
  const int n = stress_factor();
  if (n <= 1) {
    Context context(GetParam());
    body(context);
    return;
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      try {
        Context context(GetParam());
        body(context);
      } catch (const std::exception& e) {
        ADD_FAILURE() << "stress run " << i << " threw: " << e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
}

// ---------------------------------------------------------------------------------------
// Cases

TEST_P(Conformance, PublishSubscribeRoundTrip) {
  run([](Context& c) {
    const auto topic = c.name("round-trip");
    const auto group = c.name("g");
    auto sub = c.subscribe(topic, group);
    Message m = Message::with_payload("hello");
    const std::string id = m.id;
    c.broker().publisher().publish(topic, m);

    auto d = receive_one(*sub, c.patience());
    ASSERT_TRUE(d) << "a published message was not delivered within " << c.patience().count() << " ms";
    EXPECT_EQ(d->message().id, id);
    EXPECT_EQ(d->message().payload, "hello");
    EXPECT_EQ(d->topic(), topic);
    EXPECT_EQ(d->group(), group);
    EXPECT_EQ(d->attempt(), 1);
    d->ack();
    EXPECT_TRUE(d->settled());
    EXPECT_FALSE(receive_one(*sub, c.quiet())) << "an acked message was delivered again";
  });
}

TEST_P(Conformance, HeadersKeyAndBinaryPayloadSurvive) {
  run([](Context& c) {
    const auto topic = c.name("fields");
    auto sub = c.subscribe(topic, c.name("g"));

    Message full;
    full.id = make_uuid();
    full.key = "customer-42";
    full.headers = {{"content-type", "application/octet-stream"},
                    {"x-empty", ""},
                    {"x-unicode", "gr\xc3\xbc\xc3\x9f" "e \xe2\x9c\x93"},
                    {"x-binary", std::string("a\0b", 3)}};
    full.payload = all_bytes();
    full.timestamp = from_unix_ms(1'700'000'000'123);

    Message bare;  // own non-UUID id, no key, no headers, empty payload, stamped by ferry
    bare.id = "caller-chosen-id-" + c.name("x");

    std::vector<Message> batch{full, bare};
    c.broker().publisher().publish_batch(topic, batch);

    auto seen = drain(*sub, 2, c.patience());
    ASSERT_EQ(seen.size(), 2u) << "expected both messages to be delivered once";
    const Seen* got_full = nullptr;
    const Seen* got_bare = nullptr;
    for (const auto& s : seen) (s.id == full.id ? got_full : got_bare) = &s;
    ASSERT_NE(got_full, nullptr) << "the message with a caller-set UUID lost its id";
    ASSERT_NE(got_bare, nullptr);

    EXPECT_EQ(got_full->message.key, full.key);
    EXPECT_EQ(got_full->message.headers, full.headers);
    EXPECT_EQ(got_full->message.payload.size(), full.payload.size());
    EXPECT_TRUE(got_full->message.payload == full.payload) << "binary payload changed in transit";
    EXPECT_EQ(to_unix_ms(got_full->message.timestamp), to_unix_ms(full.timestamp));

    EXPECT_EQ(got_bare->id, bare.id);
    EXPECT_FALSE(got_bare->message.key.has_value());
    EXPECT_TRUE(got_bare->message.headers.empty());
    EXPECT_TRUE(got_bare->message.payload.empty());
    EXPECT_NE(got_bare->message.timestamp, Clock::time_point{}) << "ferry did not stamp a timestamp";
  });
}

TEST_P(Conformance, AMessageKeptByTheCallerGoesOutOncePerPublishAndStaysAsItWas) {
  run([](Context& c) {
    const auto topic = c.name("kept");
    auto sub = c.subscribe(topic, c.name("g"));
    Message kept;  // no id and no timestamp: each publish makes its own
    kept.key = "k";
    kept.headers = {{"n", "1"}};
    kept.payload = std::string("kept\0", 5);
    auto first = std::make_shared<std::promise<Status>>();
    auto second = std::make_shared<std::promise<Status>>();
    c.broker().publisher().publish_async(topic, kept, [first](const Status& s) { first->set_value(s); });
    kept.headers["n"] = "2";  // the first publish sent a copy: this goes out with the second only
    c.broker().publisher().publish_async(topic, std::as_const(kept),
                                         [second](const Status& s) { second->set_value(s); });
    for (const auto& done : {first, second}) {
      auto status = done->get_future();
      ASSERT_EQ(status.wait_for(c.patience()), std::future_status::ready) << "a publish never completed";
      EXPECT_TRUE(status.get().ok());
    }
    EXPECT_TRUE(kept.id.empty()) << "the caller's message was given an id";
    EXPECT_EQ(kept.timestamp, Clock::time_point{}) << "the caller's message was given a timestamp";

    auto seen = drain(*sub, 2, c.patience());
    ASSERT_EQ(seen.size(), 2u) << "expected each publish to be delivered once";
    EXPECT_NE(seen[0].id, seen[1].id) << "two publishes of one message without an id went out with the same id";
    std::set<std::string> numbers;
    for (const auto& s : seen) {
      EXPECT_FALSE(s.id.empty());
      EXPECT_EQ(s.message.key, kept.key);
      EXPECT_EQ(s.message.payload, kept.payload);
      EXPECT_NE(s.message.timestamp, Clock::time_point{});
      numbers.insert(s.message.headers.count("n") ? s.message.headers.at("n") : "none");
    }
    EXPECT_EQ(numbers, (std::set<std::string>{"1", "2"}));
  });
}

TEST_P(Conformance, OneMebibytePayload) {
  run([](Context& c) {
    const auto topic = c.name("large");
    auto sub = c.subscribe(topic, c.name("g"));
    std::string payload(1 << 20, '\0');
    std::mt19937 random(42);
    for (auto& ch : payload) ch = static_cast<char>(random() & 0xff);
    Message m = Message::with_payload(payload);
    c.broker().publisher().publish(topic, m);

    auto d = receive_one(*sub, c.patience());
    ASSERT_TRUE(d) << "a 1 MiB message was not delivered";
    EXPECT_EQ(d->message().id, m.id);
    EXPECT_EQ(d->message().payload.size(), payload.size());
    EXPECT_TRUE(d->message().payload == payload) << "the 1 MiB payload changed in transit";
    d->ack();
  });
}

TEST_P(Conformance, ConcurrentPublishersLoseAndDoubleNothing) {
  run([](Context& c) {
    constexpr int threads = 8;
    constexpr int per_thread = 500;
    constexpr std::size_t batch_size = 25;
    const auto topic = c.name("concurrent");
    auto sub = c.subscribe(topic, c.name("g"), [](SubscribeOptions& o) { o.prefetch = 256; });
    Publisher& publisher = c.broker().publisher();

    Tally confirmed;
    std::atomic<int> failures{0};
    std::mutex sent_mutex;
    std::set<std::string> sent;

    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        std::vector<Message> batch;
        auto confirm_all = [&confirmed, &failures](std::vector<std::string> ids) {
          return [&confirmed, &failures, ids = std::move(ids)](const Status& s) {
            if (!s.ok()) ++failures;
            else for (const auto& id : ids) confirmed.add(id);
          };
        };
        auto send_batch = [&](bool blocking) {
          std::vector<std::string> ids;
          for (const auto& m : batch) ids.push_back(m.id);
          if (blocking) {
            publisher.publish_batch(topic, std::move(batch));
            for (const auto& id : ids) confirmed.add(id);
          } else {
            publisher.publish_batch_async(topic, std::move(batch), confirm_all(ids));
          }
          batch.clear();
        };
        for (int i = 0; i < per_thread; ++i) {
          Message m = Message::with_payload("t" + std::to_string(t) + "-" + std::to_string(i));
          const std::string id = m.id;
          {
            std::lock_guard lock(sent_mutex);
            sent.insert(id);
          }
          try {
            switch (i % 4) {
              case 0:
                publisher.publish(topic, std::move(m));
                confirmed.add(id);
                break;
              case 1:
                publisher.publish_async(topic, std::move(m), confirm_all({id}));
                break;
              case 2:
                if (publisher.publish_future(topic, std::move(m)).get().ok()) confirmed.add(id);
                else ++failures;
                break;
              default:
                batch.push_back(std::move(m));
                if (batch.size() == batch_size) send_batch(i % 8 == 3);
                break;
            }
          } catch (const std::exception& e) {
            ++failures;
            ADD_FAILURE() << "publish threw: " << e.what();
          }
        }
        if (!batch.empty()) send_batch(true);
      });
    }
    for (auto& w : workers) w.join();

    const std::size_t total = static_cast<std::size_t>(threads) * per_thread;
    ASSERT_EQ(sent.size(), total);
    EXPECT_TRUE(confirmed.wait_distinct(total, c.patience()))
        << "only " << confirmed.distinct() << " of " << total << " publishes were confirmed";
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(confirmed.total(), total) << "a publish was confirmed more than once";

    auto seen = drain(*sub, total, c.patience());
    std::map<std::string, int> counts;
    for (const auto& s : seen) ++counts[s.id];
    const auto received = ids_of(seen);
    EXPECT_EQ(received.size(), total);
    EXPECT_TRUE(minus(sent, received).empty()) << "lost: " << describe(minus(sent, received));
    EXPECT_TRUE(minus(received, sent).empty()) << "never sent: " << describe(minus(received, sent));
    for (const auto& [id, n] : counts) EXPECT_EQ(n, 1) << "message " << id << " was delivered " << n << " times";
  });
}

TEST_P(Conformance, FanOutToEveryGroup) {
  run([](Context& c) {
    const auto topic = c.name("fan-out");
    std::vector<std::unique_ptr<Subscriber>> subs;
    for (int g = 0; g < 3; ++g) subs.push_back(c.subscribe(topic, c.name("group" + std::to_string(g))));
    auto messages = make_messages(50, "fan");
    const auto ids = ids_of(messages);
    c.broker().publisher().publish_batch(topic, messages);

    for (std::size_t g = 0; g < subs.size(); ++g) {
      auto seen = drain(*subs[g], ids.size(), c.patience());
      EXPECT_EQ(ids_of(seen), ids) << "group " << g << " missed messages";
      EXPECT_EQ(seen.size(), ids.size()) << "group " << g << " got duplicates";
    }
  });
}

TEST_P(Conformance, LoadBalancingInsideGroup) {
  run([](Context& c) {
    constexpr int consumers = 3;
    const auto topic = c.name("balance");
    const auto group = c.name("g");
    std::vector<std::unique_ptr<Subscriber>> subs;
    for (int i = 0; i < consumers; ++i)
      subs.push_back(c.subscribe(topic, group, [](SubscribeOptions& o) { o.prefetch = 8; }));

    Tally acked;
    std::vector<Tally> per_consumer(consumers);
    std::vector<std::unique_ptr<Consumer>> running;
    for (int i = 0; i < consumers; ++i) {
      running.push_back(std::make_unique<Consumer>(*subs[i], [&, i](Delivery& d) {
        per_consumer[i].add(d.message().id);
        std::this_thread::sleep_for(milliseconds{1});  // the work a handler does
        acked.add(d.message().id);
        d.ack();
      }));
    }
    auto messages = make_messages(150, "lb");
    const auto ids = ids_of(messages);
    for (auto& m : messages) c.broker().publisher().publish(topic, m);

    EXPECT_TRUE(acked.wait_distinct(ids.size(), c.patience()))
        << "only " << acked.distinct() << " of " << ids.size() << " messages were consumed";
    for (auto& r : running) r->stop();

    std::set<std::string> all;
    for (int i = 0; i < consumers; ++i) {
      EXPECT_GT(per_consumer[i].total(), 0u) << "consumer " << i << " of the group got no message";
      for (const auto& [id, _] : per_consumer[i].counts()) all.insert(id);
    }
    EXPECT_EQ(all, ids);
    EXPECT_EQ(acked.total(), ids.size()) << "messages were delivered twice although every one was acked";
  });
}

TEST_P(Conformance, PerKeyOrderAcrossConcurrentConsumers) {
  FERRY_REQUIRE_CAPABILITY(per_key_order);
  run([](Context& c) {
    constexpr int keys = 4;
    constexpr int per_key = 60;
    constexpr int consumers = 4;
    constexpr int nacked_index = 10;  // each key's message 10 is nacked once
    const auto topic = c.name("ordered");
    const auto group = c.name("g");
    std::vector<std::unique_ptr<Subscriber>> subs;
    for (int i = 0; i < consumers; ++i)
      subs.push_back(c.subscribe(topic, group, [](SubscribeOptions& o) { o.prefetch = 16; }));

    std::mutex mutex;
    std::map<std::string, int> acked_upto;
    std::vector<std::string> violations;
    Tally acked;
    std::vector<std::unique_ptr<Consumer>> running;
    for (int i = 0; i < consumers; ++i) {
      running.push_back(std::make_unique<Consumer>(*subs[i], [&](Delivery& d) {
        const std::string& key = *d.message().key;
        const int index = std::stoi(d.message().payload.substr(d.message().payload.find(':') + 1));
        bool nack = false;
        {
          std::lock_guard lock(mutex);
          auto [it, _] = acked_upto.try_emplace(key, -1);
          if (index != it->second + 1)
            violations.push_back(key + ": got " + std::to_string(index) + " (attempt " + std::to_string(d.attempt()) +
                                 ") after " + std::to_string(it->second));
          nack = index == nacked_index && d.attempt() == 1;
          if (!nack) it->second = index;
        }
        if (nack) {
          d.nack();
        } else {
          acked.add(d.message().id);
          d.ack();
        }
      }));
    }

    std::vector<Message> messages;
    for (int i = 0; i < per_key; ++i) {
      for (int k = 0; k < keys; ++k) {
        Message m = Message::with_payload("key" + std::to_string(k) + ":" + std::to_string(i));
        m.key = "key" + std::to_string(k);
        messages.push_back(std::move(m));
      }
    }
    for (std::size_t i = 0; i < messages.size(); i += 20)
      c.broker().publisher().publish_batch(
          topic, std::vector<Message>(messages.begin() + static_cast<std::ptrdiff_t>(i),
                                      messages.begin() + static_cast<std::ptrdiff_t>(std::min(i + 20, messages.size()))));

    EXPECT_TRUE(acked.wait_distinct(messages.size(), c.patience()))
        << "only " << acked.distinct() << " of " << messages.size() << " keyed messages were consumed";
    for (auto& r : running) r->stop();
    std::lock_guard lock(mutex);
    EXPECT_TRUE(violations.empty()) << violations.size() << " order violations, first: " << violations.front();
    for (int k = 0; k < keys; ++k) EXPECT_EQ(acked_upto["key" + std::to_string(k)], per_key - 1);
  });
}

TEST_P(Conformance, NackRedeliversWithAttemptCount) {
  run([](Context& c) {
    const auto topic = c.name("nack");
    auto sub = c.subscribe(topic, c.name("g"));
    Message m = Message::with_payload("again");
    c.broker().publisher().publish(topic, m);

    auto first = receive_one(*sub, c.patience());
    ASSERT_TRUE(first);
    EXPECT_EQ(first->attempt(), 1);
    first->nack();
    auto second = receive_one(*sub, c.patience());
    ASSERT_TRUE(second) << "a nacked message was not redelivered";
    EXPECT_EQ(second->message().id, m.id);
    EXPECT_EQ(second->message().payload, "again");
    EXPECT_EQ(second->attempt(), 2);
    second->nack();
    auto third = receive_one(*sub, c.patience());
    ASSERT_TRUE(third);
    EXPECT_EQ(third->attempt(), 3);
    third->ack();
    EXPECT_FALSE(receive_one(*sub, c.quiet())) << "an acked message came back";
  });
}

TEST_P(Conformance, NackWithDelayWaitsAtLeastTheDelay) {
  run([](Context& c) {
    constexpr milliseconds delay{300};
    constexpr milliseconds clock_slack{20};  // backends may keep times in whole milliseconds
    const auto topic = c.name("nack-delay");
    auto sub = c.subscribe(topic, c.name("g"));
    Message m = Message::with_payload("later");
    c.broker().publisher().publish(topic, m);

    auto first = receive_one(*sub, c.patience());
    ASSERT_TRUE(first);
    const auto nacked_at = SteadyClock::now();
    first->nack(delay);
    Message other = Message::with_payload("meanwhile");
    c.broker().publisher().publish(topic, other);

    std::vector<Seen> seen;
    while (seen.size() < 2) {
      auto d = receive_one(*sub, c.patience());
      if (!d) break;
      if (d->message().id == m.id) {
        EXPECT_GE(since(nacked_at), delay - clock_slack) << "redelivered before the nack delay ran out";
      }
      seen.push_back({d->message().id, d->attempt(), d->message()});
      d->ack();
    }
    ASSERT_EQ(seen.size(), 2u) << "the delayed message or the one published after it did not arrive";
    const Seen& redelivered = seen[0].id == m.id ? seen[0] : seen[1];
    EXPECT_EQ(redelivered.id, m.id);
    EXPECT_EQ(redelivered.attempt, 2);
    if (c.caps().native_delay) {
      EXPECT_EQ(seen[0].id, other.id) << "a message held by the broker for a nack delay blocked the group";
    }
  });
}

TEST_P(Conformance, CloseWithoutAckRedeliversToAnotherSubscriber) {
  FERRY_REQUIRE_CAPABILITY(redelivers_on_close);
  run([](Context& c) {
    const auto topic = c.name("close-redeliver");
    const auto group = c.name("g");
    auto a = c.subscribe(topic, group);
    Message m = Message::with_payload("unfinished");
    c.broker().publisher().publish(topic, m);
    auto held = receive_one(*a, c.patience());
    ASSERT_TRUE(held);
    EXPECT_EQ(held->attempt(), 1);

    auto b = c.subscribe(topic, group);
    const auto closed_at = SteadyClock::now();
    a->close();
    held->ack();  // settling after the subscriber closed does nothing

    auto again = receive_one(*b, c.patience());
    ASSERT_TRUE(again) << "a delivery left unsettled by a closed subscriber was not redelivered";
    EXPECT_LT(since(closed_at), SubscribeOptions{}.ack_timeout) << "it came back only when its lease ran out";
    EXPECT_EQ(again->message().id, m.id);
    EXPECT_EQ(again->attempt(), 2);
    again->ack();
    EXPECT_FALSE(receive_one(*b, c.quiet())) << "an acked message came back";
  });
}

TEST_P(Conformance, LeaseExpiryRedeliversAndIgnoresStaleAck) {
  run([](Context& c) {
    constexpr milliseconds lease{300};
    const auto topic = c.name("lease");
    const auto group = c.name("g");
    auto a = c.subscribe(topic, group, [&](SubscribeOptions& o) { o.ack_timeout = lease; });
    Message m = Message::with_payload("slow");
    c.broker().publisher().publish(topic, m);
    auto stale = receive_one(*a, c.patience());
    ASSERT_TRUE(stale);
    const auto leased_at = SteadyClock::now();

    auto b = c.subscribe(topic, group, [](SubscribeOptions& o) { o.ack_timeout = milliseconds{30'000}; });
    auto taken_over = receive_one(*b, c.patience());
    ASSERT_TRUE(taken_over) << "a delivery whose lease ran out was not redelivered";
    EXPECT_GE(since(leased_at), lease - milliseconds{20}) << "redelivered before the lease ran out";
    EXPECT_EQ(taken_over->message().id, m.id);
    EXPECT_EQ(taken_over->attempt(), 2);

    stale->ack();  // the lease is gone: this ack must not settle the newer delivery
    a->close();
    taken_over->nack();
    auto third = receive_one(*b, c.patience());
    ASSERT_TRUE(third) << "a stale ack settled a delivery that had been handed to another consumer";
    EXPECT_EQ(third->message().id, m.id);
    EXPECT_EQ(third->attempt(), 3);
    third->ack();
  });
}

TEST_P(Conformance, RejectMovesToDeadLetterTopic) {
  run([](Context& c) {
    const auto topic = c.name("reject");
    const auto group = c.name("g");
    SubscribeOptions defaults;
    defaults.topic = topic;
    defaults.group = group;
    auto dead = c.subscribe(defaults.effective_dead_letter_topic(), c.name("dlq-reader"));
    auto sub = c.subscribe(topic, group);

    Message m = Message::with_payload(std::string("\x00\x01poison\xff", 9));
    m.key = "k1";
    m.headers = {{"x-trace", "abc"}};
    c.broker().publisher().publish(topic, m);
    auto first = receive_one(*sub, c.patience());
    ASSERT_TRUE(first);
    first->nack();
    auto second = receive_one(*sub, c.patience());
    ASSERT_TRUE(second);
    ASSERT_EQ(second->attempt(), 2);
    const std::string reason = "cannot parse: unexpected byte 0x00";
    second->reject(reason);

    auto dl = receive_one(*dead, c.patience());
    ASSERT_TRUE(dl) << "nothing arrived on " << defaults.effective_dead_letter_topic();
    const Message& got = dl->message();
    EXPECT_TRUE(got.payload == m.payload) << "the dead letter's payload differs from the original";
    EXPECT_EQ(got.key, m.key);
    const auto value_of = [&](const char* name) {
      auto it = got.headers.find(name);
      return it == got.headers.end() ? std::string("<missing>") : it->second;
    };
    EXPECT_EQ(value_of("x-trace"), "abc");
    EXPECT_EQ(value_of(header::error), reason);
    EXPECT_EQ(value_of(header::attempts), "2");
    EXPECT_EQ(value_of(header::original_topic), topic);
    if (got.headers.count(header::original_group)) {
      EXPECT_EQ(value_of(header::original_group), group);
    }
    dl->ack();
    EXPECT_FALSE(receive_one(*sub, c.quiet())) << "a rejected message was delivered again";

    // A configured dead-letter topic replaces the default one. (A topic of its own: a
    // backend that retains settled messages would hand the first one to a new group.)
    const auto topic2 = c.name("reject-custom");
    const auto custom = c.name("custom-dlq");
    auto custom_reader = c.subscribe(custom, c.name("reader"));
    auto sub2 = c.subscribe(topic2, c.name("g2"), [&](SubscribeOptions& o) { o.dead_letter_topic = custom; });
    Message m2 = Message::with_payload("second");
    c.broker().publisher().publish(topic2, m2);
    auto d2 = receive_one(*sub2, c.patience());
    ASSERT_TRUE(d2);
    d2->reject("nope");
    auto dl2 = receive_one(*custom_reader, c.patience());
    ASSERT_TRUE(dl2) << "nothing arrived on the configured dead-letter topic";
    EXPECT_EQ(dl2->message().payload, "second");
    EXPECT_EQ(dl2->message().headers.at(header::error), "nope");
    EXPECT_EQ(dl2->message().headers.at(header::attempts), "1");
    dl2->ack();
  });
}

namespace {

// Publishes from several threads until the broker handle is closed under them; returns
// the ids whose publish was confirmed. Every publish must complete exactly once, with
// ok or Errc::closed.
std::set<std::string> publish_until_closed(Context& c, Broker& broker, const std::string& topic) {
  constexpr int threads = 4;
  constexpr std::size_t confirmed_before_close = 300;
  Publisher& publisher = broker.publisher();
  Tally confirmed, completed;
  std::atomic<std::size_t> attempted{0};
  std::atomic<bool> closed{false};
  std::mutex errors_mutex;
  std::vector<std::string> errors;
  auto record = [&](const Status& s, const std::string& id) {
    if (s.ok()) {
      confirmed.add(id);
    } else if (s.code != Errc::closed) {
      std::lock_guard lock(errors_mutex);
      errors.push_back(std::string(to_string(s.code)) + ": " + s.message);
    }
    completed.add(id);
  };

  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      int after_close = 0;
      for (int i = 0; i < 20'000 && after_close < 20; ++i) {
        if (closed) ++after_close;
        Message m = Message::with_payload("p" + std::to_string(i));
        const std::string id = m.id;
        ++attempted;
        try {
          publisher.publish_async(topic, std::move(m), [&record, id](const Status& s) { record(s, id); });
        } catch (const Error& e) {  // a backend may refuse at the call once closed
          record(Status{e.code(), e.what()}, id);
        }
      }
    });
  }
  const bool enough = confirmed.wait_distinct(confirmed_before_close, c.patience());
  broker.close();
  closed = true;
  for (auto& w : workers) w.join();
  EXPECT_TRUE(enough) << "publishing was too slow to close the broker midway";
  EXPECT_TRUE(completed.wait_distinct(attempted.load(), c.patience()))
      << completed.distinct() << " of " << attempted.load() << " publishes completed";
  EXPECT_EQ(completed.total(), completed.distinct()) << "a publish callback ran more than once";
  EXPECT_LT(confirmed.distinct(), attempted.load()) << "publishes after close() were confirmed";
  std::lock_guard lock(errors_mutex);
  EXPECT_TRUE(errors.empty()) << "publishes failed with something other than Errc::closed: " << errors.front();
  std::set<std::string> out;
  for (const auto& [id, _] : confirmed.counts()) out.insert(id);
  return out;
}

}  // namespace

TEST_P(Conformance, CloseWhilePublishingLosesNothingConfirmed) {
  run([](Context& c) {
    const auto topic = c.name("close-publishing");
    const auto group = c.name("g");
    auto consumer_handle = c.open_again();
    SubscribeOptions options;
    options.topic = topic;
    options.group = group;
    options.prefetch = 256;
    auto sub = consumer_handle->subscribe(options);
    Tally received;
    Consumer drainer(*sub, [&](Delivery& d) {
      received.add(d.message().id);
      d.ack();
    });

    const auto confirmed = publish_until_closed(c, c.broker(), topic);
    const auto deadline = SteadyClock::now() + c.patience();
    for (const auto& id : confirmed) {
      while (!received.contains(id) && SteadyClock::now() < deadline)
        received.wait_distinct(received.distinct() + 1, milliseconds{50});
    }
    drainer.stop();
    std::set<std::string> lost;
    for (const auto& id : confirmed)
      if (!received.contains(id)) lost.insert(id);
    EXPECT_TRUE(lost.empty()) << lost.size() << " of " << confirmed.size()
                              << " confirmed messages never arrived: " << describe(lost);
  });
}

TEST_P(Conformance, CloseWhilePublishingThenRestartLosesNothingConfirmed) {
  FERRY_REQUIRE_CAPABILITY(persistent);
  if (!has_restart()) GTEST_SKIP() << "backend '" << GetParam().name << "' has no restart hook";
  run([](Context& c) {
    const auto topic = c.name("close-restart");
    const auto group = c.name("g");
    c.subscribe(topic, group)->close();  // the group exists from here on

    const auto confirmed = publish_until_closed(c, c.broker(), topic);
    c.restart();
    auto sub = c.subscribe(topic, group, [](SubscribeOptions& o) { o.prefetch = 256; });
    const auto seen = drain_ids(*sub, confirmed, c.patience());
    const auto lost = minus(confirmed, ids_of(seen));
    EXPECT_TRUE(lost.empty()) << lost.size() << " of " << confirmed.size()
                              << " confirmed messages were lost across the restart: " << describe(lost);
  });
}

TEST_P(Conformance, SubscriberChurnWhileBacklogDrainsLosesNothing) {
  const bool on_close = caps().redelivers_on_close;
  run([on_close](Context& c) {
    const auto topic = c.name("churn");
    const auto group = c.name("g");
    const auto tweak = [on_close](SubscribeOptions& o) {
      if (!on_close) o.ack_timeout = milliseconds{300};
    };
    c.subscribe(topic, group, tweak)->close();  // the group exists from here on
    auto messages = make_messages(300, "churn");
    const auto ids = ids_of(messages);
    for (std::size_t i = 0; i < messages.size(); i += 50)
      c.broker().publisher().publish_batch(
          topic, std::vector<Message>(messages.begin() + static_cast<std::ptrdiff_t>(i),
                                      messages.begin() + static_cast<std::ptrdiff_t>(i + 50)));

    std::set<std::string> acked;
    int rounds = 0;
    const auto deadline = SteadyClock::now() + c.patience();
    while (acked.size() < ids.size() && SteadyClock::now() < deadline) {
      ++rounds;
      auto sub = c.subscribe(topic, group, tweak);
      std::vector<Delivery> left_open;
      const int take = 1 + rounds % 13;
      for (int j = 0; j < take; ++j) {
        auto d = sub->receive(milliseconds{100});
        if (!d) break;
        if (j % 4 == 3) {
          left_open.push_back(std::move(*d));
        } else {
          acked.insert(d->message().id);
          d->ack();
        }
      }
      sub->close();
      if (!left_open.empty()) left_open.front().ack();  // after close: must do nothing
    }
    EXPECT_GE(rounds, 20);
    const auto missing = minus(ids, acked);
    EXPECT_TRUE(missing.empty()) << missing.size() << " messages were never acked after " << rounds
                                 << " subscriber rounds: " << describe(missing);
  });
}

TEST_P(Conformance, ManySubscribersClosedAtOnce) {
  const bool on_close = caps().redelivers_on_close;
  run([on_close](Context& c) {
    constexpr int count = 16;
    constexpr std::size_t messages_count = 64;
    const auto topic = c.name("many");
    const auto group = c.name("g");
    const auto tweak = [on_close](SubscribeOptions& o) {
      if (!on_close) o.ack_timeout = milliseconds{300};
    };
    std::vector<std::unique_ptr<Subscriber>> subs;
    for (int i = 0; i < count; ++i) subs.push_back(c.subscribe(topic, group, tweak));

    Tally held;
    std::atomic<int> returned_after_close{0};
    std::atomic<long long> slowest_return_ms{0};
    std::atomic<bool> closing{false};
    SteadyClock::time_point closed_at{};
    std::vector<std::thread> receivers;
    for (int i = 0; i < count; ++i) {
      receivers.emplace_back([&, i] {
        std::vector<Delivery> mine;  // held without settling, dropped at the end
        while (true) {
          auto d = subs[i]->receive(c.patience());
          if (!d) break;
          held.add(d->message().id);
          mine.push_back(std::move(*d));
        }
        if (closing) {
          ++returned_after_close;
          long long ms = since(closed_at).count();
          long long prev = slowest_return_ms.load();
          while (ms > prev && !slowest_return_ms.compare_exchange_weak(prev, ms)) {
          }
        }
      });
    }
    auto messages = make_messages(messages_count, "many");
    const auto ids = ids_of(messages);
    c.broker().publisher().publish_batch(topic, messages);
    EXPECT_TRUE(held.wait_distinct(ids.size(), c.patience())) << "only " << held.distinct() << " delivered";

    std::latch start(count + 1);
    std::vector<std::thread> closers;
    for (int i = 0; i < count; ++i) {
      closers.emplace_back([&, i] {
        start.arrive_and_wait();
        subs[i]->close();
      });
    }
    closed_at = SteadyClock::now();
    closing = true;
    start.arrive_and_wait();
    for (auto& t : closers) t.join();
    for (auto& t : receivers) t.join();
    EXPECT_EQ(returned_after_close.load(), count) << "receivers did not return from receive() on close";
    EXPECT_LT(slowest_return_ms.load(), c.patience().count() / 2) << "close() did not wake a blocked receive()";

    auto fresh = c.subscribe(topic, group, [](SubscribeOptions& o) { o.prefetch = 128; });
    auto seen = drain(*fresh, ids.size(), c.patience());
    EXPECT_EQ(ids_of(seen), ids) << "messages held by the closed subscribers did not come back";
    for (const auto& s : seen) EXPECT_GE(s.attempt, 2) << "a redelivery kept attempt 1";
  });
}

TEST_P(Conformance, NackStormStillDeliversEverything) {
  run([](Context& c) {
    constexpr int consumers = 4;
    constexpr int nacks_each = 3;
    const auto topic = c.name("storm");
    const auto group = c.name("g");
    std::vector<std::unique_ptr<Subscriber>> subs;
    for (int i = 0; i < consumers; ++i) subs.push_back(c.subscribe(topic, group));
    Tally acked;
    std::mutex mutex;
    std::vector<std::string> wrong_attempts;
    std::vector<std::unique_ptr<Consumer>> running;
    for (int i = 0; i < consumers; ++i) {
      running.push_back(std::make_unique<Consumer>(*subs[i], [&](Delivery& d) {
        if (d.attempt() <= nacks_each) {
          d.nack();
          return;
        }
        if (d.attempt() != nacks_each + 1) {
          std::lock_guard lock(mutex);
          wrong_attempts.push_back(d.message().id + " acked at attempt " + std::to_string(d.attempt()));
        }
        acked.add(d.message().id);
        d.ack();
      }));
    }
    auto messages = make_messages(200, "storm");
    const auto ids = ids_of(messages);
    c.broker().publisher().publish_batch(topic, messages);
    EXPECT_TRUE(acked.wait_distinct(ids.size(), c.patience()))
        << "after the nack storm only " << acked.distinct() << " of " << ids.size() << " were delivered";
    for (auto& r : running) r->stop();
    EXPECT_EQ(acked.total(), ids.size()) << "a message was acked twice";
    std::lock_guard lock(mutex);
    EXPECT_TRUE(wrong_attempts.empty()) << wrong_attempts.front();
  });
}

TEST_P(Conformance, LateGroupSeesHistoryAsCapabilitySays) {
  run([](Context& c) {
    const auto topic = c.name("late");
    // The early group keeps the messages retained (a message every group has acked may
    // be dropped) until the late group has had its chance.
    auto early = c.subscribe(topic, c.name("early"));
    auto before = make_messages(10, "before");
    c.broker().publisher().publish_batch(topic, before);

    auto late = c.subscribe(topic, c.name("late"));
    if (c.caps().late_group_sees_history) {
      EXPECT_EQ(ids_of(drain(*late, before.size(), c.patience())), ids_of(before))
          << "late_group_sees_history is set but a new group missed older messages";
    } else {
      EXPECT_FALSE(receive_one(*late, c.quiet())) << "late_group_sees_history is not set but a new group got history";
    }
    Message after = Message::with_payload("after");
    c.broker().publisher().publish(topic, after);
    auto d = receive_one(*late, c.patience());
    ASSERT_TRUE(d) << "a new group missed a message published after it was created";
    EXPECT_EQ(d->message().id, after.id);
    d->ack();

    auto all = ids_of(before);
    all.insert(after.id);
    EXPECT_EQ(ids_of(drain(*early, all.size(), c.patience())), all) << "the early group missed messages";
  });
}

TEST_P(Conformance, PersistenceAcrossRestart) {
  FERRY_REQUIRE_CAPABILITY(persistent);
  if (!has_restart()) GTEST_SKIP() << "backend '" << GetParam().name << "' has no restart hook";
  run([](Context& c) {
    const auto topic = c.name("persist");
    const auto group = c.name("g");
    auto sub = c.subscribe(topic, group);
    auto messages = make_messages(20, "persist");
    messages[3].key = "k";
    messages[3].headers = {{"x-h", "v"}};
    c.broker().publisher().publish_batch(topic, messages);
    auto acked = receive_one(*sub, c.patience());
    ASSERT_TRUE(acked);
    const std::string acked_id = acked->message().id;
    acked->ack();
    auto unsettled = receive_one(*sub, c.patience());
    ASSERT_TRUE(unsettled);
    const std::string unsettled_id = unsettled->message().id;
    sub->close();
    sub.reset();

    c.restart();
    unsettled->ack();  // its broker is gone: must do nothing
    sub = c.subscribe(topic, group);
    auto want = ids_of(messages);
    want.erase(acked_id);
    auto seen = drain(*sub, want.size(), c.patience());
    EXPECT_EQ(ids_of(seen), want) << "messages were lost or an acked one came back across the restart";
    for (const auto& s : seen) {
      if (s.id == messages[3].id) {
        EXPECT_EQ(s.message.key, messages[3].key);
        EXPECT_EQ(s.message.headers, messages[3].headers);
      }
    }
    EXPECT_FALSE(receive_one(*sub, c.quiet())) << "an acked message came back after the restart";

    Message after = Message::with_payload("after-restart");
    c.broker().publisher().publish(topic, after);
    auto d = receive_one(*sub, c.patience());
    ASSERT_TRUE(d) << "publish/subscribe does not work after a restart";
    EXPECT_EQ(d->message().id, after.id);
    d->ack();
  });
}

TEST_P(Conformance, ReceiveTimesOutAndWakesOnPublish) {
  run([](Context& c) {
    const auto topic = c.name("wake");
    auto sub = c.subscribe(topic, c.name("g"));
    constexpr milliseconds wait{200};
    auto start = SteadyClock::now();
    EXPECT_FALSE(sub->receive(wait));
    EXPECT_GE(since(start), wait - milliseconds{5}) << "receive() returned before its timeout";

    std::optional<Delivery> got;
    SteadyClock::time_point got_at{};
    std::thread receiver([&] {
      got = sub->receive(c.patience());
      got_at = SteadyClock::now();
    });
    std::this_thread::sleep_for(milliseconds{100});  // let the receiver block first
    const auto published_at = SteadyClock::now();
    Message m = Message::with_payload("wake up");
    c.broker().publisher().publish(topic, m);
    receiver.join();
    ASSERT_TRUE(got) << "a blocked receive() missed a publish";
    EXPECT_EQ(got->message().id, m.id);
    EXPECT_LT(duration_cast<milliseconds>(got_at - published_at), c.patience() / 4)
        << "a blocked receive() woke long after the publish";
    got->ack();
  });
}

TEST_P(Conformance, InvalidNamesAndClosedBrokerFailClearly) {
  run([](Context& c) {
    SubscribeOptions bad;
    bad.topic = "has space";
    bad.group = "g";
    try {
      c.broker().subscribe(bad);
      ADD_FAILURE() << "subscribe accepted an invalid topic name";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument);
    }

    Status bad_publish;
    try {
      bad_publish = c.broker().publisher().publish_future("bad/topic", Message::with_payload("x")).get();
    } catch (const Error& e) {
      bad_publish = {e.code(), e.what()};
    }
    EXPECT_EQ(bad_publish.code, Errc::invalid_argument) << "publish to an invalid topic: " << bad_publish.message;

    const auto topic = c.name("closed");
    EXPECT_TRUE(c.broker().ping().ok());
    c.broker().close();
    EXPECT_FALSE(c.broker().ping().ok());
    Status after_close;
    try {
      after_close = c.broker().publisher().publish_future(topic, Message::with_payload("x")).get();
    } catch (const Error& e) {
      after_close = {e.code(), e.what()};
    }
    EXPECT_EQ(after_close.code, Errc::closed) << after_close.message;
    try {
      c.subscribe(topic, c.name("g"));
      ADD_FAILURE() << "subscribe on a closed broker succeeded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::closed);
    }
  });
}

}  // namespace ferry::testing
