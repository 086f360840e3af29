// Publishes and consumes one message through the installed ferry; exit 0 on success.
#include <ferry/backends/amqp.hpp>
#include <ferry/backends/kafka.hpp>
#include <ferry/backends/memory.hpp>
#include <ferry/backends/nsq.hpp>
#include <ferry/backends/sqlite.hpp>
#include <ferry/broker.hpp>

#include <iostream>

int main() {
  ferry::memory::register_scheme();
  ferry::sqlite::register_scheme();
  ferry::kafka::register_scheme();
  ferry::amqp::register_scheme();
  ferry::nsq::register_scheme();
  auto broker = ferry::Broker::open("memory://");
  auto sub = broker->subscribe({.topic = "t", .group = "g"});
  broker->publisher().publish("t", ferry::Message::with_payload("hello from an installed ferry"));
  auto d = sub->receive(std::chrono::seconds{5});
  if (!d || d->message().payload != "hello from an installed ferry") return 1;
  d->ack();
  std::cout << d->message().payload << "\n";
  return 0;
}
