// nsq:// joins the conformance suite against the protocol-level NSQ test peer
// (tests/nsq_peer), started once per process on a free loopback port and shared by every
// case (each case's topics and groups are unique).
//
// The peer runs with --max-msg-size 4 MiB because ferry's envelope (id, key, headers)
// makes a 1 MiB payload slightly larger than nsqd's default limit of exactly 1 MiB; the
// URL says the same with max_message_size.
//
// No restart hook: the peer, like nsqd's in-memory queues, loses messages when it
// restarts, so the backend is not `persistent` and the restart cases skip for that
// reason. Reconnecting after a restart is covered by tests/integration/nsq_client_test.cpp.

#include "ferry/backends/nsq.hpp"

#include "conformance.hpp"
#include "nsq_peer.hpp"

namespace {

ferry::nsq_peer::Peer& peer() {
  static ferry::nsq_peer::Peer* instance = [] {
    ferry::nsq_peer::PeerOptions options;
    options.max_msg_size = 4 << 20;
    options.max_body_size = 8 << 20;
    auto* p = new ferry::nsq_peer::Peer(options);  // lives until the process exits
    p->start();
    return p;
  }();
  return *instance;
}

std::string make_nsq_url() {
  return peer().url() + "?max_message_size=4194304&max_body_size=8388608";
}

}  // namespace

FERRY_CONFORMANCE_BACKEND(nsq, ferry::testing::BackendSpec{
                                   .name = "nsq",
                                   .register_scheme = ferry::nsq::register_scheme,
                                   .make_url = make_nsq_url,
                               });
