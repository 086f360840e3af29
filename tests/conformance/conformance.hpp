#pragma once
// The conformance suite: one set of cases, written against ferry's core interfaces
// (Broker, Publisher, Subscriber, Delivery, Capabilities), that every backend must pass.
//
// A backend joins with one line in its own file, tests/conformance/<name>_test.cpp:
//
//   FERRY_CONFORMANCE_BACKEND(memory, ferry::testing::BackendSpec{
//       .name = "memory",
//       .register_scheme = ferry::memory::register_scheme,
//       .make_url = [] { return ferry::testing::unique_name("memory://conformance"); },
//   });
//
// Which cases apply is read from broker->capabilities(): a case that needs a capability
// the backend lacks is skipped with a message naming that capability. A case that needs
// a restart hook is skipped when the spec has none.
//
// Assumptions the suite makes of every backend, beyond the contract in DESIGN.md:
//   - a group exists once subscribe() has returned: messages published after that reach
//     it, whatever late_group_sees_history says;
//   - opening the URL returned by make_url() a second time reaches the same broker
//     (a second connection), so one case can close one handle while another keeps
//     consuming;
//   - a consumer that holds at most SubscribeOptions::prefetch unsettled deliveries is
//     never starved for that reason (the suite keeps to that bound).
//
// Stress mode: set FERRY_STRESS=N (N >= 2) in the environment and every case runs its
// body N times at once, in N threads, each against its own fresh broker URL and topics;
// failures from any thread fail the case. Combine it with --gtest_repeat=K to run the
// whole suite K times over, e.g.
//
//   FERRY_STRESS=4 ./ferry_conformance_tests --gtest_repeat=3 --gtest_filter='memory/*'
//   FERRY_STRESS=4 ctest -L conformance -j2        (ctest runs each case as its own test)
//
// Timing: every wait is bounded by BackendSpec::patience (scaled by the stress factor);
// a passing case never waits for it, a failing one fails when it runs out. Cases that
// assert "nothing more arrives" wait BackendSpec::quiet_period.

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "ferry/broker.hpp"

namespace ferry::testing {

using std::chrono::milliseconds;

struct BackendSpec {
  // Shown in test names: letters, digits and '_' only.
  std::string name{};
  // Makes the backend's scheme known to ferry::Broker::open(); called before every case.
  std::function<void()> register_scheme{};
  // A URL naming a fresh broker that no other case uses. Opening it again must reach
  // the same broker.
  std::function<std::string()> make_url{};
  // Optional. Restarts the broker behind `broker` (opened from `url`) and returns the
  // handle to use afterwards: the same one, reconnected, or a new one opened on the
  // same URL. ferry::testing::reopen does the latter (enough for an embedded broker).
  // Without it, the cases that need a restart are skipped.
  std::function<std::shared_ptr<Broker>(std::shared_ptr<Broker> broker, const std::string& url)> restart{};
  // Optional. Removes whatever make_url() created (files, directories), after the case.
  std::function<void(const std::string& url)> cleanup{};
  // The longest any single wait may take before the case fails.
  milliseconds patience{10'000};
  // How long "nothing more arrives" is watched for.
  milliseconds quiet_period{250};
};

void PrintTo(const BackendSpec& spec, std::ostream* out);

// `prefix` followed by a process-unique, time-seeded suffix ("prefix-<n>-<random>").
std::string unique_name(const std::string& prefix);

// A restart hook for embedded brokers: closes `broker` and opens `url` again.
std::shared_ptr<Broker> reopen(std::shared_ptr<Broker> broker, const std::string& url);

// The stress factor from FERRY_STRESS (1 when unset or invalid).
int stress_factor();

// One run of one case: a fresh broker and helpers to use it. Not thread-safe itself;
// the helpers it hands out (subscribers, the tally) are used as their own types allow.
class Context {
 public:
  explicit Context(const BackendSpec& spec);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  const BackendSpec& spec() const { return spec_; }
  const std::string& url() const { return url_; }
  Broker& broker() { return *broker_; }
  std::shared_ptr<Broker> broker_ptr() { return broker_; }
  Capabilities caps() const { return caps_; }
  // Bounded-wait budget for this run.
  milliseconds patience() const;
  milliseconds quiet() const { return spec_.quiet_period; }

  // A topic or group name unique to this run.
  std::string name(const std::string& stem);
  // A second handle on the same broker; closed with the context.
  std::shared_ptr<Broker> open_again();
  // Applies the spec's restart hook to the main handle.
  void restart();

  std::unique_ptr<Subscriber> subscribe(const std::string& topic, const std::string& group,
                                        const std::function<void(SubscribeOptions&)>& tweak = {});

 private:
  const BackendSpec& spec_;
  std::string url_;
  std::shared_ptr<Broker> broker_;
  std::vector<std::shared_ptr<Broker>> extra_;
  Capabilities caps_;
  int names_ = 0;
};

// What a consumer saw of one delivery.
struct Seen {
  std::string id;
  int attempt = 0;
  Message message;
};

// Thread-safe record of ids that reached some state (received, acked, confirmed…),
// with bounded waits on it.
class Tally {
 public:
  void add(const std::string& id);
  std::size_t total() const;           // additions, duplicates included
  std::size_t distinct() const;
  std::map<std::string, int> counts() const;
  bool contains(const std::string& id) const;
  // Waits until `distinct() >= n`; false if the timeout passed first.
  bool wait_distinct(std::size_t n, milliseconds timeout) const;

 private:
  mutable std::mutex mutex_;
  mutable std::condition_variable changed_;
  std::map<std::string, int> counts_;
  std::size_t total_ = 0;
};

// Receives until `count` distinct messages have been acked or `timeout` passed, acking
// each delivery. Returns every delivery seen, in order of receipt.
std::vector<Seen> drain(Subscriber& subscriber, std::size_t count, milliseconds timeout);

// Receives once, waiting up to `timeout`.
std::optional<Delivery> receive_one(Subscriber& subscriber, milliseconds timeout);

// Messages with fresh ids and payloads "<prefix>-<i>".
std::vector<Message> make_messages(std::size_t count, const std::string& prefix);
std::set<std::string> ids_of(const std::vector<Message>& messages);
std::set<std::string> ids_of(const std::vector<Seen>& seen);

// The fixture every case is a member of; the parameter is the backend.
class Conformance : public ::testing::TestWithParam<BackendSpec> {
 protected:
  void SetUp() override;
  // The capabilities of a fresh broker of this backend.
  const Capabilities& caps() const { return caps_; }
  bool has_restart() const { return static_cast<bool>(GetParam().restart); }
  // Runs `body` once, or stress_factor() times in parallel, each with its own Context.
  void run(const std::function<void(Context&)>& body);

 private:
  Capabilities caps_;
};

// Test-name generator for INSTANTIATE_TEST_SUITE_P.
struct BackendName {
  std::string operator()(const ::testing::TestParamInfo<BackendSpec>& info) const { return info.param.name; }
};

}  // namespace ferry::testing

// Skips the current case unless the backend has capability `cap` (a Capabilities member).
#define FERRY_REQUIRE_CAPABILITY(cap)                                                              \
  do {                                                                                            \
    if (!caps().cap)                                                                              \
      GTEST_SKIP() << "backend '" << GetParam().name << "' does not have capability " #cap;       \
  } while (false)

// Joins a backend to the suite: FERRY_CONFORMANCE_BACKEND(memory, ferry::testing::BackendSpec{...}).
#define FERRY_CONFORMANCE_BACKEND(prefix, ...)                                                        \
  namespace ferry::testing {                                                                        \
  INSTANTIATE_TEST_SUITE_P(prefix, Conformance, ::testing::Values(__VA_ARGS__), BackendName{}); \
  }
