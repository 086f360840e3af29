#include "ferry/instrumented.hpp"

#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>

#include "ferry/admin.hpp"

namespace ferry {

InstrumentedPublisher::InstrumentedPublisher(Publisher& inner, metrics::Registry& registry, std::string backend)
    : inner_(inner),
      backend_(std::move(backend)),
      published_(registry.counter("ferry_published_total", "Messages the broker confirmed.", {"backend", "topic"})),
      errors_(registry.counter("ferry_publish_errors_total", "Messages whose publish failed.", {"backend", "topic"})),
      duration_(registry.histogram("ferry_publish_duration_seconds", "From publish call to confirmation.",
                                   {"backend", "topic"})) {}

template <class Publish>
void InstrumentedPublisher::counted(const std::string& topic, std::size_t count, PublishCallback done,
                                    Publish publish) {
  auto start = std::chrono::steady_clock::now();
  metrics::Labels labels{backend_, topic};
  auto* published = &published_.labels(labels);
  auto* errors = &errors_.labels(labels);
  auto* duration = &duration_.labels(labels);
  const auto n = static_cast<double>(count);
  try {
    publish([=, done = std::move(done)](const Status& s) {
      duration->observe(std::chrono::steady_clock::now() - start);
      (s.ok() ? published : errors)->inc(n);
      if (done) done(s);
    });
  } catch (...) {
    errors->inc(n);
    throw;
  }
}

void InstrumentedPublisher::publish_batch_async(const std::string& topic, std::vector<Message> messages,
                                                PublishCallback done) {
  const std::size_t count = messages.size();
  counted(topic, count, std::move(done), [&](PublishCallback wrapped) {
    inner_.publish_batch_async(topic, std::move(messages), std::move(wrapped));
  });
}

void InstrumentedPublisher::publish_async(const std::string& topic, Message&& message, PublishCallback done) {
  counted(topic, 1, std::move(done), [&](PublishCallback wrapped) {
    inner_.publish_async(topic, std::move(message), std::move(wrapped));
  });
}

void InstrumentedPublisher::publish_async(const std::string& topic, const Message& message, PublishCallback done) {
  counted(topic, 1, std::move(done),
          [&](PublishCallback wrapped) { inner_.publish_async(topic, message, std::move(wrapped)); });
}

namespace {

// Reads a broker's Admin::stats() on its own thread, one reading at a time. read() asks
// for a reading that starts after the call and waits for it up to a bound; the newest
// figures are returned either way (none before the first reading completes).
class BacklogReader {
 public:
  explicit BacklogReader(std::weak_ptr<Broker> broker) : broker_(std::move(broker)), thread_([this] { run(); }) {}
  ~BacklogReader() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }
  BacklogReader(const BacklogReader&) = delete;
  BacklogReader& operator=(const BacklogReader&) = delete;

  std::optional<std::vector<TopicStats>> read(std::chrono::milliseconds wait) {
    std::unique_lock lock(mutex_);
    const std::uint64_t wanted = ++requested_;
    changed_.notify_all();
    changed_.wait_for(lock, wait, [&] { return completed_ >= wanted || stop_; });
    return latest_;
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    for (;;) {
      changed_.wait(lock, [&] { return stop_ || requested_ > completed_; });
      if (stop_) return;
      const std::uint64_t target = requested_;
      lock.unlock();
      std::optional<std::vector<TopicStats>> fresh;
      try {
        if (auto broker = broker_.lock())
          if (Admin* admin = broker->admin()) fresh = admin->stats();
      } catch (...) {
        // An unreadable broker leaves the last figures standing.
      }
      lock.lock();
      if (fresh) latest_ = std::move(fresh);
      completed_ = target;
      changed_.notify_all();
    }
  }

  std::weak_ptr<Broker> broker_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::uint64_t requested_ = 0;
  std::uint64_t completed_ = 0;
  bool stop_ = false;
  std::optional<std::vector<TopicStats>> latest_;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace

void collect_backlog(metrics::Registry& registry, const std::shared_ptr<Broker>& broker, std::string backend,
                     std::chrono::milliseconds wait) {
  if (!broker->admin()) return;
  auto& backlog = registry.gauge("ferry_backlog", "Messages a group has not settled yet.", {"backend", "topic", "group"});
  auto& in_flight = registry.gauge("ferry_in_flight_deliveries", "Deliveries handed out and not yet settled.",
                                   {"backend", "topic", "group"});
  auto& retained = registry.gauge("ferry_topic_messages", "Messages the broker retains.", {"backend", "topic"});
  if (backend.empty()) backend = broker->url().scheme();
  auto reader = std::make_shared<BacklogReader>(broker);
  registry.add_collector([reader, wait, backend, &backlog, &in_flight, &retained] {
    auto stats = reader->read(wait);
    if (!stats) return;
    for (const auto& t : *stats) {
      retained.labels({backend, t.topic}).set(static_cast<double>(t.messages));
      for (const auto& g : t.groups) {
        backlog.labels({backend, t.topic, g.group}).set(static_cast<double>(g.backlog));
        in_flight.labels({backend, t.topic, g.group}).set(static_cast<double>(g.in_flight));
      }
    }
  });
}

}  // namespace ferry
