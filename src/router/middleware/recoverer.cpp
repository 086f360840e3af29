#include <typeinfo>

#include "ferry/router/middleware.hpp"

namespace ferry::middleware {

Middleware recoverer() {
  return [](Handler next) -> Handler {
    return [next = std::move(next)](Request& request) {
      try {
        next(request);
      } catch (const Retry&) {
        throw;
      } catch (const Reject&) {
        throw;
      } catch (const std::exception& e) {
        throw Reject(std::string("handler threw ") + typeid(e).name() + ": " + e.what());
      } catch (...) {
        throw Reject("handler threw a non-standard exception");
      }
    };
  };
}

}  // namespace ferry::middleware
