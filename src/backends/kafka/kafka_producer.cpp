#include "kafka_producer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string_view>

#include "ferry/subscriber.hpp"

namespace ferry::kafka::detail {
namespace {

using SteadyClock = std::chrono::steady_clock;

constexpr const char* kIdHeader = "ferry-id";
// Batch objects move between a producer's pool and a thread this many at a time.
constexpr std::size_t kBunch = 64;

// The producer whose poller runs on this thread, if any.
thread_local const void* polling_for = nullptr;

// Publish callbacks done with on the poller thread are destroyed there once rd_kafka_poll
// has returned, never inside a delivery report: a callback may hold the last reference to
// its broker, whose producer must then not be torn down under librdkafka's feet.
thread_local std::vector<PublishCallback> graveyard;
thread_local std::vector<PublishCallback> burying;
// Set when the producer this thread polls for was destroyed on it (by burying a callback).
thread_local bool producer_gone = false;

// Destroys the callbacks in the graveyard; true if that destroyed this thread's producer.
bool bury_callbacks() noexcept {
  while (!graveyard.empty()) {
    burying.swap(graveyard);
    burying.clear();
  }
  return producer_gone;
}

// Producers are numbered, never reusing a number, for the per-thread topic cache below.
std::atomic<std::uint64_t> producers_made{0};

// The topic this thread last published to and its handle, by producer number: a thread
// publishing to one topic again and again takes no lock to find the handle.
struct LastTopic {
  std::uint64_t producer = 0;
  std::string topic;
  rd_kafka_topic_t* handle = nullptr;
};
thread_local LastTopic last_topic;

int ms_left(SteadyClock::time_point deadline) {
  auto left = std::chrono::duration_cast<Ms>(deadline - SteadyClock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, 1'000'000'000));
}

}  // namespace

// One publish call: completes once, with ok when every message is reported delivered or
// with the first failure. Each message queued in librdkafka holds a reference, and so
// does a call of several messages while it queues them; the call takes them all at the
// start and gives back those of messages it could not queue, so that it does not write to
// the batch for every message while the poller thread writes to it too. A call of one
// message holds none: once that message is queued the call leaves the batch alone.
struct PublishBatch {
  std::atomic<int> refs{0};
  std::atomic<std::size_t> remaining{0};
  std::atomic<bool> failed{false};
  PublishCallback done;

  void run(const Status& status) noexcept {
    if (!done) return;
    try {
      done(status);
    } catch (const std::exception& e) {
      spdlog::error("kafka: a publish callback threw: {}", e.what());
    } catch (...) {
      spdlog::error("kafka: a publish callback threw");
    }
  }
  // The first failure completes the batch; later ones are dropped.
  void fail(const Status& status) noexcept {
    if (!failed.exchange(true)) run(status);
  }
  // One message reported delivered; the last completes the batch. A failed or unqueued
  // message never counts down, so this and fail() never both complete it.
  void delivered() noexcept {
    // Only the last message's report sees 1: no other can count down after it.
    if (remaining.load(std::memory_order_acquire) == 1 || remaining.fetch_sub(1) == 1) run(Status::success());
  }
};

struct BatchPool {
  std::mutex mutex;
  std::vector<PublishBatch*> batches;
  // At most as many as librdkafka's queue holds messages: no more batches than that are
  // ever in flight at once, so that one-message publishes at the queue's bound need none new.
  std::size_t max = 4096;

  ~BatchPool() {
    for (PublishBatch* batch : batches) delete batch;
  }
  // Keeps what room allows and deletes the rest.
  void put(std::span<PublishBatch*> some) noexcept {
    std::size_t kept = 0;
    {
      std::lock_guard lock(mutex);
      kept = std::min(some.size(), max - std::min(max, batches.size()));
      batches.insert(batches.end(), some.begin(), some.begin() + static_cast<std::ptrdiff_t>(kept));
    }
    for (std::size_t i = kept; i < some.size(); ++i) delete some[i];
  }
  void take(std::vector<PublishBatch*>& into, std::size_t n) {
    std::lock_guard lock(mutex);
    n = std::min(n, batches.size());
    into.insert(into.end(), batches.end() - static_cast<std::ptrdiff_t>(n), batches.end());
    batches.resize(batches.size() - n);
  }
};

namespace {

// The batches this thread took from one producer's pool, given back when the thread ends
// or publishes through another producer.
struct TakenBatches {
  std::shared_ptr<BatchPool> from;
  std::vector<PublishBatch*> batches;

  void give_back() noexcept {
    if (from) from->put(batches);
    batches.clear();
    from.reset();
  }
  ~TakenBatches() { give_back(); }
};
thread_local TakenBatches taken;

}  // namespace

Producer::Batch* Producer::take_batch() {
  if (taken.from != pool_) {
    taken.give_back();
    taken.from = pool_;
  }
  if (taken.batches.empty()) pool_->take(taken.batches, kBunch);
  if (taken.batches.empty()) return new Batch;
  Batch* batch = taken.batches.back();
  taken.batches.pop_back();
  return batch;
}

// The last reference returns the batch to the pool: a batch is made on the publishing
// thread and let go of on the poller's, and reusing it spares both threads the allocator's
// cross-thread locking at every publish.
void Producer::release(Batch* batch, int refs) noexcept {
  // Holding every reference left (the one report of a one-message publish), nobody else
  // can drop one: no need to count down.
  if (batch->refs.load(std::memory_order_acquire) != refs && batch->refs.fetch_sub(refs) != refs) return;
  // Nothing else holds the batch now, and it passes through the pool's lock before it is
  // used again: plain stores will do.
  if (polling_for == this && batch->done) graveyard.push_back(std::move(batch->done));
  batch->done = nullptr;
  batch->failed.store(false, std::memory_order_relaxed);
  if (polling_for == this) {
    returned_.push_back(batch);
    if (returned_.size() >= kBunch) {
      pool_->put(returned_);
      returned_.clear();
    }
    return;
  }
  Batch* one[] = {batch};
  pool_->put(one);
}

Producer::Producer(const Options& options)
    : options_(options),
      number_(producers_made.fetch_add(1) + 1),
      errors_("producer " + options.masked_url, this),
      pool_(std::make_shared<BatchPool>()) {
  ConfPtr conf = options_.producer_conf();
  char limit[32] = {0};
  std::size_t limit_size = sizeof limit;
  if (rd_kafka_conf_get(conf.get(), "queue.buffering.max.messages", limit, &limit_size) == RD_KAFKA_CONF_OK) {
    const long messages = std::max(1L, std::strtol(limit, nullptr, 10));
    room_step_ = static_cast<int>(std::clamp<long>(messages / 16, 1, 1024));
    pool_->max = static_cast<std::size_t>(messages);
  }
  char timeout[32] = {0};
  std::size_t timeout_size = sizeof timeout;
  if (rd_kafka_conf_get(conf.get(), "message.timeout.ms", timeout, &timeout_size) == RD_KAFKA_CONF_OK)
    message_timeout_ = Ms{std::strtol(timeout, nullptr, 10)};
  install_callbacks(conf.get(), &errors_);
  rd_kafka_conf_set_dr_msg_cb(conf.get(), &Producer::on_delivery);
  char errstr[512] = {0};
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), errstr, sizeof errstr);
  if (!rk)
    throw Error(Errc::invalid_argument,
                "cannot configure the Kafka producer for " + options_.masked_url + ": " + errstr);
  conf.release();  // rd_kafka_new took it
  handle_.reset(rk);
  returned_.reserve(kBunch);
  poller_ = std::thread([this] {
    name_thread("ferry-kafka-dr");
    polling_for = this;
    while (!stop_poller_) {
      rd_kafka_poll(handle_.get(), 100);
      if (bury_callbacks()) return;  // the last reference to this producer was in one
    }
    // Closing: every report is served here (close() may have been called on this thread,
    // where it cannot wait).
    serve_last_reports();
    bury_callbacks();  // may destroy this producer: nothing of it is touched after
  });
}

Producer::~Producer() {
  close();
  if (polling_for == this) {
    // Destroyed on its own poller thread, by the destruction of a publish callback that
    // held the last reference (outside rd_kafka_poll): the poller's closing work is done
    // here, and the thread returns as soon as this does.
    serve_last_reports();
    producer_gone = true;
    poller_.detach();
  }
  pool_->put(returned_);
}

void Producer::on_delivery(rd_kafka_t*, const rd_kafka_message_t* message, void* opaque) {
  auto* self = static_cast<Producer*>(static_cast<ErrorLog*>(opaque)->owner());
  auto* batch = static_cast<Batch*>(message->_private);
  if (batch) {
    if (message->err) {
      std::string topic = message->rkt ? rd_kafka_topic_name(message->rkt) : std::string("?");
      batch->fail(self->failure_for(topic, message->err));
    } else {
      batch->delivered();
    }
    self->release(batch);
  }
  // A publish waiting for room in librdkafka's queue is woken once a bunch of messages
  // are done with (librdkafka counts a message out only after this returns, so waking it
  // for each would mostly have it find the queue still full).
  if (self->space_waiters_ > 0 && self->freed_.fetch_add(1) + 1 >= self->room_step_) {
    self->freed_ = 0;
    self->space_cv_.notify_all();
  }
}

Status Producer::failure_for(const std::string& topic, rd_kafka_resp_err_t err) const {
  Errc code = errc_for(err);
  std::string text;
  switch (code) {
    case Errc::timeout:
      text = "publish to '" + topic + "' was not confirmed within " + std::to_string(message_timeout_.count()) +
             " ms (" + rd_kafka_err2str(err) + ")" + errors_.suffix() + "; is Kafka reachable at " +
             options_.bootstrap + "?";
      break;
    case Errc::closed:
      text = "publish to '" + topic + "' was abandoned: the kafka broker " + options_.masked_url +
             " was closed before Kafka confirmed it";
      break;
    case Errc::invalid_argument:
      text = "publish to '" + topic + "' was refused: " + rd_kafka_err2str(err);
      if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE || err == RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE)
        text += " (for large messages raise message.max.bytes in the URL and the topic's max.message.bytes)";
      break;
    default:
      if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[512] = {0};
        rd_kafka_fatal_error(handle_.get(), why, sizeof why);
        text = "publish to '" + topic + "' failed: the Kafka producer hit a fatal error: " + why;
      } else {
        text = "publish to '" + topic + "' failed: " + rd_kafka_err2str(err) + errors_.suffix();
      }
  }
  return {code, text};
}

rd_kafka_topic_t* Producer::ready_topic(const std::string& topic) {
  if (last_topic.producer == number_ && last_topic.topic == topic) return last_topic.handle;
  rd_kafka_topic_t* handle = nullptr;
  {
    std::shared_lock lock(ready_mutex_);
    auto it = ready_.find(topic);
    if (it == ready_.end()) return nullptr;
    handle = it->second.get();
  }
  // ready_ keeps every handle until the producer is destroyed.
  last_topic = {number_, topic, handle};
  return handle;
}

void Producer::publish(const std::string& topic, std::span<const Message> messages, PublishCallback done,
                       bool internal) {
  rd_kafka_topic_t* rkt = ready_topic(topic);
  if (!rkt && !valid_name(topic))
    throw Error(Errc::invalid_argument,
                "topic '" + topic + "' is not valid: use 1 to 200 characters from A-Z a-z 0-9 . _ -");
  auto fail = [&](const Status& s) {
    if (done) done(s);
  };
  auto closed_status = [&] {
    return Status{Errc::closed,
                  "publish to '" + topic + "' after the kafka broker " + options_.masked_url + " was closed"};
  };
  if (closed_ || (!internal && publisher_closed_)) return fail(closed_status());
  if (messages.empty()) return fail(Status::success());
  if (!rkt) {
    if (Status s = ensure_topic(topic); !s.ok()) return fail(s);
    rkt = ready_topic(topic);
  }

  // close() sets closed_ and then waits for active_ to reach 0; this increments active_
  // and then reads closed_ (both sequentially consistent), so one of the two sees the other.
  active_.fetch_add(1);
  struct Leave {
    std::atomic<int>& active;
    ~Leave() { active.fetch_sub(1); }
  } leave{active_};
  if (closed_ || (!internal && publisher_closed_)) return fail(closed_status());
  Batch* batch = take_batch();
  // librdkafka hands each message to the poller thread under its own locks, after which
  // the poller sees these stores.
  batch->done = std::move(done);
  batch->remaining.store(messages.size(), std::memory_order_relaxed);
  const int held = messages.size() > 1 ? 1 : 0;  // this call's own reference
  batch->refs.store(held + static_cast<int>(messages.size()), std::memory_order_relaxed);
  std::size_t queued = 0;
  std::optional<SteadyClock::time_point> deadline;  // for room in the queue; set when first short of it
  for (const auto& m : messages) {
    // What the message lacks is made for what is sent; the message stays as it is.
    char made_id[36];
    std::string_view id = m.id;
    if (id.empty()) {
      make_uuid(made_id);
      id = {made_id, sizeof made_id};
    }
    const Clock::time_point timestamp = m.timestamp == Clock::time_point{} ? Clock::now() : m.timestamp;
    HeadersPtr headers(rd_kafka_headers_new(m.headers.size() + 1));
    rd_kafka_header_add(headers.get(), kIdHeader, -1, id.data(), static_cast<ssize_t>(id.size()));
    for (const auto& [name, value] : m.headers)
      rd_kafka_header_add(headers.get(), name.data(), static_cast<ssize_t>(name.size()), value.data(),
                          static_cast<ssize_t>(value.size()));
    const void* key = m.key ? m.key->data() : nullptr;
    const std::size_t key_len = m.key ? m.key->size() : 0;
    Status failure;
    while (true) {
      rd_kafka_resp_err_t err =
          rd_kafka_producev(handle_.get(), RD_KAFKA_V_RKT(rkt), RD_KAFKA_V_KEY(key, key_len),
                            RD_KAFKA_V_VALUE(const_cast<char*>(m.payload.data()), m.payload.size()),
                            RD_KAFKA_V_HEADERS(headers.get()), RD_KAFKA_V_TIMESTAMP(to_unix_ms(timestamp)),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(batch), RD_KAFKA_V_END);
      if (!err) {
        headers.release();  // librdkafka owns them now
        ++queued;
        break;
      }
      if (!deadline) deadline = SteadyClock::now() + options_.publish_timeout;
      const bool stopping = closed_ || (!internal && publisher_closed_);
      // Room is made by the poller thread: a publish from a publish callback cannot wait for it.
      if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !stopping && polling_for != this && SteadyClock::now() < *deadline) {
        ++space_waiters_;
        {
          std::unique_lock lock(space_mutex_);
          space_cv_.wait_for(lock, std::min(Ms{10}, Ms{ms_left(*deadline) + 1}));
        }
        --space_waiters_;
        continue;
      }
      if (stopping)
        failure = closed_status();
      else if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && polling_for == this)
        failure = {Errc::unavailable, "publish to '" + topic +
                                          "' from a publish callback found the producer queue full (" +
                                          std::to_string(rd_kafka_outq_len(handle_.get())) +
                                          " messages unconfirmed); it cannot wait for room there"};
      else if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        failure = {Errc::timeout,
                   "publish to '" + topic + "' timed out after " + std::to_string(options_.publish_timeout.count()) +
                       " ms waiting for room in the producer queue (" +
                       std::to_string(rd_kafka_outq_len(handle_.get())) + " messages unconfirmed)" + errors_.suffix()};
      else
        failure = failure_for(topic, err);
      break;
    }
    if (!failure.ok()) {
      batch->fail(failure);
      break;
    }
  }
  // What this call holds: its own reference and those of the messages it did not queue.
  if (const int unused = held + static_cast<int>(messages.size() - queued); unused > 0) release(batch, unused);
}

Status Producer::ensure_topic(const std::string& topic) {
  {
    std::shared_lock lock(ready_mutex_);
    if (ready_.count(topic)) return {};
  }
  std::promise<Status> promise;
  std::shared_future<Status> future;
  bool mine = false;
  {
    std::lock_guard lock(topics_mutex_);
    auto it = topics_.find(topic);
    if (it != topics_.end()) {
      future = it->second;
    } else {
      future = promise.get_future().share();
      topics_.emplace(topic, future);
      mine = true;
    }
  }
  if (!mine) return future.get();
  Status s;
  try {
    switch (options_.create_topics) {
      case TopicCreation::off:
        break;  // publishes go to it as it is
      case TopicCreation::admin:
        s = create_topic(topic);
        break;
      case TopicCreation::auto_create:
        s = wait_visible(topic, options_.admin_timeout, false);
        break;
    }
  } catch (const std::exception& e) {
    s = {Errc::internal, e.what()};
  }
  if (s.ok()) {
    TopicPtr handle(rd_kafka_topic_new(handle_.get(), topic.c_str(), nullptr));
    if (!handle) {
      s = {Errc::internal,
           "cannot make a handle for topic '" + topic + "': " + rd_kafka_err2str(rd_kafka_last_error())};
    } else {
      std::unique_lock lock(ready_mutex_);
      ready_.try_emplace(topic, std::move(handle));
    }
  }
  {
    std::lock_guard lock(topics_mutex_);
    topics_.erase(topic);  // done, or failed: the next publish tries again
  }
  promise.set_value(s);
  return s;
}

Status Producer::create_topic(const std::string& topic) {
  char errstr[512] = {0};
  NewTopicPtr new_topic(
      rd_kafka_NewTopic_new(topic.c_str(), options_.partitions, options_.replication, errstr, sizeof errstr));
  if (!new_topic) return {Errc::invalid_argument, "cannot create topic '" + topic + "': " + errstr};
  AdminOptionsPtr admin(rd_kafka_AdminOptions_new(handle_.get(), RD_KAFKA_ADMIN_OP_CREATETOPICS));
  const int timeout = static_cast<int>(options_.admin_timeout.count());
  rd_kafka_AdminOptions_set_request_timeout(admin.get(), timeout, errstr, sizeof errstr);
  rd_kafka_AdminOptions_set_operation_timeout(admin.get(), timeout, errstr, sizeof errstr);
  QueuePtr queue(rd_kafka_queue_new(handle_.get()));
  rd_kafka_NewTopic_t* topics[] = {new_topic.get()};
  rd_kafka_CreateTopics(handle_.get(), topics, 1, admin.get(), queue.get());
  EventPtr event(rd_kafka_queue_poll(queue.get(), timeout + 2000));
  rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR__TIMED_OUT;
  std::string why = "no answer";
  if (event) {
    err = rd_kafka_event_error(event.get());
    why = err ? rd_kafka_event_error_string(event.get()) : "";
    if (!err) {
      const rd_kafka_CreateTopics_result_t* result = rd_kafka_event_CreateTopics_result(event.get());
      std::size_t count = 0;
      const rd_kafka_topic_result_t** results = rd_kafka_CreateTopics_result_topics(result, &count);
      if (count == 1) {
        err = rd_kafka_topic_result_error(results[0]);
        const char* text = rd_kafka_topic_result_error_string(results[0]);
        why = text ? text : rd_kafka_err2str(err);
      }
    }
  }
  if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
    return wait_visible(topic, options_.admin_timeout, false);
  // Not allowed to create it, or no answer: perhaps it exists anyway.
  if (listed(topic)) return wait_visible(topic, Ms{0}, true);
  std::string hint;
  if (why.find("controller") != std::string::npos)
    hint = " (librdkafka's mock cluster cannot create topics this way: add create_topics=auto to the URL)";
  else if (err == RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR)
    hint = " (replication=" + std::to_string(options_.replication) + " exceeds the brokers available?)";
  Errc code = errc_for(err);
  if (code == Errc::ok) code = Errc::unavailable;
  return {code, "cannot create topic '" + topic + "' with " + std::to_string(options_.partitions) + " partitions on " +
                    options_.masked_url + ": " + why + hint + errors_.suffix()};
}

// Whether the cluster lists `topic`. Asking for every topic, not for this one (nor making a
// handle for it), keeps a broker with auto.create.topics.enable from creating it with its
// own defaults when ferry's creation failed.
bool Producer::listed(const std::string& topic) {
  const rd_kafka_metadata_t* raw = nullptr;
  if (rd_kafka_metadata(handle_.get(), 1, nullptr, &raw, 2000) != RD_KAFKA_RESP_ERR_NO_ERROR) return false;
  MetadataPtr metadata(raw);
  return std::any_of(metadata->topics, metadata->topics + metadata->topic_cnt,
                     [&](const rd_kafka_metadata_topic_t& t) { return !t.err && topic == t.topic; });
}

Status Producer::wait_visible(const std::string& topic, Ms timeout, bool once) {
  const auto deadline = SteadyClock::now() + timeout;
  TopicPtr handle(rd_kafka_topic_new(handle_.get(), topic.c_str(), nullptr));
  std::string last = "no answer";
  while (true) {
    const rd_kafka_metadata_t* raw = nullptr;
    const int wait = std::max(once ? 2000 : 500, std::min(ms_left(deadline), 2000));
    rd_kafka_resp_err_t err = rd_kafka_metadata(handle_.get(), 0, handle.get(), &raw, wait);
    if (!err) {
      MetadataPtr metadata(raw);
      if (metadata->topic_cnt == 1) {
        const auto& t = metadata->topics[0];
        bool leaders =
            t.partition_cnt > 0 && std::all_of(t.partitions, t.partitions + t.partition_cnt,
                                               [](const rd_kafka_metadata_partition_t& p) { return p.leader >= 0; });
        if (!t.err && leaders) return {};
        last = t.err ? rd_kafka_err2str(t.err) : "partitions without a leader";
      }
    } else {
      last = rd_kafka_err2str(err);
    }
    if (once || SteadyClock::now() >= deadline || closed_) break;
    std::this_thread::sleep_for(Ms{100});
  }
  return {Errc::unavailable, "topic '" + topic + "' is not available on " + options_.masked_url + ": " + last +
                                 errors_.suffix() +
                                 (options_.create_topics == TopicCreation::auto_create
                                      ? " (create_topics=auto relies on the broker's auto.create.topics.enable)"
                                      : "")};
}

Status Producer::ping(Ms timeout) {
  if (closed_) return {Errc::closed, "the kafka broker " + options_.masked_url + " is closed"};
  char why[512] = {0};
  if (rd_kafka_fatal_error(handle_.get(), why, sizeof why))
    return {Errc::unavailable, "the Kafka producer for " + options_.masked_url +
                                   " hit a fatal error and publishes no more (reopen the broker): " + why};
  const rd_kafka_metadata_t* raw = nullptr;
  rd_kafka_resp_err_t err = rd_kafka_metadata(handle_.get(), 0, nullptr, &raw, static_cast<int>(timeout.count()));
  if (err)
    return {Errc::unavailable, "Kafka at " + options_.bootstrap + " did not answer a metadata request within " +
                                   std::to_string(timeout.count()) + " ms (" + rd_kafka_err2str(err) + ")" +
                                   errors_.suffix()};
  MetadataPtr metadata(raw);
  if (metadata->broker_cnt == 0) return {Errc::unavailable, "Kafka at " + options_.bootstrap + " lists no brokers"};
  return {};
}

void Producer::wait_for_publishes() {
  while (active_.load() > 0) std::this_thread::sleep_for(Ms{1});
}

void Producer::close_publisher() {
  publisher_closed_ = true;
  space_cv_.notify_all();
  wait_for_publishes();
  // On the poller thread (a publish callback closing its broker) a flush would wait for
  // the report being served: what is queued is confirmed as the poller goes on.
  if (!closed_ && polling_for != this)
    rd_kafka_flush(handle_.get(), static_cast<int>(options_.publish_timeout.count()));
}

// Once the publishes under way have queued their messages: flushes, fails what is left
// and serves the last reports. On the poller thread.
void Producer::serve_last_reports() {
  wait_for_publishes();
  flush_and_purge();
  rd_kafka_poll(handle_.get(), 0);
}

void Producer::flush_and_purge() {
  rd_kafka_flush(handle_.get(), static_cast<int>(options_.publish_timeout.count()));
  if (rd_kafka_outq_len(handle_.get()) > 0) {
    spdlog::warn("kafka {}: {} messages still unconfirmed after {} ms; failing them", options_.masked_url,
                 rd_kafka_outq_len(handle_.get()), options_.publish_timeout.count());
    rd_kafka_purge(handle_.get(), RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    // The purged messages' reports come at once; those of requests on the wire may wait
    // for the request's timeout.
    const auto until = SteadyClock::now() + std::max(Ms{2000}, options_.publish_timeout);
    while (rd_kafka_outq_len(handle_.get()) > 0 && SteadyClock::now() < until) rd_kafka_flush(handle_.get(), 100);
    if (int left = rd_kafka_outq_len(handle_.get()); left > 0)
      spdlog::error("kafka {}: {} messages or requests still unreported at close; their publish callbacks will not run",
                    options_.masked_url, left);
  }
}

void Producer::close() {
  std::lock_guard lock(close_mutex_);
  closed_ = true;
  publisher_closed_ = true;
  space_cv_.notify_all();
  stop_poller_ = true;  // the poller flushes, fails what is left and ends
  // On the poller thread (a publish callback closing its broker, or dropping its last
  // reference) it cannot be waited for: it finishes the job once back from the callback.
  if (shut_down_ || polling_for == this) return;
  shut_down_ = true;
  if (poller_.joinable()) poller_.join();
}

}  // namespace ferry::kafka::detail
