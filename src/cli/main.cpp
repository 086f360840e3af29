// The `ferry` command: the order service, its consumer, and tools for any broker.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <pthread.h>
#include <signal.h>

#include <cctype>
#include <iostream>

#include "backends.hpp"
#include "bench.hpp"
#include "commands.hpp"
#include "ferry/backends/kafka.hpp"
#include "ferry/error.hpp"
#include "tools.hpp"
#if FERRY_HAVE_NSQ_PEER
#include "nsq_peer.hpp"
#endif

namespace {

constexpr const char* kDefaultBroker = "sqlite://./ferry-data/ferry.db";

int exit_code_for(ferry::Errc code) {
  switch (code) {
    case ferry::Errc::invalid_argument:
    case ferry::Errc::bad_url:
    case ferry::Errc::unknown_scheme: return 2;
    default: return 1;
  }
}

// `ferry dev kafka`: librdkafka's mock cluster on loopback until SIGINT or SIGTERM.
int run_dev_kafka(int brokers) {
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // before the cluster's threads start
  ferry::kafka::MockCluster cluster(brokers);
  std::cout << "bootstrap: " << cluster.bootstrap() << "\n"
            << "broker URL: " << cluster.url() << "\n"
            << "librdkafka's mock Kafka cluster with " << brokers
            << " brokers, in memory; Ctrl-C stops it. Try: ferry serve --broker '" << cluster.url() << "'"
            << std::endl;
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  std::cout << "stopping the mock cluster" << std::endl;
  return 0;
}

// `ferry dev nsq`: ferry's NSQ test peer (tests/nsq_peer) on loopback until SIGINT or SIGTERM.
// With a certificate and key it offers TLS as nsqd's --tls-cert / --tls-key do.
struct DevNsqTls {
  std::string cert, key;
  bool required = false;
};

int run_dev_nsq(int port, std::size_t max_msg_size, const DevNsqTls& tls) {
#if FERRY_HAVE_NSQ_PEER
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);  // before the peer's thread starts
  ferry::nsq_peer::PeerOptions options;
  options.port = port;
  options.max_msg_size = max_msg_size;
  options.tls_cert = tls.cert;
  options.tls_key = tls.key;
  options.tls_required = tls.required;
  ferry::nsq_peer::Peer peer(options);
  try {
    peer.start();
  } catch (const std::exception& e) {
    throw ferry::Error(ferry::Errc::invalid_argument, e.what());
  }
  std::string url = peer.url();
  std::string query;
  if (max_msg_size != 1'048'576) query += "&max_message_size=" + std::to_string(max_msg_size);
  if (!tls.cert.empty()) query += "&tls=true&tls_ca=<the CA that signed " + tls.cert + ">";
  if (!query.empty()) url += "?" + query.substr(1);
  std::cout << "broker URL: " << url << "\n"
            << "ferry's NSQ test peer (an nsqd-compatible server, in memory, not nsqd); Ctrl-C stops it. "
            << "Try: ferry serve --broker '" << url << "'" << std::endl;
  int signal_number = 0;
  sigwait(&stop, &signal_number);
  std::cout << "stopping the NSQ test peer" << std::endl;
  peer.stop();
  return 0;
#else
  (void)port;
  (void)max_msg_size;
  (void)tls;
  throw ferry::Error(ferry::Errc::invalid_argument, "this ferry was built without its tests, so without the NSQ test peer");
#endif
}

// Appends each --kafka-prop KEY=VALUE to the query of a kafka:// URL (also "NAME=kafka://...").
void add_kafka_properties(std::string& url, const std::vector<std::string>& properties) {
  if (properties.empty() || url.find("kafka://") == std::string::npos) return;
  auto escape = [](const std::string& text) {
    std::string out;
    for (unsigned char c : text) {
      if (std::isalnum(c) || c == '.' || c == '_' || c == '-' || c == '~' || c == '/' || c == ':' || c == ',') {
        out.push_back(static_cast<char>(c));
      } else {
        const char* hex = "0123456789ABCDEF";
        out += {'%', hex[c >> 4], hex[c & 15]};
      }
    }
    return out;
  };
  for (const auto& property : properties) {
    auto eq = property.find('=');
    if (eq == std::string::npos || eq == 0)
      throw ferry::Error(ferry::Errc::invalid_argument, "--kafka-prop '" + property + "' is not KEY=VALUE");
    url += url.find('?') == std::string::npos ? '?' : '&';
    url += escape(property.substr(0, eq)) + "=" + escape(property.substr(eq + 1));
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry: one messaging API over an embedded SQLite broker, Kafka, RabbitMQ and NSQ,\n"
               "and the order service built on it.",
               "ferry"};
  app.require_subcommand(1);
  app.fallthrough();  // --log-level also after the command: ferry serve --log-level debug
  app.set_version_flag("--version", std::string(FERRY_VERSION));
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->envname("FERRY_LOG_LEVEL")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));

  auto broker_option = [](CLI::App* cmd, std::string& target) {
    target = kDefaultBroker;
    return cmd->add_option("--broker", target,
                           "broker URL: sqlite://PATH, memory://, kafka://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST "
                           "or nsq://HOST:PORT")
        ->envname("FERRY_BROKER")
        ->capture_default_str();
  };

  std::function<int()> action;

  // serve and consume: the order service.
  ferry::cli::ServeArgs serve_args;
  auto* serve = app.add_subcommand("serve", "run the order service: HTTP API and, unless --no-processor, the order processor");
  ferry::cli::add_serve_options(*serve, serve_args, kDefaultBroker);
  serve->callback([&] { action = [&] { return ferry::cli::run_serve(serve_args); }; });

  ferry::cli::ConsumeArgs consume_args;
  auto* consume = app.add_subcommand("consume", "run the order processor alone, as a separate service");
  ferry::cli::add_consume_options(*consume, consume_args, kDefaultBroker);
  consume->callback([&] { action = [&] { return ferry::cli::run_consume(consume_args); }; });

  // publish
  ferry::cli::PublishArgs publish_args;
  auto* publish = app.add_subcommand("publish", "publish messages: each argument, or each line of standard input");
  broker_option(publish, publish_args.broker);
  publish->add_option("-t,--topic", publish_args.topic, "topic to publish to")->required();
  publish->add_option("-k,--key", publish_args.key, "message key (ordering and partitioning)");
  publish->add_option("-H,--header", publish_args.headers, "header name=value (repeatable)")->allow_extra_args(false);
  publish->add_option("messages", publish_args.messages, "payloads; none: read one per line from standard input");
  publish->callback([&] { action = [&] { return ferry::cli::run_publish(publish_args); }; });

  // tail
  ferry::cli::TailArgs tail_args;
  auto* tail = app.add_subcommand("tail", "print a topic's new messages through a throwaway group");
  broker_option(tail, tail_args.broker);
  tail->add_option("-t,--topic", tail_args.topic, "topic to follow")->required();
  tail->add_option("-n,--count", tail_args.count, "stop after this many messages (0: until Ctrl-C)");
  tail->add_flag("--json", tail_args.json, "one JSON object per message");
  tail->callback([&] { action = [&] { return ferry::cli::run_tail(tail_args); }; });

  // stats
  std::string stats_broker;
  bool stats_json = false;
  auto* stats = app.add_subcommand("stats", "topics, groups, backlog and dead letters");
  broker_option(stats, stats_broker);
  stats->add_flag("--json", stats_json, "print JSON");
  stats->callback([&] { action = [&] { return ferry::cli::run_stats(stats_broker, stats_json); }; });

  // dlq list | replay | purge
  ferry::cli::DlqArgs dlq_args;
  auto* dlq = app.add_subcommand("dlq", "inspect, replay or purge a dead-letter topic");
  dlq->require_subcommand(1);
  auto dlq_common = [&](CLI::App* cmd) {
    broker_option(cmd, dlq_args.broker);
    cmd->add_option("-t,--topic", dlq_args.topic, "the dead-letter topic, e.g. orders.order-processor.dlq")
        ->required();
  };
  auto* dlq_list = dlq->add_subcommand("list", "show dead letters with their reasons, without consuming them");
  dlq_common(dlq_list);
  dlq_list->add_option("--limit", dlq_args.limit, "show at most this many")->capture_default_str();
  dlq_list->callback([&] { action = [&] { return ferry::cli::run_dlq_list(dlq_args); }; });
  auto* dlq_replay = dlq->add_subcommand("replay", "publish dead letters back to their original topic");
  dlq_common(dlq_replay);
  dlq_replay->add_option("--limit", dlq_args.limit, "replay at most this many")->capture_default_str();
  dlq_replay->callback([&] { action = [&] { return ferry::cli::run_dlq_replay(dlq_args); }; });
  auto* dlq_purge = dlq->add_subcommand("purge", "delete every dead letter of the topic");
  dlq_common(dlq_purge);
  dlq_purge->callback([&] { action = [&] { return ferry::cli::run_dlq_purge(dlq_args); }; });

  // bench
  ferry::bench::Config bench_config;
  bool bench_json = false;
  auto* bench = app.add_subcommand("bench", "measure publish and end-to-end throughput and latency");
  broker_option(bench, bench_config.broker);
  bench_config.broker = "sqlite://./ferry-data/bench.db";
  bench->add_option("--messages", bench_config.messages, "messages to publish")->capture_default_str();
  bench->add_option("--size", bench_config.size, "payload bytes")->capture_default_str();
  bench->add_option("--producers", bench_config.producers, "publishing threads")->capture_default_str();
  bench->add_option("--consumers", bench_config.consumers, "consuming threads (one group)")->capture_default_str();
  bench->add_option("--window", bench_config.window, "publishes in flight per producer")->capture_default_str();
  bench->add_option("--batch", bench_config.batch, "messages per publish call")->capture_default_str();
  bench->add_option("--rate", bench_config.rate, "offered load in msg/s (0: as fast as possible)")
      ->capture_default_str();
  bench->add_option("--warmup", bench_config.warmup_s,
                    "seconds from the start whose messages' latencies are not counted (reported apart)")
      ->capture_default_str();
  bench->add_option("--topic", bench_config.topic, "topic (default: a fresh one per run)");
  bench->add_flag("--json", bench_json, "print one JSON object");
  bench->callback([&] {
    action = [&] {
      auto result = ferry::bench::run(bench_config);
      if (bench_json) ferry::bench::print_json(std::cout, bench_config, result);
      else ferry::bench::print_text(std::cout, bench_config, result);
      return result.publish_errors == 0 && (bench_config.consumers == 0 || result.consumed >= result.published) ? 0 : 1;
    };
  });

  // dev kafka
  int dev_brokers = 3;
  auto* dev = app.add_subcommand("dev", "run a broker for trying ferry out");
  dev->require_subcommand(1);
  auto* dev_kafka = dev->add_subcommand("kafka", "run librdkafka's mock Kafka cluster on loopback until Ctrl-C");
  dev_kafka->add_option("--brokers", dev_brokers, "number of brokers")->check(CLI::Range(1, 16))->capture_default_str();
  dev_kafka->callback([&] { action = [&] { return run_dev_kafka(dev_brokers); }; });
  int dev_nsq_port = 0;
  std::size_t dev_nsq_max_msg_size = 1'048'576;
  auto* dev_nsq = dev->add_subcommand("nsq", "run ferry's NSQ test peer (nsqd-compatible, in memory) on loopback until Ctrl-C");
  dev_nsq->add_option("--port", dev_nsq_port, "TCP port (0: a free one)")->check(CLI::Range(0, 65535))->capture_default_str();
  dev_nsq->add_option("--max-msg-size", dev_nsq_max_msg_size, "largest message body in bytes, as nsqd's --max-msg-size")
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 30))
      ->capture_default_str();
  DevNsqTls dev_nsq_tls;
  auto* tls_cert = dev_nsq->add_option("--tls-cert", dev_nsq_tls.cert, "PEM certificate: offer TLS, as nsqd's --tls-cert")
                       ->check(CLI::ExistingFile);
  auto* tls_key = dev_nsq->add_option("--tls-key", dev_nsq_tls.key, "PEM key of --tls-cert, as nsqd's --tls-key")
                      ->check(CLI::ExistingFile);
  tls_cert->needs(tls_key);
  tls_key->needs(tls_cert);
  dev_nsq->add_flag("--tls-required", dev_nsq_tls.required, "refuse plain connections, as nsqd's --tls-required")
      ->needs(tls_cert);
  dev_nsq->callback(
      [&] { action = [&] { return run_dev_nsq(dev_nsq_port, dev_nsq_max_msg_size, dev_nsq_tls); }; });

  // --kafka-prop on every command that opens a broker
  std::vector<std::string> kafka_properties;
  for (auto* cmd : {serve, consume, publish, tail, stats, dlq_list, dlq_replay, dlq_purge, bench})
    cmd->add_option("--kafka-prop", kafka_properties,
                    "librdkafka property KEY=VALUE for kafka:// brokers (repeatable), e.g. sasl.mechanisms=SCRAM-SHA-512")
        ->allow_extra_args(false);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "ferry: " << e.what() << " (see --help)\n";
    return 2;
  }

  spdlog::set_default_logger(spdlog::stderr_color_mt("ferry"));
  spdlog::set_level(spdlog::level::from_str(log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ %v");
  ferry::cli::register_backends();
  try {
    for (auto* url : {&publish_args.broker, &tail_args.broker, &stats_broker, &dlq_args.broker, &bench_config.broker})
      add_kafka_properties(*url, kafka_properties);
    for (auto& url : serve_args.brokers) add_kafka_properties(url, kafka_properties);
    for (auto& url : consume_args.brokers) add_kafka_properties(url, kafka_properties);
    return action ? action() : 2;
  } catch (const ferry::Error& e) {
    std::cerr << "ferry: " << e.what() << "\n";
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::cerr << "ferry: " << e.what() << "\n";
    return 1;
  }
}
