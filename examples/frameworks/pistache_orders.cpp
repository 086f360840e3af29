// ferry's order endpoint served by Pistache.
//
//   POST /pistache/orders/{backend}       publish OrderCreated through that broker → 202
//   GET  /pistache/orders/{backend}/{id}  accepted, or processed by this process's consumer
//
// Pistache is asynchronous: the POST handler moves its ResponseWriter into the publish's
// completion callback and returns, so the reactor threads never wait for a broker. The
// callback sends the response from the broker's thread; Pistache queues the write to the
// connection's reactor.
// SIGINT/SIGTERM: new requests get 503, the requests in flight are answered (their
// responses written), then the endpoint shuts down and the brokers close.
#include <pistache/endpoint.h>
#include <pistache/http.h>
#include <pistache/router.h>

#include "order_desk.hpp"

namespace {

using namespace Pistache;
using ferry::examples::OrderDesk;
using ferry::examples::Reply;

constexpr int kThreads = 2;
constexpr std::size_t kMaxRequest = 64 * 1024 + 8 * 1024;  // a 64 KiB body and its headers

// Sends the reply; `ticket` is released once the response is written (or failed).
void respond(Http::ResponseWriter& response, const Reply& reply, OrderDesk::Ticket ticket = {}) {
  for (const auto& [name, value] : reply.headers) {
    if (name == "Connection" && value == "close")
      response.headers().add<Http::Header::Connection>(Http::ConnectionControl::Close);
    else
      response.headers().addRaw(Http::Header::Raw(name, value));
  }
  response.send(static_cast<Http::Code>(reply.status), reply.body, MIME(Application, Json))
      .then([ticket](ssize_t) {}, [ticket](std::exception_ptr) {});
}

std::string content_type(const Http::Request& request) {
  auto header = request.headers().tryGet<Http::Header::ContentType>();
  return header ? header->mime().toString() : std::string();
}

class OrderEndpoint {
 public:
  explicit OrderEndpoint(OrderDesk& desk) : desk_(desk) {}

  void routes(Rest::Router& router) {
    Rest::Routes::Post(router, "/pistache/orders/:backend", Rest::Routes::bind(&OrderEndpoint::create, this));
    Rest::Routes::Get(router, "/pistache/orders/:backend/:id", Rest::Routes::bind(&OrderEndpoint::lookup, this));
    router.addNotFoundHandler(Rest::Routes::bind(&OrderEndpoint::no_route, this));
  }

 private:
  void create(const Rest::Request& request, Http::ResponseWriter response) {
    auto ticket = desk_.admit();
    if (!ticket) return respond(response, desk_.shutting_down());
    // The callback may run later on a broker thread: it owns the writer from here on.
    auto writer = std::make_shared<Http::ResponseWriter>(std::move(response));
    desk_.place(request.param(":backend").as<std::string>(), content_type(request), request.body(),
                [writer, ticket](Reply reply) { respond(*writer, reply, ticket); });
  }

  void lookup(const Rest::Request& request, Http::ResponseWriter response) {
    respond(response,
            desk_.lookup(request.param(":backend").as<std::string>(), request.param(":id").as<std::string>()));
  }

  void no_route(const Rest::Request& request, Http::ResponseWriter response) {
    respond(response, desk_.no_route(Http::methodString(request.method()), request.resource()));
  }

  OrderDesk& desk_;
};

}  // namespace

int main(int argc, char** argv) {
  auto options = ferry::examples::parse_options(argc, argv, "pistache", 8083);
  ferry::examples::ShutdownSignal::block();
  try {
    OrderDesk desk("pistache", options.brokers);
    OrderEndpoint orders(desk);
    Rest::Router router;
    orders.routes(router);

    Http::Endpoint endpoint(Address(options.host, Port(options.port)));
    endpoint.init(
        Http::Endpoint::options().threads(kThreads).flags(Tcp::Options::ReuseAddr).maxRequestSize(kMaxRequest));
    endpoint.setHandler(router.handler());
    endpoint.serveThreaded();
    ferry::examples::log_line("pistache", "listening on " + options.host + ":" +
                                              std::to_string(static_cast<std::uint16_t>(endpoint.getPort())) +
                                              "; brokers " + desk.describe());

    int signal = ferry::examples::ShutdownSignal::wait();
    ferry::examples::log_line("pistache", "signal " + std::to_string(signal) + ": stopping");
    desk.stop_admitting();
    if (!desk.drain(std::chrono::seconds{10}))
      ferry::examples::log_line("pistache", "requests still in flight after 10 s; stopping anyway");
    endpoint.shutdown();
    desk.close();
    ferry::examples::log_line("pistache", "stopped");
    return 0;
  } catch (const std::exception& e) {
    ferry::examples::log_line("pistache", std::string("error: ") + e.what());
    return 1;
  }
}
