#include "ferry/router/router.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>

namespace ferry {

Handler compose(const std::vector<Middleware>& chain, Handler handler) {
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) handler = (*it)(std::move(handler));
  return handler;
}

void HandlerOptions::validate() const {
  auto bad = [&](const std::string& why) { throw Error(Errc::invalid_argument, "handler '" + name + "': " + why); };
  if (name.empty()) throw Error(Errc::invalid_argument, "every handler needs a name");
  if (!broker) bad("no broker");
  if (concurrency < 1 || concurrency > 1024) bad("concurrency must be between 1 and 1024");
  if (!output_topic.empty() && !valid_name(output_topic)) bad("output topic '" + output_topic + "' is not valid");
  SubscribeOptions{.topic = topic, .group = group, .prefetch = prefetch, .ack_timeout = ack_timeout}.validate();
}

namespace {

struct Entry {
  HandlerOptions options;
  Handler handler;  // as added
  Handler chain;    // wrapped in the middleware, at start()
  std::unique_ptr<Subscriber> subscriber;
  std::vector<std::thread> workers;
  std::atomic<std::uint64_t> acked{0}, nacked{0}, rejected{0}, in_flight{0};
  std::mutex active_mutex;
  std::set<CancelToken*> active;  // tokens of the requests being handled now
};

}  // namespace

struct Router::Impl {
  RouterOptions options;
  std::vector<Middleware> global;
  std::vector<std::unique_ptr<Entry>> entries;
  std::atomic<bool> running{false};
  std::atomic<bool> stopping{false};
  std::mutex idle_mutex;
  std::condition_variable idle;

  void work(Entry& e);
  void handle(Entry& e, Delivery& d);
};

void Router::Impl::handle(Entry& e, Delivery& d) {
  Request request(d, e.options.name, e.options.backend.empty() ? e.options.broker->url().scheme() : e.options.backend);
  {
    std::lock_guard lock(e.active_mutex);
    e.active.insert(&request.cancel());
  }
  auto settle_failure = [&](const std::string& reason) {
    if (options.on_failure == FailurePolicy::reject) {
      d.reject(reason);
      e.rejected.fetch_add(1, std::memory_order_relaxed);
    } else {
      d.nack(options.failure_delay);
      e.nacked.fetch_add(1, std::memory_order_relaxed);
    }
    spdlog::warn("handler {}: message {} (attempt {}) failed: {}", e.options.name, d.message().id, d.attempt(), reason);
  };
  try {
    e.chain(request);
    if (!request.outputs().empty()) {
      if (e.options.output_topic.empty())
        throw std::logic_error("the handler produced outputs but has no output topic");
      auto& broker = e.options.output_broker ? e.options.output_broker : e.options.broker;
      broker->publisher().publish_batch(e.options.output_topic, std::move(request.outputs()));
    }
    d.ack();
    e.acked.fetch_add(1, std::memory_order_relaxed);
  } catch (const Retry& r) {
    d.nack(r.delay());
    e.nacked.fetch_add(1, std::memory_order_relaxed);
    spdlog::debug("handler {}: message {} retried in {} ms: {}", e.options.name, d.message().id, r.delay().count(),
                  r.what());
  } catch (const Reject& r) {
    d.reject(r.what());
    e.rejected.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("handler {}: message {} dead-lettered: {}", e.options.name, d.message().id, r.what());
  } catch (const std::exception& x) {
    settle_failure(x.what());
  } catch (...) {
    settle_failure("a non-standard exception was thrown");
  }
  std::lock_guard lock(e.active_mutex);
  e.active.erase(&request.cancel());
}

void Router::Impl::work(Entry& e) {
  while (!stopping.load(std::memory_order_relaxed)) {
    std::optional<Delivery> d;
    try {
      d = e.subscriber->receive(std::chrono::milliseconds{100});
    } catch (const std::exception& x) {
      spdlog::error("handler {}: receive failed: {}; retrying in 1 s", e.options.name, x.what());
      std::unique_lock lock(idle_mutex);
      idle.wait_for(lock, std::chrono::seconds{1}, [&] { return stopping.load(); });
      continue;
    }
    if (!d) continue;
    e.in_flight.fetch_add(1);
    handle(e, *d);
    e.in_flight.fetch_sub(1);
    idle.notify_all();
  }
}

Router::Router(RouterOptions options) : impl_(std::make_unique<Impl>()) { impl_->options = options; }

Router::~Router() { stop(); }

Router& Router::use(Middleware middleware) {
  if (impl_->running) throw Error(Errc::invalid_argument, "Router::use after start()");
  impl_->global.push_back(std::move(middleware));
  return *this;
}

Router& Router::add_handler(HandlerOptions options, Handler handler) {
  if (impl_->running) throw Error(Errc::invalid_argument, "Router::add_handler after start()");
  options.validate();
  for (const auto& e : impl_->entries)
    if (e->options.name == options.name)
      throw Error(Errc::invalid_argument, "a handler named '" + options.name + "' already exists");
  auto entry = std::make_unique<Entry>();
  entry->options = std::move(options);
  entry->handler = std::move(handler);
  impl_->entries.push_back(std::move(entry));
  return *this;
}

void Router::start() {
  if (impl_->running.exchange(true)) return;
  impl_->stopping = false;
  for (auto& e : impl_->entries) {
    std::vector<Middleware> chain = impl_->global;
    chain.insert(chain.end(), e->options.middleware.begin(), e->options.middleware.end());
    e->chain = compose(chain, e->handler);
    e->subscriber = e->options.broker->subscribe({.topic = e->options.topic,
                                                  .group = e->options.group,
                                                  .prefetch = e->options.prefetch,
                                                  .ack_timeout = e->options.ack_timeout});
  }
  for (auto& e : impl_->entries) {
    for (int i = 0; i < e->options.concurrency; ++i) {
      e->workers.emplace_back([this, entry = e.get()] {
        std::string name = ("ferry-" + entry->options.name).substr(0, 15);
        pthread_setname_np(pthread_self(), name.c_str());
        impl_->work(*entry);
      });
    }
  }
}

std::uint64_t Router::stop() {
  if (!impl_->running.exchange(false)) return 0;
  std::uint64_t in_flight = 0;
  for (auto& e : impl_->entries) in_flight += e->in_flight.load();
  impl_->stopping = true;
  impl_->idle.notify_all();
  auto busy = [&] {
    for (auto& e : impl_->entries)
      if (e->in_flight.load()) return true;
    return false;
  };
  {
    std::unique_lock lock(impl_->idle_mutex);
    if (!impl_->idle.wait_for(lock, impl_->options.drain_timeout, [&] { return !busy(); })) {
      spdlog::warn("router: handlers still busy after {} ms; cancelling them", impl_->options.drain_timeout.count());
      for (auto& e : impl_->entries) {
        std::lock_guard active(e->active_mutex);
        for (auto* token : e->active) token->cancel();
      }
    }
  }
  for (auto& e : impl_->entries) {
    for (auto& t : e->workers) t.join();
    e->workers.clear();
    if (e->subscriber) e->subscriber->close();
  }
  return in_flight;
}

bool Router::running() const noexcept { return impl_->running.load(); }

std::vector<HandlerStats> Router::stats() const {
  std::vector<HandlerStats> out;
  for (const auto& e : impl_->entries)
    out.push_back({e->options.name, e->acked.load(), e->nacked.load(), e->rejected.load(), e->in_flight.load()});
  return out;
}

}  // namespace ferry
