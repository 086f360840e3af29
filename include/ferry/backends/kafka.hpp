#pragma once
// kafka:// — Apache Kafka through librdkafka.
//
//   kafka://localhost:9092
//   kafka://k1:9092,k2:9092,k3:9092?partitions=6&replication=3
//   kafka://alice:s3cret@k1:9093?security.protocol=SASL_SSL&sasl.mechanisms=SCRAM-SHA-512
//
// ferry's own query options (all optional):
//   partitions=3          partitions of a topic ferry creates
//   replication=-1        replication factor of a topic ferry creates (-1: the broker's
//                         default.replication.factor; needs Kafka 2.4 or later)
//   create_topics=admin   how a missing topic comes to exist before its first publish or
//                         subscribe: admin (CreateTopics through the Admin API, with
//                         `partitions` and `replication`; a refusal fails the publish or
//                         subscribe with the cluster's reason unless the topic exists),
//                         auto (a metadata request, so the broker's
//                         auto.create.topics.enable decides, with its defaults), or off
//                         (the topic must exist)
//   publish_timeout=10s   how long a publish may wait for room in librdkafka's queue, and the
//                         default message.timeout.ms: a queued message is confirmed or
//                         failed within it (so a publish within twice it, plus, for a
//                         topic's first publish, making sure of the topic: admin_timeout)
//   join_timeout=30s      how long subscribe() waits for the group to assign partitions
//   commit_interval=1s    how often acknowledged offsets are committed (asynchronously);
//                         commits are also made, synchronously, on rebalance and on close
//   revoke_grace=2s       on a rebalance, how long deliveries of revoked partitions may
//                         still be settled before they are abandoned (and redelivered by
//                         the partitions' new owner); on Broker::close, how long deliveries
//                         still out may be settled before the final commit
//   member_linger=5s      how long a group member outlives its last subscriber (see below)
//   admin_timeout=10s     bound on topic creation, the committed-offset lookup and each
//                         request of Broker::admin()
//   groups=a,b            consumer groups Admin::stats() reports besides those this handle
//                         subscribed (other processes' groups, e.g. for ferry stats)
// Every other key is a librdkafka property (CONFIGURATION.md) given to both the producer
// and the consumers; prefix it with `producer.` or `consumer.` to give it to one only. An
// unknown property or a bad value is an Error(invalid_argument) from Broker::open, naming
// the key. user:password in the URL become sasl.username and sasl.password (and
// security.protocol defaults to SASL_SSL, sasl.mechanisms to PLAIN). ferry sets, and
// refuses to have overridden: bootstrap.servers, group.id, enable.idempotence=true,
// acks=all, enable.auto.commit=false, enable.auto.offset.store=false,
// auto.offset.reset=earliest, enable.partition.eof=false. Its defaults, which a query key
// may change: partitioner=murmur2_random (Java clients place keys the same way),
// linger.ms=5, message.max.bytes=4194304, message.timeout.ms=publish_timeout, and for
// consumers queued.min.messages=10000, queued.max.messages.kbytes=16384 (how far
// librdkafka fetches ahead of ferry's own buffer, which holds at most the sum of the
// member's subscribers' SubscribeOptions::prefetch).
// Secrets (sasl.password, ssl.key.password, ...) are masked in every log line and error.
//
// Guarantees:
//   - Publish: the idempotent producer with acks=all; a publish completes when the
//     delivery report of every message of the batch has arrived (ok), or at the first
//     failure. The message id travels in the record header `ferry-id`, the other headers
//     as record headers, the timestamp as the record's CreateTime, the key as the record
//     key. A record without `ferry-id` (from another client) gets the id
//     "kafka:<topic>/<partition>/<offset>", stable across redeliveries. librdkafka copies
//     each message into its queue: publish_async of a `const Message&` makes no other
//     copy, so a caller sending many messages alike can keep one and change it between
//     publishes.
//   - Subscribe: the subscribers of one Broker handle that share (topic, group) share
//     one consumer-group member, whose prefetched messages they divide between them;
//     other handles and processes are other members. subscribe() returns once the
//     member has its first assignment (a new group on a real or mock cluster takes about
//     group.initial.rebalance.delay.ms, 3 s). A new group starts at the oldest retained
//     message; an ephemeral group has no Kafka group at all: it reads every partition
//     from its end at subscribe time and commits nothing.
//   - Offsets: committed per partition only up to the first message not yet acked or
//     rejected, whatever order handlers settle in. Along with the offset, the commit's
//     metadata carries which later offsets are already settled and how often unsettled
//     ones were delivered, so a partition's next owner skips the former and continues the
//     attempt count of the latter (as long as that commit succeeded; librdkafka's mock
//     cluster refuses commits during a rebalance, a real broker accepts them).
//   - nack(delay): the message stays in the member's memory and is delivered again after
//     the delay; its offset is not committed meanwhile, so a crash redelivers it. Later
//     messages with the same key wait for it; other messages of the partition do not.
//     (Chosen over pause-and-seek, which would stall and re-read the whole partition, and
//     over a retry topic, which would lose per-key order and multiply topics.)
//   - reject(reason): the message is published to the dead-letter topic with ferry-error,
//     ferry-attempts, ferry-original-topic and ferry-original-group; its offset is marked
//     done once that publish is confirmed (if it fails, the message is delivered again).
//   - Per-key order: a message is not handed out while an earlier one with the same key
//     is unsettled, across all subscribers of the member.
//   - Leases: a delivery unsettled after SubscribeOptions::ack_timeout goes to another
//     receiver of the same member with attempt + 1; its late settlement is ignored.
//   - Close: a closed subscriber's unsettled deliveries go to the member's other
//     subscribers at once. A member without subscribers leaves the group after
//     member_linger (at once on Broker::close, after waiting up to revoke_grace for
//     deliveries still out to be settled): it commits what is settled (with the metadata
//     above, which also hands on what it was handed for offsets it did not fetch) and
//     leaves, and the group's next owner of its partitions resumes.
//   - Rebalance: revoked partitions stop being handed out; deliveries already out may be
//     settled for revoke_grace; then what is safe is committed, the rest is abandoned and
//     buffered messages of those partitions dropped: the new owner starts from the commit.
//
//   - Admin (Broker::admin()): stats() lists every topic of the cluster but internal ones
//     ("__..."), with its retained messages (the sum over partitions of high - low
//     watermark) and, per consumer group, the lag as `backlog` (the sum over partitions of
//     high watermark - committed offset, counted from the low watermark where the group
//     committed nothing or below it) and the deliveries of this handle not yet settled as
//     `in_flight` (0 for groups of other processes). The groups: those this handle
//     subscribed to the topic, and those named in groups= that have an offset committed
//     on the topic (the cluster's list of groups is not read: librdkafka 2.0.2 leaks at
//     each ListConsumerGroups). A group whose committed offsets cannot be read is left out
//     (with a warning) rather than reported as having committed nothing. The lag moves with
//     the group's commits (every commit_interval), not with each ack. peek() reads with a
//     temporary consumer that assigns the partitions from their low watermark and commits
//     nothing: up to
//     `limit` messages of each partition, merged oldest first by timestamp (then
//     partition, then offset), the first `limit` of them. purge() deletes every retained
//     record with DeleteRecords and returns how many there were; committed offsets stay,
//     and count from the new low watermark. A cluster without DeleteRecords (such as
//     librdkafka's mock) makes purge() throw Error(unavailable) saying so; nothing is
//     deleted then.
//
// Threads: each open Broker runs one producer poller thread ("ferry-kafka-dr": delivery
// reports and publish callbacks run there) plus librdkafka's own threads; each group
// member runs one poll thread ("ferry-kafka-rx": fetching, rebalances, leases, commits)
// plus librdkafka's threads. Broker, Publisher and Subscriber are thread-safe as their
// interfaces say. A publish callback may publish (if librdkafka's queue is full, that
// publish fails at once: only the thread running the callback makes room), close its
// broker, or hold the last reference to it (callbacks are destroyed after the report, and
// the broker closes then).

#include <memory>
#include <string>
#include <vector>

namespace ferry::kafka {

// Makes "kafka://" known to ferry::Broker::open().
void register_scheme();

// librdkafka's in-process mock cluster (librdkafka/rdkafka_mock.h): a Kafka-protocol
// broker on loopback with `brokers` nodes (ids 1..brokers), kept in memory, for tests and
// `ferry dev kafka`. It owns its rd_kafka_t and the cluster; both go on destruction.
// Thread-safe.
//
// What librdkafka 2.0.2's mock does not do like Kafka, and how url() copes:
//   - it cannot create topics through the Admin API (it names no valid controller), but
//     creates any topic a metadata request names, with 4 partitions: create_topics=auto;
//   - its first JoinGroup of a group waits 3 s and expires members after
//     session.timeout.ms, and it waits session.timeout.ms - 1 s for every later member
//     change: session.timeout.ms=6000 (rebalances take 5 s);
//   - it answers an empty fetch only after fetch.wait.max.ms, even when data arrives
//     meanwhile: fetch.wait.max.ms=10;
//   - it refuses offset commits while a rebalance is in progress.
class MockCluster {
 public:
  explicit MockCluster(int brokers = 3);
  ~MockCluster();
  MockCluster(const MockCluster&) = delete;
  MockCluster& operator=(const MockCluster&) = delete;

  // "127.0.0.1:port,127.0.0.1:port,..."
  std::string bootstrap() const;
  // A kafka:// URL for this cluster with the options listed above.
  std::string url() const;
  int brokers() const noexcept;
  // Disconnects broker `id` (1..brokers()) and refuses new connections, or lets it back.
  // Data is kept. Throws Error(invalid_argument) for an unknown id.
  void set_broker_down(int id);
  void set_broker_up(int id);
  // Creates a topic directly in the cluster (librdkafka's mock API).
  void create_topic(const std::string& topic, int partitions, int replication = 1);
  // The next requests with Kafka API key `api_key` (to any broker) are answered with these
  // Kafka error codes, one each, in order (e.g. 12 Heartbeat and 82 FENCED_INSTANCE_ID).
  void fail_requests(int api_key, const std::vector<int>& errors);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::kafka
