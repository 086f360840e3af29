// nsq:// joins the conformance suite against the protocol-level NSQ test peer
// (tests/nsq_peer), started once per process on a free loopback port and shared by every
// case (each case's topics and groups are unique).
//
// The peer runs with --max-msg-size 4 MiB because ferry's envelope (id, key, headers)
// makes a 1 MiB payload slightly larger than nsqd's default limit of exactly 1 MiB; the
// URL says the same with max_message_size.
//
// nsq_tls runs the same cases over TLS: a second peer with a certificate made by openssl
// for this process (tests/support/test_certificates.hpp), tls_required, and a URL with
// tls=true and the CA that signed it.
//
// No restart hook: the peer, like nsqd's in-memory queues, loses messages when it
// restarts, so the backend is not `persistent` and the restart cases skip for that
// reason. Reconnecting after a restart is covered by tests/integration/nsq_client_test.cpp.

#include "ferry/backends/nsq.hpp"

#include <unistd.h>

#include <filesystem>

#include "conformance.hpp"
#include "nsq_peer.hpp"
#include "test_certificates.hpp"

namespace {

namespace fs = std::filesystem;

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

// The certificates' directory, removed when the process exits.
struct CertificateDir {
  fs::path path = fs::temp_directory_path() / ("ferry-nsq-conformance-tls-" + std::to_string(::getpid()));
  ferry::testing::TestCertificates certs;
  CertificateDir() {
    fs::create_directories(path);
    certs = ferry::testing::make_test_certificates(path);
  }
  ~CertificateDir() {
    std::error_code ignored;
    fs::remove_all(path, ignored);
  }
};

const ferry::testing::TestCertificates& certificates() {
  static CertificateDir dir;
  return dir.certs;
}

ferry::nsq_peer::Peer& tls_peer() {
  static ferry::nsq_peer::Peer* instance = [] {
    ferry::nsq_peer::PeerOptions options;
    options.max_msg_size = 4 << 20;
    options.max_body_size = 8 << 20;
    options.tls_cert = certificates().server_cert().string();
    options.tls_key = certificates().server_key().string();
    options.tls_required = true;
    auto* p = new ferry::nsq_peer::Peer(options);  // lives until the process exits
    p->start();
    return p;
  }();
  return *instance;
}

std::string make_nsq_tls_url() {
  return tls_peer().url() +
         "?max_message_size=4194304&max_body_size=8388608&tls=true&tls_ca=" + certificates().ca().string();
}

}  // namespace

FERRY_CONFORMANCE_BACKEND(nsq, ferry::testing::BackendSpec{
                                   .name = "nsq",
                                   .register_scheme = ferry::nsq::register_scheme,
                                   .make_url = make_nsq_url,
                               });

FERRY_CONFORMANCE_BACKEND(nsq_tls, ferry::testing::BackendSpec{
                                       .name = "nsq_tls",
                                       .register_scheme = ferry::nsq::register_scheme,
                                       .make_url = make_nsq_tls_url,
                                   });
