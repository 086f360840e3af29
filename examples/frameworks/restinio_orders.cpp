// ferry's order endpoint served by RESTinio.
//
//   POST /restinio/orders/{backend}       publish OrderCreated through that broker → 202
//   GET  /restinio/orders/{backend}/{id}  accepted, or processed by this process's consumer
//
// RESTinio is asynchronous: the POST handler starts the publish and returns
// request_accepted() at once, so the event loop's threads never wait for a broker. The
// publisher's completion callback builds the response; RESTinio hands it to the
// connection's strand, from whichever thread it comes.
// SIGINT/SIGTERM: new requests get 503, the acceptor closes, the requests in flight are
// answered (their responses written), then the event loop stops and the brokers close.
#include <future>
#include <restinio/all.hpp>
#include <thread>

#include "order_desk.hpp"

namespace {

using ferry::examples::OrderDesk;
using ferry::examples::Reply;

using Router = restinio::router::express_router_t<>;
struct Traits : restinio::default_traits_t {
  using request_handler_t = Router;
};

constexpr std::size_t kThreads = 2;
constexpr std::uint64_t kMaxBody = 64 * 1024;

const char* reason_phrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 202:
      return "Accepted";
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Entity";
    case 503:
      return "Service Unavailable";
    default:
      return "Status";
  }
}

std::string text(restinio::string_view_t view) {
  return std::string(view.data(), view.size());
}

// Sends the reply; `ticket` is released once the response is written (or the connection
// is gone).
restinio::request_handling_status_t respond(const restinio::request_handle_t& req, const Reply& reply,
                                            OrderDesk::Ticket ticket = {}) {
  auto response = req->create_response(restinio::http_status_line_t{
      restinio::http_status_code_t{static_cast<std::uint16_t>(reply.status)}, reason_phrase(reply.status)});
  response.append_header(restinio::http_field::content_type, "application/json");
  for (const auto& [name, value] : reply.headers) {
    if (name == "Connection" && value == "close")
      response.connection_close();
    else
      response.append_header(name, value);
  }
  response.set_body(reply.body);
  return response.done([ticket = std::move(ticket)](const auto&) {});
}

}  // namespace

int main(int argc, char** argv) {
  auto options = ferry::examples::parse_options(argc, argv, "restinio", 8082);
  ferry::examples::ShutdownSignal::block();
  try {
    OrderDesk desk("restinio", options.brokers);

    auto router = std::make_unique<Router>();
    router->http_post("/restinio/orders/:backend", [&desk](auto req, auto params) {
      auto ticket = desk.admit();
      if (!ticket) return respond(req, desk.shutting_down());
      desk.place(text(params["backend"]), req->header().get_field_or(restinio::http_field::content_type, ""),
                 req->body(), [req, ticket](Reply reply) { respond(req, reply, ticket); });
      return restinio::request_accepted();
    });
    router->http_get("/restinio/orders/:backend/:id", [&desk](auto req, auto params) {
      return respond(req, desk.lookup(text(params["backend"]), text(params["id"])));
    });
    router->non_matched_request_handler([&desk](auto req) {
      return respond(req, desk.no_route(req->header().method().c_str(), text(req->header().path())));
    });

    restinio::asio_ns::io_context ioc;
    std::uint16_t port = 0;
    restinio::http_server_t<Traits> server{
        restinio::external_io_context(ioc),
        restinio::server_settings_t<Traits>{}
            .address(options.host)
            .port(options.port)
            .request_handler(std::move(router))
            .incoming_http_msg_limits(restinio::incoming_http_msg_limits_t{}.max_body_size(kMaxBody))
            .acceptor_post_bind_hook([&port](auto& acceptor) { port = acceptor.local_endpoint().port(); })};

    std::promise<void> opened;
    server.open_async([&opened] { opened.set_value(); },
                      [&opened](std::exception_ptr e) { opened.set_exception(std::move(e)); });
    auto work = restinio::asio_ns::make_work_guard(ioc);
    std::vector<std::thread> threads;
    for (std::size_t i = 0; i < kThreads; ++i) threads.emplace_back([&ioc] { ioc.run(); });
    auto stop_threads = [&] {
      work.reset();
      ioc.stop();
      for (auto& t : threads) t.join();
    };
    try {
      opened.get_future().get();
    } catch (...) {
      stop_threads();
      throw;
    }
    ferry::examples::log_line(
        "restinio", "listening on " + options.host + ":" + std::to_string(port) + "; brokers " + desk.describe());

    int signal = ferry::examples::ShutdownSignal::wait();
    ferry::examples::log_line("restinio", "signal " + std::to_string(signal) + ": stopping");
    desk.stop_admitting();
    std::promise<void> closed;
    server.close_async([&closed] { closed.set_value(); },
                       [&closed](std::exception_ptr e) { closed.set_exception(std::move(e)); });
    closed.get_future().wait();
    if (!desk.drain(std::chrono::seconds{10}))
      ferry::examples::log_line("restinio", "requests still in flight after 10 s; stopping anyway");
    stop_threads();
    desk.close();
    ferry::examples::log_line("restinio", "stopped");
    return 0;
  } catch (const std::exception& e) {
    ferry::examples::log_line("restinio", std::string("error: ") + e.what());
    return 1;
  }
}
