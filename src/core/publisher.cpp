#include "ferry/publisher.hpp"

#include <memory>

namespace ferry {

void Publisher::publish_async(const std::string& topic, Message&& message, PublishCallback done) {
  std::vector<Message> batch;
  batch.push_back(std::move(message));
  publish_batch_async(topic, std::move(batch), std::move(done));
}

void Publisher::publish_async(const std::string& topic, const Message& message, PublishCallback done) {
  publish_async(topic, Message(message), std::move(done));
}

std::future<Status> Publisher::publish_future(const std::string& topic, Message message) {
  auto promise = std::make_shared<std::promise<Status>>();
  auto future = promise->get_future();
  publish_async(topic, std::move(message), [promise](const Status& s) { promise->set_value(s); });
  return future;
}

void Publisher::publish(const std::string& topic, Message message) {
  throw_if_error(publish_future(topic, std::move(message)).get());
}

void Publisher::publish_batch(const std::string& topic, std::vector<Message> messages) {
  auto promise = std::make_shared<std::promise<Status>>();
  auto future = promise->get_future();
  publish_batch_async(topic, std::move(messages), [promise](const Status& s) { promise->set_value(s); });
  throw_if_error(future.get());
}

}  // namespace ferry
