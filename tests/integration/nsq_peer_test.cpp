// The NSQ test peer at the protocol level, with a raw socket: what nsqd does that ferry's
// tests rely on (RDY accounting, msg_timeout and requeue, REQ delay, TOUCH, E_FIN_FAILED,
// heartbeats, CLS, IDENTIFY checks, fan-out and load balancing, hostile input).

#include "nsq_peer.hpp"

#include <gtest/gtest.h>
#include <poll.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/json.hpp>
#include <thread>

#include "frame.hpp"

namespace ferry::nsq {
namespace {

using namespace std::chrono_literals;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

// A blocking NSQ client speaking raw frames, for poking at the peer.
class RawClient {
 public:
  explicit RawClient(int port, bool magic = true) : socket_(io_), reader_(8 << 20) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
    if (magic) send(std::string(kMagicV2));
  }

  void send(const std::string& bytes) {
    boost::system::error_code ec;
    asio::write(socket_, asio::buffer(bytes), ec);
  }
  void command(const std::string& line) { send(encode_command(line)); }
  void command(const std::string& line, const std::string& body) { send(encode_command(line, body)); }

  // IDENTIFY with feature negotiation; returns the JSON answer.
  boost::json::object identify(boost::json::object fields = {}) {
    fields["feature_negotiation"] = true;
    command("IDENTIFY", boost::json::serialize(fields));
    auto f = next();
    EXPECT_TRUE(f && f->type == FrameType::response) << (f ? f->data : "nothing");
    return f ? boost::json::parse(f->data).as_object() : boost::json::object{};
  }

  void subscribe(const std::string& topic, const std::string& channel, int rdy) {
    command("SUB " + topic + " " + channel);
    auto ok = next();
    ASSERT_TRUE(ok);
    ASSERT_EQ(ok->data, "OK");
    if (rdy >= 0) command("RDY " + std::to_string(rdy));
  }

  // The next frame other than a heartbeat (answered with NOP unless told not to), or
  // nothing within the timeout or when the peer closed the connection.
  std::optional<Frame> next(std::chrono::milliseconds timeout = 3000ms, bool answer_heartbeats = true) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (true) {
      if (auto f = reader_.next()) {
        if (f->type == FrameType::response && f->data == kHeartbeat) {
          ++heartbeats;
          if (answer_heartbeats) command("NOP");
          continue;
        }
        return f;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - std::chrono::steady_clock::now());
      if (left.count() <= 0 || closed) return std::nullopt;
      pollfd fd{socket_.native_handle(), POLLIN, 0};
      if (::poll(&fd, 1, static_cast<int>(left.count())) <= 0) return std::nullopt;
      char buffer[65536];
      boost::system::error_code ec;
      auto n = socket_.read_some(asio::buffer(buffer), ec);
      if (ec) {
        closed = true;
        return std::nullopt;
      }
      reader_.feed(std::string_view(buffer, n));
    }
  }

  std::optional<WireMessage> next_message(std::chrono::milliseconds timeout = 3000ms) {
    auto f = next(timeout);
    if (!f || f->type != FrameType::message) return std::nullopt;
    return parse_message(f->data);
  }

  // Waits for the peer to close the connection.
  bool wait_closed(std::chrono::milliseconds timeout) {
    auto until = std::chrono::steady_clock::now() + timeout;
    while (!closed && std::chrono::steady_clock::now() < until) next(100ms, false);
    return closed;
  }

  int heartbeats = 0;
  bool closed = false;

 private:
  asio::io_context io_;
  tcp::socket socket_;
  FrameReader reader_;
};

std::string id_of(const WireMessage& m) {
  return std::string(id_view(m.id));
}

class NsqPeerProtocol : public ::testing::Test {
 protected:
  void SetUp() override {
    nsq_peer::PeerOptions options;
    options.max_msg_size = 1000;
    options.max_rdy_count = 100;
    peer_ = std::make_unique<nsq_peer::Peer>(options);
    peer_->start();
  }
  void publish(const std::string& topic, const std::string& body) {
    RawClient p(peer_->port());
    p.command("PUB " + topic, body);
    auto ok = p.next();
    ASSERT_TRUE(ok);
    ASSERT_EQ(ok->data, "OK");
  }
  std::unique_ptr<nsq_peer::Peer> peer_;
};

TEST_F(NsqPeerProtocol, IdentifyNegotiatesAndChecksRanges) {
  RawClient c(peer_->port());
  auto answer = c.identify({{"client_id", "raw"}, {"heartbeat_interval", 5000}, {"msg_timeout", 2000}});
  EXPECT_EQ(answer.at("max_rdy_count").as_int64(), 100);
  EXPECT_EQ(answer.at("msg_timeout").as_int64(), 2000);
  EXPECT_FALSE(answer.at("tls_v1").as_bool());
  EXPECT_FALSE(answer.at("auth_required").as_bool());

  RawClient bad(peer_->port());
  bad.command("IDENTIFY", R"({"heartbeat_interval": 10})");
  auto e = bad.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, FrameType::error);
  EXPECT_EQ(e->data.rfind("E_BAD_BODY", 0), 0u) << e->data;
  EXPECT_TRUE(bad.wait_closed(2s));

  RawClient bad_buffer(peer_->port());
  bad_buffer.command("IDENTIFY", R"({"output_buffer_size": 10})");
  auto e2 = bad_buffer.next();
  ASSERT_TRUE(e2);
  EXPECT_EQ(e2->data.rfind("E_BAD_BODY", 0), 0u) << e2->data;

  RawClient plain(peer_->port());  // without feature negotiation: OK
  plain.command("IDENTIFY", R"({"client_id":"old"})");
  auto ok = plain.next();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->data, "OK");
}

TEST_F(NsqPeerProtocol, RdyStartsAtZeroAndCapsMessagesInFlight) {
  for (int i = 0; i < 10; ++i) publish("rdy", "m" + std::to_string(i));
  RawClient c(peer_->port());
  c.identify();
  c.subscribe("rdy", "ch", -1);  // no RDY yet
  EXPECT_FALSE(c.next(300ms)) << "a message arrived with RDY 0";
  c.command("RDY 3");
  std::vector<WireMessage> got;
  while (auto m = c.next_message(300ms)) got.push_back(*m);
  EXPECT_EQ(got.size(), 3u) << "more messages in flight than RDY";
  c.command("FIN " + id_of(got[0]));
  auto more = c.next_message();
  ASSERT_TRUE(more) << "a FIN did not make room for the next message";
  EXPECT_FALSE(c.next(300ms));
  c.command("RDY 101");  // over max_rdy_count: fatal
  auto e = c.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, FrameType::error);
  EXPECT_EQ(e->data.rfind("E_INVALID", 0), 0u);
  EXPECT_TRUE(c.wait_closed(2s));
  EXPECT_EQ(peer_->stats().max_in_flight_seen_over_rdy, 0u);
}

TEST_F(NsqPeerProtocol, StaleIdsGetFinFailedAndTheConnectionStays) {
  publish("stale", "x");
  RawClient c(peer_->port());
  c.identify({{"msg_timeout", 1000}});
  c.subscribe("stale", "ch", 1);
  auto first = c.next_message();
  ASSERT_TRUE(first);
  EXPECT_EQ(first->attempts, 1);
  // Not finished within msg_timeout: requeued and delivered again, attempts + 1.
  auto second = c.next_message(3000ms);
  ASSERT_TRUE(second) << "an unfinished message was not requeued after msg_timeout";
  EXPECT_EQ(id_of(*second), id_of(*first));
  EXPECT_EQ(second->attempts, 2);
  c.command("FIN 0000000000000000");  // never delivered
  auto e = c.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->type, FrameType::error);
  EXPECT_EQ(e->data.rfind("E_FIN_FAILED", 0), 0u) << e->data;
  c.command("REQ 0000000000000000 0");
  e = c.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->data.rfind("E_REQ_FAILED", 0), 0u) << e->data;
  c.command("TOUCH 0000000000000000");
  e = c.next();
  ASSERT_TRUE(e);
  EXPECT_EQ(e->data.rfind("E_TOUCH_FAILED", 0), 0u) << e->data;
  c.command("FIN " + id_of(*second));  // the connection is still usable
  c.command("NOP");
  EXPECT_FALSE(c.next(300ms));
  EXPECT_FALSE(c.closed);
  auto stats = peer_->stats();
  EXPECT_EQ(stats.topics.at(0).channels.at(0).finish_count, 1u);
  EXPECT_EQ(stats.topics.at(0).channels.at(0).timeout_count, 1u);
}

TEST_F(NsqPeerProtocol, ReqWithDelayAndTouch) {
  publish("req", "x");
  RawClient c(peer_->port());
  c.identify({{"msg_timeout", 1000}});
  c.subscribe("req", "ch", 5);
  auto m = c.next_message();
  ASSERT_TRUE(m);
  auto start = std::chrono::steady_clock::now();
  c.command("REQ " + id_of(*m) + " 400");
  auto again = c.next_message();
  ASSERT_TRUE(again);
  EXPECT_GE(std::chrono::steady_clock::now() - start, 390ms);
  EXPECT_EQ(again->attempts, 2);
  // TOUCH twice within the 1 s timeout keeps it for 1.8 s.
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(600ms);
    if (i < 2) c.command("TOUCH " + id_of(*again));
  }
  EXPECT_FALSE(c.next(100ms)) << "a touched message timed out";
  c.command("FIN " + id_of(*again));
  EXPECT_FALSE(c.next(1200ms));
  EXPECT_EQ(peer_->stats().topics.at(0).channels.at(0).timeout_count, 0u);
}

TEST_F(NsqPeerProtocol, FanOutBetweenChannelsLoadBalancingWithinOne) {
  RawClient a1(peer_->port()), a2(peer_->port()), b(peer_->port());
  for (auto* c : {&a1, &a2, &b}) c->identify();
  a1.subscribe("fan", "a", 100);
  a2.subscribe("fan", "a", 100);
  b.subscribe("fan", "b", 100);
  RawClient p(peer_->port());
  std::vector<std::string> bodies;
  for (int i = 0; i < 10; ++i) bodies.push_back("m" + std::to_string(i));
  p.send(encode_mpub("fan", bodies, 0, bodies.size()));
  auto ok = p.next();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->data, "OK");
  auto drain = [](RawClient& c) {
    std::set<std::string> got;
    while (auto m = c.next_message(300ms)) got.insert(m->body);
    return got;
  };
  auto got_a1 = drain(a1), got_a2 = drain(a2), got_b = drain(b);
  EXPECT_EQ(got_b.size(), 10u) << "channel b missed messages";
  EXPECT_GT(got_a1.size(), 0u);
  EXPECT_GT(got_a2.size(), 0u);
  std::set<std::string> both = got_a1;
  both.insert(got_a2.begin(), got_a2.end());
  EXPECT_EQ(both.size(), 10u);
  EXPECT_EQ(got_a1.size() + got_a2.size(), 10u) << "channel a's clients got duplicates";
}

TEST_F(NsqPeerProtocol, ClsAnswersCloseWaitAndStopsDelivery) {
  RawClient c(peer_->port());
  c.identify();
  c.subscribe("cls", "ch", 10);
  publish("cls", "one");
  auto m = c.next_message();
  ASSERT_TRUE(m);
  c.command("CLS");
  auto wait = c.next();
  ASSERT_TRUE(wait);
  EXPECT_EQ(wait->data, "CLOSE_WAIT");
  publish("cls", "two");
  EXPECT_FALSE(c.next(300ms)) << "a message was sent after CLOSE_WAIT";
  c.command("REQ " + id_of(*m) + " 0");  // still allowed while closing
  RawClient other(peer_->port());
  other.identify();
  other.subscribe("cls", "ch", 10);
  std::set<std::string> got;
  while (auto n = other.next_message(500ms)) got.insert(n->body);
  EXPECT_EQ(got, (std::set<std::string>{"one", "two"}));
}

TEST_F(NsqPeerProtocol, ClientsThatMissHeartbeatsAreDisconnected) {
  RawClient c(peer_->port());
  c.identify({{"heartbeat_interval", 1000}});
  auto start = std::chrono::steady_clock::now();
  EXPECT_TRUE(c.wait_closed(5s)) << "a silent client was not disconnected";
  EXPECT_GE(std::chrono::steady_clock::now() - start, 1500ms);
  EXPECT_GE(c.heartbeats, 1);
  EXPECT_EQ(peer_->stats().heartbeat_disconnects, 1u);

  RawClient live(peer_->port());  // one that answers stays
  live.identify({{"heartbeat_interval", 1000}});
  live.next(3000ms, true);
  EXPECT_FALSE(live.closed);
  EXPECT_GE(live.heartbeats, 2);
}

TEST_F(NsqPeerProtocol, HostileInputIsRefusedAndClosed) {
  {
    RawClient c(peer_->port(), false);
    c.send("  V1");
    auto e = c.next();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->data.rfind("E_BAD_PROTOCOL", 0), 0u);
    EXPECT_TRUE(c.wait_closed(2s));
  }
  {
    RawClient c(peer_->port());
    c.send(std::string("\x01\x02garbage\n", 10));
    auto e = c.next();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->type, FrameType::error);
    EXPECT_TRUE(c.wait_closed(2s));
  }
  {
    RawClient c(peer_->port());
    c.command("PUB big", std::string(1001, 'x'));  // over max_msg_size
    auto e = c.next();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->data.rfind("E_BAD_MESSAGE", 0), 0u) << e->data;
    EXPECT_TRUE(c.wait_closed(2s));
  }
  {
    RawClient c(peer_->port());
    c.command("PUB bad/topic", "x");
    auto e = c.next();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->data.rfind("E_BAD_TOPIC", 0), 0u) << e->data;
  }
  {
    RawClient c(peer_->port());
    c.command("FIN 0123456789abcdef");  // before SUB
    auto e = c.next();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->data.rfind("E_INVALID", 0), 0u) << e->data;
    EXPECT_TRUE(c.wait_closed(2s));
  }
  {
    RawClient c(peer_->port());
    c.command("BOGUS");
    auto e = c.next();
    ASSERT_TRUE(e);
    EXPECT_EQ(e->data.rfind("E_INVALID", 0), 0u) << e->data;
  }
  RawClient fine(peer_->port());  // the peer still serves
  fine.command("PUB ok", "x");
  auto ok = fine.next();
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->data, "OK");
}

TEST_F(NsqPeerProtocol, ATopicWithoutChannelsHoldsMessagesForTheFirstChannel) {
  publish("held", "early");
  RawClient first(peer_->port());
  first.identify();
  first.subscribe("held", "first", 10);
  auto m = first.next_message();
  ASSERT_TRUE(m) << "the first channel did not get what the topic held";
  EXPECT_EQ(m->body, "early");
  RawClient second(peer_->port());
  second.identify();
  second.subscribe("held", "second", 10);
  EXPECT_FALSE(second.next(300ms)) << "a later channel saw a message published before it existed";
}

TEST_F(NsqPeerProtocol, EphemeralChannelsDieWithTheirLastClient) {
  {
    RawClient c(peer_->port());
    c.identify();
    c.subscribe("eph", "tail#ephemeral", 1);
    publish("eph", "x");
    ASSERT_TRUE(c.next_message());
  }
  auto until = std::chrono::steady_clock::now() + 2s;
  auto channels = [&] {
    for (const auto& t : peer_->stats().topics)
      if (t.name == "eph") return t.channels.size();
    return std::size_t{0};
  };
  while (channels() > 0 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(channels(), 0u);
}

}  // namespace
}  // namespace ferry::nsq
