#include "kafka_create_topics_front.hpp"

#include <arpa/inet.h>
#include <librdkafka/rdkafka.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <map>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace ferry::kafka::testing {
namespace {

// Kafka API keys and error codes (the Kafka protocol guide).
constexpr std::int16_t kMetadata = 3;
constexpr std::int16_t kFindCoordinator = 10;
constexpr std::int16_t kApiVersions = 18;
constexpr std::int16_t kCreateTopics = 19;
constexpr std::int16_t kTopicAlreadyExists = 36;
constexpr std::int16_t kInvalidPartitions = 37;
constexpr std::int16_t kInvalidReplicationFactor = 38;
constexpr std::int16_t kInvalidRequest = 42;

// Reads big-endian fields of a frame, refusing to run past its end.
class Reader {
 public:
  Reader(const std::string& data, std::size_t at) : data_(data), at_(at) {}
  std::int16_t i16() { return static_cast<std::int16_t>(take(2)); }
  std::int32_t i32() { return static_cast<std::int32_t>(take(4)); }
  std::int8_t i8() { return static_cast<std::int8_t>(take(1)); }
  // STRING or NULLABLE_STRING (null reads as "").
  std::string str() {
    const std::int16_t n = i16();
    if (n < 0) return {};
    need(static_cast<std::size_t>(n));
    std::string s = data_.substr(at_, static_cast<std::size_t>(n));
    at_ += static_cast<std::size_t>(n);
    return s;
  }
  std::size_t at() const { return at_; }

 private:
  void need(std::size_t n) const {
    if (data_.size() - at_ < n) throw std::runtime_error("truncated Kafka frame");
  }
  std::uint32_t take(std::size_t n) {
    need(n);
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v = (v << 8) | static_cast<unsigned char>(data_[at_ + i]);
    at_ += n;
    return v;
  }
  const std::string& data_;
  std::size_t at_;
};

void put(std::string& out, std::uint32_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put16(std::string& out, std::int16_t v) { put(out, static_cast<std::uint16_t>(v), 2); }
void put32(std::string& out, std::int32_t v) { put(out, static_cast<std::uint32_t>(v), 4); }
void put_str(std::string& out, const std::string& s) {
  put16(out, static_cast<std::int16_t>(s.size()));
  out += s;
}
// NULLABLE_STRING: "" goes as null (Reader::str reads null as "").
void put_nullable(std::string& out, const std::string& s) {
  if (s.empty())
    put16(out, -1);
  else
    put_str(out, s);
}

bool read_exact(int fd, char* buf, std::size_t n) {
  while (n > 0) {
    ssize_t got = ::recv(fd, buf, n, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    buf += got;
    n -= static_cast<std::size_t>(got);
  }
  return true;
}

bool write_all(int fd, const char* buf, std::size_t n) {
  while (n > 0) {
    ssize_t sent = ::send(fd, buf, n, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    buf += sent;
    n -= static_cast<std::size_t>(sent);
  }
  return true;
}

// A frame is a 4-byte size and that many bytes; `frame` gets the bytes.
bool read_frame(int fd, std::string& frame) {
  std::string size(4, '\0');
  if (!read_exact(fd, size.data(), 4)) return false;
  const auto n = static_cast<std::uint32_t>(Reader(size, 0).i32());
  if (n > 64u * 1024 * 1024) return false;
  frame.resize(n);
  return read_exact(fd, frame.data(), n);
}

bool write_frame(int fd, const std::string& frame) {
  std::string out;
  out.reserve(4 + frame.size());
  put32(out, static_cast<std::int32_t>(frame.size()));
  out += frame;
  return write_all(fd, out.data(), out.size());
}

sockaddr_in loopback(std::uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

// Listens on 127.0.0.1 at a free port; returns the socket and sets `port`.
int listen_loopback(std::uint16_t& port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback(0);
  socklen_t len = sizeof addr;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd, 64) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string why = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("the CreateTopics front cannot listen on 127.0.0.1: " + why);
  }
  port = ntohs(addr.sin_port);
  return fd;
}

int connect_loopback(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr = loopback(port);
  if (fd >= 0 && ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
  if (fd >= 0) ::close(fd);
  return -1;
}

struct HandleDeleter {
  void operator()(rd_kafka_t* rk) const noexcept { rd_kafka_destroy(rk); }
};

// One client connection and its connection to the mock broker behind the port it came to.
struct Connection {
  int client = -1;
  int upstream = -1;
  std::mutex mutex;  // guards `pending` and writes to `client`
  std::unordered_map<std::int32_t, std::pair<std::int16_t, std::int16_t>> pending;  // correlation id → key, version
  std::thread requests;
  std::thread responses;

  void cut() {
    ::shutdown(client, SHUT_RDWR);
    ::shutdown(upstream, SHUT_RDWR);
  }
};

}  // namespace

struct CreateTopicsFront::Impl {
  struct Port {
    std::uint16_t upstream = 0;
    std::uint16_t front = 0;
    int listener = -1;
    std::thread acceptor;
  };

  MockCluster& cluster;
  std::unique_ptr<rd_kafka_t, HandleDeleter> direct;  // asks the mock for its topics
  std::vector<Port> ports;
  std::map<std::uint16_t, std::uint16_t> front_of;  // mock broker port → front port
  std::atomic<bool> stopping{false};

  mutable std::mutex mutex;  // guards connections, requests and passed
  std::vector<std::unique_ptr<Connection>> connections;
  std::vector<Request> requests;
  std::map<int, int> passed;  // API key → requests passed through
  std::mutex create_mutex;  // one CreateTopics at a time, as a controller would

  explicit Impl(MockCluster& c) : cluster(c) {}

  void accept_loop(Port& port) {
    while (!stopping) {
      int client = ::accept4(port.listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // shut down
      }
      int upstream = connect_loopback(port.upstream);
      if (upstream < 0) {
        ::close(client);
        continue;
      }
      auto connection = std::make_unique<Connection>();
      connection->client = client;
      connection->upstream = upstream;
      Connection* c = connection.get();
      std::lock_guard lock(mutex);
      if (stopping) {
        ::close(client);
        ::close(upstream);
        return;
      }
      c->requests = std::thread([this, c] { guarded(*c, [&] { pass_requests(*c); }); });
      c->responses = std::thread([this, c] { guarded(*c, [&] { pass_responses(*c); }); });
      connections.push_back(std::move(connection));
    }
  }

  // Runs one direction of a connection; when it ends, for whatever reason, so does the other.
  template <typename F>
  void guarded(Connection& c, F&& work) {
    try {
      work();
    } catch (const std::exception& e) {
      std::cerr << "CreateTopics front: " << e.what() << " (connection closed)\n";
    }
    c.cut();
  }

  void pass_requests(Connection& c) {
    std::string frame;
    while (read_frame(c.client, frame)) {
      Reader header(frame, 0);
      const std::int16_t key = header.i16();
      const std::int16_t version = header.i16();
      const std::int32_t correlation = header.i32();
      if (key == kCreateTopics) {
        std::string answer = create_topics(frame, version);
        std::lock_guard lock(c.mutex);
        if (!write_frame(c.client, answer)) return;
        continue;
      }
      {
        std::lock_guard lock(c.mutex);
        c.pending[correlation] = {key, version};
      }
      {
        std::lock_guard lock(mutex);
        ++passed[key];
      }
      if (!write_frame(c.upstream, frame)) return;
    }
  }

  void pass_responses(Connection& c) {
    std::string frame;
    while (read_frame(c.upstream, frame)) {
      const std::int32_t correlation = Reader(frame, 0).i32();
      std::lock_guard lock(c.mutex);
      auto it = c.pending.find(correlation);
      if (it != c.pending.end()) {
        const auto [key, version] = it->second;
        c.pending.erase(it);
        if (key == kApiVersions && version <= 2) frame = with_create_topics(frame);
        if (key == kMetadata && (version == 1 || version == 2)) frame = through_front(frame, version);
        if (key == kFindCoordinator && version <= 2) frame = coordinator_through_front(frame, version);
      }
      if (!write_frame(c.client, frame)) return;
    }
  }

  // ApiVersions v0-v2 answer: CreateTopics v2-v4 added, Metadata and FindCoordinator capped
  // at v2 (the versions the rewriting below reads).
  static std::string with_create_topics(const std::string& frame) {
    Reader r(frame, 4);
    const std::int16_t error = r.i16();
    if (error != 0) return frame;
    std::map<std::int16_t, std::pair<std::int16_t, std::int16_t>> apis;
    for (std::int32_t n = r.i32(); n > 0; --n) {
      const std::int16_t key = r.i16();
      const std::int16_t min = r.i16();
      const std::int16_t max = r.i16();
      apis[key] = {min, max};
    }
    for (std::int16_t capped : {kMetadata, kFindCoordinator})
      if (auto it = apis.find(capped); it != apis.end()) it->second.second = std::min<std::int16_t>(it->second.second, 2);
    apis[kCreateTopics] = {2, 4};
    std::string out = frame.substr(0, 4);
    put16(out, error);
    put32(out, static_cast<std::int32_t>(apis.size()));
    for (const auto& [key, range] : apis) {
      put16(out, key);
      put16(out, range.first);
      put16(out, range.second);
    }
    out += frame.substr(r.at());  // throttle time (v1+)
    return out;
  }

  // Metadata v1/v2 answer: brokers at the front's ports, and an existing controller.
  std::string through_front(const std::string& frame, std::int16_t version) const {
    Reader r(frame, 4);
    std::string out = frame.substr(0, 4);
    const std::int32_t count = r.i32();
    put32(out, count);
    std::vector<std::int32_t> nodes;
    for (std::int32_t i = 0; i < count; ++i) {
      const std::int32_t node = r.i32();
      r.str();  // host
      const std::int32_t port = r.i32();
      const std::string rack = r.str();
      nodes.push_back(node);
      put32(out, node);
      put_str(out, "127.0.0.1");
      put32(out, front_port(port));
      put_nullable(out, rack);
    }
    if (version >= 2) {
      put_nullable(out, r.str());  // cluster id
    }
    std::int32_t controller = r.i32();
    if (!nodes.empty() && std::find(nodes.begin(), nodes.end(), controller) == nodes.end())
      controller = *std::min_element(nodes.begin(), nodes.end());
    put32(out, controller);
    out += frame.substr(r.at());  // topics
    return out;
  }

  std::int32_t front_port(std::int32_t port) const {
    auto it = front_of.find(static_cast<std::uint16_t>(port));
    return it == front_of.end() ? port : it->second;
  }

  // FindCoordinator v0-v2 answer: the coordinator at its front port.
  std::string coordinator_through_front(const std::string& frame, std::int16_t version) const {
    Reader r(frame, 4);
    if (version >= 1) r.i32();  // throttle time
    r.i16();                    // error code
    if (version >= 1) r.str();  // error message
    const std::size_t node_at = r.at();
    r.i32();  // node id
    r.str();  // host
    const std::int32_t port = r.i32();
    std::string out = frame.substr(0, node_at + 4);
    put_str(out, "127.0.0.1");
    put32(out, front_port(port));
    out += frame.substr(r.at());
    return out;
  }

  // A CreateTopics v2-v4 request, answered as a Kafka controller answers it.
  std::string create_topics(const std::string& frame, std::int16_t version) {
    if (version < 2 || version > 4)
      throw std::runtime_error("CreateTopics v" + std::to_string(version) + " was not advertised");
    Reader r(frame, 4);
    const std::int32_t correlation = r.i32();
    r.str();  // client id
    std::vector<Request> asked;
    for (std::int32_t n = r.i32(); n > 0; --n) {
      Request q;
      q.topic = r.str();
      q.partitions = r.i32();
      q.replication = r.i16();
      std::int32_t assignments = r.i32();
      for (std::int32_t a = 0; a < assignments; ++a) {
        r.i32();
        for (std::int32_t b = r.i32(); b > 0; --b) r.i32();
      }
      for (std::int32_t c = r.i32(); c > 0; --c) {
        r.str();
        r.str();
      }
      if (assignments > 0) q.error = kInvalidRequest;
      asked.push_back(std::move(q));
    }
    r.i32();  // timeout
    const bool validate_only = r.i8() != 0;

    std::string out;
    put32(out, correlation);
    put32(out, 0);  // throttle time
    put32(out, static_cast<std::int32_t>(asked.size()));
    std::lock_guard create(create_mutex);
    for (Request& q : asked) {
      q.validate_only = validate_only;
      std::string message;
      const int partitions = q.partitions == -1 ? 1 : q.partitions;  // v4: -1 is the broker's default
      const int replication = q.replication == -1 ? 1 : q.replication;
      if (q.error == kInvalidRequest) {
        message = "this front takes no replica assignments";
      } else if (this->partitions(q.topic)) {
        q.error = kTopicAlreadyExists;
        message = "Topic '" + q.topic + "' already exists.";
      } else if (partitions < 1) {
        q.error = kInvalidPartitions;
        message = "Number of partitions must be larger than 0.";
      } else if (replication < 1 || replication > cluster.brokers()) {
        q.error = kInvalidReplicationFactor;
        message = "Replication factor: " + std::to_string(replication) +
                  " larger than available brokers: " + std::to_string(cluster.brokers()) + ".";
      } else if (!validate_only) {
        cluster.create_topic(q.topic, partitions, replication);
      }
      put_str(out, q.topic);
      put16(out, static_cast<std::int16_t>(q.error));
      put_nullable(out, message);
      std::lock_guard lock(mutex);
      requests.push_back(q);
    }
    return out;
  }

  std::optional<int> partitions(const std::string& topic) const {
    const rd_kafka_metadata_t* metadata = nullptr;
    rd_kafka_resp_err_t err = rd_kafka_metadata(direct.get(), 1, nullptr, &metadata, 10000);
    if (err) throw std::runtime_error(std::string("cannot list the mock cluster's topics: ") + rd_kafka_err2str(err));
    std::optional<int> out;
    for (int i = 0; i < metadata->topic_cnt; ++i) {
      const rd_kafka_metadata_topic_t& t = metadata->topics[i];
      if (t.topic == topic && !t.err) out = t.partition_cnt;
    }
    rd_kafka_metadata_destroy(metadata);
    return out;
  }
};

CreateTopicsFront::CreateTopicsFront(MockCluster& cluster) : impl_(std::make_unique<Impl>(cluster)) {
  char errstr[512] = {0};
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", cluster.bootstrap().c_str(), errstr, sizeof errstr) ||
      rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr)) {
    rd_kafka_conf_destroy(conf);
    throw std::runtime_error(errstr);
  }
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    throw std::runtime_error(errstr);
  }
  impl_->direct.reset(rk);

  const std::string bootstrap = cluster.bootstrap();
  std::size_t start = 0;
  while (start < bootstrap.size()) {
    std::size_t end = bootstrap.find(',', start);
    if (end == std::string::npos) end = bootstrap.size();
    const std::string address = bootstrap.substr(start, end - start);
    Impl::Port port;
    port.upstream = static_cast<std::uint16_t>(std::stoi(address.substr(address.rfind(':') + 1)));
    port.listener = listen_loopback(port.front);
    impl_->front_of[port.upstream] = port.front;
    impl_->ports.push_back(std::move(port));
    start = end + 1;
  }
  for (Impl::Port& port : impl_->ports) port.acceptor = std::thread([this, &port] { impl_->accept_loop(port); });
}

CreateTopicsFront::~CreateTopicsFront() {
  impl_->stopping = true;
  for (Impl::Port& port : impl_->ports) ::shutdown(port.listener, SHUT_RDWR);
  for (Impl::Port& port : impl_->ports) {
    if (port.acceptor.joinable()) port.acceptor.join();
    ::close(port.listener);
  }
  std::vector<std::unique_ptr<Connection>> connections;
  {
    std::lock_guard lock(impl_->mutex);
    connections.swap(impl_->connections);
  }
  for (auto& c : connections) {
    c->cut();
    c->requests.join();
    c->responses.join();
    ::close(c->client);
    ::close(c->upstream);
  }
}

std::string CreateTopicsFront::bootstrap() const {
  std::string out;
  for (const Impl::Port& port : impl_->ports) {
    if (!out.empty()) out += ',';
    out += "127.0.0.1:" + std::to_string(port.front);
  }
  return out;
}

std::vector<CreateTopicsFront::Request> CreateTopicsFront::requests() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->requests;
}

int CreateTopicsFront::passed(int api_key) const {
  std::lock_guard lock(impl_->mutex);
  auto it = impl_->passed.find(api_key);
  return it == impl_->passed.end() ? 0 : it->second;
}

std::optional<int> CreateTopicsFront::partitions(const std::string& topic) const {
  return impl_->partitions(topic);
}

}  // namespace ferry::kafka::testing
