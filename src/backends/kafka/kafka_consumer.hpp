#pragma once
// The consuming side of kafka://: a Member is one consumer-group member (one rd_kafka_t
// consumer and its poll thread) shared by the Subscriptions of one Broker handle that name
// the same topic and group; a Subscription is one Subscriber's share of it and the Settler
// its deliveries point to. The contract is in include/ferry/backends/kafka.hpp.
//
// Flow control: each assigned partition's fetch queue is forwarded to the member's own
// message queue, which the poll thread takes from only while the member's buffer has
// room (the sum of its subscribers' prefetch); meanwhile librdkafka fetches ahead only
// up to queued.min.messages / queued.max.messages.kbytes. The consumer queue then
// carries only events (rebalances, errors, commit results), so a full buffer never
// holds up a rebalance. (Pausing partitions instead costs librdkafka 2.0.2 up to a
// second per resume.)
//
// Locking: everything a Member holds about partitions, entries, tokens and its
// Subscriptions' counters is guarded by Member::mutex_. Receivers wait on its condition
// variable; the poll thread (fetching, rebalance callbacks, leases, commits) takes the
// mutex only briefly, never while calling into librdkafka, except in the rebalance
// callback's grace wait, which waits on the condition variable.

#include <atomic>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ferry/delivery.hpp"
#include "ferry/subscriber.hpp"
#include "kafka_common.hpp"
#include "kafka_options.hpp"
#include "kafka_producer.hpp"
#include "offset_tracker.hpp"

namespace ferry::kafka::detail {

class Member;

// One Subscriber's share of a Member. Thread-safe.
class Subscription : public Settler, public std::enable_shared_from_this<Subscription> {
 public:
  Subscription(std::shared_ptr<Member> member, SubscribeOptions options, std::uint64_t id);
  ~Subscription() override;

  std::optional<Delivery> receive(Ms timeout);
  void settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept override;
  // Hands unsettled deliveries back to the member (for its other subscribers, or for the
  // group once the member leaves). Idempotent.
  void close();

  const SubscribeOptions& options() const noexcept { return options_; }
  const std::string& dead_letter_topic() const noexcept { return dead_letter_topic_; }
  std::uint64_t id() const noexcept { return id_; }

 private:
  friend class Member;
  std::shared_ptr<Member> member_;
  SubscribeOptions options_;
  std::string dead_letter_topic_;
  std::uint64_t id_;
  // Guarded by the member's mutex.
  int out_ = 0;
  bool closed_ = false;
};

class Member : public std::enable_shared_from_this<Member> {
 public:
  // `group` empty with `ephemeral`: no Kafka group, read from the end, commit nothing.
  Member(const Options& options, std::shared_ptr<Producer> producer, std::string topic, std::string group,
         bool ephemeral);
  ~Member();
  Member(const Member&) = delete;
  Member& operator=(const Member&) = delete;

  // Creates the consumer and the poll thread, and subscribes (or assigns). Throws Error.
  void start();
  // Waits for the first assignment; throws Error(unavailable) after join_timeout.
  void wait_joined();
  // A new Subscription, or nullptr if this member is already leaving (or failed).
  std::shared_ptr<Subscription> attach(const SubscribeOptions& options);
  // Leaves the group now (commits, closes the consumer) and joins the poll thread.
  void close();
  // Leaving the group, or failed (a fatal consumer error): no new subscriber is given to it.
  bool leaving() const;
  // Deliveries handed out (or being dead-lettered) and not yet settled.
  std::uint64_t in_flight() const;
  const std::string& topic() const noexcept { return topic_; }
  const std::string& group() const noexcept { return group_; }

 private:
  friend class Subscription;
  struct Entry;
  struct Partition;

  std::optional<Delivery> receive(Subscription& sub, Ms timeout);
  void settle(Subscription& sub, std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept;
  void detach(Subscription& sub);

  void run();
  void shutdown();
  void on_message(const rd_kafka_message_t& message);
  void housekeeping(bool force);
  void on_assign(rd_kafka_topic_partition_list_t* partitions);
  void on_revoke(rd_kafka_topic_partition_list_t* partitions);
  void on_rebalance_error(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* partitions);
  void unassign(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* partitions);
  void on_commit_result(rd_kafka_resp_err_t err);
  void dead_lettered(std::int32_t partition, std::int64_t offset, std::uint64_t token, const Status& status);
  void assign_ephemeral();
  // The partition's fetch queue, forwarded to messages_ (nullptr if librdkafka has none).
  QueuePtr forward(std::int32_t partition);

  // Under mutex_.
  bool pick(std::chrono::steady_clock::time_point now, std::chrono::steady_clock::time_point& next_due,
            std::int32_t& partition, std::int64_t& offset);
  void finish(Partition& partition, std::int64_t offset);
  // Forgets the partitions, abandoning their deliveries; what they carry goes to remembered_.
  void drop(const std::vector<std::int32_t>& ids);
  void release_entry(Entry& entry, std::chrono::steady_clock::time_point visible_at);
  int capacity() const;
  // Offsets (and carried metadata) worth committing: all partitions, or only `only`.
  PartitionListPtr commit_list(bool changed_only, const std::vector<std::int32_t>* only);
  void wake_poller();

  static void rebalance_cb(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* partitions,
                           void* opaque);
  static void commit_cb(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets,
                        void* opaque);

  Options options_;
  std::shared_ptr<Producer> producer_;
  std::string topic_;
  std::string group_;
  bool ephemeral_;
  ErrorLog errors_;
  HandlePtr handle_;
  QueuePtr messages_;  // where the partitions' fetch queues are forwarded; released before handle_
  std::mutex queue_mutex_;
  QueuePtr consumer_queue_;  // events; guarded by queue_mutex_ (released before consumer_close)
  std::thread thread_;
  std::mutex join_mutex_;
  std::atomic<bool> housekeeping_due_{false};

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<std::int32_t, Partition> partitions_;
  std::map<std::int32_t, Carried> remembered_;  // what revoked partitions carried, in case they come back
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int64_t>> tokens_;
  std::map<std::uint64_t, Subscription*> subs_;
  std::uint64_t next_token_ = 1;
  std::uint64_t next_sub_ = 1;
  std::size_t entries_ = 0;
  int last_capacity_ = 1;
  std::size_t round_robin_ = 0;
  bool joined_ = false;
  bool stop_requested_ = false;
  bool closed_ = false;
  bool commit_dirty_ = false;
  bool commit_in_flight_ = false;
  int commit_failures_ = 0;  // in a row
  std::chrono::steady_clock::time_point last_commit_warning_{};
  Status failure_;
  std::optional<std::chrono::steady_clock::time_point> linger_until_;
  std::chrono::steady_clock::time_point last_commit_{};
  std::chrono::steady_clock::time_point next_housekeeping_{};
};

// Decodes a fetched record into a ferry Message (see kafka.hpp for the id of foreign
// records).
Message decode_record(const rd_kafka_message_t& record, const std::string& topic);

}  // namespace ferry::kafka::detail
