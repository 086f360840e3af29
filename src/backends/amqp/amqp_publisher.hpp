#pragma once
// The amqp:// publisher: a pool of connections, each owned by one thread with a request
// queue and a confirm window (see include/ferry/backends/amqp.hpp, "Threads and
// connections").

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "amqp_options.hpp"
#include "ferry/publisher.hpp"

namespace ferry::amqp::detail {

class PublisherLink;
struct Batch;

class PublisherPool : public Publisher {
 public:
  explicit PublisherPool(std::shared_ptr<const Options> options);
  ~PublisherPool() override;

  // Connects connection 0 and starts every thread. Throws Error(unavailable).
  void start();

  void publish_batch_async(const std::string& topic, std::vector<Message> messages, PublishCallback done) override;
  void close() override;

  // A round trip on connection 0 (reconnecting first if it is down).
  Status ping();
  // Topics published to through this pool, for Admin::stats().
  std::vector<std::string> topics() const;

  // Called by the links as messages are confirmed or fail.
  void release(std::size_t messages);

 private:
  std::shared_ptr<const Options> options_;
  std::vector<std::unique_ptr<PublisherLink>> links_;

  mutable std::mutex mutex_;
  std::condition_variable room_;
  std::size_t in_flight_ = 0;
  int waiting_ = 0;  // publishers waiting for room
  bool closed_ = false;
  std::vector<std::string> topics_;
};

}  // namespace ferry::amqp::detail
