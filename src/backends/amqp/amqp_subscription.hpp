#pragma once
// One amqp:// subscriber: its own connection, owned by the thread "ferry-amqp-sub" (see
// include/ferry/backends/amqp.hpp, "Threads and connections").

#include <amqp.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "amqp_options.hpp"
#include "ferry/delivery.hpp"
#include "ferry/error.hpp"
#include "ferry/subscriber.hpp"

namespace ferry::amqp::detail {

class Connection;

// The names of a group's topology.
struct GroupNames {
  std::string exchange;      // the topic
  std::string queue;         // the group's messages
  std::string retry_queue;   // nack(delay) copies wait here
  std::string dead_letter;   // the dead-letter topic (an exchange)
  std::string keeper_queue;  // keeps dead letters until read

  // Throws Error(invalid_argument) for names AMQP cannot hold.
  static GroupNames of(const Options& options, const SubscribeOptions& subscribe);
};

class Subscription : public Settler, public std::enable_shared_from_this<Subscription> {
 public:
  Subscription(std::shared_ptr<const Options> options, SubscribeOptions subscribe);
  ~Subscription() override;

  // Starts the thread and waits until the topology is declared and the consumer runs.
  // Throws Error (invalid_argument for a topology that exists with other settings,
  // unavailable for a broker that cannot be reached).
  void start();

  std::optional<Delivery> receive(std::chrono::milliseconds timeout);
  void settle(std::uint64_t token, Outcome outcome, std::chrono::milliseconds delay,
              const std::string& reason) noexcept override;
  void close();

  const SubscribeOptions& subscribe_options() const noexcept { return subscribe_; }
  const GroupNames& names() const noexcept { return names_; }

 private:
  struct Entry {
    std::uint64_t tag = 0;         // delivery tag on the connection of `generation`
    std::uint64_t generation = 0;  // which connection delivered it
    int attempt = 1;
    Message message;
    std::chrono::steady_clock::time_point deadline{};
    bool received = false;  // handed out by receive()
  };
  struct Settlement {
    Entry entry;
    Outcome outcome = Outcome::ack;
    std::chrono::milliseconds delay{0};
    std::string reason;
    bool lease_expired = false;
  };
  struct PendingCopy {
    std::uint64_t original_tag = 0;
    std::string message_id;
    std::string where;     // for messages: "the retry queue 'x'"
    std::string returned;  // why the broker returned the copy, if it did
    bool resolved = false;
  };
  enum class Served { lost, closed };

  void run();
  void setup(Connection& conn);
  void declare_dead_letter(Connection& conn, std::uint16_t channel);
  Served serve(Connection& conn);
  void perform(Connection& conn, Settlement& s);
  void publish_copy(Connection& conn, const std::string& exchange, const std::string& routing_key,
                    const Message& message, int deliveries, long long expiration_ms, std::uint64_t original_tag,
                    std::string where);
  void handle(Connection& conn, const amqp_frame_t& frame);
  void send_acks(Connection& conn, std::vector<std::uint64_t>& tags);
  void on_copy_confirm(Connection& conn, std::uint64_t tag, bool multiple, bool ok);
  void deliver(Connection& conn);
  void check_leases();
  void finish(Connection& conn);
  void discard_generation();
  void wait_io(Connection* conn, std::chrono::milliseconds timeout);
  void wake();
  void read_frames(Connection& conn, std::chrono::milliseconds first_wait);

  std::shared_ptr<const Options> options_;
  SubscribeOptions subscribe_;
  GroupNames names_;
  int prefetch_ = 64;
  std::thread thread_;
  std::promise<Status> started_;
  int wake_fd_ = -1;
  std::atomic<bool> sleeping_{false};
  std::mutex close_mutex_;

  // Shared with receivers and settlers, under mutex_.
  std::mutex mutex_;
  std::condition_variable ready_cv_;
  std::map<std::uint64_t, Entry> entries_;  // token -> delivery held by this subscriber
  std::deque<std::uint64_t> ready_;         // tokens not yet received, oldest first
  std::deque<Settlement> settlements_;
  std::uint64_t next_token_ = 1;
  std::uint64_t generation_ = 0;
  bool closed_ = false;

  // The thread's own.
  std::uint64_t generation_of_conn_ = 0;  // generation_ of the connection being served
  std::uint64_t acked_upto_ = 0;          // every tag up to this one is acked (multiple)
  std::deque<PendingCopy> copies_;        // unconfirmed copies on channel 2, by tag
  std::uint64_t first_copy_tag_ = 1;
  bool dead_letter_declared_ = false;
  struct {
    bool active = false;
    std::uint64_t tag = 0;
    bool redelivered = false;
    bool have_header = false;
    std::uint64_t size = 0;
    int deliveries = 0;
    Message message;
  } incoming_;
  bool returning_ = false;
  std::uint64_t return_body_left_ = 0;
  std::string return_text_;
  std::chrono::steady_clock::time_point next_lease_check_{};
};

}  // namespace ferry::amqp::detail
