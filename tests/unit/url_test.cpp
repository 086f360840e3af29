#include <gtest/gtest.h>

#include "ferry/error.hpp"
#include "ferry/url.hpp"

namespace ferry {
namespace {

// The Errc a call throws as ferry::Error, or Errc::ok if it does not throw.
template <typename F>
Errc error_of(F&& f, std::string* what = nullptr) {
  try {
    f();
  } catch (const Error& e) {
    if (what) *what = e.what();
    return e.code();
  }
  return Errc::ok;
}

TEST(Url, SqliteRelativePathKeepsTheLocation) {
  Url url = Url::parse("sqlite://./ferry-data/x.db");
  EXPECT_EQ(url.scheme(), "sqlite");
  EXPECT_EQ(url.location(), "./ferry-data/x.db");
  EXPECT_TRUE(url.query().empty());
  EXPECT_EQ(url.masked(), "sqlite://./ferry-data/x.db");
}

TEST(Url, SqliteAbsolutePathHasNoHost) {
  Url url = Url::parse("sqlite:///var/lib/ferry/ferry.db?sync=normal");
  EXPECT_EQ(url.location(), "/var/lib/ferry/ferry.db");
  EXPECT_EQ(url.path(), "/var/lib/ferry/ferry.db");
  EXPECT_TRUE(url.hosts().empty());
  EXPECT_EQ(url.param("sync"), "normal");
}

TEST(Url, SchemeIsCaseInsensitive) { EXPECT_EQ(Url::parse("SQLite://./x.db").scheme(), "sqlite"); }

TEST(Url, KafkaHostListAndQuery) {
  Url url = Url::parse("kafka://h1:9092,h2:9093?partitions=3&replication=1");
  ASSERT_EQ(url.hosts().size(), 2u);
  EXPECT_EQ(url.hosts()[0].host, "h1");
  EXPECT_EQ(url.hosts()[0].port, 9092);
  EXPECT_EQ(url.hosts()[1].host, "h2");
  EXPECT_EQ(url.hosts()[1].port, 9093);
  EXPECT_EQ(url.param("partitions"), "3");
  EXPECT_EQ(url.param("replication"), "1");
  EXPECT_FALSE(url.param("missing").has_value());
  EXPECT_TRUE(url.path().empty());
  EXPECT_TRUE(url.user().empty());
}

TEST(Url, HostWithoutPort) {
  Url url = Url::parse("nsq://localhost");
  ASSERT_EQ(url.hosts().size(), 1u);
  EXPECT_EQ(url.hosts()[0].host, "localhost");
  EXPECT_FALSE(url.hosts()[0].port.has_value());
}

TEST(Url, AmqpUserPasswordAreDecoded) {
  Url url = Url::parse("amqp://user:p%40ss@host:5672/vhost");
  EXPECT_EQ(url.scheme(), "amqp");
  EXPECT_EQ(url.user(), "user");
  EXPECT_EQ(url.password(), "p@ss");
  ASSERT_EQ(url.hosts().size(), 1u);
  EXPECT_EQ(url.hosts()[0].host, "host");
  EXPECT_EQ(url.hosts()[0].port, 5672);
  EXPECT_EQ(url.path(), "/vhost");
}

TEST(Url, BracketedIpv6Hosts) {
  Url url = Url::parse("nsq://[::1]:4150,[fe80::1%25eth0],10.0.0.1:4150");
  ASSERT_EQ(url.hosts().size(), 3u);
  EXPECT_EQ(url.hosts()[0].host, "::1");
  EXPECT_EQ(url.hosts()[0].port, 4150);
  EXPECT_EQ(url.hosts()[1].host, "fe80::1%25eth0");
  EXPECT_FALSE(url.hosts()[1].port.has_value());
  EXPECT_EQ(url.hosts()[2].host, "10.0.0.1");
  EXPECT_EQ(url.hosts()[2].port, 4150);
}

TEST(Url, BadPortsAreRejected) {
  for (const char* text : {"kafka://h:0", "kafka://h:65536", "kafka://h:abc", "kafka://h:", "kafka://h:80x",
                           "kafka://h:-1", "kafka://h:+80", "kafka://h1:9092,h2:99999", "nsq://[::1]:",
                           "nsq://[::1]x", "nsq://[::1", "nsq://[::1]:70000"}) {
    std::string what;
    EXPECT_EQ(error_of([&] { Url::parse(text); }, &what), Errc::bad_url) << text;
    EXPECT_NE(what.find("bad broker URL"), std::string::npos) << what;
  }
  EXPECT_EQ(Url::parse("kafka://h:65535").hosts()[0].port, 65535);
  EXPECT_EQ(Url::parse("kafka://h:1").hosts()[0].port, 1);
}

TEST(Url, EmptyHostInListIsRejected) {
  for (const char* text : {"kafka://h1,,h2", "kafka://,h1", "kafka://h1,", "kafka://h1,?partitions=3"})
    EXPECT_EQ(error_of([&] { Url::parse(text); }), Errc::bad_url) << text;
}

TEST(Url, DuplicateQueryKeysAreRejected) {
  std::string what;
  EXPECT_EQ(error_of([] { Url::parse("kafka://h:9092?partitions=3&partitions=4"); }, &what), Errc::bad_url);
  EXPECT_NE(what.find("partitions"), std::string::npos) << what;
  // Percent-encoding does not make a key different.
  EXPECT_EQ(error_of([] { Url::parse("kafka://h:9092?a=1&%61=2"); }), Errc::bad_url);
}

TEST(Url, OtherMalformedUrls) {
  for (const char* text : {"localhost:9092", "://host", "", "kafka://h:9092#frag", "kafka://h?=x", "kafka://h?a=%zz",
                           "amqp://u:%4@h/", "sql ite://x"})
    EXPECT_EQ(error_of([&] { Url::parse(text); }), Errc::bad_url) << text;
}

TEST(Url, EmptyQueryItemsAreSkippedAndValuesMayBeEmpty) {
  Url url = Url::parse("kafka://h?a=1&&b&c=");
  EXPECT_EQ(url.param("a"), "1");
  EXPECT_EQ(url.param("b"), "");
  EXPECT_EQ(url.param("c"), "");
}

TEST(Url, MaskedHidesPasswords) {
  Url url = Url::parse("amqp://user:p%40ss@host:5672/vhost");
  EXPECT_EQ(url.masked(), "amqp://user:***@host:5672/vhost");
  EXPECT_EQ(mask_url("amqps://guest:guest@rabbit/"), "amqps://guest:***@rabbit/");
  EXPECT_EQ(mask_url("amqp://user:pw@host?x=1"), "amqp://user:***@host?x=1");
  // A user without a password and hosts with ports are left alone.
  EXPECT_EQ(mask_url("amqp://user@host:5672/"), "amqp://user@host:5672/");
  EXPECT_EQ(mask_url("kafka://h1:9092,h2:9093"), "kafka://h1:9092,h2:9093");
}

TEST(Url, MaskedHidesSecretQueryValues) {
  Url url = Url::parse("kafka://h:9092?sasl.username=bob&sasl.password=s3cret&partitions=3&ssl.key.password=k3y"
                       "&api_token=t0k&client_secret=c5");
  const std::string masked = url.masked();
  for (const char* secret : {"s3cret", "k3y", "t0k", "c5"}) EXPECT_EQ(masked.find(secret), std::string::npos) << masked;
  EXPECT_NE(masked.find("sasl.password=***"), std::string::npos) << masked;
  EXPECT_NE(masked.find("sasl.username=bob"), std::string::npos) << masked;
  EXPECT_NE(masked.find("partitions=3"), std::string::npos) << masked;
  EXPECT_TRUE(is_secret_key("sasl.password"));
  EXPECT_TRUE(is_secret_key("SASL.PASSWORD"));
  EXPECT_FALSE(is_secret_key("partitions"));
}

TEST(Url, MaskedHidesRawSlashOrQuestionMarkInPassword) {
  // Not valid URLs (those characters should be percent-encoded), but typed by people:
  // the password must not reach a log line or an error message.
  for (const char* text : {"amqp://u:Xy/Zw@host/", "amqp://u:Xy?Zw@host/", "amqp://u:Xy@Zw/Qv?Rt@host:5672/vhost",
                           "amqp://u:Xy=Zw@host/?heartbeat=5"}) {
    const std::string masked = mask_url(text);
    std::string what;
    try {
      Url::parse(text);
    } catch (const Error& e) {
      what = e.what();
    }
    for (const char* piece : {"Xy", "Zw", "Qv", "Rt"}) {
      EXPECT_EQ(masked.find(piece), std::string::npos) << masked;
      EXPECT_EQ(what.find(piece), std::string::npos) << what;
    }
  }
  EXPECT_EQ(mask_url("amqp://u:Xy/Zw@host/"), "amqp://u:***@host/");
  // An '@' in a query value or a file path is not the end of a password.
  EXPECT_EQ(mask_url("nsq://host:4150?lookupd=user@h:4161"), "nsq://host:4150?lookupd=user@h:4161");
  EXPECT_EQ(mask_url("sqlite://./data@2/ferry.db"), "sqlite://./data@2/ferry.db");
}

TEST(Url, ErrorsShowTheMaskedUrl) {
  std::string what;
  EXPECT_EQ(error_of([] { Url::parse("amqp://u:topsecret@host:99999/"); }, &what), Errc::bad_url);
  EXPECT_EQ(what.find("topsecret"), std::string::npos) << what;
  EXPECT_NE(what.find("amqp://u:***@host:99999/"), std::string::npos) << what;
}

TEST(ParseDuration, UnitsAndBareMilliseconds) {
  using std::chrono::milliseconds;
  EXPECT_EQ(parse_duration("250ms", "t"), milliseconds{250});
  EXPECT_EQ(parse_duration("250", "t"), milliseconds{250});
  EXPECT_EQ(parse_duration("5s", "t"), milliseconds{5'000});
  EXPECT_EQ(parse_duration("1.5s", "t"), milliseconds{1'500});
  EXPECT_EQ(parse_duration("2m", "t"), milliseconds{120'000});
  EXPECT_EQ(parse_duration("1h", "t"), milliseconds{3'600'000});
  EXPECT_EQ(parse_duration("0", "t"), milliseconds{0});
}

TEST(ParseDuration, RejectsGarbageNamingTheOption) {
  for (const char* text : {"", "s", "5 s", "5sec", "-1s", "abc", "inf", "nan", "infs", "1e300h", "1e30"}) {
    std::string what;
    EXPECT_EQ(error_of([&] { parse_duration(text, "--ack-timeout"); }, &what), Errc::invalid_argument) << text;
    EXPECT_NE(what.find("--ack-timeout"), std::string::npos) << what;
  }
}

TEST(ParseCount, AcceptsWholeNonNegativeNumbers) {
  EXPECT_EQ(parse_count("0", "n"), 0);
  EXPECT_EQ(parse_count("100000", "n"), 100000);
  for (const char* text : {"", "-1", "1.5", "12x", " 1", "99999999999999999999"})
    EXPECT_EQ(error_of([&] { parse_count(text, "n"); }), Errc::invalid_argument) << text;
}

TEST(ParseBool, AcceptsTheUsualSpellings) {
  for (const char* t : {"1", "true", "TRUE", "yes", "on"}) EXPECT_TRUE(parse_bool(t, "b")) << t;
  for (const char* f : {"0", "false", "No", "off"}) EXPECT_FALSE(parse_bool(f, "b")) << f;
  EXPECT_EQ(error_of([] { parse_bool("maybe", "b"); }), Errc::invalid_argument);
}

}  // namespace
}  // namespace ferry
