#include "kafka_consumer.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <set>
#include <unordered_set>
#include <vector>

namespace ferry::kafka::detail {
namespace {

using SteadyClock = std::chrono::steady_clock;
constexpr const char* kIdHeader = "ferry-id";
constexpr Ms kHousekeepingEvery{20};
constexpr Ms kDeadLetterRetry{1000};
constexpr int kCommitFailuresToWarn = 3;
constexpr Ms kLongestLease = std::chrono::hours{24 * 365};  // a longer ack_timeout would overflow the clock
constexpr std::chrono::seconds kCommitWarningEvery{60};

bool cooperative(rd_kafka_t* rk) {
  const char* protocol = rd_kafka_rebalance_protocol(rk);
  return protocol && std::strcmp(protocol, "COOPERATIVE") == 0;
}

void log_error(const char* what, rd_kafka_error_t* error) {
  if (!error) return;
  spdlog::warn("kafka: {} failed: {}", what, rd_kafka_error_string(error));
  rd_kafka_error_destroy(error);
}

}  // namespace

Message decode_record(const rd_kafka_message_t& record, const std::string& topic) {
  Message out;
  if (record.key) out.key = std::string(static_cast<const char*>(record.key), record.key_len);
  if (record.payload) out.payload.assign(static_cast<const char*>(record.payload), record.len);
  rd_kafka_headers_t* headers = nullptr;
  if (rd_kafka_message_headers(&record, &headers) == RD_KAFKA_RESP_ERR_NO_ERROR && headers) {
    const char* name = nullptr;
    const void* value = nullptr;
    std::size_t size = 0;
    for (std::size_t i = 0; rd_kafka_header_get_all(headers, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
         ++i) {
      std::string text = value ? std::string(static_cast<const char*>(value), size) : std::string();
      if (std::strcmp(name, kIdHeader) == 0)
        out.id = std::move(text);
      else
        out.headers.insert_or_assign(name, std::move(text));
    }
  }
  if (out.id.empty())
    out.id = "kafka:" + topic + "/" + std::to_string(record.partition) + "/" + std::to_string(record.offset);
  rd_kafka_timestamp_type_t type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
  std::int64_t ms = rd_kafka_message_timestamp(&record, &type);
  out.timestamp = ms >= 0 ? from_unix_ms(ms) : Clock::now();
  return out;
}

// A fetched message this member has not finished with.
struct Member::Entry {
  enum class State { ready, out, rejecting };
  Message message;
  int deliveries = 0;  // handed to a receiver so far, here or (carried) elsewhere
  State state = State::ready;
  SteadyClock::time_point visible_at{};
  SteadyClock::time_point lease_end{};
  std::uint64_t token = 0;  // of the current delivery while out or rejecting
  std::uint64_t owner = 0;  // subscription id while out
};

struct Member::Partition {
  OffsetTracker tracker;
  QueuePtr queue;      // the partition's fetch queue, forwarded to messages_
  Carried carried;     // from the committed metadata
  Carried remembered;  // from this member's own earlier ownership
  std::map<std::int64_t, Entry> entries;
  bool revoking = false;
  bool seen_any = false;
  std::int64_t sent_offset = -1;  // last commit sent, to skip identical ones
  std::string sent_metadata;

  int carried_value(std::int64_t offset) const {
    return combine_carried(carried.lookup(offset), remembered.lookup(offset));
  }
  // What this partition hands on (see carried_state): what its entries and tracker know,
  // and beyond the offsets fetched so far, what it was handed itself.
  Carried state(bool from_start) const {
    std::map<std::int64_t, int> deliveries;
    for (const auto& [o, entry] : entries)
      if (entry.deliveries > 0) deliveries[o] = entry.deliveries;
    Carried out = carried_state(tracker, deliveries, from_start);
    if (tracker.next() >= 0) carry_unfetched(out, tracker.next(), carried, remembered);
    return out;
  }
};

// ---------------------------------------------------------------------------------------
// Subscription

Subscription::Subscription(std::shared_ptr<Member> member, SubscribeOptions options, std::uint64_t id)
    : member_(std::move(member)), options_(std::move(options)), id_(id) {
  dead_letter_topic_ = options_.effective_dead_letter_topic();
}

Subscription::~Subscription() {
  close();
}

std::optional<Delivery> Subscription::receive(Ms timeout) {
  return member_->receive(*this, timeout);
}

void Subscription::settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept {
  member_->settle(*this, token, outcome, delay, reason);
}

void Subscription::close() {
  member_->detach(*this);
}

// ---------------------------------------------------------------------------------------
// Member

Member::Member(const Options& options, std::shared_ptr<Producer> producer, std::string topic, std::string group,
               bool ephemeral)
    : options_(options),
      producer_(std::move(producer)),
      topic_(std::move(topic)),
      group_(std::move(group)),
      ephemeral_(ephemeral),
      errors_("consumer of '" + topic_ + "' (group '" + group_ + "') on " + options.masked_url, this) {}

Member::~Member() {
  close();
  partitions_.clear();
  {
    std::lock_guard lock(queue_mutex_);
    consumer_queue_.reset();
  }
  messages_.reset();
  handle_.reset();
}

QueuePtr Member::forward(std::int32_t partition) {
  QueuePtr queue(rd_kafka_queue_get_partition(handle_.get(), topic_.c_str(), partition));
  if (queue) rd_kafka_queue_forward(queue.get(), messages_.get());
  return queue;
}

void Member::start() {
  {
    std::lock_guard lock(mutex_);
    if (stop_requested_)
      throw Error(Errc::closed, "the consumer of '" + topic_ + "' on " + options_.masked_url +
                                    " was closed before it started (the broker is closing)");
  }
  ConfPtr conf = options_.consumer_conf(ephemeral_ ? "ferry-ephemeral-" + make_uuid() : group_);
  install_callbacks(conf.get(), &errors_);
  if (!ephemeral_) {
    rd_kafka_conf_set_rebalance_cb(conf.get(), &Member::rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf.get(), &Member::commit_cb);
  }
  char errstr[512] = {0};
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof errstr);
  if (!rk)
    throw Error(Errc::invalid_argument, "cannot configure a Kafka consumer for " + options_.masked_url + ": " + errstr);
  conf.release();
  handle_.reset(rk);
  rd_kafka_poll_set_consumer(rk);
  consumer_queue_.reset(rd_kafka_queue_get_consumer(rk));
  messages_.reset(rd_kafka_queue_new(rk));
  if (ephemeral_) {
    assign_ephemeral();
  } else {
    PartitionListPtr subscription(rd_kafka_topic_partition_list_new(1));
    rd_kafka_topic_partition_list_add(subscription.get(), topic_.c_str(), RD_KAFKA_PARTITION_UA);
    if (rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, subscription.get()))
      throw Error(errc_for(err),
                  "cannot subscribe to '" + topic_ + "' on " + options_.masked_url + ": " + rd_kafka_err2str(err));
  }
  // close() may be reading thread_ (under join_mutex_); a close() before this point finds
  // no thread, and the new one ends at once (stop_requested_), to be joined by ~Member.
  std::lock_guard lock(join_mutex_);
  thread_ = std::thread([this] { run(); });
}

void Member::assign_ephemeral() {
  TopicPtr topic(rd_kafka_topic_new(handle_.get(), topic_.c_str(), nullptr));
  const rd_kafka_metadata_t* raw = nullptr;
  rd_kafka_resp_err_t err =
      rd_kafka_metadata(handle_.get(), 0, topic.get(), &raw, static_cast<int>(options_.admin_timeout.count()));
  if (err)
    throw Error(Errc::unavailable, "cannot read the partitions of '" + topic_ + "' on " + options_.masked_url + ": " +
                                       rd_kafka_err2str(err) + errors_.suffix());
  MetadataPtr metadata(raw);
  if (metadata->topic_cnt != 1 || metadata->topics[0].err || metadata->topics[0].partition_cnt == 0)
    throw Error(Errc::unavailable, "topic '" + topic_ + "' has no partitions on " + options_.masked_url);
  PartitionListPtr list(rd_kafka_topic_partition_list_new(metadata->topics[0].partition_cnt));
  std::lock_guard lock(mutex_);
  for (int i = 0; i < metadata->topics[0].partition_cnt; ++i) {
    std::int32_t p = metadata->topics[0].partitions[i].id;
    std::int64_t low = 0, high = 0;
    err = rd_kafka_query_watermark_offsets(handle_.get(), topic_.c_str(), p, &low, &high,
                                           static_cast<int>(options_.admin_timeout.count()));
    if (err)
      throw Error(Errc::unavailable, "cannot read the end of '" + topic_ + "' partition " + std::to_string(p) + ": " +
                                         rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_add(list.get(), topic_.c_str(), p)->offset = high;
    partitions_.emplace(p, Partition{OffsetTracker(high), forward(p), {}, {}, {}, false, false, -1, {}});
  }
  if (rd_kafka_resp_err_t e = rd_kafka_assign(handle_.get(), list.get()))
    throw Error(errc_for(e), "cannot assign the partitions of '" + topic_ + "': " + rd_kafka_err2str(e));
  joined_ = true;
}

void Member::wait_joined() {
  std::unique_lock lock(mutex_);
  bool done = cv_.wait_for(lock, options_.join_timeout, [&] { return joined_ || closed_ || !failure_.ok(); });
  if (!failure_.ok()) throw Error(failure_);
  if (!joined_ && (stop_requested_ || closed_))
    throw Error(Errc::closed, "the consumer of '" + topic_ + "' on " + options_.masked_url +
                                  " was closed before it joined group '" + group_ + "'");
  if (!done || !joined_)
    throw Error(Errc::unavailable, "could not join consumer group '" + group_ + "' of topic '" + topic_ + "' on " +
                                       options_.masked_url + " within " +
                                       std::to_string(options_.join_timeout.count()) + " ms" + errors_.suffix() +
                                       "; is Kafka reachable at " + options_.bootstrap + "?");
}

std::shared_ptr<Subscription> Member::attach(const SubscribeOptions& options) {
  std::lock_guard lock(mutex_);
  if (stop_requested_ || closed_ || !failure_.ok()) return nullptr;
  auto sub = std::make_shared<Subscription>(shared_from_this(), options, next_sub_++);
  subs_[sub->id()] = sub.get();
  linger_until_.reset();
  last_capacity_ = capacity();
  return sub;
}

bool Member::leaving() const {
  std::lock_guard lock(mutex_);
  return stop_requested_ || closed_ || !failure_.ok();
}

std::uint64_t Member::in_flight() const {
  std::lock_guard lock(mutex_);
  std::uint64_t n = 0;
  for (const auto& [_, partition] : partitions_)
    for (const auto& [o, entry] : partition.entries)
      if (entry.state != Entry::State::ready) ++n;
  return n;
}

int Member::capacity() const {
  if (subs_.empty()) return last_capacity_;
  long long total = 0;
  for (const auto& [_, sub] : subs_) total += sub->options().prefetch;
  return static_cast<int>(std::clamp<long long>(total, 1, 100'000));
}

void Member::wake_poller() {
  housekeeping_due_ = true;
  std::lock_guard lock(queue_mutex_);
  if (consumer_queue_) rd_kafka_queue_yield(consumer_queue_.get());
}

void Member::detach(Subscription& sub) {
  bool stop_now = false;
  {
    std::lock_guard lock(mutex_);
    if (sub.closed_) return;
    sub.closed_ = true;
    const auto now = SteadyClock::now();
    for (auto& [_, partition] : partitions_)
      for (auto& [offset, entry] : partition.entries)
        if (entry.state == Entry::State::out && entry.owner == sub.id()) release_entry(entry, now);
    sub.out_ = 0;
    subs_.erase(sub.id());
    if (subs_.empty() && !stop_requested_) {
      if (options_.member_linger.count() == 0 || ephemeral_)
        stop_now = stop_requested_ = true;
      else
        linger_until_ = now + options_.member_linger;
    }
  }
  cv_.notify_all();
  if (stop_now) wake_poller();
}

// Makes an out entry deliverable again; its delivery's settlement will be ignored.
void Member::release_entry(Entry& entry, SteadyClock::time_point visible_at) {
  tokens_.erase(entry.token);
  entry.state = Entry::State::ready;
  entry.visible_at = visible_at;
  entry.token = 0;
  entry.owner = 0;
}

bool Member::pick(SteadyClock::time_point now, SteadyClock::time_point& next_due, std::int32_t& partition,
                  std::int64_t& offset) {
  if (partitions_.empty()) return false;
  std::unordered_set<std::string> blocked;  // keys with an earlier unsettled message
  const std::size_t count = partitions_.size();
  auto it = partitions_.begin();
  std::advance(it, static_cast<std::ptrdiff_t>(round_robin_ % count));
  for (std::size_t i = 0; i < count; ++i, ++it) {
    if (it == partitions_.end()) it = partitions_.begin();
    Partition& p = it->second;
    if (p.revoking) continue;
    for (auto& [o, entry] : p.entries) {
      const auto& key = entry.message.key;
      if (key && blocked.count(*key)) continue;
      bool available = entry.state == Entry::State::ready && entry.visible_at <= now;
      if (!available) {
        if (entry.state == Entry::State::ready) next_due = std::min(next_due, entry.visible_at);
        if (key) blocked.insert(*key);
        continue;
      }
      partition = it->first;
      offset = o;
      round_robin_ = (round_robin_ + i + 1) % count;
      return true;
    }
  }
  return false;
}

std::optional<Delivery> Member::receive(Subscription& sub, Ms timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  std::unique_lock lock(mutex_);
  while (true) {
    if (sub.closed_ || stop_requested_ || closed_) return std::nullopt;
    if (!failure_.ok()) throw Error(failure_);
    const auto now = SteadyClock::now();
    auto next_due = SteadyClock::time_point::max();
    std::int32_t p = 0;
    std::int64_t o = 0;
    if (sub.out_ < sub.options().prefetch && pick(now, next_due, p, o)) {
      Entry& entry = partitions_.at(p).entries.at(o);
      entry.state = Entry::State::out;
      entry.deliveries += 1;
      entry.token = next_token_++;
      entry.owner = sub.id();
      entry.lease_end = now + std::min<Ms>(sub.options().ack_timeout, kLongestLease);
      tokens_[entry.token] = {p, o};
      sub.out_ += 1;
      commit_dirty_ = true;  // the carried delivery counts changed
      return Delivery(entry.message, topic_, ephemeral_ ? sub.options().group : group_, entry.deliveries,
                      sub.weak_from_this(), entry.token);
    }
    if (now >= deadline) return std::nullopt;
    cv_.wait_until(lock, std::min(deadline, next_due));
  }
}

void Member::finish(Partition& partition, std::int64_t offset) {
  partition.entries.erase(offset);
  partition.tracker.done(offset);
  entries_ -= 1;
  commit_dirty_ = true;
}

void Member::settle(Subscription& sub, std::uint64_t token, Outcome outcome, Ms delay,
                    const std::string& reason) noexcept {
  std::optional<Message> dead_letter;
  std::int32_t p = 0;
  std::int64_t o = 0;
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    auto it = tokens_.find(token);
    if (it == tokens_.end() || sub.closed_) return;  // released, expired, revoked or closed
    std::tie(p, o) = it->second;
    auto part = partitions_.find(p);
    if (part == partitions_.end()) return;
    auto found = part->second.entries.find(o);
    if (found == part->second.entries.end()) return;
    Entry& entry = found->second;
    if (entry.token != token || entry.state != Entry::State::out || entry.owner != sub.id()) return;
    tokens_.erase(it);
    sub.out_ -= 1;
    const int before = static_cast<int>(entries_);
    switch (outcome) {
      case Outcome::ack:
        finish(part->second, o);
        break;
      case Outcome::nack:
        entry.state = Entry::State::ready;
        entry.visible_at = SteadyClock::now() + delay;
        entry.owner = 0;
        break;
      case Outcome::reject: {
        entry.state = Entry::State::rejecting;
        entry.owner = 0;
        Message m = entry.message;
        m.headers.insert_or_assign(header::error, reason);
        m.headers.insert_or_assign(header::attempts, std::to_string(entry.deliveries));
        m.headers.insert_or_assign(header::original_topic, topic_);
        m.headers.insert_or_assign(header::original_group, ephemeral_ ? sub.options().group : group_);
        dead_letter = std::move(m);
        break;
      }
    }
    wake = before >= capacity() && static_cast<int>(entries_) < capacity();  // room again: fetch
  }
  cv_.notify_all();
  if (wake) wake_poller();
  if (!dead_letter) return;
  std::weak_ptr<Member> weak = weak_from_this();
  auto done = [weak, p, o, token](const Status& s) {
    if (auto self = weak.lock()) self->dead_lettered(p, o, token, s);
  };
  try {
    producer_->publish(sub.dead_letter_topic(), {&*dead_letter, 1}, done, true);
  } catch (const std::exception& e) {
    dead_lettered(p, o, token, Status{Errc::internal, e.what()});
  }
}

void Member::dead_lettered(std::int32_t partition, std::int64_t offset, std::uint64_t token, const Status& status) {
  {
    std::lock_guard lock(mutex_);
    auto part = partitions_.find(partition);
    if (part == partitions_.end()) return;  // revoked meanwhile: its new owner redelivers it
    auto found = part->second.entries.find(offset);
    if (found == part->second.entries.end()) return;
    Entry& entry = found->second;
    if (entry.token != token || entry.state != Entry::State::rejecting) return;
    if (status.ok()) {
      finish(part->second, offset);
    } else {
      spdlog::warn("kafka: moving message {} of '{}' to its dead-letter topic failed ({}); it will be delivered again",
                   entry.message.id, topic_, status.message);
      entry.state = Entry::State::ready;
      entry.visible_at = SteadyClock::now() + kDeadLetterRetry;
      entry.token = 0;
    }
  }
  cv_.notify_all();
  wake_poller();
}

// ---------------------------------------------------------------------------------------
// The poll thread

void Member::run() {
  name_thread("ferry-kafka-rx");
  std::vector<rd_kafka_message_t*> batch(500);
  while (true) {
    std::size_t room = 0;
    {
      std::lock_guard lock(mutex_);
      if (stop_requested_) break;
      const auto cap = static_cast<std::size_t>(capacity());
      room = entries_ < cap ? std::min(cap - entries_, batch.size()) : 0;
    }
    if (room > 0) {
      // What is fetched already, without waiting: a batch read with a timeout waits for the
      // whole batch to fill, which at a modest rate holds every message for the timeout.
      ssize_t n = rd_kafka_consume_batch_queue(messages_.get(), 0, batch.data(), room);
      if (n == 0) {
        // Nothing yet: the first message to arrive wakes this at once; events wait at most
        // the 10 ms.
        if (rd_kafka_message_t* first = rd_kafka_consume_queue(messages_.get(), 10)) {
          MessagePtr message(first);
          on_message(*message);
          if (room > 1) n = rd_kafka_consume_batch_queue(messages_.get(), 0, batch.data(), room - 1);
        }
      }
      for (ssize_t i = 0; i < n; ++i) {
        MessagePtr message(batch[static_cast<std::size_t>(i)]);
        on_message(*message);
      }
    }
    // Events: rebalances and commit results are served inside the poll; errors (and any
    // message of a partition whose queue could not be forwarded) come out of it.
    rd_kafka_message_t* raw = rd_kafka_consumer_poll(handle_.get(), room > 0 ? 0 : 20);
    for (int n = 0; raw; ++n) {
      MessagePtr message(raw);
      on_message(*message);
      raw = n < 100 ? rd_kafka_consumer_poll(handle_.get(), 0) : nullptr;
    }
    housekeeping(housekeeping_due_.exchange(false));
  }
  shutdown();
}

void Member::on_message(const rd_kafka_message_t& message) {
  if (message.err) {
    if (message.err == RD_KAFKA_RESP_ERR__PARTITION_EOF) return;
    std::string text = rd_kafka_message_errstr(&message);
    errors_.record(message.err, text.c_str());
    if (message.err == RD_KAFKA_RESP_ERR__FATAL) {
      char why[512] = {0};
      rd_kafka_fatal_error(handle_.get(), why, sizeof why);
      {
        std::lock_guard lock(mutex_);
        failure_ = {Errc::unavailable, "the Kafka consumer of '" + topic_ + "' hit a fatal error: " + why};
      }
      cv_.notify_all();
    } else {
      spdlog::debug("kafka: consumer of '{}' group '{}': {}", topic_, group_, text);
    }
    return;
  }
  Message decoded = decode_record(message, topic_);
  bool added = false;
  {
    std::lock_guard lock(mutex_);
    auto part = partitions_.find(message.partition);
    if (part == partitions_.end() || part->second.revoking) return;
    Partition& p = part->second;
    const std::int64_t o = message.offset;
    if (!p.seen_any && p.tracker.next() >= 0 && o < p.tracker.next()) {
      // The committed offset was beyond the log (reset to earliest): start over from here,
      // with nothing carried (those offsets were of the log that is gone).
      p.tracker = OffsetTracker(o);
      p.carried = Carried();
      p.remembered = Carried();
    }
    p.seen_any = true;
    if (!p.tracker.track(o)) return;  // fetched again after a pause or seek
    const int carried = p.carried_value(o);
    if (carried == kDone) {
      p.tracker.done(o);
      commit_dirty_ = true;
      return;
    }
    Entry entry;
    entry.message = std::move(decoded);
    entry.deliveries = std::max(carried, 0);
    p.entries.emplace(o, std::move(entry));
    entries_ += 1;
    added = true;
  }
  if (added) cv_.notify_all();
}

void Member::housekeeping(bool force) {
  const auto now = SteadyClock::now();
  if (!force && now < next_housekeeping_) return;
  next_housekeeping_ = now + kHousekeepingEvery;
  bool expired = false;
  PartitionListPtr commit;
  {
    std::lock_guard lock(mutex_);
    for (auto& [_, partition] : partitions_) {
      for (auto& [offset, entry] : partition.entries) {
        if (entry.state != Entry::State::out || entry.lease_end > now) continue;
        auto sub = subs_.find(entry.owner);
        if (sub != subs_.end()) sub->second->out_ -= 1;
        spdlog::debug("kafka: lease of message {} of '{}' ran out; delivering it again", entry.message.id, topic_);
        release_entry(entry, now);
        expired = true;
      }
    }
    if (subs_.empty() && linger_until_ && now >= *linger_until_) stop_requested_ = true;
    if (!ephemeral_ && joined_ && commit_dirty_ && !commit_in_flight_ &&
        now - last_commit_ >= options_.commit_interval) {
      commit = commit_list(true, nullptr);
      commit_dirty_ = false;
      last_commit_ = now;
      if (commit && commit->cnt > 0)
        commit_in_flight_ = true;
      else
        commit.reset();
    }
  }
  if (expired) cv_.notify_all();
  if (commit) {
    if (rd_kafka_resp_err_t err = rd_kafka_commit(handle_.get(), commit.get(), 1)) on_commit_result(err);
  }
}

PartitionListPtr Member::commit_list(bool changed_only, const std::vector<std::int32_t>* only) {
  PartitionListPtr list(rd_kafka_topic_partition_list_new(static_cast<int>(partitions_.size())));
  for (auto& [id, p] : partitions_) {
    if (only && std::find(only->begin(), only->end(), id) == only->end()) continue;
    auto offset = p.tracker.committable();
    if (!offset) continue;
    std::string metadata = encode_carried(*offset, p.state(false));
    if (changed_only && *offset == p.sent_offset && metadata == p.sent_metadata) continue;
    p.sent_offset = *offset;
    p.sent_metadata = metadata;
    rd_kafka_topic_partition_t* elem = rd_kafka_topic_partition_list_add(list.get(), topic_.c_str(), id);
    elem->offset = *offset;
    elem->metadata = std::malloc(metadata.size());
    if (elem->metadata) {
      std::memcpy(elem->metadata, metadata.data(), metadata.size());
      elem->metadata_size = metadata.size();
    }
  }
  return list;
}

void Member::on_commit_result(rd_kafka_resp_err_t err) {
  std::lock_guard lock(mutex_);
  commit_in_flight_ = false;
  if (!err || err == RD_KAFKA_RESP_ERR__NO_OFFSET) {
    if (commit_failures_ >= kCommitFailuresToWarn)
      spdlog::info("kafka: committing offsets of '{}' group '{}' works again after {} failures", topic_, group_,
                   commit_failures_);
    commit_failures_ = 0;
    return;
  }
  // One or two failures happen in every rebalance; more in a row mean the group's offsets
  // are not moving (authorization, metadata too large for the brokers' settings, ...), and
  // a restart would deliver everything since again.
  const auto now = SteadyClock::now();
  ++commit_failures_;
  if (commit_failures_ == kCommitFailuresToWarn ||
      (commit_failures_ > kCommitFailuresToWarn && now - last_commit_warning_ >= kCommitWarningEvery)) {
    spdlog::warn("kafka: committing offsets of '{}' group '{}' failed {} times in a row, last: {}; retrying", topic_,
                 group_, commit_failures_, rd_kafka_err2str(err));
    last_commit_warning_ = now;
  } else {
    spdlog::debug("kafka: committing offsets of '{}' group '{}' failed: {}; will retry", topic_, group_,
                  rd_kafka_err2str(err));
  }
  for (auto& [_, p] : partitions_) p.sent_offset = -2;
  commit_dirty_ = true;
}

void Member::commit_cb(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t*, void* opaque) {
  static_cast<Member*>(static_cast<ErrorLog*>(opaque)->owner())->on_commit_result(err);
}

void Member::rebalance_cb(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* partitions,
                          void* opaque) {
  auto* self = static_cast<Member*>(static_cast<ErrorLog*>(opaque)->owner());
  try {
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      self->on_assign(partitions);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
      self->on_revoke(partitions);
    } else {
      spdlog::warn("kafka: rebalance of group '{}' failed: {}", self->group_, rd_kafka_err2str(err));
      self->on_rebalance_error(rk, partitions);
    }
  } catch (const std::exception& e) {
    spdlog::error("kafka: rebalance handling of group '{}' failed: {}", self->group_, e.what());
  }
}

// Gives up the partitions (all of them, eagerly) without a commit: their deliveries out
// are abandoned, to be delivered again from the group's committed offsets.
void Member::on_rebalance_error(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* partitions) {
  const bool incremental = cooperative(rk);
  {
    std::lock_guard lock(mutex_);
    std::vector<std::int32_t> ids;
    if (incremental)
      for (int i = 0; i < partitions->cnt; ++i) ids.push_back(partitions->elems[i].partition);
    else
      for (const auto& [id, _] : partitions_) ids.push_back(id);
    drop(ids);
  }
  cv_.notify_all();
  unassign(rk, partitions);
}

void Member::on_assign(rd_kafka_topic_partition_list_t* partitions) {
  rd_kafka_t* rk = handle_.get();
  PartitionListPtr wanted(rd_kafka_topic_partition_list_copy(partitions));
  rd_kafka_resp_err_t err = rd_kafka_committed(rk, wanted.get(), static_cast<int>(options_.admin_timeout.count()));
  if (err)
    spdlog::warn(
        "kafka: reading committed offsets of group '{}' failed ({}); starting from the group's offsets without "
        "carried attempt counts",
        group_, rd_kafka_err2str(err));
  {
    std::lock_guard lock(mutex_);
    for (int i = 0; i < wanted->cnt; ++i) {
      rd_kafka_topic_partition_t& elem = wanted->elems[i];
      // Assigned again without a revoke between (after a failed rebalance): what this
      // member knows of it goes to remembered_ first.
      drop({elem.partition});
      const bool known = !err && !elem.err && elem.offset >= 0;
      Partition p{OffsetTracker(known ? elem.offset : -1), forward(elem.partition), {}, {}, {}, false, false, -1, {}};
      if (known && elem.metadata && elem.metadata_size > 0)
        p.carried =
            decode_carried(std::string_view(static_cast<const char*>(elem.metadata), elem.metadata_size), elem.offset);
      if (auto mem = remembered_.find(elem.partition); mem != remembered_.end()) {
        p.remembered = std::move(mem->second);
        remembered_.erase(mem);
      }
      if (known) p.sent_offset = elem.offset;
      if (known && elem.metadata) p.sent_metadata.assign(static_cast<const char*>(elem.metadata), elem.metadata_size);
      // Read, and nothing committed: from the start (ferry's auto.offset.reset is
      // earliest), said here, or librdkafka asks the coordinator again before its first
      // fetch (~100 ms on a new group). Not read: librdkafka asks again.
      const bool none = !err && !elem.err && elem.offset == RD_KAFKA_OFFSET_INVALID;
      elem.offset = known ? elem.offset : none ? RD_KAFKA_OFFSET_BEGINNING : RD_KAFKA_OFFSET_INVALID;
      partitions_.emplace(elem.partition, std::move(p));
    }
    joined_ = true;
  }
  for (int i = 0; i < wanted->cnt; ++i) {
    wanted->elems[i].err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (wanted->elems[i].metadata) {
      std::free(wanted->elems[i].metadata);
      wanted->elems[i].metadata = nullptr;
      wanted->elems[i].metadata_size = 0;
    }
  }
  if (cooperative(rk))
    log_error("incremental assign", rd_kafka_incremental_assign(rk, wanted.get()));
  else if (rd_kafka_resp_err_t e = rd_kafka_assign(rk, wanted.get()))
    spdlog::warn("kafka: assigning partitions of '{}' failed: {}", topic_, rd_kafka_err2str(e));
  housekeeping_due_ = true;
  cv_.notify_all();
}

void Member::on_revoke(rd_kafka_topic_partition_list_t* partitions) {
  rd_kafka_t* rk = handle_.get();
  const bool lost = rd_kafka_assignment_lost(rk);
  std::vector<std::int32_t> ids;
  for (int i = 0; i < partitions->cnt; ++i) ids.push_back(partitions->elems[i].partition);
  PartitionListPtr commit;
  {
    std::unique_lock lock(mutex_);
    for (auto id : ids)
      if (auto it = partitions_.find(id); it != partitions_.end()) it->second.revoking = true;
    // Deliveries already out may still be settled for a while (rejects: until the dead
    // letter is confirmed); then they are abandoned.
    auto busy = [&] {
      for (auto id : ids) {
        auto it = partitions_.find(id);
        if (it == partitions_.end()) continue;
        for (const auto& [_, entry] : it->second.entries)
          if (entry.state != Entry::State::ready) return true;
      }
      return false;
    };
    if (!lost) cv_.wait_for(lock, options_.revoke_grace, [&] { return stop_requested_ || !busy(); });
    // All of them, not only what changed since the last commit: that one may still fail.
    if (!lost) commit = commit_list(false, &ids);
    drop(ids);
  }
  cv_.notify_all();
  // Messages of the revoked partitions may still wait in messages_; were a partition to
  // come straight back, they must not be taken for the refetch from the committed offset.
  std::vector<rd_kafka_message_t*> batch(256);
  for (ssize_t n; (n = rd_kafka_consume_batch_queue(messages_.get(), 0, batch.data(), batch.size())) > 0;) {
    for (ssize_t i = 0; i < n; ++i) {
      MessagePtr message(batch[static_cast<std::size_t>(i)]);
      if (std::find(ids.begin(), ids.end(), message->partition) == ids.end()) on_message(*message);
    }
  }
  if (commit && commit->cnt > 0) {
    if (rd_kafka_resp_err_t err = rd_kafka_commit(rk, commit.get(), 0))
      spdlog::info(
          "kafka: committing offsets of '{}' group '{}' on rebalance failed: {}; their messages after the "
          "last commit will be delivered again",
          topic_, group_, rd_kafka_err2str(err));
  }
  unassign(rk, partitions);
}

// Hands the partitions back to librdkafka: those revoked (cooperative), or all (eager).
void Member::unassign(rd_kafka_t* rk, rd_kafka_topic_partition_list_t* partitions) {
  if (cooperative(rk))
    log_error("incremental unassign", rd_kafka_incremental_unassign(rk, partitions));
  else if (rd_kafka_resp_err_t e = rd_kafka_assign(rk, nullptr))
    spdlog::warn("kafka: unassigning partitions of '{}' failed: {}", topic_, rd_kafka_err2str(e));
}

void Member::drop(const std::vector<std::int32_t>& ids) {
  for (auto id : ids) {
    auto it = partitions_.find(id);
    if (it == partitions_.end()) continue;
    Partition& p = it->second;
    for (auto& [o, entry] : p.entries) {
      if (entry.state == Entry::State::out) {
        auto sub = subs_.find(entry.owner);
        if (sub != subs_.end()) sub->second->out_ -= 1;
      }
      if (entry.token) tokens_.erase(entry.token);
    }
    remembered_[id] = p.state(true);
    entries_ -= p.entries.size();
    partitions_.erase(it);
  }
}

void Member::shutdown() {
  {
    // Deliveries still out may be settled for a while, and dead letters on their way be
    // confirmed: their offsets can then be committed. What is not settled by then is
    // delivered again to the group.
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, options_.revoke_grace, [&] {
      for (const auto& [_, p] : partitions_)
        for (const auto& [o, entry] : p.entries)
          if (entry.state != Entry::State::ready) return false;
      return true;
    });
  }
  if (!ephemeral_) {
    PartitionListPtr commit;
    {
      std::lock_guard lock(mutex_);
      commit = commit_list(false, nullptr);
    }
    if (commit && commit->cnt > 0) {
      if (rd_kafka_resp_err_t err = rd_kafka_commit(handle_.get(), commit.get(), 0))
        spdlog::info("kafka: final commit of '{}' group '{}' failed: {}", topic_, group_, rd_kafka_err2str(err));
    }
  }
  {
    // librdkafka wants the application's queue references gone before consumer_close.
    std::lock_guard lock(mutex_);
    for (auto& [_, p] : partitions_) p.queue.reset();
  }
  {
    std::lock_guard lock(queue_mutex_);
    consumer_queue_.reset();
  }
  if (rd_kafka_resp_err_t err = rd_kafka_consumer_close(handle_.get()))
    spdlog::debug("kafka: closing the consumer of '{}' group '{}': {}", topic_, group_, rd_kafka_err2str(err));
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    for (auto& [_, sub] : subs_) sub->out_ = 0;
    partitions_.clear();
    tokens_.clear();
    entries_ = 0;
  }
  cv_.notify_all();
}

void Member::close() {
  {
    std::lock_guard lock(mutex_);
    stop_requested_ = true;
  }
  cv_.notify_all();
  wake_poller();
  // Two callers may close at once (the broker closing, a subscribe giving up).
  std::lock_guard lock(join_mutex_);
  if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
}

}  // namespace ferry::kafka::detail
