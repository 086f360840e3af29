#include "kafka_options.hpp"

#include <algorithm>
#include <limits>
#include <set>

#include "ferry/error.hpp"
#include "kafka_common.hpp"

namespace ferry::kafka::detail {
namespace {

// Properties ferry sets itself: overriding them would break its guarantees.
const std::set<std::string>& reserved() {
  static const std::set<std::string> keys{
      "bootstrap.servers",        "metadata.broker.list", "group.id",           "enable.auto.commit",
      "enable.auto.offset.store", "auto.offset.reset",    "enable.idempotence", "acks",
      "request.required.acks",    "enable.partition.eof", "transactional.id",   "enable.gapless.guarantee"};
  return keys;
}

std::string replace_all(std::string text, const std::string& what, const std::string& with) {
  if (what.empty()) return text;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + with.size()))
    text.replace(pos, what.size(), with);
  return text;
}

bool has_key(const Options::Properties& props, const std::string& key) {
  return std::any_of(props.begin(), props.end(), [&](const auto& p) { return p.first == key; });
}

int parse_int_option(const std::string& value, const std::string& key, int min) {
  long long n = 0;
  if (!value.empty() && value[0] == '-') {
    n = -parse_count(value.substr(1), "kafka option " + key);
  } else {
    n = parse_count(value, "kafka option " + key);
  }
  if (n < min || n > 1'000'000)
    throw Error(Errc::invalid_argument,
                "kafka option " + key + "=" + value + " is out of range (at least " + std::to_string(min) + ")");
  return static_cast<int>(n);
}

void set_defaults(rd_kafka_conf_t* conf, const Options::Properties& given,
                  std::initializer_list<std::pair<const char*, std::string>> defaults) {
  for (const auto& [key, value] : defaults)
    if (!has_key(given, key)) set_property(conf, key, value);
}

}  // namespace

void set_property(rd_kafka_conf_t* conf, const std::string& key, const std::string& value) {
  char errstr[512] = {0};
  rd_kafka_conf_res_t res = rd_kafka_conf_set(conf, key.c_str(), value.c_str(), errstr, sizeof errstr);
  if (res == RD_KAFKA_CONF_OK) return;
  const bool secret = is_secret_key(key);
  std::string shown = secret ? std::string("***") : value;
  std::string why = secret ? replace_all(errstr, value, "***") : std::string(errstr);
  if (res == RD_KAFKA_CONF_UNKNOWN)
    throw Error(Errc::invalid_argument, "unknown librdkafka property '" + key +
                                            "' in the kafka:// URL (see librdkafka's CONFIGURATION.md, or ferry's own "
                                            "options in include/ferry/backends/kafka.hpp)");
  throw Error(Errc::invalid_argument, "invalid value '" + shown + "' for librdkafka property '" + key + "': " + why);
}

Options Options::from_url(const Url& url) {
  Options o;
  o.masked_url = url.masked();
  if (url.hosts().empty())
    throw Error(Errc::bad_url,
                "bad broker URL '" + o.masked_url + "': name at least one Kafka broker, e.g. kafka://localhost:9092");
  if (!url.path().empty() && url.path() != "/")
    throw Error(Errc::bad_url, "bad broker URL '" + o.masked_url + "': a kafka:// URL has no path ('" + url.path() +
                                   "'); put options in the query, e.g. kafka://host:9092?linger.ms=20");
  for (const auto& hp : url.hosts()) {
    if (hp.host.empty()) throw Error(Errc::bad_url, "bad broker URL '" + o.masked_url + "': empty host name");
    if (!o.bootstrap.empty()) o.bootstrap += ',';
    bool v6 = hp.host.find(':') != std::string::npos;
    o.bootstrap += (v6 ? "[" + hp.host + "]" : hp.host) + ":" + std::to_string(hp.port.value_or(9092));
  }
  for (const auto& [key, value] : url.query()) {
    if (key == "partitions") {
      o.partitions = parse_int_option(value, key, 1);
    } else if (key == "replication") {
      o.replication = parse_int_option(value, key, -1);
      if (o.replication == 0) throw Error(Errc::invalid_argument, "kafka option replication must be -1 or at least 1");
    } else if (key == "create_topics") {
      if (value == "admin")
        o.create_topics = TopicCreation::admin;
      else if (value == "auto")
        o.create_topics = TopicCreation::auto_create;
      else if (value == "off")
        o.create_topics = TopicCreation::off;
      else
        throw Error(Errc::invalid_argument, "kafka option create_topics='" + value + "' must be admin, auto or off");
    } else if (key == "publish_timeout") {
      o.publish_timeout = parse_duration(value, "kafka option publish_timeout");
    } else if (key == "join_timeout") {
      o.join_timeout = parse_duration(value, "kafka option join_timeout");
    } else if (key == "commit_interval") {
      o.commit_interval = parse_duration(value, "kafka option commit_interval");
    } else if (key == "revoke_grace") {
      o.revoke_grace = parse_duration(value, "kafka option revoke_grace");
    } else if (key == "member_linger") {
      o.member_linger = parse_duration(value, "kafka option member_linger");
    } else if (key == "admin_timeout") {
      o.admin_timeout = parse_duration(value, "kafka option admin_timeout");
    } else if (key == "groups") {
      for (std::size_t start = 0; start <= value.size();) {
        std::size_t end = std::min(value.find(',', start), value.size());
        std::string group = value.substr(start, end - start);
        if (group.empty())
          throw Error(Errc::invalid_argument,
                      "kafka option groups='" + value + "' has an empty group name; write groups=a,b");
        o.groups.push_back(std::move(group));
        start = end + 1;
      }
    } else {
      Properties* target = &o.common;
      std::string name = key;
      if (name.rfind("producer.", 0) == 0) {
        target = &o.producer;
        name = name.substr(9);
      } else if (name.rfind("consumer.", 0) == 0) {
        target = &o.consumer;
        name = name.substr(9);
      }
      if (reserved().count(name))
        throw Error(Errc::invalid_argument, "librdkafka property '" + name +
                                                "' is set by ferry and cannot be changed in the URL (see "
                                                "include/ferry/backends/kafka.hpp)");
      if (name != key) {
        // Checked here too, so that an error names the key as given.
        try {
          ConfPtr scratch(rd_kafka_conf_new());
          set_property(scratch.get(), name, value);
        } catch (const Error& e) {
          throw Error(e.code(), replace_all(e.what(), "property '" + name + "'", "property '" + key + "'"));
        }
      }
      target->emplace_back(name, value);
    }
  }
  if (o.publish_timeout < Ms{1}) throw Error(Errc::invalid_argument, "kafka option publish_timeout must be positive");
  // librdkafka's message.timeout.ms (which publish_timeout sets) is at most 2^31-1 ms, and
  // its admin request timeouts at most an hour.
  if (o.publish_timeout > Ms{std::numeric_limits<int>::max()})
    throw Error(Errc::invalid_argument, "kafka option publish_timeout must be at most 24 days");
  if (o.join_timeout < Ms{1}) throw Error(Errc::invalid_argument, "kafka option join_timeout must be positive");
  if (o.admin_timeout < Ms{1} || o.admin_timeout > std::chrono::hours{1})
    throw Error(Errc::invalid_argument, "kafka option admin_timeout must be positive and at most 1h");
  if (!url.user().empty()) {
    o.common.emplace_back("sasl.username", url.user());
    o.common.emplace_back("sasl.password", url.password());
    if (!has_key(o.common, "security.protocol")) o.common.emplace_back("security.protocol", "SASL_SSL");
    if (!has_key(o.common, "sasl.mechanisms") && !has_key(o.common, "sasl.mechanism"))
      o.common.emplace_back("sasl.mechanisms", "PLAIN");
  }
  // Unknown properties and bad values fail here, at open, not at the first publish.
  o.producer_conf();
  o.check_clients();
  return o;
}

namespace {

// Makes a client of `type` from `conf` with no brokers (it connects nowhere) and drops it:
// librdkafka checks some properties against each other only then. Returns its
// configuration warnings.
std::vector<std::string> made_without_brokers(rd_kafka_type_t type, ConfPtr conf, const std::string& masked_url) {
  const std::string client = type == RD_KAFKA_PRODUCER ? "producer" : "consumer";
  set_property(conf.get(), "bootstrap.servers", "");
  ErrorLog log(client + " check", nullptr);
  install_callbacks(conf.get(), &log);
  char errstr[512] = {0};
  HandlePtr handle(rd_kafka_new(type, conf.get(), errstr, sizeof errstr));
  if (!handle)
    throw Error(Errc::invalid_argument,
                "cannot configure the Kafka " + client + " for " + masked_url + ": " + std::string(errstr));
  conf.release();  // rd_kafka_new took it
  return log.config_warnings();
}

}  // namespace

// The consumer is made at the first subscribe: its checks are made here, at open. And a
// property given to one client alone (producer.x, consumer.x) that librdkafka ignores there,
// being the other client's, is refused: librdkafka warns of it, by its canonical name (not
// always the one given), when the client is made with it and not without it.
void Options::check_clients() const {
  const auto consumer_warnings = made_without_brokers(RD_KAFKA_CONSUMER, consumer_conf("ferry-check"), masked_url);
  for (const auto& [type, scoped] :
       {std::pair{RD_KAFKA_PRODUCER, &producer}, std::pair{RD_KAFKA_CONSUMER, &consumer}}) {
    if (scoped->empty()) continue;
    Options without = *this;
    (type == RD_KAFKA_PRODUCER ? without.producer : without.consumer).clear();
    const bool is_producer = type == RD_KAFKA_PRODUCER;
    const auto with_them = is_producer ? made_without_brokers(type, producer_conf(), masked_url) : consumer_warnings;
    const auto base = made_without_brokers(
        type, is_producer ? without.producer_conf() : without.consumer_conf("ferry-check"), masked_url);
    const std::string client = is_producer ? "producer" : "consumer";
    for (const auto& warning : with_them) {
      if (warning.find("will be ignored by this " + client) == std::string::npos ||
          std::find(base.begin(), base.end(), warning) != base.end())
        continue;
      std::string names;
      for (const auto& [name, _] : *scoped) names += (names.empty() ? "" : ", ") + client + "." + name;
      throw Error(Errc::invalid_argument, (scoped->size() == 1 ? "kafka option " + names + " is not a "
                                                               : "one of the kafka options " + names + " is not a ") +
                                              client + " property: " + warning);
    }
  }
}

ConfPtr Options::producer_conf() const {
  ConfPtr conf(rd_kafka_conf_new());
  set_property(conf.get(), "bootstrap.servers", bootstrap);
  set_property(conf.get(), "enable.idempotence", "true");
  set_property(conf.get(), "acks", "all");
  Properties given = common;
  given.insert(given.end(), producer.begin(), producer.end());
  set_defaults(conf.get(), given,
               {{"client.id", "ferry"},
                {"partitioner", "murmur2_random"},
                {"linger.ms", "5"},
                {"message.max.bytes", "4194304"},
                {"message.timeout.ms", std::to_string(publish_timeout.count())}});
  for (const auto& [key, value] : given) set_property(conf.get(), key, value);
  return conf;
}

ConfPtr Options::consumer_conf(const std::string& group) const {
  ConfPtr conf(rd_kafka_conf_new());
  set_property(conf.get(), "bootstrap.servers", bootstrap);
  if (!group.empty()) set_property(conf.get(), "group.id", group);
  set_property(conf.get(), "enable.auto.commit", "false");
  set_property(conf.get(), "enable.auto.offset.store", "false");
  set_property(conf.get(), "auto.offset.reset", "earliest");
  set_property(conf.get(), "enable.partition.eof", "false");
  Properties given = common;
  given.insert(given.end(), consumer.begin(), consumer.end());
  set_defaults(conf.get(), given,
               {{"client.id", "ferry"}, {"queued.min.messages", "10000"}, {"queued.max.messages.kbytes", "16384"}});
  for (const auto& [key, value] : given) set_property(conf.get(), key, value);
  return conf;
}

}  // namespace ferry::kafka::detail
