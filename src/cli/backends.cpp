#include "backends.hpp"

#include "ferry/backends/amqp.hpp"
#include "ferry/backends/kafka.hpp"
#include "ferry/backends/memory.hpp"
#include "ferry/backends/nsq.hpp"
#include "ferry/backends/sqlite.hpp"

namespace ferry::cli {

void register_backends() {
  memory::register_scheme();
  sqlite::register_scheme();
  amqp::register_scheme();
  kafka::register_scheme();
  nsq::register_scheme();
}

}  // namespace ferry::cli
