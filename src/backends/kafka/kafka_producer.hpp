#pragma once
// The producer one kafka:// Broker shares between its Publisher and the dead-lettering of
// its subscribers: one rd_kafka_t (idempotent, acks=all) and a poller thread that serves
// delivery reports. Thread-safe.

#include <atomic>
#include <condition_variable>
#include <future>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ferry/publisher.hpp"
#include "kafka_common.hpp"
#include "kafka_options.hpp"

namespace ferry::kafka::detail {

struct PublishBatch;  // one publish call's messages in flight and its callback
struct BatchPool;     // publish batches done with, for reuse

class Producer {
  static constexpr std::size_t kCacheLine = 64;

 public:
  // Creates the rd_kafka_t and starts the poller. Throws Error(invalid_argument) for a
  // configuration librdkafka refuses.
  explicit Producer(const Options& options);
  ~Producer();
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Publishes the messages, an id and a timestamp made for those that lack them, and leaves
  // them as they are (librdkafka copies what it sends); `done` runs once (on the poller
  // thread, or on the caller's thread for a failure known at once). Throws
  // Error(invalid_argument) for an invalid topic name. `internal` publishes (dead letters)
  // still work after close_publisher().
  void publish(const std::string& topic, std::span<const Message> messages, PublishCallback done,
               bool internal = false);

  // Makes sure the topic exists (see create_topics), once per topic and process handle.
  Status ensure_topic(const std::string& topic);
  // A metadata request to the cluster.
  Status ping(Ms timeout);

  // Later publishes (but internal ones) fail with Errc::closed; waits until every
  // publish already started is confirmed or failed (at most publish_timeout).
  void close_publisher();
  // Every publish fails with Errc::closed from here; flushes what is queued for at most
  // publish_timeout, fails the rest with Errc::closed, stops the poller. Idempotent.
  void close();
  bool closed() const noexcept { return closed_; }

  rd_kafka_t* handle() const noexcept { return handle_.get(); }
  const Options& options() const noexcept { return options_; }
  std::string last_error() const { return errors_.suffix(); }

 private:
  using Batch = PublishBatch;
  static void on_delivery(rd_kafka_t* rk, const rd_kafka_message_t* message, void* opaque);
  Status create_topic(const std::string& topic);
  Status wait_visible(const std::string& topic, Ms timeout, bool once);
  bool listed(const std::string& topic);
  Status failure_for(const std::string& topic, rd_kafka_resp_err_t err) const;
  rd_kafka_topic_t* ready_topic(const std::string& topic);
  void wait_for_publishes();
  Batch* take_batch();
  // Drops `refs` references; the last returns the batch to the pool.
  void release(Batch* batch, int refs = 1) noexcept;
  void flush_and_purge();
  void serve_last_reports();

  Options options_;
  const std::uint64_t number_;
  ErrorLog errors_;
  HandlePtr handle_;
  std::thread poller_;
  std::atomic<bool> stop_poller_{false};
  std::atomic<bool> publisher_closed_{false};
  std::atomic<bool> closed_{false};
  // What publishing threads write at every publish, what the poller thread writes at
  // every delivery and what both read there are kept on cache lines of their own.
  // publish() calls queueing messages; close waits them out.
  alignas(kCacheLine) std::atomic<int> active_{0};

  alignas(kCacheLine) std::atomic<int> space_waiters_{0};  // read at every delivery
  Ms message_timeout_{0};                                  // librdkafka's message.timeout.ms, for error messages
  int room_step_ = 1;  // wake waiters after this many deliveries: a sixteenth of the queue's bound, at most 1024
  alignas(kCacheLine) std::atomic<int> freed_{0};  // messages delivered since waiters were last woken
  std::mutex space_mutex_;
  std::condition_variable space_cv_;

  std::shared_mutex ready_mutex_;
  // Topics made sure of, with the handle publishes use: the fast path. Declared after
  // handle_, so the topic handles go before the rd_kafka_t.
  std::unordered_map<std::string, TopicPtr> ready_;
  std::mutex topics_mutex_;
  std::unordered_map<std::string, std::shared_future<Status>> topics_;  // being made sure of

  // Batches done with. Publishing threads take them in bunches into a cache of their own,
  // which keeps the pool alive (past this producer, until the thread ends or publishes
  // through another producer): a publish does not lock for its batch.
  std::shared_ptr<BatchPool> pool_;
  // Batches the poller thread let go of, handed to the pool in bunches: the poller and a
  // publishing thread do not meet at the pool's lock for every message. Poller thread only.
  alignas(kCacheLine) std::vector<Batch*> returned_;

  std::mutex close_mutex_;
  bool shut_down_ = false;
};

}  // namespace ferry::kafka::detail
