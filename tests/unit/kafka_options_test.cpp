// kafka:// URL options: what librdkafka would refuse, or ignore, is an error when the URL is
// read (Broker::open), not at the first publish or subscribe. No broker is needed: the
// checks make handles that connect to nothing.
#include "kafka_options.hpp"

#include <gtest/gtest.h>

#include "ferry/error.hpp"
#include "ferry/url.hpp"

namespace ferry::kafka::detail {
namespace {

// The message of the Error(invalid_argument) that reading `url` throws; "" if none.
std::string refusal(const std::string& url) {
  try {
    Options::from_url(Url::parse(url));
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), Errc::invalid_argument) << e.what();
    return e.what();
  }
  return "";
}

TEST(KafkaOptions, UnknownPropertiesAndBadValuesAreRefusedNamingThem) {
  EXPECT_NE(refusal("kafka://h:9092?linger.msec=5").find("unknown librdkafka property 'linger.msec'"),
            std::string::npos);
  EXPECT_NE(refusal("kafka://h:9092?linger.ms=soon").find("invalid value 'soon' for librdkafka property 'linger.ms'"),
            std::string::npos);
  EXPECT_NE(refusal("kafka://h:9092?producer.linger.msec=5").find("unknown librdkafka property 'producer.linger.msec'"),
            std::string::npos);
  EXPECT_NE(refusal("kafka://h:9092?acks=1").find("'acks' is set by ferry"), std::string::npos);
  EXPECT_NE(refusal("kafka://h:9092?consumer.group.id=x").find("'group.id' is set by ferry"), std::string::npos);
}

TEST(KafkaOptions, ConsumerPropertiesCheckedAgainstEachOtherAtOpen) {
  // librdkafka compares these only when it makes the consumer, at the first subscribe.
  const std::string why = refusal("kafka://h:9092?session.timeout.ms=400000");
  EXPECT_NE(why.find("cannot configure the Kafka consumer"), std::string::npos) << why;
  EXPECT_NE(why.find("max.poll.interval.ms"), std::string::npos) << why;
  EXPECT_EQ(refusal("kafka://h:9092?session.timeout.ms=400000&max.poll.interval.ms=500000"), "");
}

TEST(KafkaOptions, APropertyOfTheOtherClientUnderAClientPrefixIsRefused) {
  const std::string why = refusal("kafka://h:9092?consumer.linger.ms=20");
  EXPECT_NE(why.find("kafka option consumer.linger.ms"), std::string::npos) << why;
  EXPECT_NE(why.find("producer property"), std::string::npos) << why;
  // Unprefixed, a property goes to both clients, and the one it is not for ignores it.
  EXPECT_EQ(refusal("kafka://h:9092?linger.ms=20&session.timeout.ms=10000"), "");
  EXPECT_EQ(refusal("kafka://h:9092?consumer.session.timeout.ms=10000&producer.linger.ms=20"), "");

  const std::string other = refusal("kafka://h:9092?producer.session.timeout.ms=10000");
  EXPECT_NE(other.find("kafka option producer.session.timeout.ms is not a producer property"), std::string::npos)
      << other;
}

TEST(KafkaOptions, TimeoutsLibrdkafkaCannotTakeAreRefused) {
  EXPECT_NE(refusal("kafka://h:9092?admin_timeout=2h").find("admin_timeout must be positive and at most 1h"),
            std::string::npos);
  EXPECT_NE(refusal("kafka://h:9092?publish_timeout=600h").find("publish_timeout must be at most 24 days"),
            std::string::npos);
  EXPECT_EQ(refusal("kafka://h:9092?admin_timeout=1h&publish_timeout=500h"), "");
}

TEST(KafkaOptions, SaslAndSslPropertiesPassThrough) {
  const Options o = Options::from_url(
      Url::parse("kafka://bob:s3cret@h:9093?sasl.mechanisms=SCRAM-SHA-512&ssl.endpoint.identification.algorithm=none"));
  auto has = [&](const std::string& key, const std::string& value) {
    for (const auto& [k, v] : o.common)
      if (k == key && v == value) return true;
    return false;
  };
  EXPECT_TRUE(has("sasl.username", "bob"));
  EXPECT_TRUE(has("sasl.password", "s3cret"));
  EXPECT_TRUE(has("security.protocol", "SASL_SSL"));
  EXPECT_TRUE(has("sasl.mechanisms", "SCRAM-SHA-512"));
  EXPECT_EQ(o.masked_url.find("s3cret"), std::string::npos) << o.masked_url;
}

}  // namespace
}  // namespace ferry::kafka::detail
