#pragma once
// ferry's throughput and latency benchmark, shared by `ferry bench` and bench/.
//
// Publishes `messages` messages of `size` bytes from `producers` threads (each keeping
// up to `window` publishes in flight, or sending batches of `batch`), while `consumers`
// threads of one group receive and ack them. Reports confirmed-publish throughput,
// consume throughput and end-to-end latency percentiles (publish call to receive), of the
// messages sent after `warmup_s` (a Kafka consumer group may still be starting to fetch
// when the first messages go out; the p99 with those is reported too).

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

namespace ferry::bench {

struct Config {
  std::string broker = "sqlite://./ferry-data/bench.db";
  std::uint64_t messages = 100'000;
  std::size_t size = 100;
  int producers = 8;
  int consumers = 1;
  int window = 1000;         // publishes in flight per producer
  int batch = 1;             // messages per publish call
  bool fresh_messages = false;  // batch 1: build a new Message for each publish, not publish copies of one kept
  double rate = 0;           // total messages/s to offer; 0 = as fast as possible
  std::string topic;         // empty: a fresh topic per run
  double timeout_s = 300;    // give up waiting for consumers after this long
  double warmup_s = 0;       // latencies of messages sent this long after the start are not counted
  void validate() const;     // throws ferry::Error(invalid_argument)
};

struct Result {
  std::uint64_t published = 0;
  std::uint64_t publish_errors = 0;
  std::uint64_t consumed = 0;
  double publish_seconds = 0;
  double consume_seconds = 0;
  double publish_msgs_per_s = 0;
  double publish_mb_per_s = 0;
  double consume_msgs_per_s = 0;
  double p50_ms = 0, p99_ms = 0, p999_ms = 0, max_ms = 0;  // after the warm-up
  std::uint64_t latency_samples = 0;                          // messages those are of
  std::uint64_t warmup_samples = 0;                           // messages of the warm-up
  double p99_with_warmup_ms = 0;
  std::string first_error;
};

// The p-quantile (0..1) of ascending values, nearest rank; 0 when empty.
double percentile(const std::vector<double>& sorted, double p);

Result run(const Config& config);
void print_text(std::ostream& out, const Config& config, const Result& result);
void print_json(std::ostream& out, const Config& config, const Result& result);

}  // namespace ferry::bench
