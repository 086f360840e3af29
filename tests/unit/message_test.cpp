#include <gtest/gtest.h>

#include <regex>
#include <set>
#include <thread>

#include "ferry/error.hpp"
#include "ferry/message.hpp"

namespace ferry {
namespace {

TEST(MakeUuid, IsCanonicalVersion4) {
  const std::regex canonical("^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$");
  for (int i = 0; i < 1000; ++i) {
    const std::string id = make_uuid();
    ASSERT_EQ(id.size(), 36u);
    ASSERT_TRUE(std::regex_match(id, canonical)) << id;
  }
}

TEST(MakeUuid, IsUniqueAcrossThreads) {
  constexpr int threads = 4;
  constexpr int each = 5000;
  std::vector<std::vector<std::string>> made(threads);
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t)
    workers.emplace_back([&made, t] {
      for (int i = 0; i < each; ++i) made[t].push_back(make_uuid());
    });
  for (auto& w : workers) w.join();
  std::set<std::string> all;
  for (const auto& v : made) all.insert(v.begin(), v.end());
  EXPECT_EQ(all.size(), static_cast<std::size_t>(threads * each));
}

TEST(Stamp, FillsOnlyWhatIsMissing) {
  Message m;
  stamp(m);
  EXPECT_EQ(m.id.size(), 36u);
  EXPECT_NE(m.timestamp, Clock::time_point{});
  // Millisecond precision, so that every backend can store it exactly.
  EXPECT_EQ(from_unix_ms(to_unix_ms(m.timestamp)), m.timestamp);

  Message own;
  own.id = "mine";
  own.timestamp = from_unix_ms(42);
  stamp(own);
  EXPECT_EQ(own.id, "mine");
  EXPECT_EQ(to_unix_ms(own.timestamp), 42);
}

TEST(Message, WithPayloadIsStamped) {
  Message a = Message::with_payload(std::string("a\0b", 3));
  Message b = Message::with_payload("x");
  EXPECT_EQ(a.payload.size(), 3u);
  EXPECT_FALSE(a.id.empty());
  EXPECT_NE(a.id, b.id);
  EXPECT_FALSE(a.key.has_value());
}

TEST(UnixMs, RoundTrips) {
  for (std::int64_t ms : {std::int64_t{0}, std::int64_t{1}, std::int64_t{1'700'000'000'123}, std::int64_t{-5}})
    EXPECT_EQ(to_unix_ms(from_unix_ms(ms)), ms);
}

TEST(Headers, RoundTrip) {
  Headers headers{{"content-type", "application/json"},
                  {"empty", ""},
                  {"", "empty key"},
                  {"binary", std::string("\0\xff\x01", 3)},
                  {"long", std::string(100'000, 'x')},
                  {header::attempts, "3"}};
  EXPECT_EQ(decode_headers(encode_headers(headers)), headers);
}

TEST(Headers, EmptyEncodesToNothing) {
  EXPECT_TRUE(encode_headers({}).empty());
  EXPECT_TRUE(decode_headers("").empty());
}

TEST(Headers, TruncatedInputIsRejected) {
  const std::string bytes = encode_headers({{"key", "value"}, {"other", "more"}});
  for (std::size_t n = 1; n < bytes.size(); ++n) {
    try {
      decode_headers(std::string_view(bytes).substr(0, n));
      ADD_FAILURE() << "a prefix of " << n << " of " << bytes.size() << " bytes was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::not_ferry_data);
    }
  }
}

TEST(Headers, TrailingBytesAndHugeCountsAreRejected) {
  const std::string bytes = encode_headers({{"k", "v"}});
  EXPECT_THROW(decode_headers(bytes + "x"), Error);
  const std::string huge_count("\xff\xff\xff\xff", 4);
  EXPECT_THROW(decode_headers(huge_count), Error);
  const std::string huge_length = std::string("\x01\x00\x00\x00", 4) + std::string("\xff\xff\xff\x7f", 4) + "k";
  EXPECT_THROW(decode_headers(huge_length), Error);
}

}  // namespace
}  // namespace ferry
