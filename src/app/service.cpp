#include "service.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <csignal>
#include <cstdlib>
#include <future>
#include <boost/json.hpp>
#include <memory>
#include <optional>
#include <set>
#include <thread>

#include "ferry/broker.hpp"
#include "ferry/instrumented.hpp"
#include "ferry/metrics.hpp"
#include "http_server.hpp"
#include "order_api.hpp"
#include "order_store.hpp"
#include "processor.hpp"

namespace ferry::app {
namespace {

using SteadyClock = std::chrono::steady_clock;

bool valid_broker_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  return true;
}

// Waits for SIGINT or SIGTERM on a thread of its own. The first signal completes wait();
// a second one ends the process at once.
class SignalWaiter {
 public:
  SignalWaiter() : signals_(ioc_, SIGINT, SIGTERM) {
    signals_.async_wait([this](const boost::system::error_code& ec, int signal) {
      if (ec) return;
      first_.set_value(signal);
      signals_.async_wait([](const boost::system::error_code& ec2, int signal2) {
        if (ec2) return;
        spdlog::error("received signal {} again during shutdown: exiting now", signal2);
        spdlog::default_logger()->flush();
        std::_Exit(1);
      });
    });
    thread_ = std::thread([this] { ioc_.run(); });
  }

  ~SignalWaiter() {
    ioc_.stop();
    if (thread_.joinable()) thread_.join();
  }

  int wait() { return first_.get_future().get(); }

 private:
  boost::asio::io_context ioc_;
  boost::asio::signal_set signals_;
  std::promise<int> first_;
  std::thread thread_;
};

// Ends the process if shutdown overruns its bound by more than a second.
void arm_watchdog(SteadyClock::time_point deadline) {
  std::thread([deadline] {
    std::this_thread::sleep_until(deadline + std::chrono::seconds{1});
    spdlog::error("shutdown did not finish within its timeout; exiting now");
    spdlog::default_logger()->flush();
    std::_Exit(1);
  }).detach();
}

std::vector<NamedBroker> open_brokers(const std::vector<BrokerSpec>& specs) {
  std::vector<NamedBroker> out;
  for (const auto& spec : specs) out.push_back({spec.name, Broker::open(spec.url)});
  return out;
}

std::string describe_brokers(const std::vector<NamedBroker>& brokers) {
  std::string out;
  for (const auto& b : brokers) out += (out.empty() ? "" : ", ") + b.name + "=" + b.broker->url().masked();
  return out;
}

void validate_timeout(std::chrono::milliseconds t) {
  if (t.count() <= 0 || t > std::chrono::hours{1})
    throw Error(Errc::invalid_argument, "--shutdown-timeout must be between 1 ms and 1 hour");
}

void validate_processor(int concurrency, std::chrono::milliseconds ack_timeout) {
  ProcessorOptions options;
  options.concurrency = concurrency;
  options.ack_timeout = ack_timeout;
  options.validate();
}

struct ProcessorTotals {
  std::uint64_t processed = 0, duplicates = 0, rejected = 0, failed = 0, in_flight = 0;
};

std::vector<std::unique_ptr<OrderProcessor>> start_processors(const std::vector<NamedBroker>& brokers,
                                                              OrderStore& store, int concurrency,
                                                              std::chrono::milliseconds ack_timeout,
                                                              const std::string& role, metrics::Registry& registry) {
  std::vector<std::unique_ptr<OrderProcessor>> out;
  for (const auto& b : brokers) {
    ProcessorOptions options;
    options.concurrency = concurrency;
    options.ack_timeout = ack_timeout;
    options.registry = &registry;
    options.backend = b.name;
    options.name = role + ":" + std::to_string(::getpid()) + ":" + b.name;
    auto p = std::make_unique<OrderProcessor>(b.broker, store, options);
    p->start();
    out.push_back(std::move(p));
  }
  return out;
}

ProcessorTotals stop_processors(std::vector<std::unique_ptr<OrderProcessor>>& processors) {
  ProcessorTotals t;
  for (auto& p : processors) {
    t.in_flight += p->stop();
    const auto& c = p->counters();
    t.processed += c.processed.load();
    t.duplicates += c.duplicates.load();
    t.rejected += c.rejected.load();
    t.failed += c.failed.load();
  }
  return t;
}

void add_processor_metrics(OrderApi& api, const std::vector<std::unique_ptr<OrderProcessor>>& processors) {
  api.add_metrics([&processors](std::string& out) {
    std::uint64_t processed = 0, duplicates = 0, rejected = 0, failed = 0;
    for (const auto& p : processors) {
      processed += p->counters().processed.load();
      duplicates += p->counters().duplicates.load();
      rejected += p->counters().rejected.load();
      failed += p->counters().failed.load();
    }
    auto counter = [&](const char* name, const char* help, std::uint64_t v) {
      out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name + " " +
             std::to_string(v) + "\n";
    };
    counter("ferry_processor_processed_total", "Orders this process marked processed.", processed);
    counter("ferry_processor_duplicates_total", "Deliveries of orders already processed, acked.", duplicates);
    counter("ferry_processor_rejected_total", "Undecodable events moved to the dead-letter topic.", rejected);
    counter("ferry_processor_failed_total", "Deliveries nacked after a store failure.", failed);
  });
}

// Publish counts and latency per broker, and each broker's backlog where it can tell,
// labelled backend=<the broker's name> (its scheme unless named with --broker NAME=URL).
void instrument_brokers(std::vector<NamedBroker>& brokers, metrics::Registry& registry) {
  for (auto& b : brokers) {
    b.publisher = std::make_shared<InstrumentedPublisher>(b.broker->publisher(), registry, b.name);
    collect_backlog(registry, b.broker, b.name);
  }
}

// The route a request belongs to, as a metric label: paths with ids collapse to one.
std::string route_of(const HttpRequest& request) {
  std::string_view path = std::string_view(request.target).substr(0, request.target.find('?'));
  if (path == "/orders" || path == "/healthz" || path == "/readyz" || path == "/metrics") return std::string(path);
  if (path.starts_with("/orders/")) return request.method == "GET" ? "/orders/{id}" : "/orders/{backend}";
  if (path.starts_with("/beast/orders/"))
    return request.method == "GET" ? "/beast/orders/{id}" : "/beast/orders/{backend}";
  return "other";
}

// Wraps an HTTP handler so that every answer is counted by route, method and status,
// and timed.
HttpHandler measured(metrics::Registry& registry, HttpHandler inner) {
  auto* requests = &registry.counter("ferry_http_requests_total", "HTTP requests answered by the handler.",
                                     {"route", "method", "code"});
  auto* duration = &registry.histogram("ferry_http_request_duration_seconds", "From request read to answer.",
                                       {"route", "method"});
  return [requests, duration, inner = std::move(inner)](HttpRequest&& request, Responder respond) {
    auto route = route_of(request);
    auto method = request.method;
    auto start = SteadyClock::now();
    inner(std::move(request), [=, respond = std::move(respond)](HttpResponse response) {
      duration->labels({route, method}).observe(SteadyClock::now() - start);
      requests->labels({route, method, std::to_string(response.status)}).inc();
      respond(std::move(response));
    });
  };
}

// /metrics, /healthz and /readyz for a process without the order API (ferry consume).
HttpHandler metrics_endpoint(metrics::Registry& registry, const std::vector<NamedBroker>& brokers) {
  return [&registry, &brokers](HttpRequest&& request, Responder respond) {
    std::string_view path = std::string_view(request.target).substr(0, request.target.find('?'));
    if (request.method != "GET") return respond({405, "application/json", R"({"error":"method_not_allowed"})", {}});
    if (path == "/metrics") return respond({200, "text/plain; version=0.0.4; charset=utf-8", registry.render(), {}});
    if (path == "/healthz") return respond({200, "application/json", R"({"status":"ok"})", {}});
    if (path == "/readyz") {
      std::string failures;
      for (const auto& b : brokers)
        if (auto s = b.broker->ping(); !s.ok()) failures += (failures.empty() ? "" : "; ") + b.name + ": " + s.message;
      if (failures.empty()) return respond({200, "application/json", R"({"status":"ready"})", {}});
      boost::json::object body{{"error", "not_ready"}, {"detail", failures}};
      return respond({503, "application/json", boost::json::serialize(body), {}});
    }
    respond({404, "application/json", R"({"error":"not_found"})", {}});
  };
}

void close_brokers(std::vector<NamedBroker>& brokers) {
  for (auto& b : brokers) {
    try {
      b.broker->close();
    } catch (const std::exception& e) {
      spdlog::error("closing broker {} ({}) failed: {}", b.name, b.broker->url().masked(), e.what());
    }
  }
}

}  // namespace

ListenAddress parse_listen(std::string_view text) {
  auto bad = [&](const std::string& why) {
    return Error(Errc::invalid_argument,
                 "--listen '" + std::string(text) + "' " + why + "; use HOST:PORT, [IPv6]:PORT or :PORT");
  };
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) throw bad("has no port");
  std::string_view host = text.substr(0, colon);
  std::string_view port = text.substr(colon + 1);
  if (port.empty() || port.size() > 5) throw bad("has no valid port");
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') throw bad("has a port that is not a number");
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  if (value > 65535) throw bad("has a port above 65535");
  ListenAddress out;
  out.port = static_cast<std::uint16_t>(value);
  if (host.empty()) {
    out.host = "0.0.0.0";
  } else if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') throw bad("has an unclosed [IPv6] address");
    out.host = std::string(host.substr(1, host.size() - 2));
  } else {
    if (host.find(':') != std::string_view::npos) throw bad("has an IPv6 address without [brackets]");
    out.host = std::string(host);
  }
  return out;
}

std::vector<BrokerSpec> parse_broker_specs(const std::vector<std::string>& items) {
  if (items.empty()) throw Error(Errc::invalid_argument, "no --broker given");
  std::vector<BrokerSpec> out;
  std::set<std::string> names;
  for (const auto& item : items) {
    BrokerSpec spec;
    auto scheme_end = item.find("://");
    auto eq = item.find('=');
    if (eq != std::string::npos && (scheme_end == std::string::npos || eq < scheme_end)) {
      spec.name = item.substr(0, eq);
      spec.url = item.substr(eq + 1);
      if (!valid_broker_name(spec.name))
        throw Error(Errc::invalid_argument, "--broker name '" + spec.name +
                                                "' must be 1 to 64 characters from A-Z a-z 0-9 . _ - (as in name=URL)");
    } else {
      spec.url = item;
      spec.name = scheme_end == std::string::npos ? item : item.substr(0, scheme_end);
      if (!valid_broker_name(spec.name))
        throw Error(Errc::bad_url, "--broker '" + mask_url(item) + "' is not a broker URL such as sqlite://PATH");
    }
    if (!names.insert(spec.name).second)
      throw Error(Errc::invalid_argument,
                  "two brokers are named '" + spec.name + "'; name each one with --broker NAME=URL");
    out.push_back(std::move(spec));
  }
  return out;
}

int run_serve(const ServeConfig& config) {
  // Everything that can be checked without opening anything is checked first.
  auto specs = parse_broker_specs(config.brokers);
  auto listen = parse_listen(config.listen);
  if (config.threads < 0 || config.threads > 256)
    throw Error(Errc::invalid_argument, "--threads must be between 0 (one per core) and 256");
  validate_timeout(config.shutdown_timeout);
  validate_processor(config.concurrency, config.ack_timeout);
  for (const auto& spec : specs) Url::parse(spec.url);
  OrderStoreOptions store_options;
  store_options.path = config.store;
  store_options.validate();
  int threads =
      config.threads > 0 ? config.threads : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));

  SignalWaiter signals;
  metrics::Registry registry;
  auto brokers = open_brokers(specs);
  instrument_brokers(brokers, registry);
  OrderStore store(store_options);
  std::vector<std::unique_ptr<OrderProcessor>> processors;
  if (config.processor)
    processors = start_processors(brokers, store, config.concurrency, config.ack_timeout, "serve", registry);

  OrderApi api(brokers, store);
  HttpServerOptions http_options;
  http_options.host = listen.host;
  http_options.port = listen.port;
  http_options.threads = threads;
  http_options.handler_timeout = config.request_timeout;
  HttpServer server(http_options, measured(registry, [&api](HttpRequest&& request, Responder respond) {
                      api.handle(std::move(request), std::move(respond));
                    }));
  api.add_metrics([&server, &registry](std::string& out) {
    out +=
        "# HELP ferry_http_responses_total HTTP responses the server sent, by method and status code, including "
        "those sent before a handler ran (413, 400 for requests that do not parse).\n"
        "# TYPE ferry_http_responses_total counter\n";
    for (const auto& c : server.counts())
      out += "ferry_http_responses_total{method=\"" + c.method + "\",code=\"" + std::to_string(c.status) + "\"} " +
             std::to_string(c.count) + "\n";
    out += registry.render();
  });
  add_processor_metrics(api, processors);
  server.start();
  spdlog::info("ferry {} serve: listening on {}; brokers {} (default {}); store {}; processor {}; {} http thread(s)",
               config.version, server.local_address(), describe_brokers(brokers), brokers.front().name, store.path(),
               config.processor ? std::to_string(config.concurrency) + " worker(s) per broker" : std::string("off"),
               threads);

  int signal = signals.wait();
  auto started = SteadyClock::now();
  auto deadline = started + config.shutdown_timeout;
  arm_watchdog(deadline);
  spdlog::info("received signal {}: shutting down (at most {} ms)", signal, config.shutdown_timeout.count());

  // The HTTP side gets at most 70% of the bound, so that the processor and the brokers
  // still have time to finish when a client holds its connection to the end.
  auto http_deadline = started + config.shutdown_timeout * 7 / 10;
  server.stop_accepting();
  std::uint64_t requests = server.requests_in_flight();
  std::uint64_t publishes = api.counters().publishing.load();
  bool drained = server.wait_idle(http_deadline);
  drained = api.wait_publishes(deadline) && drained;
  if (!drained)
    spdlog::warn("shutdown: {} connection(s) and {} publish(es) still open at the deadline", server.connections(),
                 api.counters().publishing.load());
  auto totals = stop_processors(processors);
  api.stop();
  close_brokers(brokers);
  store.close();
  server.stop();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started).count();
  const auto& c = api.counters();
  spdlog::info(
      "shutdown: drained {} request(s) and {} publish(es) in flight, {} processor delivery(ies) in flight; "
      "served: accepted {}, replayed {}, invalid {}, conflicts {}, unavailable {}; "
      "processor: processed {}, duplicates {}, rejected {}, failed {}; done in {} ms",
      requests, publishes, totals.in_flight, c.accepted.load(), c.replayed.load(), c.invalid.load(), c.conflicts.load(),
      c.unavailable.load(), totals.processed, totals.duplicates, totals.rejected, totals.failed, ms);
  spdlog::default_logger()->flush();
  return drained ? 0 : 1;
}

int run_consume(const ConsumeConfig& config) {
  auto specs = parse_broker_specs(config.brokers);
  validate_timeout(config.shutdown_timeout);
  validate_processor(config.concurrency, config.ack_timeout);
  for (const auto& spec : specs) Url::parse(spec.url);
  OrderStoreOptions store_options;
  store_options.path = config.store;
  store_options.validate();

  std::optional<ListenAddress> metrics_listen;
  if (!config.metrics_listen.empty()) metrics_listen = parse_listen(config.metrics_listen);

  SignalWaiter signals;
  metrics::Registry registry;
  auto brokers = open_brokers(specs);
  for (const auto& b : brokers) collect_backlog(registry, b.broker, b.name);
  OrderStore store(store_options);
  auto processors = start_processors(brokers, store, config.concurrency, config.ack_timeout, "consume", registry);
  std::unique_ptr<HttpServer> metrics_server;
  if (metrics_listen) {
    HttpServerOptions o;
    o.host = metrics_listen->host;
    o.port = metrics_listen->port;
    o.threads = 1;
    metrics_server = std::make_unique<HttpServer>(o, metrics_endpoint(registry, brokers));
    metrics_server->start();
    spdlog::info("consume: metrics listening on {}", metrics_server->local_address());
  }
  spdlog::info(
      "ferry {} consume: processing topic orders as group order-processor from {}; store {}; "
      "{} worker(s) per broker",
      config.version, describe_brokers(brokers), store.path(), config.concurrency);

  int signal = signals.wait();
  auto started = SteadyClock::now();
  arm_watchdog(started + config.shutdown_timeout);
  spdlog::info("received signal {}: shutting down (at most {} ms)", signal, config.shutdown_timeout.count());
  auto totals = stop_processors(processors);
  if (metrics_server) metrics_server->stop();
  close_brokers(brokers);
  store.close();
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(SteadyClock::now() - started).count();
  spdlog::info(
      "consume: processed {}, duplicates {}, rejected {}, failed {}; finished {} delivery(ies) in flight; "
      "done in {} ms",
      totals.processed, totals.duplicates, totals.rejected, totals.failed, totals.in_flight, ms);
  spdlog::default_logger()->flush();
  return 0;
}

}  // namespace ferry::app
