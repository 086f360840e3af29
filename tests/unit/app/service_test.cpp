#include "service.hpp"

#include <gtest/gtest.h>

#include "ferry/error.hpp"

namespace ferry::app {
namespace {

TEST(ParseListen, AcceptsHostPortAndBarePort) {
  auto a = parse_listen("127.0.0.1:8080");
  EXPECT_EQ(a.host, "127.0.0.1");
  EXPECT_EQ(a.port, 8080);
  auto b = parse_listen(":0");
  EXPECT_EQ(b.host, "0.0.0.0");
  EXPECT_EQ(b.port, 0);
  auto c = parse_listen("[::1]:9000");
  EXPECT_EQ(c.host, "::1");
  EXPECT_EQ(c.port, 9000);
  EXPECT_EQ(parse_listen("localhost:1").host, "localhost");
}

TEST(ParseListen, RefusesWhatIsNotAnAddress) {
  for (const char* bad : {"", "8080", "host:", "host:http", "host:65536", "::1:80", "[::1:80"}) {
    try {
      parse_listen(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), Errc::invalid_argument) << bad;
    }
  }
}

TEST(ParseBrokerSpecs, NamesBrokersByNameOrScheme) {
  auto specs = parse_broker_specs({"sqlite://./a.db?sync=normal", "eu=kafka://h:9092", "memory://"});
  ASSERT_EQ(specs.size(), 3u);
  EXPECT_EQ(specs[0].name, "sqlite");
  EXPECT_EQ(specs[0].url, "sqlite://./a.db?sync=normal");
  EXPECT_EQ(specs[1].name, "eu");
  EXPECT_EQ(specs[1].url, "kafka://h:9092");
  EXPECT_EQ(specs[2].name, "memory");
}

TEST(ParseBrokerSpecs, RefusesRepeatedAndBadNames) {
  EXPECT_THROW(parse_broker_specs({}), Error);
  EXPECT_THROW(parse_broker_specs({"sqlite://a.db", "sqlite://b.db"}), Error);
  EXPECT_THROW(parse_broker_specs({"a b=sqlite://a.db"}), Error);
  EXPECT_THROW(parse_broker_specs({"not a url"}), Error);
}

}  // namespace
}  // namespace ferry::app
