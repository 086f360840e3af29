#include "kafka_common.hpp"

#include <pthread.h>
#include <spdlog/spdlog.h>

#include <cstring>

namespace ferry::kafka::detail {
namespace {

void log_cb(const rd_kafka_t* rk, int level, const char* facility, const char* buf) {
  // Configuration warnings (a consumer property given to the producer, ...) are expected
  // with properties shared by both clients; those of properties given to one client alone
  // are errors (Options::from_url).
  if (std::strcmp(facility, "CONFWARN") == 0) {
    level = 7;
    if (auto* log = static_cast<ErrorLog*>(rd_kafka_opaque(rk))) log->note_config_warning(buf);
  }
  spdlog::level::level_enum lvl = level <= 2   ? spdlog::level::err
                                  : level == 3 ? spdlog::level::warn
                                  : level == 4 ? spdlog::level::info
                                               : spdlog::level::debug;
  spdlog::log(lvl, "kafka {} {}: {}", rd_kafka_name(rk), facility, buf);
}

void error_cb(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
  auto* log = static_cast<ErrorLog*>(opaque);
  auto code = static_cast<rd_kafka_resp_err_t>(err);
  if (log) log->record(code, reason);
  if (code == RD_KAFKA_RESP_ERR__FATAL) {
    char why[512] = {0};
    rd_kafka_fatal_error(rk, why, sizeof why);
    spdlog::error("kafka {}: fatal error: {}", log ? log->what() : rd_kafka_name(rk), why);
  } else {
    spdlog::debug("kafka {}: {} ({})", log ? log->what() : rd_kafka_name(rk), reason, rd_kafka_err2name(code));
  }
}

}  // namespace

void ErrorLog::record(rd_kafka_resp_err_t err, const char* reason) {
  std::lock_guard lock(mutex_);
  last_ = std::string(reason ? reason : rd_kafka_err2str(err));
  last_at_ = std::chrono::steady_clock::now();
}

std::string ErrorLog::suffix() const {
  std::lock_guard lock(mutex_);
  if (last_.empty() || std::chrono::steady_clock::now() - last_at_ > std::chrono::minutes{1}) return {};
  return "; last broker error: " + last_;
}

void ErrorLog::note_config_warning(const char* text) {
  std::lock_guard lock(mutex_);
  config_warnings_.emplace_back(text ? text : "");
}

std::vector<std::string> ErrorLog::config_warnings() const {
  std::lock_guard lock(mutex_);
  return config_warnings_;
}

void install_callbacks(rd_kafka_conf_t* conf, ErrorLog* log) {
  rd_kafka_conf_set_log_cb(conf, log_cb);
  rd_kafka_conf_set_error_cb(conf, error_cb);
  rd_kafka_conf_set_opaque(conf, log);
}

Errc errc_for(rd_kafka_resp_err_t err) noexcept {
  switch (err) {
    case RD_KAFKA_RESP_ERR_NO_ERROR:
      return Errc::ok;
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
      return Errc::timeout;
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__DESTROY:
      return Errc::closed;
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_INVALID_PARTITIONS:
    case RD_KAFKA_RESP_ERR_INVALID_REPLICATION_FACTOR:
    case RD_KAFKA_RESP_ERR__INVALID_ARG:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
      return Errc::invalid_argument;
    case RD_KAFKA_RESP_ERR__BAD_MSG:
    case RD_KAFKA_RESP_ERR_INVALID_MSG:
    case RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION:
      return Errc::protocol;
    default:
      return Errc::unavailable;
  }
}

void name_thread(const char* name) noexcept {
  pthread_setname_np(pthread_self(), name);
}

}  // namespace ferry::kafka::detail
