// The `ferry` command: the order service, its consumer, and tools for any broker.
#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <iostream>

#include "backends.hpp"
#include "bench.hpp"
#include "commands.hpp"
#include "ferry/error.hpp"
#include "tools.hpp"

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

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ferry: one messaging API over an embedded SQLite broker, Kafka, RabbitMQ and NSQ,\n"
               "and the order service built on it.",
               "ferry"};
  app.require_subcommand(1);
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
    return action ? action() : 2;
  } catch (const ferry::Error& e) {
    std::cerr << "ferry: " << e.what() << "\n";
    return exit_code_for(e.code());
  } catch (const std::exception& e) {
    std::cerr << "ferry: " << e.what() << "\n";
    return 1;
  }
}
