#include "tools.hpp"

#include <boost/json.hpp>

#include <csignal>
#include <iomanip>
#include <iostream>
#include <sstream>

#include "ferry/broker.hpp"

namespace ferry::cli {
namespace {

volatile std::sig_atomic_t g_stop = 0;

void on_signal(int) { g_stop = 1; }

Headers parse_headers(const std::vector<std::string>& items) {
  Headers headers;
  for (const auto& item : items) {
    auto eq = item.find('=');
    if (eq == std::string::npos || eq == 0)
      throw Error(Errc::invalid_argument, "--header '" + item + "' must look like name=value");
    headers.insert_or_assign(item.substr(0, eq), item.substr(eq + 1));
  }
  return headers;
}

std::string printable(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(static_cast<char>(c));
    } else {
      std::ostringstream hex;
      hex << "\\x" << std::hex << std::setw(2) << std::setfill('0') << int(c);
      out += hex.str();
    }
  }
  return out;
}

boost::json::object to_json(const Message& m) {
  boost::json::object o;
  o["id"] = m.id;
  if (m.key) o["key"] = *m.key;
  boost::json::object h;
  for (const auto& [k, v] : m.headers) h[k] = v;
  o["headers"] = std::move(h);
  o["timestamp_ms"] = to_unix_ms(m.timestamp);
  o["payload"] = m.payload;
  return o;
}

void print_message(const Message& m, bool json) {
  if (json) {
    std::cout << boost::json::serialize(to_json(m)) << "\n";
    return;
  }
  std::cout << m.id;
  if (m.key) std::cout << " key=" << printable(*m.key);
  for (const auto& [k, v] : m.headers) std::cout << " " << k << "=" << printable(v);
  std::cout << " | " << printable(m.payload) << "\n";
}

Admin& require_admin(Broker& broker) {
  Admin* admin = broker.admin();
  if (!admin)
    throw Error(Errc::invalid_argument, "the " + broker.url().scheme() + " backend does not offer this inspection; "
                                        "use the broker's own tools");
  return *admin;
}

void require_topic(const std::string& topic, const char* flag) {
  if (!valid_name(topic))
    throw Error(Errc::invalid_argument, std::string(flag) + " '" + topic +
                                            "' is not a valid topic: use 1 to 200 characters from A-Z a-z 0-9 . _ -");
}

}  // namespace

bool stop_requested() noexcept { return g_stop != 0; }

void install_stop_handlers() {
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
}

int run_publish(const PublishArgs& args) {
  require_topic(args.topic, "--topic");
  Headers headers = parse_headers(args.headers);
  auto broker = Broker::open(args.broker);
  auto make = [&](std::string payload) {
    Message m;
    m.payload = std::move(payload);
    m.key = args.key;
    m.headers = headers;
    return m;
  };
  std::uint64_t count = 0;
  if (!args.messages.empty()) {
    std::vector<Message> batch;
    for (const auto& text : args.messages) batch.push_back(make(text));
    broker->publisher().publish_batch(args.topic, std::move(batch));
    count = args.messages.size();
  } else {
    std::vector<std::future<Status>> pending;
    std::string line;
    while (std::getline(std::cin, line)) {
      pending.push_back(broker->publisher().publish_future(args.topic, make(line)));
      if (pending.size() >= 1000) {
        for (auto& f : pending) throw_if_error(f.get());
        count += pending.size();
        pending.clear();
      }
    }
    for (auto& f : pending) throw_if_error(f.get());
    count += pending.size();
  }
  broker->close();
  std::cerr << "published " << count << " message(s) to " << args.topic << "\n";
  return 0;
}

int run_tail(const TailArgs& args) {
  require_topic(args.topic, "--topic");
  install_stop_handlers();
  auto broker = Broker::open(args.broker);
  SubscribeOptions options{.topic = args.topic, .group = "tail-" + make_uuid().substr(0, 8)};
  options.ephemeral = true;
  auto subscriber = broker->subscribe(options);
  std::uint64_t seen = 0;
  while (!stop_requested() && (args.count == 0 || seen < args.count)) {
    auto d = subscriber->receive(std::chrono::milliseconds{200});
    if (!d) continue;
    print_message(d->message(), args.json);
    std::cout.flush();
    d->ack();
    ++seen;
  }
  subscriber->close();
  broker->close();
  return 0;
}

int run_stats(const std::string& url, bool json) {
  auto broker = Broker::open(url);
  auto stats = require_admin(*broker).stats();
  if (json) {
    boost::json::array topics;
    for (const auto& t : stats) {
      boost::json::array groups;
      for (const auto& g : t.groups)
        groups.push_back({{"group", g.group}, {"backlog", g.backlog}, {"in_flight", g.in_flight}});
      topics.push_back({{"topic", t.topic},
                        {"messages", t.messages},
                        {"dead_letter", t.topic.size() > 4 && t.topic.ends_with(".dlq")},
                        {"groups", std::move(groups)}});
    }
    std::cout << boost::json::serialize(boost::json::object{{"broker", broker->url().masked()}, {"topics", topics}})
              << "\n";
  } else {
    std::cout << std::left << std::setw(40) << "TOPIC / GROUP" << std::right << std::setw(12) << "MESSAGES"
              << std::setw(12) << "BACKLOG" << std::setw(12) << "IN FLIGHT" << "\n";
    std::uint64_t dead = 0;
    for (const auto& t : stats) {
      std::cout << std::left << std::setw(40) << t.topic << std::right << std::setw(12) << t.messages << "\n";
      if (t.topic.ends_with(".dlq")) dead += t.messages;
      for (const auto& g : t.groups)
        std::cout << std::left << std::setw(40) << ("  " + g.group) << std::right << std::setw(12) << ""
                  << std::setw(12) << g.backlog << std::setw(12) << g.in_flight << "\n";
    }
    std::cout << stats.size() << " topic(s), " << dead << " dead letter(s)\n";
  }
  broker->close();
  return 0;
}

int run_dlq_list(const DlqArgs& args) {
  require_topic(args.topic, "--topic");
  auto broker = Broker::open(args.broker);
  auto messages = require_admin(*broker).peek(args.topic, args.limit);
  for (const auto& m : messages) {
    auto get = [&](const char* name) {
      auto it = m.headers.find(name);
      return it == m.headers.end() ? std::string("?") : it->second;
    };
    std::cout << m.id << " from " << get(header::original_topic) << " after " << get(header::attempts)
              << " attempt(s): " << get(header::error) << " | " << printable(m.payload) << "\n";
  }
  std::cerr << messages.size() << " dead letter(s) in " << args.topic << "\n";
  broker->close();
  return 0;
}

int run_dlq_replay(const DlqArgs& args) {
  require_topic(args.topic, "--topic");
  install_stop_handlers();
  auto broker = Broker::open(args.broker);
  auto subscriber = broker->subscribe({.topic = args.topic, .group = "ferry-dlq-replay"});
  std::uint64_t replayed = 0;
  while (!stop_requested() && replayed < args.limit) {
    auto d = subscriber->receive(args.idle);
    if (!d) break;
    Message m = d->message();
    auto origin = m.headers.find(header::original_topic);
    if (origin == m.headers.end()) {
      d->nack();
      throw Error(Errc::not_ferry_data, "message " + m.id + " in " + args.topic +
                                            " has no ferry-original-topic header; it was not dead-lettered by ferry");
    }
    std::string target = origin->second;
    for (const char* h : {header::error, header::attempts, header::original_topic, header::original_group})
      m.headers.erase(h);
    broker->publisher().publish(target, std::move(m));
    d->ack();
    ++replayed;
  }
  subscriber->close();
  broker->close();
  std::cerr << "replayed " << replayed << " message(s) from " << args.topic << "\n";
  return 0;
}

int run_dlq_purge(const DlqArgs& args) {
  require_topic(args.topic, "--topic");
  auto broker = Broker::open(args.broker);
  auto removed = require_admin(*broker).purge(args.topic);
  broker->close();
  std::cerr << "purged " << removed << " message(s) from " << args.topic << "\n";
  return 0;
}

}  // namespace ferry::cli
