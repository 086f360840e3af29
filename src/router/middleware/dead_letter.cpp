#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

Middleware dead_letter() {
  return [](Handler next) -> Handler {
    return [next = std::move(next)](Request& request) {
      try {
        next(request);
      } catch (const Retry&) {
        throw;
      } catch (const Reject&) {
        throw;
      } catch (const std::exception& e) {
        if (request.attempt() > 1)
          throw Reject("after " + std::to_string(request.attempt()) + " attempts: " + e.what());
        throw Reject(e.what());
      }
    };
  };
}

}  // namespace ferry::middleware
