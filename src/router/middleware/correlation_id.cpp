#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

Middleware correlation_id() {
  return [](Handler next) -> Handler {
    return [next = std::move(next)](Request& request) {
      auto& headers = request.message().headers;
      auto [it, inserted] = headers.try_emplace(header::correlation_id, request.message().id);
      std::string correlation = it->second;
      auto trace = headers.find(header::traceparent);
      std::optional<std::string> traceparent;
      if (trace != headers.end()) traceparent = trace->second;
      next(request);
      for (auto& out : request.outputs()) {
        out.headers.try_emplace(header::correlation_id, correlation);
        if (traceparent) out.headers.try_emplace(header::traceparent, *traceparent);
      }
    };
  };
}

}  // namespace ferry::middleware
