#include "order_api.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/json.hpp>
#include <cctype>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "order.hpp"

namespace ferry::app {
namespace {

namespace json = boost::json;

constexpr std::size_t kMaxKeyLength = 200;

HttpResponse json_response(int status, const json::object& body) {
  return {status, "application/json", json::serialize(body), {}};
}

HttpResponse error_response(int status, std::string_view error, std::string_view detail) {
  return json_response(status, {{"error", error}, {"detail", detail}});
}

HttpResponse accepted_response(const std::string& order_id) {
  return json_response(202, {{"order_id", order_id}, {"status", "accepted"}});
}

HttpResponse unavailable_response(std::string_view detail) {
  auto r = error_response(503, "unavailable", detail);
  r.headers.emplace_back("Retry-After", "1");
  return r;
}

// "application/json" with any parameters (charset=utf-8) and any letter case.
bool is_json_content_type(std::string_view value) {
  auto semi = value.find(';');
  std::string_view type = value.substr(0, semi);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  constexpr std::string_view expected = "application/json";
  if (type.size() != expected.size()) return false;
  for (std::size_t i = 0; i < type.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(type[i])) != expected[i]) return false;
  return true;
}

bool valid_key(std::string_view key) {
  if (key.empty() || key.size() > kMaxKeyLength) return false;
  for (unsigned char c : key)
    if (c < 0x21 || c > 0x7e) return false;
  return true;
}

// W3C Trace Context: version "00"-style 2 hex, 32 hex trace id, 16 hex parent id, 2 hex
// flags, lower case; version ff and all-zero ids are invalid. Later versions may append
// fields after a '-', which are kept as sent.
bool valid_traceparent(std::string_view value) {
  constexpr std::size_t fields[] = {2, 32, 16, 2};
  if (value.size() < 55 || (value.size() > 55 && value[55] != '-')) return false;
  std::size_t at = 0;
  for (std::size_t f = 0; f < 4; ++f) {
    bool all_zero = true;
    for (std::size_t i = 0; i < fields[f]; ++i, ++at) {
      char c = value[at];
      if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
      if (c != '0') all_zero = false;
    }
    if (f < 3 && value[at++] != '-') return false;
    if ((f == 1 || f == 2) && all_zero) return false;
  }
  if (value.substr(0, 2) == "ff") return false;
  return value.size() == 55 || value.substr(0, 2) != "00";
}

json::object order_json(const OrderRecord& r) {
  json::array products;
  for (const auto& p : r.product_ids) products.emplace_back(p);
  json::object o{{"order_id", r.id},
                 {"user_id", r.user_id},
                 {"product_ids", std::move(products)},
                 {"state", r.state},
                 {"created_at", r.created_at}};
  if (r.processed_at)
    o["processed_at"] = *r.processed_at;
  else
    o["processed_at"] = nullptr;
  return o;
}

}  // namespace

class OrderApi::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(std::vector<NamedBroker> brokers, OrderStore& store, OrderApiOptions options)
      : brokers_(std::move(brokers)), store_(store), options_(std::move(options)) {
    if (brokers_.empty()) throw Error(Errc::invalid_argument, "the order API needs at least one broker");
  }

  void handle(HttpRequest&& request, Responder respond) {
    std::string_view target = request.target;
    std::string_view path = target.substr(0, target.find('?'));
    const std::string& method = request.method;
    // The framework examples' route form (/<framework>/orders/<backend>), for this server.
    constexpr std::string_view framework = "/beast";
    if (path.starts_with("/beast/orders/")) path.remove_prefix(framework.size());

    if (path == "/healthz") {
      if (method != "GET") return respond(method_not_allowed("GET"));
      return respond(json_response(200, {{"status", "ok"}}));
    }
    if (path == "/readyz") {
      if (method != "GET") return respond(method_not_allowed("GET"));
      return readyz(std::move(respond));
    }
    if (path == "/metrics") {
      if (method != "GET") return respond(method_not_allowed("GET"));
      return respond({200, "text/plain; version=0.0.4; charset=utf-8", metrics_text(), {}});
    }
    if (path == "/orders") {
      if (method != "POST") return respond(method_not_allowed("POST"));
      return post_order(brokers_.front(), std::move(request), std::move(respond));
    }
    constexpr std::string_view prefix = "/orders/";
    if (path.starts_with(prefix) && path.size() > prefix.size() &&
        path.find('/', prefix.size()) == std::string_view::npos) {
      std::string_view name = path.substr(prefix.size());
      if (method == "GET") return get_order(std::string(name), std::move(respond));
      if (method == "POST") {
        for (const auto& b : brokers_)
          if (b.name == name) return post_order(b, std::move(request), std::move(respond));
        std::string known;
        for (const auto& b : brokers_) known += (known.empty() ? "" : ", ") + b.name;
        counters_.invalid.fetch_add(1, std::memory_order_relaxed);
        return respond(error_response(404, "unknown_backend",
                                      "no broker named '" + std::string(name) + "' is configured; known: " + known));
      }
      return respond(method_not_allowed("GET, POST"));
    }
    respond(error_response(404, "not_found", "no route for " + std::string(path)));
  }

  void add_metrics(std::function<void(std::string&)> source) {
    std::lock_guard lock(metrics_mutex_);
    metrics_.push_back(std::move(source));
  }

  bool wait_publishes(std::chrono::steady_clock::time_point deadline) const {
    while (counters_.publishing.load() > 0) {
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds{5});
    }
    return true;
  }

  void stop() { probes_.join(); }

  const OrderApiCounters& counters() const noexcept { return counters_; }

 private:
  // One accepted request on its way through reservation, publish and store.
  struct Pending {
    const NamedBroker* broker = nullptr;
    OrderCreated event;
    std::optional<std::string> key;
    std::optional<std::string> traceparent;
    Responder respond;
  };

  // Requests sharing an Idempotency-Key while the first is in flight in this process.
  struct KeyInFlight {
    std::string fingerprint;
    std::vector<Responder> waiters;
  };

  static HttpResponse method_not_allowed(std::string allow) {
    auto r = error_response(405, "method_not_allowed", "use " + allow);
    r.headers.emplace_back("Allow", std::move(allow));
    return r;
  }

  void reject(const Responder& respond, HttpResponse response) {
    counters_.invalid.fetch_add(1, std::memory_order_relaxed);
    respond(std::move(response));
  }

  void post_order(const NamedBroker& broker, HttpRequest&& request, Responder respond) {
    if (!is_json_content_type(request.content_type))
      return reject(respond, error_response(415, "unsupported_media_type",
                                            "send the order as Content-Type: application/json, not '" +
                                                request.content_type + "'"));
    auto parsed = parse_order_request(request.body);
    if (parsed.problem == RequestProblem::malformed)
      return reject(respond, error_response(400, "malformed_json", parsed.detail));
    if (parsed.problem == RequestProblem::invalid)
      return reject(respond, error_response(422, "invalid_order", parsed.detail));
    if (request.idempotency_key && !valid_key(*request.idempotency_key))
      return reject(respond, error_response(400, "bad_idempotency_key",
                                            "Idempotency-Key must be 1 to 200 visible ASCII characters"));

    auto pending = std::make_shared<Pending>();
    pending->broker = &broker;
    pending->key = std::move(request.idempotency_key);
    if (request.traceparent && valid_traceparent(*request.traceparent))
      pending->traceparent = std::move(request.traceparent);
    pending->respond = std::move(respond);
    std::string order_id = make_order_id();
    if (!pending->key) {
      pending->event = make_order_created(std::move(order_id), *parsed.order);
      return publish(std::move(pending));
    }

    std::string fingerprint = parsed.order->fingerprint();
    {
      std::lock_guard lock(keys_mutex_);
      auto [it, inserted] = keys_.try_emplace(*pending->key);
      if (!inserted) {
        if (it->second.fingerprint != fingerprint) {
          counters_.conflicts.fetch_add(1, std::memory_order_relaxed);
          return pending->respond(conflict_response());
        }
        it->second.waiters.push_back(std::move(pending->respond));
        return;
      }
      it->second.fingerprint = fingerprint;
    }
    auto order = std::make_shared<OrderRequest>(std::move(*parsed.order));
    store_.reserve_key(*pending->key, fingerprint, order_id,
                       [self = shared_from_this(), pending, order](const Status& s, const KeyReservation& r) {
                         self->on_reserved(pending, *order, s, r);
                       });
  }

  static HttpResponse conflict_response() {
    return error_response(409, "idempotency_key_reused",
                          "this Idempotency-Key was used with a different request body; use a new key");
  }

  // Runs on the store's writer thread: must not block.
  void on_reserved(const std::shared_ptr<Pending>& pending, const OrderRequest& order, const Status& s,
                   const KeyReservation& r) {
    if (!s.ok()) {
      spdlog::error("POST /orders: reserving Idempotency-Key '{}' failed: {}", *pending->key, s.message);
      counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
      return finish(pending, unavailable_response("the order store is unavailable; retry later"));
    }
    switch (r.claim) {
      case KeyClaim::reserved:
      case KeyClaim::pending:
        pending->event = make_order_created(r.order_id, order);
        return publish(pending);
      case KeyClaim::done: {
        counters_.replayed.fetch_add(1, std::memory_order_relaxed);
        auto response = accepted_response(r.order_id);
        response.headers.emplace_back("Idempotent-Replayed", "true");
        return finish(pending, std::move(response));
      }
      case KeyClaim::conflict:
        counters_.conflicts.fetch_add(1, std::memory_order_relaxed);
        return finish(pending, conflict_response());
    }
  }

  void publish(std::shared_ptr<Pending> pending) {
    Message m;
    m.id = pending->event.order_id;
    m.key = pending->event.order_id;
    m.headers.emplace("content-type", "application/json");
    if (pending->traceparent) m.headers.emplace(header::traceparent, *pending->traceparent);
    m.payload = encode_order_created(pending->event);
    counters_.publishing.fetch_add(1);
    try {
      Publisher& publisher = pending->broker->publisher ? *pending->broker->publisher : pending->broker->broker->publisher();
      publisher.publish_async(
          options_.topic, std::move(m),
          [self = shared_from_this(), pending](const Status& s) { self->on_published(pending, s); });
    } catch (const std::exception& e) {
      on_published(pending, {Errc::internal, e.what()});
    }
  }

  // Runs on the broker's thread: must not block.
  void on_published(const std::shared_ptr<Pending>& pending, const Status& s) {
    if (!s.ok()) {
      spdlog::warn("POST /orders: publishing order {} to {} failed: {}", pending->event.order_id, pending->broker->name,
                   s.message);
      counters_.unavailable.fetch_add(1, std::memory_order_relaxed);
      finish(pending,
             unavailable_response("the broker '" + pending->broker->name + "' did not confirm the order; retry later"));
      counters_.publishing.fetch_sub(1);
      return;
    }
    store_.record_accepted(pending->event, pending->key, [self = shared_from_this(), pending](const Status& st) {
      if (!st.ok())
        spdlog::error(
            "POST /orders: order {} was published but not stored as accepted ({}); the processor will "
            "store it",
            pending->event.order_id, st.message);
      self->counters_.accepted.fetch_add(1, std::memory_order_relaxed);
      self->finish(pending, accepted_response(pending->event.order_id));
      self->counters_.publishing.fetch_sub(1);
    });
  }

  void finish(const std::shared_ptr<Pending>& pending, HttpResponse response) {
    if (!pending->key) return pending->respond(std::move(response));
    std::vector<Responder> waiters;
    {
      std::lock_guard lock(keys_mutex_);
      if (auto it = keys_.find(*pending->key); it != keys_.end()) {
        waiters = std::move(it->second.waiters);
        keys_.erase(it);
      }
    }
    for (auto& w : waiters) w(response);
    pending->respond(std::move(response));
  }

  void get_order(std::string id, Responder respond) {
    try {
      auto record = store_.find(id);
      if (!record) return respond(error_response(404, "not_found", "no order with id '" + id + "'"));
      respond(json_response(200, order_json(*record)));
    } catch (const std::exception& e) {
      spdlog::error("GET /orders/{}: {}", id, e.what());
      respond(unavailable_response("the order store is unavailable; retry later"));
    }
  }

  void readyz(Responder respond) {
    boost::asio::post(probes_, [self = shared_from_this(), respond = std::move(respond)] {
      json::object checks;
      std::string failures;
      for (const auto& b : self->brokers_) {
        Status s;
        try {
          s = b.broker->ping();
        } catch (const std::exception& e) {
          s = {Errc::internal, e.what()};
        }
        checks[b.name] = s.ok() ? "ok" : s.message;
        if (!s.ok()) failures += (failures.empty() ? "" : "; ") + ("broker " + b.name + ": " + s.message);
      }
      Status store = self->store_.ping();
      checks["store"] = store.ok() ? "ok" : store.message;
      if (!store.ok()) failures += (failures.empty() ? "" : "; ") + ("store: " + store.message);
      if (failures.empty()) return respond(json_response(200, {{"status", "ready"}, {"checks", checks}}));
      auto r = json_response(503, {{"error", "not_ready"}, {"detail", failures}, {"checks", checks}});
      r.headers.emplace_back("Retry-After", "1");
      respond(std::move(r));
    });
  }

  std::string metrics_text() {
    std::string out;
    auto counter = [&](const char* name, const char* help, std::uint64_t value) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
             std::to_string(value) + "\n";
    };
    counter("ferry_orders_accepted_total", "Orders accepted with a new publish.", counters_.accepted.load());
    counter("ferry_orders_replayed_total", "Orders answered from an earlier request with the same Idempotency-Key.",
            counters_.replayed.load());
    counter("ferry_orders_invalid_total", "Order requests refused as invalid (400, 404, 415, 422).",
            counters_.invalid.load());
    counter("ferry_orders_conflicts_total", "Order requests refused with 409.", counters_.conflicts.load());
    counter("ferry_orders_unavailable_total", "Order requests answered 503.", counters_.unavailable.load());
    out += "# HELP ferry_orders_publishing Publishes in flight.\n# TYPE ferry_orders_publishing gauge\n";
    out += "ferry_orders_publishing " + std::to_string(counters_.publishing.load()) + "\n";
    std::lock_guard lock(metrics_mutex_);
    for (const auto& source : metrics_) source(out);
    return out;
  }

  std::vector<NamedBroker> brokers_;
  OrderStore& store_;
  OrderApiOptions options_;
  OrderApiCounters counters_;
  boost::asio::thread_pool probes_{1};

  std::mutex keys_mutex_;
  std::unordered_map<std::string, KeyInFlight> keys_;

  std::mutex metrics_mutex_;
  std::vector<std::function<void(std::string&)>> metrics_;
};

OrderApi::OrderApi(std::vector<NamedBroker> brokers, OrderStore& store, OrderApiOptions options)
    : impl_(std::make_shared<Impl>(std::move(brokers), store, std::move(options))) {}

OrderApi::~OrderApi() {
  impl_->stop();
}

void OrderApi::handle(HttpRequest&& request, Responder respond) {
  impl_->handle(std::move(request), std::move(respond));
}

void OrderApi::add_metrics(std::function<void(std::string&)> source) {
  impl_->add_metrics(std::move(source));
}

bool OrderApi::wait_publishes(std::chrono::steady_clock::time_point deadline) const {
  return impl_->wait_publishes(deadline);
}

void OrderApi::stop() {
  impl_->stop();
}

const OrderApiCounters& OrderApi::counters() const noexcept {
  return impl_->counters();
}

}  // namespace ferry::app
