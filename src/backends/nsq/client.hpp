#pragma once
// ferry's NSQ client: the pieces behind nsq:// (include/ferry/backends/nsq.hpp says what
// they guarantee). Private to src/backends/nsq.
//
// Threading: an Engine owns one io_context and its thread ("ferry-nsq-io"). Every socket,
// timer and the state marked "io thread" below are touched only on that thread; other
// threads reach them through Engine::post / Engine::call. The few members other threads
// read directly sit behind a mutex and say so.

#include <array>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ferry/delivery.hpp"
#include "ferry/error.hpp"
#include "ferry/publisher.hpp"
#include "ferry/subscriber.hpp"
#include "frame.hpp"
#include "options.hpp"

namespace ferry::nsq {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using Ms = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

class TlsContext;  // tls.hpp
struct TlsStream;

// The io_context and its thread, and the TLS context when the URL asks for TLS.
class Engine {
 public:
  // Throws Error(invalid_argument) when a tls_ option names a file that cannot be loaded.
  explicit Engine(Options options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  asio::io_context& io() { return io_; }
  // The broker's options, alive as long as anything holds the engine.
  const Options& options() const noexcept { return options_; }
  // The shared client TLS context; null unless options().tls.
  TlsContext* tls() const noexcept { return tls_.get(); }
  bool on_io_thread() { return io_.get_executor().running_in_this_thread(); }
  void post(std::function<void()> fn);
  // Runs `fn` on the io thread and waits for it (inline when already there). After stop()
  // it does not run `fn` and returns false.
  bool run(const std::function<void()>& fn);
  // Stops the loop and joins the thread; handlers still queued do not run.
  void stop();

 private:
  Options options_;
  std::unique_ptr<TlsContext> tls_;
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_;
  std::thread thread_;
  std::mutex mutex_;
  bool stopped_ = false;
};

// What nsqd said in its IDENTIFY response (defaults: nsqd's, for servers without
// feature negotiation).
struct Negotiated {
  int max_rdy_count = 2500;
  Ms msg_timeout{60'000};
  Ms max_msg_timeout{15 * 60'000};
  bool auth_required = false;
  bool tls = false;  // the connection runs over TLS
  std::string version{};
};

// One TCP connection to one nsqd: the magic, IDENTIFY (then, with tls=true, the TLS
// handshake nsqd's answer calls for and nsqd's OK over TLS; and AUTH when nsqd asks), then
// frames in and commands out. Plain or TLS is decided once per connection: reads and
// writes pick the socket or the TLS stream per call, not per byte. Heartbeats are
// answered here with NOP and never reach the handlers; a connection from which nothing
// arrives for two heartbeat intervals is closed as dead. All of it on the io thread.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using ReadyHandler = std::function<void(const Status&)>;
  using FrameHandler = std::function<void(Frame&)>;
  using ClosedHandler = std::function<void(const Status&)>;

  // `msg_timeout` (0: nsqd's default) is sent in IDENTIFY; `role` names it in logs.
  Connection(Engine& engine, const Options& options, Endpoint endpoint, Ms msg_timeout, std::string role);
  ~Connection();

  // Connects and handshakes within options.connect_timeout. `ready` runs once: ok, or
  // the failure (and then `closed` never runs). After ok, `frame` receives every
  // response, error and message frame, and `closed` runs once when the connection ends.
  void start(ReadyHandler ready, FrameHandler frame, ClosedHandler closed);
  // Queues bytes to write, in order. Does nothing once closing.
  void send(std::string bytes);
  // Writes what is queued, half-closes, waits briefly for nsqd to close its side, then
  // closes; `closed` runs with ok.
  void close_gracefully();
  // Closes at once; `closed` runs with `reason`.
  void close(const Status& reason);

  bool ready() const noexcept { return state_ == State::ready; }
  // Whether TCP reached nsqd (a failure after that is not "nsqd is down").
  bool reached() const noexcept { return reached_; }
  const Endpoint& endpoint() const noexcept { return endpoint_; }
  const Negotiated& negotiated() const noexcept { return negotiated_; }
  std::string describe() const;  // "nsqd 127.0.0.1:4150"

 private:
  // securing: the TLS handshake runs; confirming_tls: waiting for nsqd's OK over TLS.
  enum class State { connecting, identifying, securing, confirming_tls, authenticating, ready, draining, closed };

  void on_connected();
  void read();
  void on_read(std::size_t n);
  void handle(Frame& frame);
  void handshake_frame(Frame& frame);
  void start_tls();
  void identified();
  void become_ready();  // negotiated (and authenticated): commands may flow
  std::string tls_hint(std::string_view error) const;
  void write();
  void fail(const Status& reason);
  void arm_liveness();

  Engine& engine_;
  const Options& options_;
  Endpoint endpoint_;
  Ms msg_timeout_;
  std::string role_;
  tcp::resolver resolver_;
  tcp::socket socket_;
  std::unique_ptr<TlsStream> tls_;  // over socket_, once TLS is negotiated
  asio::steady_timer deadline_;
  asio::steady_timer liveness_;
  FrameReader reader_;
  std::array<char, 65536> read_buffer_{};
  std::string pending_;
  std::string writing_;
  bool write_in_progress_ = false;
  bool shutdown_after_write_ = false;
  bool reached_ = false;
  State state_ = State::connecting;
  SteadyClock::time_point last_read_{};
  Negotiated negotiated_;
  ReadyHandler on_ready_;
  FrameHandler on_frame_;
  ClosedHandler on_closed_;
};

// Publishes over one connection at a time, failing over along the nsqd addresses.
// Commands are pipelined; nsqd answers them in order, so the responses are matched
// first in, first out. publish() is thread-safe; the rest runs on the io thread.
class Producer : public std::enable_shared_from_this<Producer> {
 public:
  Producer(std::shared_ptr<Engine> engine, const Options& options);

  // Any thread. Validates, encodes and queues; `done` runs on the io thread.
  void publish(const std::string& topic, std::vector<Message> messages, PublishCallback done, Ms defer = Ms{0});
  // io thread: publishes one already-encoded body, outside the in-flight bound (for
  // dead letters).
  void publish_internal(const std::string& topic, std::string body, PublishCallback done);
  // Any thread except the io thread: waits for a connection (connecting if needed).
  Status connect_now(Ms timeout);
  // Any thread: completes what was started (up to publish_timeout), then closes.
  void close();
  bool closed();

 private:
  struct Pending {
    std::string bytes;
    std::size_t messages = 0;  // counted against max_in_flight
    PublishCallback done;
  };

  void enqueue(Pending pending);    // io thread
  void ensure_connected();          // io thread
  void attempt(std::size_t tries);  // io thread
  void on_ready(const std::shared_ptr<Connection>& conn, const Status& s, std::size_t tries);
  void on_frame(const std::shared_ptr<Connection>& conn, Frame& frame);
  void on_closed(const std::shared_ptr<Connection>& conn, const Status& s);
  void complete(Pending& pending, const Status& s);
  void fail_queued(const Status& s);
  void check_drained();
  void with_addresses(std::function<void(std::vector<Endpoint>)> fn);

  std::shared_ptr<Engine> engine_;
  const Options& options_;

  // io thread
  std::vector<Endpoint> addresses_;
  std::size_t current_ = 0;
  std::shared_ptr<Connection> conn_;
  bool connecting_ = false;
  bool failed_after_error_ = false;  // the connection ended after an error frame
  Status last_failure_;
  std::deque<Pending> queued_;  // not written yet
  std::deque<Pending> sent_;    // written, waiting for OK or E_*
  std::vector<std::function<void(const Status&)>> connect_waiters_;
  std::function<void()> drained_;
  bool io_closed_ = false;

  // guarded by mutex_: the in-flight bound and the closed flag
  std::mutex mutex_;
  std::condition_variable space_;
  std::size_t in_flight_ = 0;
  bool closed_ = false;
};

// One subscriber: a channel on every nsqd that has the topic (the direct addresses, or
// those nsqlookupd names), max-in-flight spread over them as RDY, deliveries buffered for
// receive(). It is the Settler of its deliveries: settlements are posted to the io
// thread, which sends FIN / REQ / TOUCH on the connection the message came from.
class Subscription : public Settler, public std::enable_shared_from_this<Subscription> {
 public:
  Subscription(std::shared_ptr<Engine> engine, std::shared_ptr<Producer> producer, const Options& options,
               SubscribeOptions subscribe);

  // Connects and subscribes; returns once every nsqd answered SUB (or failed). Throws
  // Error(unavailable) when none could be subscribed, Error(invalid_argument) when nsqd
  // refused the names.
  void start();
  std::optional<Delivery> receive(Ms timeout);
  void settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason) noexcept override;
  void close();

 private:
  struct Link {  // one nsqd
    Endpoint endpoint;
    std::shared_ptr<Connection> conn;
    bool subscribed = false;
    bool closing = false;
    bool wanted = true;  // still named by the addresses or by nsqlookupd
    int rdy = 0;         // last RDY sent
    int since_rdy = 0;   // messages received since
    int in_flight = 0;
    SteadyClock::time_point stalled_until{};  // RDY 0 until then: a lease ran out here
    Ms backoff{0};
    std::shared_ptr<asio::steady_timer> retry;
    std::shared_ptr<asio::steady_timer> close_timer;
  };
  struct InFlight {
    std::shared_ptr<Connection> conn;
    MessageId id{};
    int attempts = 0;
    std::string body;  // for dead-lettering
    SteadyClock::time_point delivered_at{};
    SteadyClock::time_point touched_at{};
    bool settling = false;
  };
  struct Ready {
    Message message;
    int attempt = 0;
    std::uint64_t token = 0;
  };

  // io thread
  void connect(Link& link);
  void on_conn_ready(const Endpoint& endpoint, const std::shared_ptr<Connection>& conn, const Status& s);
  void on_frame(const Endpoint& endpoint, const std::shared_ptr<Connection>& conn, Frame& frame);
  void on_closed(const Endpoint& endpoint, const std::shared_ptr<Connection>& conn, const Status& s);
  void on_message(Link& link, Frame& frame);
  void schedule_reconnect(Link& link);
  void distribute_rdy();
  void send_rdy(Link& link, int count);
  void do_settle(std::uint64_t token, Outcome outcome, Ms delay, const std::string& reason);
  void dead_letter(std::uint64_t token, const std::string& reason, int attempts);
  void finish_link(Link& link);
  void start_close();
  void lease_tick();
  void poll_lookupd();
  void on_lookup(std::set<Endpoint> found);
  void on_lookup_failed();
  void schedule_poll();
  void first_answer(const Endpoint& endpoint, const Status& s);
  void drop_link_deliveries(const std::shared_ptr<Connection>& conn);
  Link* link_for(const std::shared_ptr<Connection>& conn);
  Message decode(const WireMessage& wire) const;

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Producer> producer_;
  const Options& options_;
  SubscribeOptions subscribe_;
  std::string channel_;
  std::string dead_letter_topic_;
  Ms server_msg_timeout_{0};  // IDENTIFY msg_timeout: nsqd requeues after it
  Ms lease_{0};               // ack_timeout: ferry requeues after it (TOUCHing until then)

  // io thread
  std::map<Endpoint, Link> links_;
  std::unordered_map<std::uint64_t, InFlight> in_flight_;
  std::uint64_t next_token_ = 0;
  bool io_closing_ = false;
  std::size_t rotation_ = 0;
  std::shared_ptr<asio::steady_timer> touch_timer_;
  std::shared_ptr<asio::steady_timer> poll_timer_;
  std::shared_ptr<asio::steady_timer> rotate_timer_;
  std::set<Endpoint> awaiting_first_;  // endpoints that have not answered SUB yet
  bool lookup_done_ = false;
  std::function<void()> on_started_;
  Status start_error_;
  bool any_subscribed_ = false;
  std::function<void()> on_all_closed_;

  // guarded by mutex_: what receive() reads
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Ready> buffer_;
  bool closed_ = false;
};

// The dead-letter topic NSQ can hold: `name` itself, or, past 64 characters, a prefix of
// it and a hash of the whole ("<prefix>-<8 hex>.dlq").
std::string nsq_dead_letter_topic(const std::string& name);

// METHOD http://endpoint/target over HTTP/1.0 (no body) on the io thread; `done(status,
// http_code, body)` runs once on the io thread.
void http_request(Engine& engine, const Endpoint& endpoint, const std::string& method, const std::string& target,
                  Ms timeout, std::function<void(const Status&, int, std::string)> done);
void http_get(Engine& engine, const Endpoint& endpoint, const std::string& target, Ms timeout,
              std::function<void(const Status&, int, std::string)> done);
// The nsqd TCP addresses (or HTTP addresses) in an nsqlookupd /lookup or /nodes answer
// (both the 1.x format and the older one wrapped in "data"). Throws Error(protocol) on
// other JSON.
std::vector<Endpoint> parse_producers(std::string_view json, bool http_ports = false);

}  // namespace ferry::nsq
