#pragma once
// Pieces the producer and the consumers share: librdkafka's log and error callbacks routed
// to spdlog, and the mapping of librdkafka error codes to ferry's.

#include <chrono>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "ferry/error.hpp"
#include "kafka_handles.hpp"

namespace ferry::kafka::detail {

// What a client remembers of librdkafka's error callback, to explain later failures. It is
// the handle's opaque: `owner` leads the other callbacks to the object that owns the
// handle. Thread-safe.
class ErrorLog {
 public:
  ErrorLog(std::string what, void* owner) : what_(std::move(what)), owner_(owner) {}
  void* owner() const noexcept { return owner_; }
  void record(rd_kafka_resp_err_t err, const char* reason);
  // "" or "; last broker error: ..." for appending to a message, if that error came in the
  // last minute (an older one would explain nothing).
  std::string suffix() const;
  const std::string& what() const noexcept { return what_; }
  // librdkafka's configuration warnings for the handle (given while it is made).
  void note_config_warning(const char* text);
  std::vector<std::string> config_warnings() const;

 private:
  std::string what_;
  void* owner_;
  mutable std::mutex mutex_;
  std::string last_;
  std::chrono::steady_clock::time_point last_at_{};
  std::vector<std::string> config_warnings_;
};

// Routes librdkafka's logs to spdlog and its error callback to `log` (which must outlive
// the handle made from `conf`).
void install_callbacks(rd_kafka_conf_t* conf, ErrorLog* log);

// ferry's code for a librdkafka error.
Errc errc_for(rd_kafka_resp_err_t err) noexcept;

// Names the calling thread (at most 15 characters).
void name_thread(const char* name) noexcept;

}  // namespace ferry::kafka::detail
