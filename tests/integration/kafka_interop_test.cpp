// ferry and a Kafka client that is not librdkafka (Debian's python3-kafka) read each
// other's records: key, headers and binary payload; and both place a key on the same
// partition (murmur2, as Java clients do).
#include <gtest/gtest.h>

#include <boost/json.hpp>
#include <map>
#include <set>
#include <sstream>

#include "ferry/broker.hpp"
#include "kafka_support.hpp"

namespace ferry::kafka::testing {
namespace {

using namespace std::chrono_literals;

std::string script(const std::string& name) {
  return std::string(FERRY_KAFKA_PY_DIR) + "/" + name;
}

std::string bytes_of(const boost::json::value& list) {
  std::string out;
  for (const auto& b : list.as_array()) out.push_back(static_cast<char>(b.to_number<int>()));
  return out;
}

struct Record {
  int partition = -1;
  std::optional<std::string> key;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string value;
  std::int64_t timestamp = 0;
};

std::vector<Record> parse_records(const std::string& output) {
  std::vector<Record> out;
  std::istringstream lines(output);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.empty() || line[0] != '{') continue;
    auto obj = boost::json::parse(line).as_object();
    Record r;
    r.partition = static_cast<int>(obj["partition"].to_number<int>());
    r.timestamp = obj["timestamp"].to_number<std::int64_t>();
    if (!obj["key"].is_null()) r.key = bytes_of(obj["key"]);
    for (const auto& h : obj["headers"].as_array())
      r.headers.emplace_back(std::string(h.as_array()[0].as_string()), bytes_of(h.as_array()[1]));
    r.value = bytes_of(obj["value"]);
    out.push_back(std::move(r));
  }
  return out;
}

class KafkaInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    python_ = python_with_kafka();
    // Not a skip: a missing peer would hide an interoperability break.
    ASSERT_FALSE(python_.empty())
        << "these tests need python3 with kafka-python, which is not installed: run scripts/deps.sh test (Debian: "
           "apt-get install python3-kafka)";
    register_scheme();
  }
  std::string python_;
};

TEST_F(KafkaInterop, PythonReadsWhatFerryPublishes) {
  const std::string topic = unique("to-python");
  auto broker = Broker::open(url());
  std::vector<Message> messages;
  for (int i = 0; i < 6; ++i) {
    Message m = Message::with_payload(std::string("ferry\0payload-", 14) + std::to_string(i) + "\xff");
    m.key = "py-key-" + std::to_string(i % 3);  // the keys kafka_produce.py uses too
    m.headers = {{"content-type", "application/x-test"}, {"x-binary", std::string("\x00\x01", 2)}};
    m.timestamp = from_unix_ms(1'700'000'000'000 + i);
    messages.push_back(m);
  }
  broker->publisher().publish_batch(topic, messages);
  // The python producer writes the same keys to the same topic, for the placement check.
  ProcessRun produced =
      run(python_ + " " + script("kafka_produce.py") + " " + cluster().bootstrap() + " " + topic + " 6", 60s);
  ASSERT_EQ(produced.exit_code, 0) << produced.output;

  ProcessRun r =
      run(python_ + " " + script("kafka_consume.py") + " " + cluster().bootstrap() + " " + topic + " 12 30", 60s);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto records = parse_records(r.output);
  ASSERT_EQ(records.size(), 12u) << r.output;

  std::map<std::string, std::set<int>> partitions_of_key;
  std::map<std::string, const Record*> by_id;
  for (const auto& rec : records) {
    ASSERT_TRUE(rec.key);
    partitions_of_key[*rec.key].insert(rec.partition);
    for (const auto& [name, value] : rec.headers)
      if (name == "ferry-id") by_id[value] = &rec;
  }
  for (const auto& [key, parts] : partitions_of_key)
    EXPECT_EQ(parts.size(), 1u) << "ferry (murmur2_random) and kafka-python (murmur2) put key " << key
                                << " on different partitions";
  for (const auto& m : messages) {
    ASSERT_TRUE(by_id.count(m.id)) << "python did not see ferry's message " << m.id << " (ferry-id header)";
    const Record& rec = *by_id[m.id];
    EXPECT_EQ(rec.key, m.key);
    EXPECT_TRUE(rec.value == m.payload) << "payload changed";
    EXPECT_EQ(rec.timestamp, to_unix_ms(m.timestamp));
    std::map<std::string, std::string> headers(rec.headers.begin(), rec.headers.end());
    EXPECT_EQ(headers.at("content-type"), "application/x-test");
    EXPECT_EQ(headers.at("x-binary"), std::string("\x00\x01", 2));
  }
  broker->close();
}

TEST_F(KafkaInterop, FerryConsumesWhatPythonPublishes) {
  const std::string topic = unique("from-python");
  auto broker = Broker::open(url());
  auto sub = broker->subscribe({.topic = topic, .group = unique("g")});
  ProcessRun produced =
      run(python_ + " " + script("kafka_produce.py") + " " + cluster().bootstrap() + " " + topic + " 5", 60s);
  ASSERT_EQ(produced.exit_code, 0) << produced.output;

  std::map<std::string, Message> got;
  while (got.size() < 5) {
    auto d = sub->receive(20s);
    ASSERT_TRUE(d) << "ferry received " << got.size() << " of python's 5 records";
    got[d->message().payload] = d->message();
    d->ack();
  }
  std::set<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    const std::string payload = "py-" + std::to_string(i) + std::string("\x00\x01\xff", 3);
    ASSERT_TRUE(got.count(payload)) << "missing record " << i;
    const Message& m = got[payload];
    EXPECT_EQ(m.key, "py-key-" + std::to_string(i % 3));
    EXPECT_EQ(m.headers.at("trace"), std::to_string(i));
    EXPECT_EQ(m.headers.at("bin"), std::string("\x00\xff", 2));
    EXPECT_EQ(m.id.rfind("kafka:" + topic + "/", 0), 0u) << "a record without ferry-id gets a stable id: " << m.id;
    ids.insert(m.id);
  }
  EXPECT_EQ(ids.size(), 5u);
  sub->close();
  broker->close();
}

}  // namespace
}  // namespace ferry::kafka::testing
