#include <librdkafka/rdkafka.h>
// rdkafka_mock.h needs rdkafka.h first.
#include <librdkafka/rdkafka_mock.h>

#include "ferry/backends/kafka.hpp"
#include "ferry/error.hpp"
#include "kafka_common.hpp"
#include "kafka_handles.hpp"
#include "kafka_options.hpp"

namespace ferry::kafka {
namespace {

struct ClusterDeleter {
  void operator()(rd_kafka_mock_cluster_t* p) const noexcept { rd_kafka_mock_cluster_destroy(p); }
};

}  // namespace

struct MockCluster::Impl {
  detail::HandlePtr owner;  // must outlive the cluster: declared first, destroyed last
  std::unique_ptr<rd_kafka_mock_cluster_t, ClusterDeleter> cluster;
  int brokers = 0;
};

MockCluster::MockCluster(int brokers) : impl_(std::make_unique<Impl>()) {
  if (brokers < 1 || brokers > 64) throw Error(Errc::invalid_argument, "a mock cluster has 1 to 64 brokers");
  detail::ConfPtr conf(rd_kafka_conf_new());
  detail::set_property(conf.get(), "log_level", "3");
  char errstr[512] = {0};
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf.get(), errstr, sizeof errstr);
  if (!rk) throw Error(Errc::internal, std::string("cannot create the mock cluster's handle: ") + errstr);
  conf.release();
  impl_->owner.reset(rk);
  impl_->cluster.reset(rd_kafka_mock_cluster_new(rk, brokers));
  if (!impl_->cluster) throw Error(Errc::internal, "cannot start librdkafka's mock cluster");
  impl_->brokers = brokers;
}

MockCluster::~MockCluster() {
  if (impl_) impl_->cluster.reset();
}

std::string MockCluster::bootstrap() const {
  return rd_kafka_mock_cluster_bootstraps(impl_->cluster.get());
}

std::string MockCluster::url() const {
  return "kafka://" + bootstrap() + "?create_topics=auto&session.timeout.ms=6000&fetch.wait.max.ms=10";
}

int MockCluster::brokers() const noexcept {
  return impl_->brokers;
}

void MockCluster::set_broker_down(int id) {
  if (id < 1 || id > impl_->brokers) throw Error(Errc::invalid_argument, "no mock broker " + std::to_string(id));
  rd_kafka_mock_broker_set_down(impl_->cluster.get(), id);
}

void MockCluster::set_broker_up(int id) {
  if (id < 1 || id > impl_->brokers) throw Error(Errc::invalid_argument, "no mock broker " + std::to_string(id));
  rd_kafka_mock_broker_set_up(impl_->cluster.get(), id);
}

void MockCluster::create_topic(const std::string& topic, int partitions, int replication) {
  rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(impl_->cluster.get(), topic.c_str(), partitions, replication);
  if (err)
    throw Error(detail::errc_for(err),
                "cannot create topic '" + topic + "' in the mock cluster: " + rd_kafka_err2str(err));
}

void MockCluster::fail_requests(int api_key, const std::vector<int>& errors) {
  std::vector<rd_kafka_resp_err_t> codes;
  for (int e : errors) codes.push_back(static_cast<rd_kafka_resp_err_t>(e));
  rd_kafka_mock_push_request_errors_array(impl_->cluster.get(), static_cast<std::int16_t>(api_key), codes.size(),
                                          codes.data());
}

}  // namespace ferry::kafka
