#include "ferry/error.hpp"

namespace ferry {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::ok: return "ok";
    case Errc::invalid_argument: return "invalid_argument";
    case Errc::bad_url: return "bad_url";
    case Errc::unknown_scheme: return "unknown_scheme";
    case Errc::unavailable: return "unavailable";
    case Errc::timeout: return "timeout";
    case Errc::closed: return "closed";
    case Errc::not_ferry_data: return "not_ferry_data";
    case Errc::storage: return "storage";
    case Errc::protocol: return "protocol";
    case Errc::internal: return "internal";
  }
  return "unknown";
}

void throw_if_error(const Status& status) {
  if (!status.ok()) throw Error(status);
}

}  // namespace ferry
