#pragma once
// Offset bookkeeping for one partition of a consumer-group member, and the codec for what
// a commit's metadata carries to the partition's next owner. Not thread-safe: the member
// guards it with its mutex. Private to ferry_kafka (its unit test includes it directly).

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::kafka::detail {

// Which fetched offsets of a partition are settled, when settlements arrive in any order.
// committable() is the offset to commit: every fetched offset below it is done (Kafka's
// committed offset is the next one to read). Offsets need not be contiguous (compaction
// and transaction markers leave gaps); a gap counts as settled.
class OffsetTracker {
 public:
  // `committed`: the group's committed offset, or a negative value if there is none (the
  // first tracked offset then starts the range).
  explicit OffsetTracker(std::int64_t committed = -1);

  // A fetched offset enters. False (and no change) if it is below next(): already seen.
  bool track(std::int64_t offset);
  // A tracked offset is settled. False if it was not pending.
  bool done(std::int64_t offset);
  bool pending(std::int64_t offset) const { return pending_.count(offset) > 0; }

  // The offset to commit, or nothing while neither a committed offset nor any fetched
  // offset is known.
  std::optional<std::int64_t> committable() const;
  // One past the highest offset tracked (or the committed offset); negative if unknown.
  std::int64_t next() const noexcept { return next_; }
  // The committed offset it started from, or the first offset tracked; negative if unknown.
  std::int64_t start() const noexcept { return start_; }
  std::size_t pending_count() const noexcept { return pending_.size(); }
  const std::set<std::int64_t>& pending_offsets() const noexcept { return pending_; }

 private:
  std::set<std::int64_t> pending_;
  std::int64_t next_ = -1;
  std::int64_t start_ = -1;
};

// What a commit carries about offsets at or after the committed one: kDone for a settled
// offset, or how often an unsettled one was delivered (> 0).
inline constexpr int kDone = -1;

// Runs of consecutive offsets with one carried value.
class Carried {
 public:
  struct Run {
    std::int64_t start = 0;
    std::int64_t length = 1;
    int value = 0;
  };
  // Adds a run; runs must not overlap. Adjacent runs with the same value merge.
  void add(std::int64_t start, std::int64_t length, int value);
  // The value carried for `offset`: kDone, a delivery count, or 0 if nothing is known.
  int lookup(std::int64_t offset) const;
  std::vector<Run> runs() const;
  bool empty() const noexcept { return runs_.empty(); }

 private:
  std::map<std::int64_t, Run> runs_;  // by start
};

// The carried value for an offset known from two sources (the commit metadata, a member's
// own memory): settled wins, otherwise the higher delivery count.
int combine_carried(int a, int b);

// Adds to `out` what `a` and `b` carry, combined, for offsets at or after `from`: what a
// partition's next owner must still be told about offsets not fetched yet. `out` must have
// no runs there.
void carry_unfetched(Carried& out, std::int64_t from, const Carried& a, const Carried& b);

// The state a tracked partition hands on: settled offsets from committable() (or, with
// `from_start`, from start(): for a member's own memory, in case the commit of
// committable() failed) up to next(), and the delivery counts (offset -> count) of pending
// offsets in `deliveries`.
Carried carried_state(const OffsetTracker& tracker, const std::map<std::int64_t, int>& deliveries,
                      bool from_start = false);

// Commit metadata for `carried` relative to `committed`, e.g. "ferry:1|0~3:2,5:d": runs as
// distance from `committed`, length and value. Runs that would take it past `max_bytes`
// are left out, the highest offsets first (their messages are then redelivered, or their
// attempt count restarts: never lost).
std::string encode_carried(std::int64_t committed, const Carried& carried, std::size_t max_bytes = 2048);
// Decodes what encode_carried wrote for the same committed offset. Anything else (another
// client's metadata, garbage) decodes to nothing.
Carried decode_carried(std::string_view metadata, std::int64_t committed);

}  // namespace ferry::kafka::detail
