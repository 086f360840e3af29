// ferry's order endpoint served by cpp-httplib.
//
//   POST /httplib/orders/{backend}       publish OrderCreated through that broker → 202
//   GET  /httplib/orders/{backend}/{id}  accepted, or processed by this process's consumer
//
// cpp-httplib is thread-per-request: each request runs on a worker of the server's
// thread pool, and the handler waits there (not on an event loop) for the broker to
// confirm the publish. The pool's size bounds how many publishes wait at once.
// SIGINT/SIGTERM: stop() closes the listening socket and ends keep-alive connections
// after their current request; listen returns once every worker has finished its
// request, then the brokers are closed.
#include <httplib.h>

#include <future>
#include <thread>

#include "order_desk.hpp"

namespace {

using ferry::examples::OrderDesk;
using ferry::examples::Reply;

constexpr std::size_t kWorkers = 8;
constexpr std::size_t kMaxBody = 64 * 1024;

void respond(httplib::Response& res, const Reply& reply) {
  res.status = reply.status;
  for (const auto& [name, value] : reply.headers) res.set_header(name, value);
  res.set_content(reply.body, "application/json");
}

}  // namespace

int main(int argc, char** argv) {
  auto options = ferry::examples::parse_options(argc, argv, "httplib", 8081);
  ferry::examples::ShutdownSignal::block();
  try {
    OrderDesk desk("httplib", options.brokers);

    httplib::Server server;
    server.new_task_queue = [] { return new httplib::ThreadPool(kWorkers); };
    server.set_payload_max_length(kMaxBody);

    server.Post(R"(/httplib/orders/([^/]+))", [&desk](const httplib::Request& req, httplib::Response& res) {
      std::promise<Reply> confirmed;
      auto reply = confirmed.get_future();
      desk.place(req.matches[1].str(), req.get_header_value("Content-Type"), req.body,
                 [&confirmed](Reply r) { confirmed.set_value(std::move(r)); });
      respond(res, reply.get());
    });
    server.Get(R"(/httplib/orders/([^/]+)/([^/]+))", [&desk](const httplib::Request& req, httplib::Response& res) {
      respond(res, desk.lookup(req.matches[1].str(), req.matches[2].str()));
    });
    // Errors cpp-httplib answers itself (no route, 413, ...) get a JSON body too.
    server.set_error_handler(
        httplib::Server::HandlerWithResponse([&desk](const httplib::Request& req, httplib::Response& res) {
          if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
          if (res.status == 404)
            respond(res, desk.no_route(req.method, req.path));
          else if (res.status == 413)
            respond(res, ferry::examples::error_reply(413, "too_large", "the body is over 64 KiB"));
          else
            respond(res, ferry::examples::error_reply(res.status, "http_error", "the server refused the request"));
          return httplib::Server::HandlerResponse::Handled;
        }));

    int port = options.port;
    if (port == 0) {
      port = server.bind_to_any_port(options.host);
      if (port < 0) throw std::runtime_error("cannot listen on " + options.host + ":0");
    } else if (!server.bind_to_port(options.host, port)) {
      throw std::runtime_error("cannot listen on " + options.host + ":" + std::to_string(port));
    }
    ferry::examples::log_line(
        "httplib", "listening on " + options.host + ":" + std::to_string(port) + "; brokers " + desk.describe());
    std::thread serving([&server] { server.listen_after_bind(); });

    int signal = ferry::examples::ShutdownSignal::wait();
    ferry::examples::log_line("httplib", "signal " + std::to_string(signal) + ": stopping");
    server.stop();
    serving.join();
    desk.close();
    ferry::examples::log_line("httplib", "stopped");
    return 0;
  } catch (const std::exception& e) {
    ferry::examples::log_line("httplib", std::string("error: ") + e.what());
    return 1;
  }
}
