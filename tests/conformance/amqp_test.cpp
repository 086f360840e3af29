// amqp:// joins the conformance suite against a real RabbitMQ node, started once for the
// executable by the fixture (tests/integration/rabbitmq_fixture.hpp). Every case opens the
// same node; its topics are unique per case. The restart hook closes the handle, stops
// and starts the node on its data directory and port, and opens the URL again.
//
// This file is built into its own executable, ferry_amqp_conformance_tests
// (tests/integration/amqp.cmake), which ctest runs as one test so that the node starts
// once.

#include "ferry/backends/amqp.hpp"

#include "conformance.hpp"
#include "rabbitmq_fixture.hpp"

namespace {

const bool uses_rabbitmq = ferry::testing::use_rabbitmq();

std::shared_ptr<ferry::Broker> restart_rabbitmq(std::shared_ptr<ferry::Broker> broker, const std::string& url) {
  broker->close();
  broker.reset();
  ferry::testing::rabbitmq().restart();
  return ferry::Broker::open(url);
}

}  // namespace

FERRY_CONFORMANCE_BACKEND(amqp, ferry::testing::BackendSpec{
                                    .name = "amqp",
                                    .register_scheme = ferry::amqp::register_scheme,
                                    .make_url = [] { return ferry::testing::rabbitmq().url(); },
                                    .restart = restart_rabbitmq,
                                });
