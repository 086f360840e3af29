#pragma once
// ferry::Publisher: sends messages to a topic.
//
// A publish completes only when the broker has taken responsibility for the message (see
// each backend's header for what that means there). A failure is reported to the caller,
// never only logged. In-flight publishes are bounded: past the bound a publish waits up
// to the publisher's deadline and then fails with Errc::timeout.
//
// Every method is thread-safe. Completion callbacks run on a backend thread: they must
// be short and must not block on another publish of the same publisher.

#include <functional>
#include <future>
#include <string>
#include <vector>

#include "ferry/error.hpp"
#include "ferry/message.hpp"

namespace ferry {

using PublishCallback = std::function<void(const Status&)>;

class Publisher {
 public:
  virtual ~Publisher() = default;

  // Publishes a batch; `done` runs once, when every message of the batch is confirmed
  // (ok) or when the first failure is known. Messages of one batch keep their order.
  // Ids and timestamps are filled in before this returns.
  virtual void publish_batch_async(const std::string& topic, std::vector<Message> messages,
                                   PublishCallback done) = 0;

  // Publishes one message, as a batch of one. Backends whose client takes messages one
  // by one override it to spare the batch's vector.
  virtual void publish_async(const std::string& topic, Message&& message, PublishCallback done);
  // Publishes a copy of `message`, which stays the caller's, unchanged, to publish again: an
  // id or timestamp it lacks is filled in the copy sent (each publish of a message without an
  // id gets a new one). Backends whose client copies what it sends override it to make no
  // copy of their own.
  virtual void publish_async(const std::string& topic, const Message& message, PublishCallback done);

  // Completes every publish already started; later publishes fail with Errc::closed.
  virtual void close() = 0;

  // Conveniences over publish_async and publish_batch_async.
  std::future<Status> publish_future(const std::string& topic, Message message);
  // Blocking: returns once confirmed; throws ferry::Error on failure.
  void publish(const std::string& topic, Message message);
  void publish_batch(const std::string& topic, std::vector<Message> messages);
};

}  // namespace ferry
