#include "order_desk.hpp"

#include <signal.h>

#include <atomic>
#include <boost/json.hpp>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <deque>
#include <iostream>
#include <optional>
#include <thread>
#include <unordered_map>
#include <variant>

#include "ferry/backends/amqp.hpp"
#include "ferry/backends/kafka.hpp"
#include "ferry/backends/memory.hpp"
#include "ferry/backends/nsq.hpp"
#include "ferry/backends/sqlite.hpp"
#include "ferry/broker.hpp"

namespace ferry::examples {
namespace {

namespace json = boost::json;
using namespace std::chrono_literals;

constexpr const char* kTopic = "orders";
constexpr std::size_t kMaxIdLength = 128;
constexpr std::size_t kMaxProducts = 100;
// Orders whose state an example remembers for GET, per backend (the oldest are forgotten).
constexpr std::size_t kRemembered = 100'000;

std::string serialize(const json::object& object) {
  return json::serialize(object);
}

[[noreturn]] void usage_error(std::string_view framework, const std::string& reason) {
  std::cerr << "ferry-" << framework << "-orders: " << reason << " (try --help)\n";
  std::exit(2);
}

bool valid_backend_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_') return false;
  return true;
}

struct OrderRequest {
  std::string user_id;
  std::vector<std::string> product_ids;
};

std::string check_id(const json::value& v, const std::string& what) {
  if (!v.is_string()) return what + " must be a string";
  const auto& s = v.get_string();
  if (s.empty()) return what + " must not be empty";
  if (s.size() > kMaxIdLength) return what + " must be at most " + std::to_string(kMaxIdLength) + " bytes";
  return {};
}

// The order request rules of `ferry serve`: {"user_id": "...", "product_ids": ["...", ...]}
// and nothing else. Returns the order, or the reply that refuses it.
std::variant<OrderRequest, Reply> parse_order(std::string_view body) {
  json::error_code ec;
  json::value root = json::parse(body, ec);
  if (ec) return error_reply(400, "malformed_json", "the body is not valid JSON: " + ec.message());
  auto invalid = [](const std::string& detail) { return error_reply(422, "invalid_order", detail); };
  if (!root.is_object()) return invalid("the body must be a JSON object with user_id and product_ids");
  const auto& object = root.get_object();
  for (const auto& field : object)
    if (field.key() != "user_id" && field.key() != "product_ids")
      return invalid("unknown field '" + std::string(field.key()) + "'; expected only user_id and product_ids");
  const json::value* user = object.if_contains("user_id");
  if (!user) return invalid("user_id is required");
  if (auto problem = check_id(*user, "user_id"); !problem.empty()) return invalid(problem);
  const json::value* products = object.if_contains("product_ids");
  if (!products) return invalid("product_ids is required");
  if (!products->is_array() || products->get_array().empty())
    return invalid("product_ids must be a non-empty array of strings");
  const auto& array = products->get_array();
  if (array.size() > kMaxProducts)
    return invalid("product_ids must have at most " + std::to_string(kMaxProducts) + " entries");
  OrderRequest order{std::string(user->get_string()), {}};
  for (std::size_t i = 0; i < array.size(); ++i) {
    if (auto problem = check_id(array[i], "product_ids[" + std::to_string(i) + "]"); !problem.empty())
      return invalid(problem);
    order.product_ids.emplace_back(array[i].get_string());
  }
  return order;
}

std::string rfc3339(std::int64_t unix_ms) {
  std::time_t seconds = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  ::gmtime_r(&seconds, &tm);
  char text[80];
  std::snprintf(text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(unix_ms % 1000));
  return text;
}

// OrderCreated v1, as `ferry serve` publishes it.
Message order_created(const std::string& order_id, const OrderRequest& order) {
  Message message = Message::with_payload({});
  std::int64_t now = to_unix_ms(message.timestamp);
  json::array products;
  for (const auto& p : order.product_ids) products.emplace_back(p);
  message.payload = serialize({{"schema_version", 1},
                               {"order_id", order_id},
                               {"user_id", order.user_id},
                               {"product_ids", std::move(products)},
                               {"timestamp", now},
                               {"created_at", rfc3339(now)}});
  message.key = order_id;  // the orders of one id stay in order where the backend keeps keys
  message.headers["content-type"] = "application/json";
  return message;
}

struct Event {
  std::string order_id;
  std::string user_id;
  std::size_t products = 0;
};

// Decodes an OrderCreated v1 payload, or says why it cannot.
std::variant<Event, std::string> decode_event(std::string_view payload) {
  json::error_code ec;
  json::value root = json::parse(payload, ec);
  if (ec || !root.is_object()) return std::string("not an OrderCreated JSON object");
  const auto& object = root.get_object();
  const json::value* version = object.if_contains("schema_version");
  if (!version || !version->is_int64() || version->get_int64() != 1)
    return std::string("unsupported schema_version (expected 1)");
  const json::value* id = object.if_contains("order_id");
  const json::value* user = object.if_contains("user_id");
  const json::value* products = object.if_contains("product_ids");
  if (!id || !id->is_string() || id->get_string().empty() || !user || !user->is_string() || !products ||
      !products->is_array())
    return std::string("order_id, user_id and product_ids are required");
  return Event{std::string(id->get_string()), std::string(user->get_string()), products->get_array().size()};
}

}  // namespace

// ---- command line ---------------------------------------------------------------------

ExampleOptions parse_options(int argc, char** argv, std::string_view framework, std::uint16_t default_port) {
  ExampleOptions options;
  options.port = default_port;
  std::string program = "ferry-" + std::string(framework) + "-orders";
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::optional<std::string_view> inline_value;  // --flag=value
    if (auto eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      inline_value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
    }
    auto value = [&]() -> std::string_view {
      if (inline_value) return *inline_value;
      if (i + 1 >= argc) usage_error(framework, std::string(arg) + " needs a value");
      return argv[++i];
    };
    if (arg == "--help" || arg == "-h") {
      std::cout << "usage: " << program << " [--listen HOST:PORT] [--broker NAME=URL]...\n\n"
                << "The order endpoint of ferry's order service, served by " << framework << ":\n"
                << "  POST /" << framework
                << "/orders/NAME         {\"user_id\": \"...\", \"product_ids\": [\"...\"]}\n"
                << "  GET  /" << framework << "/orders/NAME/ORDER_ID  accepted or processed\n\n"
                << "  --listen HOST:PORT   address to serve (default 127.0.0.1:" << default_port
                << "; port 0 picks a free one)\n"
                << "  --broker NAME=URL    a broker served as /" << framework << "/orders/NAME (repeatable; default\n"
                << "                       memory=memory:// and sqlite=sqlite://./ferry-data/ferry.db)\n"
                << "URLs: memory://, sqlite://PATH, kafka://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST,\n"
                << "      nsq://HOST:PORT?lookupd=HOST:PORT\n"
                << "SIGINT or SIGTERM: stop accepting, finish the publishes in flight, close the brokers.\n";
      std::exit(0);
    } else if (arg == "--listen") {
      std::string text(value());
      auto colon = text.rfind(':');
      if (colon == std::string::npos) usage_error(framework, "--listen wants HOST:PORT, got '" + text + "'");
      std::string host = text.substr(0, colon);
      std::string port = text.substr(colon + 1);
      char* end = nullptr;
      long number = std::strtol(port.c_str(), &end, 10);
      if (port.empty() || *end != '\0' || number < 0 || number > 65535)
        usage_error(framework, "--listen: '" + port + "' is not a port number");
      options.host = host.empty() ? "0.0.0.0" : host;
      options.port = static_cast<std::uint16_t>(number);
    } else if (arg == "--broker") {
      std::string text(value());
      auto eq = text.find('=');
      auto scheme = text.find("://");
      if (eq == std::string::npos || (scheme != std::string::npos && scheme < eq))
        usage_error(framework, "--broker wants NAME=URL, e.g. sqlite=sqlite://./ferry-data/ferry.db");
      NamedBroker broker{text.substr(0, eq), text.substr(eq + 1)};
      if (!valid_backend_name(broker.name))
        usage_error(framework, "--broker: '" + broker.name + "' is not a name ([A-Za-z0-9_-], at most 64)");
      for (const auto& b : options.brokers)
        if (b.name == broker.name) usage_error(framework, "--broker: the name '" + broker.name + "' is used twice");
      options.brokers.push_back(std::move(broker));
    } else {
      usage_error(framework, "unknown argument '" + std::string(arg) + "'");
    }
  }
  if (options.brokers.empty())
    options.brokers = {{"memory", "memory://"}, {"sqlite", "sqlite://./ferry-data/ferry.db"}};
  return options;
}

Reply error_reply(int status, std::string_view error, std::string_view detail) {
  return {status, serialize({{"error", error}, {"detail", detail}}), {}};
}

void log_line(std::string_view framework, std::string_view text) {
  static std::mutex mutex;
  auto now = to_unix_ms(Clock::now());
  std::lock_guard lock(mutex);
  std::cerr << rfc3339(now) << " " << framework << ": " << text << std::endl;
}

// ---- OrderDesk ------------------------------------------------------------------------

enum class State { accepted, processed };

struct OrderDesk::Backend {
  std::string name;
  std::shared_ptr<Broker> broker;
  std::unique_ptr<Subscriber> subscriber;
  std::thread consumer;
  std::atomic<bool> stopping{false};
  std::atomic<std::uint64_t> published{0}, processed{0}, rejected{0};

  mutable std::mutex mutex;
  std::unordered_map<std::string, State> states;
  std::deque<std::string> order;  // ids by first sight, to forget the oldest

  void remember(const std::string& id, State state) {
    std::lock_guard lock(mutex);
    auto [it, inserted] = states.try_emplace(id, state);
    if (!inserted) {
      if (state == State::processed) it->second = State::processed;  // never back to accepted
      return;
    }
    order.push_back(id);
    if (order.size() > kRemembered) {
      states.erase(order.front());
      order.pop_front();
    }
  }
};

OrderDesk::OrderDesk(std::string framework, const std::vector<NamedBroker>& brokers)
    : framework_(std::move(framework)) {
  memory::register_scheme();
  sqlite::register_scheme();
  kafka::register_scheme();
  amqp::register_scheme();
  nsq::register_scheme();
  try {
    for (const auto& named : brokers) {
      auto backend = std::make_unique<Backend>();
      backend->name = named.name;
      backend->broker = Broker::open(named.url);
      backend->subscriber = backend->broker->subscribe({.topic = kTopic, .group = framework_ + "-orders"});
      backends_.push_back(std::move(backend));
    }
  } catch (...) {
    close();
    throw;
  }
  for (auto& backend : backends_) backend->consumer = std::thread([this, b = backend.get()] { consume(*b); });
}

OrderDesk::~OrderDesk() {
  close();
}

std::string OrderDesk::describe() const {
  std::string out;
  for (const auto& b : backends_) out += (out.empty() ? "" : ", ") + b->name + "=" + b->broker->url().masked();
  return out;
}

OrderDesk::Backend* OrderDesk::find(std::string_view name) const {
  for (const auto& b : backends_)
    if (b->name == name) return b.get();
  return nullptr;
}

void OrderDesk::place(std::string_view backend_name, std::string_view content_type, std::string_view body,
                      ReplyCallback reply) {
  Backend* backend = find(backend_name);
  if (!backend) {
    std::string names;
    for (const auto& b : backends_) names += (names.empty() ? "" : ", ") + b->name;
    return reply(error_reply(404, "unknown_backend",
                             "no broker named '" + std::string(backend_name) + "'; this service has: " + names));
  }
  auto media_type = content_type.substr(0, content_type.find(';'));
  while (!media_type.empty() && media_type.back() == ' ') media_type.remove_suffix(1);
  if (!content_type.empty() && media_type != "application/json")
    return reply(error_reply(
        415, "unsupported_media_type",
        "send the order as JSON with Content-Type: application/json, not '" + std::string(content_type) + "'"));
  auto parsed = parse_order(body);
  if (auto* refusal = std::get_if<Reply>(&parsed)) return reply(std::move(*refusal));
  const auto& order = std::get<OrderRequest>(parsed);

  std::string order_id = make_uuid();
  backend->broker->publisher().publish_async(
      kTopic, order_created(order_id, order),
      [this, backend, order_id, reply = std::move(reply)](const Status& status) {
        if (!status) {
          log_line(framework_, "order " + order_id + " not published to " + backend->name + ": " + status.message);
          Reply r =
              error_reply(503, "unavailable",
                          "the " + backend->name + " broker did not take the order: " + status.message + "; try again");
          r.headers.emplace_back("Retry-After", "1");
          return reply(std::move(r));
        }
        ++backend->published;
        backend->remember(order_id, State::accepted);
        reply({202, serialize({{"order_id", order_id}, {"status", "accepted"}, {"backend", backend->name}}), {}});
      });
}

Reply OrderDesk::lookup(std::string_view backend_name, std::string_view order_id) const {
  Backend* backend = find(backend_name);
  if (!backend) return error_reply(404, "unknown_backend", "no broker named '" + std::string(backend_name) + "'");
  std::optional<State> state;
  {
    std::lock_guard lock(backend->mutex);
    if (auto it = backend->states.find(std::string(order_id)); it != backend->states.end()) state = it->second;
  }
  if (!state)
    return error_reply(404, "unknown_order",
                       "no order " + std::string(order_id) + " was taken or processed here through " + backend->name);
  return {200,
          serialize({{"order_id", order_id},
                     {"backend", backend->name},
                     {"state", *state == State::processed ? "processed" : "accepted"}}),
          {}};
}

Reply OrderDesk::no_route(std::string_view method, std::string_view path) const {
  return error_reply(404, "no_route",
                     "no route for " + std::string(method) + " " + std::string(path) + "; try POST /" + framework_ +
                         "/orders/{backend} or GET /" + framework_ + "/orders/{backend}/{order_id}");
}

OrderDesk::Ticket OrderDesk::admit() {
  std::lock_guard lock(mutex_);
  if (!admitting_) return {};
  ++in_flight_;
  return Ticket(this, [](void* self) {
    auto* desk = static_cast<OrderDesk*>(self);
    std::lock_guard lock(desk->mutex_);
    if (--desk->in_flight_ == 0) desk->idle_.notify_all();
  });
}

void OrderDesk::stop_admitting() {
  std::lock_guard lock(mutex_);
  admitting_ = false;
}

bool OrderDesk::drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  return idle_.wait_for(lock, timeout, [this] { return in_flight_ == 0; });
}

Reply OrderDesk::shutting_down() const {
  Reply r = error_reply(503, "shutting_down", "this service is shutting down; try another instance");
  r.headers.emplace_back("Retry-After", "1");
  r.headers.emplace_back("Connection", "close");
  return r;
}

void OrderDesk::consume(Backend& backend) {
  while (!backend.stopping) {
    std::optional<Delivery> delivery;
    try {
      delivery = backend.subscriber->receive(200ms);
    } catch (const Error& e) {
      log_line(framework_, "consumer of " + backend.name + " stopped: " + e.what());
      return;
    }
    if (!delivery) continue;
    auto decoded = decode_event(delivery->message().payload);
    if (auto* reason = std::get_if<std::string>(&decoded)) {
      ++backend.rejected;
      log_line(framework_, "rejected message " + delivery->message().id + " from " + backend.name + ": " + *reason);
      delivery->reject(*reason);
      continue;
    }
    const auto& event = std::get<Event>(decoded);
    // The order's work would go here: reserve stock, send the confirmation mail, ...
    ++backend.processed;
    log_line(framework_, "processed order " + event.order_id + " from " + backend.name + " (user " + event.user_id +
                             ", " + std::to_string(event.products) + " product(s))");
    backend.remember(event.order_id, State::processed);
    delivery->ack();
  }
}

void OrderDesk::close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    admitting_ = false;
  }
  for (auto& b : backends_) b->stopping = true;
  for (auto& b : backends_)
    if (b->consumer.joinable()) b->consumer.join();
  for (auto& b : backends_) {
    if (b->subscriber) b->subscriber->close();
    if (b->broker) b->broker->close();
    if (b->broker)
      log_line(framework_, "closed " + b->name + ": published " + std::to_string(b->published) + ", processed " +
                               std::to_string(b->processed) + ", rejected " + std::to_string(b->rejected));
  }
}

// ---- signals --------------------------------------------------------------------------

void ShutdownSignal::block() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

namespace {

int wait_for_signal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  int signal = 0;
  while (sigwait(&set, &signal) != 0) {
  }
  return signal;
}

}  // namespace

int ShutdownSignal::wait() {
  int signal = wait_for_signal();
  std::thread([] {
    int again = wait_for_signal();
    std::fprintf(stderr, "received signal %d again during shutdown: exiting now\n", again);
    std::_Exit(1);
  }).detach();
  return signal;
}

}  // namespace ferry::examples
