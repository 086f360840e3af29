#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

Middleware dedup(std::shared_ptr<IdempotencyStore> store, std::chrono::milliseconds ttl) {
  return [store, ttl](Handler next) -> Handler {
    return [store, ttl, next = std::move(next)](Request& request) {
      const std::string& id = request.message().id;
      if (store->seen(id)) return;  // processed before: ack without running again
      next(request);
      store->remember(id, ttl);
    };
  };
}

}  // namespace ferry::middleware
