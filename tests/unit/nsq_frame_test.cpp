// The NSQ wire codec (src/backends/nsq/frame.hpp) on well-formed and hostile input:
// frames split at every byte, sizes over the bound, unknown frame types, garbage after
// the magic, truncated and lying MPUB bodies, and ferry's envelope.

#include <gtest/gtest.h>

#include <random>

#include "frame.hpp"

namespace ferry::nsq {
namespace {

std::string be32(std::uint32_t v) {
  std::string out;
  append_u32(out, v);
  return out;
}

MessageId make_id(const std::string& text) {
  MessageId id{};
  std::copy_n(text.begin(), kMessageIdSize, id.begin());
  return id;
}

TEST(NsqFrameReader, ReadsFramesFedOneByteAtATime) {
  std::string stream =
      encode_frame(FrameType::response, "OK") + encode_frame(FrameType::error, "E_INVALID bad") +
      encode_frame(FrameType::message,
                   encode_message({1234567890123, 3, make_id("0123456789abcdef"), std::string("body\0x", 6)}));
  FrameReader reader(1024);
  std::vector<Frame> frames;
  for (char c : stream) {
    reader.feed(std::string_view(&c, 1));
    while (auto f = reader.next()) frames.push_back(std::move(*f));
  }
  ASSERT_FALSE(reader.failed()) << reader.error();
  ASSERT_EQ(frames.size(), 3u);
  EXPECT_EQ(frames[0].type, FrameType::response);
  EXPECT_EQ(frames[0].data, "OK");
  EXPECT_EQ(frames[1].type, FrameType::error);
  EXPECT_EQ(frames[1].data, "E_INVALID bad");
  ASSERT_EQ(frames[2].type, FrameType::message);
  auto m = parse_message(frames[2].data);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->timestamp_ns, 1234567890123);
  EXPECT_EQ(m->attempts, 3);
  EXPECT_EQ(id_view(m->id), "0123456789abcdef");
  EXPECT_EQ(m->body, std::string("body\0x", 6));
  EXPECT_EQ(reader.buffered(), 0u);
}

TEST(NsqFrameReader, ReadsManyFramesFromOneChunkAndKeepsAPartialOne) {
  std::string stream;
  for (int i = 0; i < 1000; ++i) stream += encode_frame(FrameType::response, "r" + std::to_string(i));
  std::string partial = encode_frame(FrameType::response, "last");
  stream += partial.substr(0, 5);
  FrameReader reader(64);
  reader.feed(stream);
  int n = 0;
  while (auto f = reader.next()) EXPECT_EQ(f->data, "r" + std::to_string(n++));
  EXPECT_EQ(n, 1000);
  EXPECT_FALSE(reader.failed());
  EXPECT_EQ(reader.buffered(), 5u);
  reader.feed(partial.substr(5));
  auto last = reader.next();
  ASSERT_TRUE(last);
  EXPECT_EQ(last->data, "last");
}

TEST(NsqFrameReader, TruncatedFrameWaitsWithoutFailing) {
  std::string frame = encode_frame(FrameType::response, "incomplete body");
  for (std::size_t cut = 0; cut < frame.size(); ++cut) {
    FrameReader reader(1024);
    reader.feed(frame.substr(0, cut));
    EXPECT_FALSE(reader.next()) << "cut at " << cut;
    EXPECT_FALSE(reader.failed()) << "cut at " << cut;
  }
}

TEST(NsqFrameReader, RefusesASizeOverTheBoundBeforeReadingTheBody) {
  FrameReader reader(1000);
  reader.feed(be32(1001));  // only the size: the bound is checked before the body arrives
  EXPECT_FALSE(reader.next());
  ASSERT_TRUE(reader.failed());
  EXPECT_NE(reader.error().find("exceeds the bound"), std::string::npos) << reader.error();
  reader.feed(encode_frame(FrameType::response, "OK"));  // a failed reader stays failed
  EXPECT_FALSE(reader.next());

  FrameReader huge(1 << 20);
  huge.feed(be32(0xffffffffu) + be32(0));
  EXPECT_FALSE(huge.next());
  EXPECT_TRUE(huge.failed());

  FrameReader exact(8);  // size counts the 4-byte type: 4 + 4 data bytes fit a bound of 8
  exact.feed(encode_frame(FrameType::response, "1234"));
  EXPECT_TRUE(exact.next());
  EXPECT_FALSE(exact.failed());
}

TEST(NsqFrameReader, RefusesSizesTooSmallForTheFrameType) {
  for (std::uint32_t size : {0u, 1u, 3u}) {
    FrameReader reader(1024);
    reader.feed(be32(size) + std::string(8, '\0'));
    EXPECT_FALSE(reader.next());
    EXPECT_TRUE(reader.failed()) << "size " << size;
  }
  FrameReader empty_ok(1024);  // size 4: a frame with a type and no data is well formed
  empty_ok.feed(be32(4) + be32(0));
  auto f = empty_ok.next();
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->data.empty());
}

TEST(NsqFrameReader, RefusesUnknownFrameTypes) {
  for (std::uint32_t type : {3u, 7u, 0x80000000u, 0xffffffffu}) {
    FrameReader reader(1024);
    reader.feed(be32(6) + be32(type) + "OK");
    EXPECT_FALSE(reader.next());
    ASSERT_TRUE(reader.failed()) << "type " << type;
    EXPECT_NE(reader.error().find("unknown frame type"), std::string::npos);
  }
}

TEST(NsqFrameReader, RefusesMessageFramesShorterThanTheMessageHeader) {
  FrameReader reader(1024);
  reader.feed(encode_frame(FrameType::message, std::string(kMessageHeaderSize - 1, 'x')));
  EXPECT_FALSE(reader.next());
  EXPECT_TRUE(reader.failed());
  FrameReader ok(1024);
  ok.feed(encode_frame(FrameType::message, std::string(kMessageHeaderSize, 'x')));  // empty body
  auto f = ok.next();
  ASSERT_TRUE(f);
  EXPECT_TRUE(parse_message(f->data)->body.empty());
}

TEST(NsqFrameReader, RandomGarbageNeverCrashesAndEndsFailedOrWaiting) {
  std::mt19937 random(7);
  for (int round = 0; round < 2000; ++round) {
    FrameReader reader(4096);
    std::string junk(random() % 64, '\0');
    for (auto& c : junk) c = static_cast<char>(random());
    reader.feed(junk);
    int frames = 0;
    while (reader.next()) ++frames;
    EXPECT_TRUE(reader.failed() || reader.buffered() <= junk.size());
  }
}

TEST(NsqCommandReader, ReadsTheMagicThenCommandsWithAndWithoutBodies) {
  std::string stream(kMagicV2);
  stream += encode_command("IDENTIFY", R"({"client_id":"x"})");
  stream += encode_command("SUB orders billing");
  stream += encode_command("RDY 10");
  stream += encode_command("PUB orders", std::string("\0\n\r binary", 10));
  stream += "NOP\r\n";
  CommandReader reader(1024, 1 << 20);
  std::vector<Command> commands;
  for (char c : stream) {
    reader.feed(std::string_view(&c, 1));
    while (auto command = reader.next()) commands.push_back(std::move(*command));
  }
  ASSERT_FALSE(reader.failed()) << reader.error();
  ASSERT_EQ(commands.size(), 5u);
  EXPECT_EQ(commands[0].words, std::vector<std::string>{"IDENTIFY"});
  EXPECT_EQ(commands[0].body, R"({"client_id":"x"})");
  EXPECT_EQ(commands[1].words, (std::vector<std::string>{"SUB", "orders", "billing"}));
  EXPECT_FALSE(commands[1].has_body);
  EXPECT_EQ(commands[2].words, (std::vector<std::string>{"RDY", "10"}));
  EXPECT_EQ(commands[3].body, std::string("\0\n\r binary", 10));
  EXPECT_EQ(commands[4].words, std::vector<std::string>{"NOP"});
}

TEST(NsqCommandReader, RefusesAWrongMagic) {
  for (const std::string& magic : std::vector<std::string>{"  V1", "V2  ", "GET ", std::string("\0\0\0\0", 4)}) {
    CommandReader reader(1024, 1024);
    reader.feed(magic + "NOP\n");
    EXPECT_FALSE(reader.next());
    ASSERT_TRUE(reader.failed()) << magic;
    EXPECT_EQ(reader.error().rfind("E_BAD_PROTOCOL", 0), 0u);
  }
}

TEST(NsqCommandReader, RefusesGarbageAfterTheMagic) {
  {  // binary bytes in a command line
    CommandReader reader(1024, 1024);
    reader.feed(std::string(kMagicV2) + std::string("\x01\x02\xff\n", 4));
    EXPECT_FALSE(reader.next());
    ASSERT_TRUE(reader.failed());
    EXPECT_EQ(reader.error().rfind("E_INVALID", 0), 0u);
  }
  {  // a line that never ends
    CommandReader reader(64, 1024);
    reader.feed(std::string(kMagicV2) + std::string(65, 'A'));
    EXPECT_FALSE(reader.next());
    EXPECT_TRUE(reader.failed());
  }
  {  // a body size over the bound, refused before the body arrives
    CommandReader reader(64, 1000);
    reader.feed(std::string(kMagicV2) + "PUB t\n" + be32(1001));
    EXPECT_FALSE(reader.next());
    ASSERT_TRUE(reader.failed());
    EXPECT_EQ(reader.error().rfind("E_BAD_BODY", 0), 0u);
  }
  {  // a truncated body waits
    CommandReader reader(64, 1000);
    reader.feed(std::string(kMagicV2) + "PUB t\n" + be32(10) + "abc");
    EXPECT_FALSE(reader.next());
    EXPECT_FALSE(reader.failed());
    reader.feed("defghij");
    auto c = reader.next();
    ASSERT_TRUE(c);
    EXPECT_EQ(c->body, "abcdefghij");
  }
}

TEST(NsqMpub, EncodesAndParsesBatches) {
  std::vector<std::string> bodies{"a", std::string("b\0c", 3), std::string(300, 'x')};
  std::string command = encode_mpub("orders", bodies, 0, bodies.size());
  CommandReader reader(64, 1 << 20);
  reader.feed(std::string(kMagicV2) + command);
  auto c = reader.next();
  ASSERT_TRUE(c);
  EXPECT_EQ(c->words, (std::vector<std::string>{"MPUB", "orders"}));
  EXPECT_EQ(parse_mpub_body(c->body, 1024), bodies);
  EXPECT_EQ(parse_mpub_body(encode_mpub("t", bodies, 1, 2).substr(11), 1024), std::vector<std::string>{bodies[1]});
}

TEST(NsqMpub, RefusesHostileBodies) {
  auto expect_refused = [](const std::string& body, const char* code) {
    try {
      parse_mpub_body(body, 100);
      ADD_FAILURE() << "accepted a hostile MPUB body of " << body.size() << " bytes";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()).rfind(code, 0), 0u) << e.what();
    }
  };
  expect_refused("", "E_BAD_BODY");
  expect_refused(be32(0), "E_BAD_BODY");                                         // no messages
  expect_refused(be32(1'000'000) + be32(1) + "x", "E_BAD_BODY");                 // count beyond the body
  expect_refused(be32(2) + be32(1) + "x", "E_BAD_BODY");                         // second message missing
  expect_refused(be32(1) + be32(5) + "abc", "E_BAD_BODY");                       // truncated message
  expect_refused(be32(1) + be32(0), "E_BAD_MESSAGE");                            // empty message
  expect_refused(be32(1) + be32(101) + std::string(101, 'x'), "E_BAD_MESSAGE");  // over the bound
  expect_refused(be32(1) + be32(1) + "x" + "trailing", "E_BAD_BODY");
}

TEST(NsqNames, FollowTheSpec) {
  EXPECT_TRUE(valid_nsq_name("orders"));
  EXPECT_TRUE(valid_nsq_name("a.b_c-D9"));
  EXPECT_TRUE(valid_nsq_name("tail-1#ephemeral"));
  EXPECT_TRUE(valid_nsq_name(std::string(64, 'a')));
  EXPECT_FALSE(valid_nsq_name(std::string(65, 'a')));
  EXPECT_FALSE(valid_nsq_name(std::string(55, 'a') + "#ephemeral"));  // the suffix counts
  EXPECT_FALSE(valid_nsq_name(""));
  EXPECT_FALSE(valid_nsq_name("#ephemeral"));
  EXPECT_FALSE(valid_nsq_name("has space"));
  EXPECT_FALSE(valid_nsq_name("a#b"));
  EXPECT_FALSE(valid_nsq_name("a/b"));
}

TEST(NsqEnvelope, CarriesEveryFieldOfAMessage) {
  Message m;
  m.id = make_uuid();
  m.key = std::string("k\0y", 3);
  m.headers = {{"a", "1"}, {"empty", ""}, {"bin", std::string("\0\xff", 2)}};
  m.payload = std::string(
      "\xFE"
      "FRY payload that looks like an envelope\0",
      41);
  m.timestamp = from_unix_ms(1'700'000'000'123);
  auto back = decode_envelope(encode_envelope(m));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->id, m.id);
  EXPECT_EQ(back->key, m.key);
  EXPECT_EQ(back->headers, m.headers);
  EXPECT_EQ(back->payload, m.payload);
  EXPECT_EQ(to_unix_ms(back->timestamp), 1'700'000'000'123);

  Message bare;
  bare.id = "x";
  auto bare_back = decode_envelope(encode_envelope(bare));
  ASSERT_TRUE(bare_back);
  EXPECT_FALSE(bare_back->key);
  EXPECT_TRUE(bare_back->headers.empty());
  EXPECT_TRUE(bare_back->payload.empty());
}

TEST(NsqEnvelope, PlainAndDamagedBodiesAreNotEnvelopes) {
  EXPECT_FALSE(decode_envelope("hello from another client"));
  EXPECT_FALSE(decode_envelope(""));
  Message m;
  m.id = "id";
  m.key = "key";
  m.headers = {{"h", "v"}};
  m.payload = "p";
  std::string good = encode_envelope(m);
  for (std::size_t cut = 0; cut < good.size() - 1; ++cut) {
    auto decoded = decode_envelope(good.substr(0, cut));
    // A cut inside the payload still decodes (the payload is "the rest"); earlier cuts fail.
    if (decoded) {
      EXPECT_LT(decoded->payload.size(), m.payload.size() + 1);
    }
  }
  std::string wrong_version = good;
  wrong_version[4] = 2;
  EXPECT_FALSE(decode_envelope(wrong_version));
  std::string bad_flags = good;
  bad_flags[5] = 4;
  EXPECT_FALSE(decode_envelope(bad_flags));
  std::string bad_headers = good;
  bad_headers[good.size() - 2 - 4] = 'Z';  // inside the headers' bytes
  (void)decode_envelope(bad_headers);      // must not crash; may or may not decode
}

TEST(NsqErrors, MapToFerryCodesAndFatality) {
  EXPECT_EQ(errc_for("E_BAD_TOPIC PUB topic name \"x y\" is not valid"), Errc::invalid_argument);
  EXPECT_EQ(errc_for("E_INVALID cannot SUB in current state"), Errc::invalid_argument);
  EXPECT_EQ(errc_for("E_PUB_FAILED PUB failed exiting"), Errc::unavailable);
  EXPECT_EQ(errc_for("E_UNAUTHORIZED AUTH no authorizations found"), Errc::unavailable);
  EXPECT_FALSE(error_is_fatal("E_FIN_FAILED FIN 0123456789abcdef failed ID not in flight"));
  EXPECT_FALSE(error_is_fatal("E_REQ_FAILED x"));
  EXPECT_FALSE(error_is_fatal("E_TOUCH_FAILED x"));
  EXPECT_TRUE(error_is_fatal("E_INVALID x"));
  EXPECT_EQ(hex_id(0x1234), "0000000000001234");
}

}  // namespace
}  // namespace ferry::nsq
