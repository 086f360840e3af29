// ferry and a client that is not ferry (Debian's python3-pika) read what the other wrote,
// headers included; and the seed tutorial's layout (direct exchange "order_exchange",
// routing key "order_created", queue "order_queue") works from both sides.

#include <gtest/gtest.h>

#include <boost/json.hpp>

#include "ferry/backends/amqp.hpp"
#include "ferry/broker.hpp"
#include "rabbitmq_fixture.hpp"
#include "unique_name.hpp"

namespace ferry {
namespace {

using namespace std::chrono_literals;

const bool uses_rabbitmq = testing::use_rabbitmq();

using ferry::testing::unique_name;

// Gets one message from a queue with pika and prints it as JSON.
constexpr const char* kPikaGet = R"py(
import json, sys, pika
port, queue = int(sys.argv[1]), sys.argv[2]
conn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', port, credentials=pika.PlainCredentials('guest', 'guest')))
ch = conn.channel()
method, props, body = ch.basic_get(queue, auto_ack=True)
out = {'found': method is not None}
if method is not None:
    def text(v):
        return v.decode('latin-1') if isinstance(v, bytes) else v
    out.update(body=body.decode('latin-1'), message_id=props.message_id, content_type=props.content_type,
               delivery_mode=props.delivery_mode, timestamp=props.timestamp, exchange=method.exchange,
               routing_key=method.routing_key,
               headers={k: text(v) for k, v in (props.headers or {}).items()})
conn.close()
print(json.dumps(out))
)py";

// Publishes one message with pika (publisher confirms, mandatory) to an exchange.
constexpr const char* kPikaPublish = R"py(
import sys, pika
port, exchange, routing_key, body, message_id = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
conn = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', port, credentials=pika.PlainCredentials('guest', 'guest')))
ch = conn.channel()
ch.confirm_delivery()
props = pika.BasicProperties(content_type='text/plain', delivery_mode=2,
                             headers={'x-from': 'pika', 'n': 5, 'flag': True, 'nested': {'a': 1}})
if message_id != '-':
    props.message_id = message_id
ch.basic_publish(exchange=exchange, routing_key=routing_key, body=body.encode(), properties=props, mandatory=True)
conn.close()
print('published')
)py";

boost::json::object pika_get(const std::string& queue) {
  std::string output;
  int rc = testing::run_python(kPikaGet, {std::to_string(testing::rabbitmq().port()), queue}, output);
  EXPECT_EQ(rc, 0) << output;
  auto line = output.substr(0, output.find('\n'));
  try {
    return boost::json::parse(line).as_object();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "pika printed no JSON: " << output;
    return {};
  }
}

void pika_publish(const std::string& exchange, const std::string& routing_key, const std::string& body,
                  const std::string& message_id) {
  std::string output;
  int rc = testing::run_python(
      kPikaPublish, {std::to_string(testing::rabbitmq().port()), exchange, routing_key, body, message_id}, output);
  ASSERT_EQ(rc, 0) << output;
}

std::string text(const boost::json::object& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->value().is_string() ? std::string(it->value().as_string()) : std::string("<none>");
}

TEST(AmqpInterop, PikaReadsWhatFerryPublished) {
  amqp::register_scheme();
  auto broker = Broker::open(testing::rabbitmq().url());
  const auto topic = unique_name("to-pika");
  broker->subscribe({.topic = topic, .group = "pika"})->close();  // the queue <topic>.pika

  Message m = Message::with_payload("hello pika");
  m.key = "customer-7";
  m.headers = {{"x-trace", "abc"}, {"content-type", "text/plain"}};
  broker->publisher().publish(topic, m);

  auto got = pika_get(topic + ".pika");
  ASSERT_TRUE(got["found"].as_bool()) << "pika found nothing in " << topic << ".pika";
  EXPECT_EQ(text(got, "body"), "hello pika");
  EXPECT_EQ(text(got, "message_id"), m.id);
  EXPECT_EQ(text(got, "content_type"), "text/plain");
  EXPECT_EQ(got["delivery_mode"].as_int64(), 2) << "not persistent";
  EXPECT_EQ(got["timestamp"].as_int64(), to_unix_ms(m.timestamp) / 1000);
  EXPECT_EQ(text(got, "exchange"), topic);
  auto& headers = got["headers"].as_object();
  EXPECT_EQ(text(headers, "x-trace"), "abc");
  EXPECT_EQ(text(headers, "ferry-key"), "customer-7");
  EXPECT_EQ(text(headers, "ferry-timestamp-ms"), std::to_string(to_unix_ms(m.timestamp)));
  broker->close();
}

TEST(AmqpInterop, FerryReadsWhatPikaPublished) {
  amqp::register_scheme();
  auto broker = Broker::open(testing::rabbitmq().url());
  const auto topic = unique_name("from-pika");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});

  pika_publish(topic, "", "hello ferry", "pika-1");
  auto d = sub->receive(10s);
  ASSERT_TRUE(d) << "a message pika published did not reach the ferry subscriber";
  EXPECT_EQ(d->message().payload, "hello ferry");
  EXPECT_EQ(d->message().id, "pika-1");
  EXPECT_EQ(d->attempt(), 1);
  EXPECT_FALSE(d->message().key.has_value());
  const Headers want{{"x-from", "pika"}, {"n", "5"}, {"flag", "true"}, {"content-type", "text/plain"}};
  EXPECT_EQ(d->message().headers, want) << "a table-valued header is dropped, numbers and booleans become text";
  d->ack();

  // Without a message id ferry makes one up, so that the message can be deduplicated,
  // nacked and dead-lettered like any other.
  pika_publish(topic, "", "no id", "-");
  auto e = sub->receive(10s);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->message().id.size(), 36u) << e->message().id;
  e->nack();
  auto again = sub->receive(10s);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->message().id, e->message().id) << "a nacked copy lost the id ferry gave it";
  EXPECT_EQ(again->attempt(), 2);
  again->ack();
  broker->close();
}

TEST(AmqpInterop, TheSeedLayoutWorksFromBothSides) {
  amqp::register_scheme();
  // Fresh names, in the seed's shape: direct exchange, one routing key, a named queue.
  const std::string exchange = unique_name("order_exchange");
  const std::string queue = unique_name("order_queue");
  auto broker =
      Broker::open(testing::rabbitmq().url("?exchange_type=direct&routing_key=order_created&queue.orders=" + queue));
  auto sub = broker->subscribe({.topic = exchange, .group = "orders"});
  ASSERT_TRUE(testing::queue_counts(testing::rabbitmq().port(), queue)) << "queue " << queue << " was not declared";

  pika_publish(exchange, "order_created", R"({"order_id":"o-1"})", "o-1");
  auto d = sub->receive(10s);
  ASSERT_TRUE(d) << "an order pika published with routing key order_created did not arrive";
  EXPECT_EQ(d->message().id, "o-1");
  d->ack();

  // ferry publishes with routing key order_created; pika reads the queue directly.
  sub->close();
  Message m = Message::with_payload(R"({"order_id":"o-2"})");
  broker->publisher().publish(exchange, m);
  auto got = pika_get(queue);
  ASSERT_TRUE(got["found"].as_bool());
  EXPECT_EQ(text(got, "message_id"), m.id);
  EXPECT_EQ(text(got, "routing_key"), "order_created");
  broker->close();
}

}  // namespace
}  // namespace ferry
