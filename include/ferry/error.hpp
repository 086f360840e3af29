#pragma once
// ferry's error vocabulary.
//
// Configuration and programming errors throw ferry::Error at the call that made them.
// Results that arrive later (a publish confirmation, a settlement) carry a ferry::Status;
// no exception crosses a thread or a callback. Every message says what went wrong and,
// where there is one, what to do about it.

#include <stdexcept>
#include <string>
#include <string_view>

namespace ferry {

enum class Errc {
  ok = 0,
  invalid_argument,  // a bad option, flag or message
  bad_url,           // a broker URL that cannot be parsed
  unknown_scheme,    // no backend registered for the URL's scheme
  unavailable,       // the broker cannot be reached or refused the operation
  timeout,           // the deadline passed before the broker took responsibility
  closed,            // the publisher, subscriber or broker was closed
  not_ferry_data,    // a file or topic that does not hold ferry's data
  storage,           // the storage engine failed (disk full, I/O error)
  protocol,          // the peer broke the wire protocol
  internal,          // a bug in ferry
};

// Short stable name of a code, e.g. "timeout".
std::string_view to_string(Errc code) noexcept;

// The outcome of an asynchronous operation. Cheap to copy; ok() when code is Errc::ok.
struct Status {
  Errc code = Errc::ok;
  std::string message;

  static Status success() { return {}; }
  bool ok() const noexcept { return code == Errc::ok; }
  explicit operator bool() const noexcept { return ok(); }
};

// The exception thrown for errors found at the call that caused them.
class Error : public std::runtime_error {
 public:
  Error(Errc code, const std::string& message) : std::runtime_error(message), code_(code) {}
  explicit Error(const Status& status) : Error(status.code, status.message) {}
  Errc code() const noexcept { return code_; }

 private:
  Errc code_;
};

// Throws Error when the status is not ok.
void throw_if_error(const Status& status);

}  // namespace ferry
