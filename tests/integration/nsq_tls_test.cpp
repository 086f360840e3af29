// TLS between ferry's NSQ client and the test peer (IDENTIFY tls_v1, then the TLS
// handshake, then nsqd's OK over TLS), with a CA and certificates made by openssl for this
// run: verified publish and consume, a wrong CA, a host the certificate does not name,
// --tls-required against a plain client, client certificates, and the URL options.

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ferry/backends/nsq.hpp"
#include "ferry/broker.hpp"
#include "nsq_peer.hpp"
#include "test_certificates.hpp"
#include "unique_name.hpp"

namespace ferry::nsq {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nsq_peer::Peer;
using nsq_peer::PeerOptions;
using testing::TestCertificates;

using ferry::testing::unique_name;

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class NsqTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::random_device random;
    dir_ = new fs::path(fs::temp_directory_path() / ("ferry-nsq-tls-" + std::to_string(random() % 1'000'000'000)));
    fs::create_directories(*dir_ / "ours");
    fs::create_directories(*dir_ / "other");
    ours_ = new TestCertificates(testing::make_test_certificates(*dir_ / "ours"));
    other_ = new TestCertificates(testing::make_test_certificates(*dir_ / "other", "another CA"));
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    fs::remove_all(*dir_, ignored);
    delete ours_;
    delete other_;
    delete dir_;
  }
  void SetUp() override { register_scheme(); }

  // A peer with our server certificate.
  static PeerOptions tls_peer(bool required = false) {
    PeerOptions o;
    o.tls_cert = ours_->server_cert().string();
    o.tls_key = ours_->server_key().string();
    o.tls_required = required;
    return o;
  }
  static std::string ca() { return ours_->ca().string(); }

  static fs::path* dir_;
  static TestCertificates* ours_;   // the CA that signed the peer's certificate
  static TestCertificates* other_;  // a CA that did not
};

fs::path* NsqTls::dir_ = nullptr;
TestCertificates* NsqTls::ours_ = nullptr;
TestCertificates* NsqTls::other_ = nullptr;

// Opening must fail; returns the error.
Error open_error(const std::string& url) {
  try {
    Broker::open(url);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "open succeeded: " << url;
  return Error(Errc::internal, "");
}

TEST_F(NsqTls, PublishesAndConsumesOverTlsWithTheCaVerified) {
  Peer peer(tls_peer(/*required=*/true));  // a plain command would be refused
  peer.start();
  auto broker = Broker::open(peer.url() + "?tls=true&tls_ca=" + ca() + "&heartbeat=1s");
  const auto topic = unique_name("tls");
  auto sub = broker->subscribe({.topic = topic, .group = "g", .prefetch = 5});
  std::vector<Message> sent;
  for (int i = 0; i < 20; ++i) sent.push_back(Message::with_payload("secret " + std::to_string(i)));
  sent[3].key = "k";
  sent[3].headers["h"] = "v";
  auto one = sent[0];
  ASSERT_TRUE(broker->publisher().publish_future(topic, one).get().ok());
  broker->publisher().publish_batch(topic, {sent.begin() + 1, sent.end()});  // throws on failure
  std::set<std::string> got;
  for (int i = 0; i < 20; ++i) {
    auto d = sub->receive(5s);
    ASSERT_TRUE(d) << "delivery " << i << " did not arrive over TLS";
    if (d->message().id == sent[3].id) {
      EXPECT_EQ(d->message().key, "k");
      EXPECT_EQ(d->message().headers.at("h"), "v");
    }
    got.insert(d->message().id);
    d->ack();
  }
  EXPECT_EQ(got.size(), 20u);
  // Heartbeats and NOPs go over TLS too: the connections outlive two heartbeat intervals.
  const auto accepted = peer.stats().connections_accepted;
  std::this_thread::sleep_for(2500ms);
  ASSERT_TRUE(broker->publisher().publish_future(topic, Message::with_payload("late")).get().ok());
  auto late = sub->receive(5s);
  ASSERT_TRUE(late);
  late->ack();
  auto stats = peer.stats();
  EXPECT_EQ(stats.connections_accepted, accepted);
  EXPECT_EQ(stats.heartbeat_disconnects, 0u);
  EXPECT_GE(stats.tls_connections, 2u) << "the publisher's and the subscriber's connections";
  sub->close();
  broker->close();
}

TEST_F(NsqTls, AuthenticatesOverTlsAfterNsqdsOk) {
  PeerOptions o = tls_peer(/*required=*/true);  // AUTH in plain text would be refused
  o.auth_secret = "s3cret";
  Peer peer(o);
  peer.start();
  auto broker = Broker::open(peer.url() + "?tls=true&auth_secret=s3cret&tls_ca=" + ca());
  EXPECT_TRUE(broker->publisher().publish_future(unique_name("auth"), Message::with_payload("x")).get().ok());
  EXPECT_EQ(peer.stats().tls_connections, 1u);
}

TEST_F(NsqTls, AWrongCaFailsWithAClearError) {
  Peer peer(tls_peer());
  peer.start();
  Error e = open_error(peer.url() + "?tls=true&connect_timeout=2s&tls_ca=" + other_->ca().string());
  EXPECT_EQ(e.code(), Errc::unavailable);
  const std::string what = e.what();
  EXPECT_TRUE(contains(what, "TLS handshake with nsqd 127.0.0.1:")) << what;
  EXPECT_TRUE(contains(what, "certificate was not accepted")) << what;
  EXPECT_TRUE(contains(what, "is tls_ca=" + other_->ca().string() + " the CA that signed it?")) << what;
  EXPECT_FALSE(contains(what, "is nsqd running?")) << "nsqd was reached: " << what;
  EXPECT_EQ(peer.stats().tls_connections, 0u);
}

TEST_F(NsqTls, TheCertificateMustNameTheHostConnectedTo) {
  PeerOptions o = tls_peer();
  o.host = "127.0.0.2";  // loopback too, but the certificate names only 127.0.0.1 and localhost
  Peer peer(o);
  peer.start();
  Error e = open_error(peer.url() + "?tls=true&connect_timeout=2s&tls_ca=" + ca());
  EXPECT_TRUE(contains(e.what(), "IP address mismatch")) << e.what();

  // By name: localhost is on the certificate.
  Peer named(tls_peer());
  named.start();
  auto broker = Broker::open("nsq://localhost:" + std::to_string(named.port()) + "?tls=true&tls_ca=" + ca());
  EXPECT_TRUE(broker->publisher().publish_future(unique_name("named"), Message::with_payload("x")).get().ok());
}

TEST_F(NsqTls, InsecureSkipsTheCertificateCheck) {
  Peer peer(tls_peer());
  peer.start();
  auto broker = Broker::open(peer.url() + "?tls_insecure=true");  // implies tls=true
  const auto topic = unique_name("insecure");
  auto sub = broker->subscribe({.topic = topic, .group = "g"});
  ASSERT_TRUE(broker->publisher().publish_future(topic, Message::with_payload("x")).get().ok());
  auto d = sub->receive(5s);
  ASSERT_TRUE(d);
  d->ack();
  EXPECT_GE(peer.stats().tls_connections, 2u);
}

TEST_F(NsqTls, ATlsRequiredNsqdTellsAPlainClientToAddTls) {
  Peer peer(tls_peer(/*required=*/true));
  peer.start();
  // IDENTIFY is allowed in plain text, so the connection opens; the first command is
  // refused (fatally, as nsqd does) and the error says what to do.
  auto broker = Broker::open(peer.url());
  Status s = broker->publisher().publish_future(unique_name("plain"), Message::with_payload("x")).get();
  ASSERT_FALSE(s.ok());
  EXPECT_TRUE(contains(s.message, "(TLS required)")) << s.message;
  EXPECT_TRUE(contains(s.message, "add tls=true to the nsq:// URL")) << s.message;
  try {
    broker->subscribe({.topic = unique_name("plain"), .group = "g"});
    FAIL() << "subscribed in plain text to a tls-required nsqd";
  } catch (const Error& e) {
    EXPECT_TRUE(contains(e.what(), "add tls=true to the nsq:// URL")) << e.what();
  }
  EXPECT_TRUE(peer.stats().topics.empty()) << "nothing may have been published or subscribed";
}

TEST_F(NsqTls, AskingForTlsFromAnNsqdWithoutItFailsInsteadOfFallingBackToPlainText) {
  Peer peer;  // no certificate
  peer.start();
  Error e = open_error(peer.url() + "?tls=true&tls_ca=" + ca());
  EXPECT_EQ(e.code(), Errc::unavailable);
  EXPECT_TRUE(contains(e.what(), "does not offer TLS, which the URL asks for (tls=true)")) << e.what();
}

TEST_F(NsqTls, PresentsAClientCertificateWhenNsqdWantsOne) {
  PeerOptions o = tls_peer();
  o.tls_client_ca = ca();
  Peer peer(o);
  peer.start();
  Error e = open_error(peer.url() + "?tls=true&connect_timeout=2s&tls_ca=" + ca());
  EXPECT_TRUE(contains(e.what(), "if nsqd wants a client certificate, give it as tls_cert= and tls_key=")) << e.what();

  auto broker = Broker::open(peer.url() + "?tls=true&tls_ca=" + ca() + "&tls_cert=" + ours_->client_cert().string() +
                             "&tls_key=" + ours_->client_key().string());
  EXPECT_TRUE(broker->publisher().publish_future(unique_name("client-cert"), Message::with_payload("x")).get().ok());
  EXPECT_EQ(peer.stats().tls_connections, 1u);
}

TEST_F(NsqTls, TlsOptionsAreCheckedAtOpen) {
  Peer peer(tls_peer());
  peer.start();
  struct Case {
    std::string query, expect;
  };
  const std::vector<Case> cases = {
      {"tls=maybe", "'maybe' is not true or false"},
      {"tls_ca=/nonexistent/ca.pem", "nsq option tls_ca: cannot load '/nonexistent/ca.pem'"},
      {"tls_cert=" + ours_->client_cert().string(), "tls_cert and tls_key go together"},
      {"tls=false&tls_ca=" + ca(), "sets tls=false and tls_ options"},
      {"tls_insecure=true&tls_ca=" + ca(), "contradict"},
      {"tls_cert=" + ours_->client_cert().string() + "&tls_key=" + ours_->server_key().string(), "key values mismatch"},
      {"tls_ca=", "is empty"},
  };
  for (const auto& c : cases) {
    Error e = open_error(peer.url() + "?" + c.query);
    EXPECT_EQ(e.code(), Errc::invalid_argument) << c.query << ": " << e.what();
    EXPECT_TRUE(contains(e.what(), c.expect)) << c.query << ": " << e.what();
  }
  EXPECT_EQ(peer.stats().connections_accepted, 0u) << "a bad option must fail before connecting";
}

}  // namespace
}  // namespace ferry::nsq
