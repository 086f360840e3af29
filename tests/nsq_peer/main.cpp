// nsq_test_peer: serves the NSQ test peer on loopback until SIGINT or SIGTERM.
//
//   nsq_test_peer [--port N] [--http-port N] [--max-msg-size BYTES] [--msg-timeout MS]
//                 [--tls-cert PEM --tls-key PEM [--tls-required] [--tls-client-ca PEM]]
//
// Prints "nsq://127.0.0.1:PORT" (and "http 127.0.0.1:PORT" with --http-port) on one line
// each, then "listening on 127.0.0.1:PORT".
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "nsq_peer.hpp"

int main(int argc, char** argv) {
  ferry::nsq_peer::PeerOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto text = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "nsq_test_peer: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    auto value = [&]() -> long long { return std::atoll(text().c_str()); };
    if (arg == "--port")
      options.port = static_cast<int>(value());
    else if (arg == "--http-port")
      options.http_port = static_cast<int>(value());
    else if (arg == "--max-msg-size")
      options.max_msg_size = static_cast<std::size_t>(value());
    else if (arg == "--msg-timeout")
      options.msg_timeout = std::chrono::milliseconds{value()};
    else if (arg == "--tls-cert")
      options.tls_cert = text();
    else if (arg == "--tls-key")
      options.tls_key = text();
    else if (arg == "--tls-required")
      options.tls_required = true;
    else if (arg == "--tls-client-ca")
      options.tls_client_ca = text();
    else {
      std::cerr << "usage: nsq_test_peer [--port N] [--http-port N] [--max-msg-size BYTES] [--msg-timeout MS]\n"
                   "                     [--tls-cert PEM --tls-key PEM [--tls-required] [--tls-client-ca PEM]]\n";
      return arg == "--help" ? 0 : 2;
    }
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // before the peer's thread starts
  ferry::nsq_peer::Peer peer(options);
  try {
    peer.start();
  } catch (const std::exception& e) {
    std::cerr << "nsq_test_peer: " << e.what() << "\n";
    return 1;
  }
  std::cout << peer.url() << "\n";
  if (peer.http_port() >= 0) std::cout << "http 127.0.0.1:" << peer.http_port() << "\n";
  std::cout << "listening on " << peer.address() << std::endl;
  int sig = 0;
  sigwait(&signals, &sig);
  peer.stop();
  return 0;
}
