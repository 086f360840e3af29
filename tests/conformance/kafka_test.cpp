// kafka:// joins the conformance suite on librdkafka's mock cluster: three brokers,
// started in-process on first use and shared by every case of the process (each case's
// topics and groups are unique). MockCluster::url() carries the settings the mock needs
// (see include/ferry/backends/kafka.hpp). The subscribers of one handle share a group
// member, so most cases exercise ferry's own distribution and settlement on top of one
// Kafka consumer; tests/integration/kafka_rebalance_test.cpp covers members in several
// handles handing partitions over.
//
// Restart: the broker handle is closed, every mock broker is taken down and brought back
// (the mock keeps its logs and committed offsets, like brokers with disks), and the URL
// is opened again. In stress mode the cluster is shared by the parallel runs, so there the
// hook only reopens the handle.

#include "ferry/backends/kafka.hpp"

#include <thread>

#include "conformance.hpp"

namespace {

ferry::kafka::MockCluster& cluster() {
  static ferry::kafka::MockCluster instance(3);
  return instance;
}

std::string make_kafka_url() {
  return cluster().url() + "&admin_timeout=5s";
}

std::shared_ptr<ferry::Broker> restart_kafka(std::shared_ptr<ferry::Broker> broker, const std::string& url) {
  broker->close();
  broker.reset();
  if (ferry::testing::stress_factor() == 1) {
    for (int id = 1; id <= cluster().brokers(); ++id) cluster().set_broker_down(id);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    for (int id = 1; id <= cluster().brokers(); ++id) cluster().set_broker_up(id);
  }
  return ferry::Broker::open(url);
}

}  // namespace

FERRY_CONFORMANCE_BACKEND(kafka, ferry::testing::BackendSpec{
                                     .name = "kafka",
                                     .register_scheme = ferry::kafka::register_scheme,
                                     .make_url = make_kafka_url,
                                     .restart = restart_kafka,
                                     .patience = std::chrono::milliseconds{20'000},
                                 });
