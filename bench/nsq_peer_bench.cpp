// nsq_peer_bench: ferry's publish and end-to-end benchmark (bench/bench.hpp) on nsq://,
// against the NSQ test peer started in this process, or against the nsqd given by --url.
//
//   nsq_peer_bench [--url nsq://HOST:PORT] [--messages N] [--size BYTES] [--producers P]
//                  [--window W] [--batch B] [--consumers C] [--json]
//
// With the in-process peer, the peer's own thread and CPU are part of what is measured
// (it shares the machine's cores with ferry's client and the benchmark's threads).
#include <cstdlib>
#include <iostream>
#include <string>

#include "bench.hpp"
#include "ferry/backends/nsq.hpp"
#include "ferry/error.hpp"
#include "nsq_peer.hpp"

int main(int argc, char** argv) {
  ferry::bench::Config config;
  config.consumers = 0;
  std::string url;
  bool json = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::cerr << "nsq_peer_bench: " << arg << " needs a value\n";
        std::exit(2);
      }
      return argv[++i];
    };
    if (arg == "--url")
      url = next();
    else if (arg == "--messages")
      config.messages = std::stoull(next());
    else if (arg == "--size")
      config.size = std::stoul(next());
    else if (arg == "--producers")
      config.producers = std::stoi(next());
    else if (arg == "--window")
      config.window = std::stoi(next());
    else if (arg == "--batch")
      config.batch = std::stoi(next());
    else if (arg == "--consumers")
      config.consumers = std::stoi(next());
    else if (arg == "--json")
      json = true;
    else {
      std::cerr << "usage: nsq_peer_bench [--url nsq://HOST:PORT] [--messages N] [--size BYTES] [--producers P] "
                   "[--window W] [--batch B] [--consumers C] [--json]\n";
      return arg == "--help" ? 0 : 2;
    }
  }
  ferry::nsq::register_scheme();
  std::unique_ptr<ferry::nsq_peer::Peer> peer;
  if (url.empty()) {
    peer = std::make_unique<ferry::nsq_peer::Peer>();
    peer->start();
    url = peer->url();
  }
  config.broker = url;
  try {
    config.validate();
    auto result = ferry::bench::run(config);
    if (json)
      ferry::bench::print_json(std::cout, config, result);
    else
      ferry::bench::print_text(std::cout, config, result);
    return result.publish_errors == 0 ? 0 : 1;
  } catch (const ferry::Error& e) {
    std::cerr << "nsq_peer_bench: " << e.what() << "\n";
    return 1;
  }
}
