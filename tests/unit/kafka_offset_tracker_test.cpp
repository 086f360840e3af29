// The kafka:// offset bookkeeping: what may be committed when acks arrive out of order,
// and what a commit's metadata carries to the partition's next owner.
#include <gtest/gtest.h>

#include "offset_tracker.hpp"

namespace ferry::kafka::detail {
namespace {

TEST(KafkaOffsetTracker, NothingKnownNothingToCommit) {
  OffsetTracker t;
  EXPECT_FALSE(t.committable());
  EXPECT_EQ(t.next(), -1);
}

TEST(KafkaOffsetTracker, CommittedOffsetIsCommittableUntilSomethingIsFetched) {
  OffsetTracker t(42);
  EXPECT_EQ(t.committable(), 42);
  EXPECT_FALSE(t.track(41)) << "an offset below the committed one was taken";
  EXPECT_TRUE(t.track(42));
  EXPECT_EQ(t.committable(), 42);
  EXPECT_TRUE(t.done(42));
  EXPECT_EQ(t.committable(), 43);
}

TEST(KafkaOffsetTracker, OutOfOrderAcksCommitOnlyBelowTheFirstUnsettled) {
  OffsetTracker t;
  for (std::int64_t o = 10; o < 15; ++o) ASSERT_TRUE(t.track(o));
  EXPECT_EQ(t.committable(), 10);
  t.done(12);
  t.done(14);
  EXPECT_EQ(t.committable(), 10) << "10 is still unsettled";
  t.done(10);
  EXPECT_EQ(t.committable(), 11);
  t.done(11);
  EXPECT_EQ(t.committable(), 13) << "12 was acked earlier, 13 is not";
  t.done(13);
  EXPECT_EQ(t.committable(), 15);
  EXPECT_EQ(t.pending_count(), 0u);
}

TEST(KafkaOffsetTracker, GapsCountAsSettled) {
  OffsetTracker t(0);
  t.track(0);
  t.track(5);  // 1..4 compacted away or transaction markers
  t.done(0);
  EXPECT_EQ(t.committable(), 5);
  t.done(5);
  EXPECT_EQ(t.committable(), 6);
}

TEST(KafkaOffsetTracker, RefetchedAndUnknownOffsetsAreIgnored) {
  OffsetTracker t;
  EXPECT_TRUE(t.track(3));
  EXPECT_FALSE(t.track(3));
  EXPECT_FALSE(t.track(2));
  EXPECT_FALSE(t.done(7));
  EXPECT_TRUE(t.done(3));
  EXPECT_FALSE(t.done(3)) << "settled twice";
}

TEST(KafkaCarried, LookupAndMergingRuns) {
  Carried c;
  c.add(10, 3, kDone);
  c.add(13, 2, kDone);  // adjacent, same value: merges
  c.add(20, 1, 2);
  EXPECT_EQ(c.runs().size(), 2u);
  EXPECT_EQ(c.lookup(9), 0);
  EXPECT_EQ(c.lookup(10), kDone);
  EXPECT_EQ(c.lookup(14), kDone);
  EXPECT_EQ(c.lookup(15), 0);
  EXPECT_EQ(c.lookup(20), 2);
}

TEST(KafkaCarried, StateOfATrackerRoundTripsThroughMetadata) {
  OffsetTracker t(100);
  for (std::int64_t o = 100; o < 110; ++o) t.track(o);
  for (std::int64_t o : {102, 103, 104, 107, 109}) t.done(o);
  // 100 and 101 are out (delivered once and three times), 105 and 106 buffered, 108 nacked twice.
  std::map<std::int64_t, int> deliveries{{100, 1}, {101, 3}, {108, 2}};
  Carried state = carried_state(t, deliveries);
  const std::int64_t committed = *t.committable();
  ASSERT_EQ(committed, 100);
  const std::string metadata = encode_carried(committed, state);
  EXPECT_EQ(metadata, "ferry:1|0:1,1:3,2~3:d,7:d,8:2,9:d");

  Carried back = decode_carried(metadata, committed);
  EXPECT_EQ(back.lookup(100), 1);
  EXPECT_EQ(back.lookup(101), 3);
  for (std::int64_t o : {102, 103, 104, 107, 109}) EXPECT_EQ(back.lookup(o), kDone) << o;
  EXPECT_EQ(back.lookup(105), 0);
  EXPECT_EQ(back.lookup(106), 0);
  EXPECT_EQ(back.lookup(108), 2);
  EXPECT_EQ(back.lookup(110), 0);
}

TEST(KafkaCarried, ForeignOrBrokenMetadataCarriesNothing) {
  EXPECT_TRUE(decode_carried("", 5).empty());
  EXPECT_TRUE(decode_carried("some java app's note", 5).empty());
  EXPECT_TRUE(decode_carried("ferry:1|x:1", 5).empty());
  EXPECT_TRUE(decode_carried("ferry:1|0:0", 5).empty());
  EXPECT_TRUE(decode_carried("ferry:1|3:d,1:d", 5).empty()) << "runs out of order";
  EXPECT_TRUE(decode_carried("ferry:1|0:1", -1).empty()) << "no committed offset to be relative to";
}

TEST(KafkaCarried, MetadataStaysWithinItsLimitDroppingTheHighestOffsets) {
  Carried c;
  for (std::int64_t o = 0; o < 2000; o += 2) c.add(o, 1, 1 + static_cast<int>(o % 7));
  const std::string metadata = encode_carried(0, c, 200);
  EXPECT_LE(metadata.size(), 200u);
  Carried back = decode_carried(metadata, 0);
  EXPECT_EQ(back.lookup(0), 1);
  EXPECT_EQ(back.lookup(1998), 0) << "the highest offsets are the ones left out";
}

TEST(KafkaCarried, OwnMemoryCoversEverythingSettledSinceTheStart) {
  // A member remembers what it settled since its assignment began, in case the commit it
  // made when the partition was revoked failed and the partition comes back to it at the
  // older committed offset.
  OffsetTracker t(50);
  for (std::int64_t o = 50; o < 60; ++o) t.track(o);
  for (std::int64_t o = 50; o < 55; ++o) t.done(o);
  t.done(57);
  Carried own = carried_state(t, {{55, 1}}, true);
  EXPECT_EQ(t.start(), 50);
  for (std::int64_t o = 50; o < 55; ++o) EXPECT_EQ(own.lookup(o), kDone) << o;
  EXPECT_EQ(own.lookup(55), 1);
  EXPECT_EQ(own.lookup(56), 0);
  EXPECT_EQ(own.lookup(57), kDone);
  EXPECT_EQ(carried_state(t, {{55, 1}}).lookup(50), 0) << "a commit carries nothing below itself";
}

TEST(KafkaCarried, RunsBelowTheCommittedOffsetAreLeftOut) {
  Carried c;
  c.add(5, 10, kDone);
  EXPECT_EQ(encode_carried(10, c), "ferry:1|0~5:d");
}

TEST(KafkaCarried, WhatWasHandedOnBeyondTheFetchedOffsetsIsHandedOnAgain) {
  // Handed offset 10 with 11..19 settled and 10 delivered twice by the previous owner; this
  // member has fetched 10 and 11 only. What it commits must still say 12..19 are settled.
  Carried handed;
  handed.add(10, 1, 2);
  handed.add(11, 9, kDone);
  Carried own;  // from an earlier ownership: 20 delivered once, 21 settled
  own.add(20, 1, 1);
  own.add(21, 1, kDone);
  own.add(12, 2, 3);  // settled in `handed`: settled wins
  OffsetTracker t(10);
  t.track(10);
  t.track(11);
  t.done(11);
  Carried state = carried_state(t, {{10, 3}});
  carry_unfetched(state, t.next(), handed, own);
  EXPECT_EQ(state.lookup(10), 3) << "this member's own count for what it fetched";
  for (std::int64_t o = 11; o < 20; ++o) EXPECT_EQ(state.lookup(o), kDone) << o;
  EXPECT_EQ(state.lookup(20), 1);
  EXPECT_EQ(state.lookup(21), kDone);
  EXPECT_EQ(state.lookup(22), 0);
  EXPECT_EQ(encode_carried(10, state), "ferry:1|0:3,1~9:d,10:1,11:d");
  EXPECT_EQ(combine_carried(2, 5), 5);
  EXPECT_EQ(combine_carried(kDone, 5), kDone);
  EXPECT_EQ(combine_carried(0, 0), 0);
}

}  // namespace
}  // namespace ferry::kafka::detail
