#include "kafka_admin.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <tuple>

#include "kafka_consumer.hpp"

namespace ferry::kafka::detail {
namespace {

using SteadyClock = std::chrono::steady_clock;

struct Marks {
  std::int32_t partition = 0;
  std::int64_t low = 0;
  std::int64_t high = 0;
};
using Partitions = std::map<std::string, std::vector<std::int32_t>>;
using Watermarks = std::map<std::string, std::vector<Marks>>;
// Committed offset per (topic, partition); negative where the group committed nothing.
using Committed = std::map<std::pair<std::string, std::int32_t>, std::int64_t>;

int timeout_of(const Options& options) {
  return static_cast<int>(options.admin_timeout.count());
}

AdminOptionsPtr admin_options(rd_kafka_t* rk, rd_kafka_admin_op_t op, const Options& options, bool operation) {
  AdminOptionsPtr opts(rd_kafka_AdminOptions_new(rk, op));
  char errstr[256] = {0};
  rd_kafka_AdminOptions_set_request_timeout(opts.get(), timeout_of(options), errstr, sizeof errstr);
  if (operation) rd_kafka_AdminOptions_set_operation_timeout(opts.get(), timeout_of(options), errstr, sizeof errstr);
  return opts;
}

// The partitions of every topic but internal ones ("__..."), or of `only`, from one
// metadata request for all topics: a request naming a topic would make a cluster that
// auto-creates topics create it.
Partitions list_partitions(rd_kafka_t* rk, const Options& options, const std::string* only, const std::string& suffix) {
  const rd_kafka_metadata_t* raw = nullptr;
  if (rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, nullptr, &raw, timeout_of(options)))
    throw Error(errc_for(err) == Errc::timeout ? Errc::timeout : Errc::unavailable,
                "cannot list the topics of " + options.masked_url + ": " + rd_kafka_err2str(err) + suffix +
                    "; is Kafka reachable at " + options.bootstrap + "?");
  MetadataPtr metadata(raw);
  Partitions out;
  for (int i = 0; i < metadata->topic_cnt; ++i) {
    const rd_kafka_metadata_topic_t& t = metadata->topics[i];
    std::string name = t.topic;
    if (t.err || t.partition_cnt == 0) continue;
    if (only ? name != *only : name.rfind("__", 0) == 0) continue;
    auto& ids = out[name];
    for (int p = 0; p < t.partition_cnt; ++p) ids.push_back(t.partitions[p].id);
    std::sort(ids.begin(), ids.end());
  }
  return out;
}

PartitionListPtr partition_list(const Partitions& partitions, std::int64_t offset) {
  std::size_t count = 0;
  for (const auto& [_, ids] : partitions) count += ids.size();
  PartitionListPtr list(rd_kafka_topic_partition_list_new(static_cast<int>(std::max<std::size_t>(count, 1))));
  for (const auto& [topic, ids] : partitions)
    for (auto id : ids) rd_kafka_topic_partition_list_add(list.get(), topic.c_str(), id)->offset = offset;
  return list;
}

// Low and high watermarks of every partition, with two ListOffsets requests: Kafka answers
// the special timestamps RD_KAFKA_OFFSET_BEGINNING (-2) and RD_KAFKA_OFFSET_END (-1) with
// the earliest and the next offset.
Watermarks watermarks(rd_kafka_t* rk, const Options& options, const Partitions& partitions, const std::string& suffix) {
  Watermarks out;
  if (partitions.empty()) return out;
  std::map<std::pair<std::string, std::int32_t>, std::int64_t> found[2];
  const std::int64_t which[2] = {RD_KAFKA_OFFSET_BEGINNING, RD_KAFKA_OFFSET_END};
  for (int w = 0; w < 2; ++w) {
    PartitionListPtr list = partition_list(partitions, which[w]);
    rd_kafka_resp_err_t err = rd_kafka_offsets_for_times(rk, list.get(), timeout_of(options));
    for (int i = 0; !err && i < list->cnt; ++i) {
      const auto& elem = list->elems[i];
      if (elem.err) {
        throw Error(Errc::unavailable, "cannot read the watermarks of '" + std::string(elem.topic) + "' partition " +
                                           std::to_string(elem.partition) + " on " + options.masked_url + ": " +
                                           rd_kafka_err2str(elem.err) + suffix);
      }
      found[w][{elem.topic, elem.partition}] = elem.offset;
    }
    if (err)
      throw Error(
          errc_for(err) == Errc::timeout ? Errc::timeout : Errc::unavailable,
          "cannot read the watermarks of the topics on " + options.masked_url + ": " + rd_kafka_err2str(err) + suffix);
  }
  for (const auto& [topic, ids] : partitions) {
    auto& marks = out[topic];
    for (auto id : ids) {
      Marks m{id, found[0][{topic, id}], found[1][{topic, id}]};
      m.low = std::max<std::int64_t>(m.low, 0);
      m.high = std::max(m.high, m.low);
      marks.push_back(m);
    }
  }
  return out;
}

// Says, at most once a minute, that groups' committed offsets could not be read.
void warn_unknown(const std::string& group, const std::string& url, const std::string& why) {
  static std::mutex mutex;
  static SteadyClock::time_point last{};
  std::lock_guard lock(mutex);
  if (last != SteadyClock::time_point{} && SteadyClock::now() - last < std::chrono::minutes{1}) return;
  last = SteadyClock::now();
  spdlog::warn("kafka: cannot read the committed offsets of group '{}' on {} ({}); its lag is left out", group, url,
               why);
}

// The committed offsets of each group on `partitions`: one ListConsumerGroupOffsets
// request per group, all under way at once. Groups whose offsets (or some of them) could
// not be read are in `unknown` instead.
std::map<std::string, Committed> committed_offsets(rd_kafka_t* rk, const Options& options,
                                                   const std::vector<std::string>& groups, const Partitions& partitions,
                                                   const std::string& suffix, std::set<std::string>& unknown) {
  std::map<std::string, Committed> out;
  if (groups.empty() || partitions.empty()) return out;
  PartitionListPtr list = partition_list(partitions, RD_KAFKA_OFFSET_INVALID);
  AdminOptionsPtr opts = admin_options(rk, RD_KAFKA_ADMIN_OP_LISTCONSUMERGROUPOFFSETS, options, false);
  QueuePtr queue(rd_kafka_queue_new(rk));
  for (const auto& group : groups) {
    GroupOffsetsPtr request(rd_kafka_ListConsumerGroupOffsets_new(group.c_str(), list.get()));
    rd_kafka_ListConsumerGroupOffsets_t* requests[] = {request.get()};
    rd_kafka_ListConsumerGroupOffsets(rk, requests, 1, opts.get(), queue.get());
  }
  // The requests keep to admin_timeout; their answers get 2 s more to come back.
  const Ms wait = options.admin_timeout + std::chrono::seconds(2);
  const auto deadline = SteadyClock::now() + wait;
  for (std::size_t answered = 0; answered < groups.size();) {
    const auto left = std::chrono::duration_cast<Ms>(deadline - SteadyClock::now()).count();
    EventPtr event(rd_kafka_queue_poll(queue.get(), static_cast<int>(std::max<long long>(left, 0))));
    if (!event)
      throw Error(Errc::timeout, "the committed offsets of " + std::to_string(groups.size() - answered) +
                                     " consumer group(s) on " + options.masked_url + " did not arrive within " +
                                     std::to_string(wait.count()) + " ms" + suffix);
    if (rd_kafka_event_type(event.get()) != RD_KAFKA_EVENT_LISTCONSUMERGROUPOFFSETS_RESULT) continue;
    ++answered;
    if (rd_kafka_resp_err_t err = rd_kafka_event_error(event.get()))
      throw Error(errc_for(err) == Errc::timeout ? Errc::timeout : Errc::unavailable,
                  "cannot read committed offsets on " + options.masked_url + ": " +
                      rd_kafka_event_error_string(event.get()) + suffix);
    const rd_kafka_ListConsumerGroupOffsets_result_t* result =
        rd_kafka_event_ListConsumerGroupOffsets_result(event.get());
    std::size_t count = 0;
    const rd_kafka_group_result_t** results = rd_kafka_ListConsumerGroupOffsets_result_groups(result, &count);
    for (std::size_t i = 0; i < count; ++i) {
      const std::string name = rd_kafka_group_result_name(results[i]);
      if (const rd_kafka_error_t* error = rd_kafka_group_result_error(results[i])) {
        warn_unknown(name, options.masked_url, rd_kafka_error_string(error));
        unknown.insert(name);
        continue;
      }
      Committed& committed = out[name];
      const rd_kafka_topic_partition_list_t* offsets = rd_kafka_group_result_partitions(results[i]);
      for (int j = 0; offsets && j < offsets->cnt; ++j) {
        const auto& elem = offsets->elems[j];
        if (elem.err) {
          warn_unknown(name, options.masked_url,
                       std::string(elem.topic) + " partition " + std::to_string(elem.partition) + ": " +
                           rd_kafka_err2str(elem.err));
          unknown.insert(name);
          out.erase(name);
          break;
        }
        committed[{elem.topic, elem.partition}] = elem.offset;
      }
    }
  }
  return out;
}

}  // namespace

KafkaAdmin::KafkaAdmin(std::shared_ptr<Producer> producer, SubscribedFn subscribed)
    : producer_(std::move(producer)), subscribed_(std::move(subscribed)) {}

rd_kafka_t* KafkaAdmin::handle() const {
  if (producer_->closed())
    throw Error(Errc::closed, "the kafka broker " + producer_->options().masked_url + " is closed");
  return producer_->handle();
}

std::vector<TopicStats> KafkaAdmin::stats() {
  rd_kafka_t* rk = handle();
  const Options& options = producer_->options();
  const std::string suffix = producer_->last_error();
  const Partitions partitions = list_partitions(rk, options, nullptr, suffix);
  const Watermarks marks = watermarks(rk, options, partitions, suffix);
  const std::vector<Subscribed> subscribed = subscribed_ ? subscribed_() : std::vector<Subscribed>{};

  std::set<std::string> groups(options.groups.begin(), options.groups.end());
  for (const auto& s : subscribed) groups.insert(s.group);
  // Not the groups the cluster lists: librdkafka 2.0.2's ListConsumerGroups leaks memory at
  // every call (seen under LeakSanitizer), and a scrape of /metrics would call it each time.
  std::set<std::string> unknown;
  const auto committed = committed_offsets(rk, options, std::vector<std::string>(groups.begin(), groups.end()),
                                           partitions, suffix, unknown);

  std::vector<TopicStats> out;
  for (const auto& [topic, topic_marks] : marks) {
    TopicStats t;
    t.topic = topic;
    for (const auto& m : topic_marks) t.messages += static_cast<std::uint64_t>(m.high - m.low);
    std::map<std::string, GroupStats> reported;
    for (const auto& s : subscribed) {
      if (s.topic != topic || unknown.count(s.group)) continue;
      GroupStats& g = reported[s.group];
      g.group = s.group;
      g.in_flight += s.in_flight;
    }
    for (const auto& [group, offsets] : committed) {
      const bool on_topic = std::any_of(topic_marks.begin(), topic_marks.end(), [&](const Marks& m) {
        auto it = offsets.find({topic, m.partition});
        return it != offsets.end() && it->second >= 0;
      });
      if (on_topic) reported[group].group = group;
    }
    for (auto& [group, g] : reported) {
      auto offsets = committed.find(group);
      for (const auto& m : topic_marks) {
        std::int64_t from = m.low;
        if (offsets != committed.end()) {
          auto it = offsets->second.find({topic, m.partition});
          if (it != offsets->second.end() && it->second >= 0) from = std::clamp(it->second, m.low, m.high);
        }
        g.backlog += static_cast<std::uint64_t>(m.high - from);
      }
      t.groups.push_back(std::move(g));
    }
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<Message> KafkaAdmin::peek(const std::string& topic, std::size_t limit) {
  rd_kafka_t* rk = handle();
  if (limit == 0) return {};
  const Options& options = producer_->options();
  const std::string suffix = producer_->last_error();
  const Partitions partitions = list_partitions(rk, options, &topic, suffix);
  if (partitions.empty()) return {};
  const Watermarks marks = watermarks(rk, options, partitions, suffix);

  struct Wanted {
    std::int64_t end = 0;
    std::size_t read = 0;
    bool done = false;
  };
  std::map<std::int32_t, Wanted> wanted;
  PartitionListPtr assignment(rd_kafka_topic_partition_list_new(static_cast<int>(marks.at(topic).size())));
  for (const auto& m : marks.at(topic)) {
    if (m.high <= m.low) continue;
    rd_kafka_topic_partition_list_add(assignment.get(), topic.c_str(), m.partition)->offset = m.low;
    wanted[m.partition] = Wanted{m.high, 0, false};
  }
  if (wanted.empty()) return {};

  // A group id is needed to read through the consumer queue; nothing joins or commits.
  ConfPtr conf = options.consumer_conf("ferry-peek-" + make_uuid());
  set_property(conf.get(), "enable.partition.eof", "true");
  ErrorLog errors("peek of '" + topic + "' on " + options.masked_url, nullptr);
  install_callbacks(conf.get(), &errors);
  char errstr[512] = {0};
  rd_kafka_t* raw = rd_kafka_new(RD_KAFKA_CONSUMER, conf.get(), errstr, sizeof errstr);
  if (!raw)
    throw Error(Errc::invalid_argument, "cannot configure a Kafka consumer for " + options.masked_url + ": " + errstr);
  conf.release();
  HandlePtr consumer(raw);
  rd_kafka_poll_set_consumer(raw);
  if (rd_kafka_resp_err_t err = rd_kafka_assign(raw, assignment.get()))
    throw Error(errc_for(err), "cannot read '" + topic + "' on " + options.masked_url + ": " + rd_kafka_err2str(err));

  struct Read {
    Message message;
    std::int32_t partition;
    std::int64_t offset;
  };
  std::vector<Read> read;
  std::size_t open = wanted.size();
  const auto deadline = SteadyClock::now() + options.admin_timeout;
  while (open > 0 && SteadyClock::now() < deadline) {
    MessagePtr message(rd_kafka_consumer_poll(raw, 100));
    if (!message) continue;
    auto it = wanted.find(message->partition);
    if (message->err && message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      errors.record(message->err, rd_kafka_message_errstr(message.get()));
      continue;
    }
    if (it == wanted.end() || it->second.done) continue;
    Wanted& w = it->second;
    if (!message->err) {
      read.push_back({decode_record(*message, topic), message->partition, message->offset});
      w.read += 1;
    }
    if (message->err || w.read >= limit || message->offset + 1 >= w.end) {
      w.done = true;
      --open;
    }
  }
  rd_kafka_consumer_close(raw);
  if (open > 0 && read.empty())
    throw Error(Errc::timeout, "could not read '" + topic + "' on " + options.masked_url + " within " +
                                   std::to_string(options.admin_timeout.count()) + " ms" + errors.suffix());
  if (open > 0)
    spdlog::warn(
        "kafka peek of '{}' on {}: {} partition(s) not read within {} ms; the oldest messages shown are "
        "those of the partitions read{}",
        topic, options.masked_url, open, options.admin_timeout.count(), errors.suffix());

  std::sort(read.begin(), read.end(), [](const Read& a, const Read& b) {
    return std::tie(a.message.timestamp, a.partition, a.offset) < std::tie(b.message.timestamp, b.partition, b.offset);
  });
  if (read.size() > limit) read.resize(limit);
  std::vector<Message> out;
  out.reserve(read.size());
  for (auto& r : read) out.push_back(std::move(r.message));
  return out;
}

std::uint64_t KafkaAdmin::purge(const std::string& topic) {
  rd_kafka_t* rk = handle();
  const Options& options = producer_->options();
  const std::string suffix = producer_->last_error();
  const Partitions partitions = list_partitions(rk, options, &topic, suffix);
  if (partitions.empty()) return 0;
  const Watermarks marks = watermarks(rk, options, partitions, suffix);
  std::uint64_t total = 0;
  PartitionListPtr before(rd_kafka_topic_partition_list_new(static_cast<int>(marks.at(topic).size())));
  for (const auto& m : marks.at(topic)) {
    if (m.high <= m.low) continue;
    total += static_cast<std::uint64_t>(m.high - m.low);
    rd_kafka_topic_partition_list_add(before.get(), topic.c_str(), m.partition)->offset = m.high;
  }
  if (total == 0) return 0;

  DeleteRecordsPtr request(rd_kafka_DeleteRecords_new(before.get()));
  rd_kafka_DeleteRecords_t* requests[] = {request.get()};
  AdminOptionsPtr opts = admin_options(rk, RD_KAFKA_ADMIN_OP_DELETERECORDS, options, true);
  QueuePtr queue(rd_kafka_queue_new(rk));
  rd_kafka_DeleteRecords(rk, requests, 1, opts.get(), queue.get());
  EventPtr event(rd_kafka_queue_poll(queue.get(), timeout_of(options) + 2000));

  const std::string what = "cannot purge '" + topic + "' on " + options.masked_url;
  if (!event)
    throw Error(Errc::timeout, what + ": DeleteRecords was not answered within " +
                                   std::to_string(options.admin_timeout.count()) + " ms" + suffix);
  rd_kafka_resp_err_t err = rd_kafka_event_error(event.get());
  std::string why = err ? rd_kafka_event_error_string(event.get()) : "";
  int failed = 0;
  int count = before->cnt;
  if (!err) {
    const rd_kafka_topic_partition_list_t* result =
        rd_kafka_DeleteRecords_result_offsets(rd_kafka_event_DeleteRecords_result(event.get()));
    for (int i = 0; result && i < result->cnt; ++i) {
      if (!result->elems[i].err) continue;
      ++failed;
      err = result->elems[i].err;
      why = rd_kafka_err2str(err);
    }
  }
  if (!err) return total;
  const std::string partial =
      err && failed > 0 && failed < count
          ? " (" + std::to_string(count - failed) + " of " + std::to_string(count) + " partitions were emptied)"
          : " (nothing was deleted)";
  if (err == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE || err == RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION)
    throw Error(Errc::unavailable,
                what + ": the cluster does not support DeleteRecords (" + why + ")" + partial +
                    ". Kafka has it since 0.11; librdkafka's mock cluster does not. Delete and re-create the topic "
                    "with Kafka's tools, or let its retention.ms expire the records");
  Errc code = errc_for(err);
  throw Error(code == Errc::ok ? Errc::unavailable : code, what + ": " + why + partial + suffix);
}

}  // namespace ferry::kafka::detail
