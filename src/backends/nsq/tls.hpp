#pragma once
// TLS for nsqd connections (IDENTIFY tls_v1, include/ferry/backends/nsq.hpp): the client
// context made once per broker from the URL's tls options, and the stream a connection
// upgrades to after nsqd's IDENTIFY answer. Private to src/backends/nsq; only the files
// that do TLS include it, so OpenSSL stays out of the others.

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/system/error_code.hpp>
#include <string>

#include "options.hpp"

namespace ferry::nsq {

// An OpenSSL client context: TLS 1.2 at least; the server's certificate checked against
// options.tls_ca (or the system's CAs) unless options.tls_insecure; options.tls_cert /
// tls_key presented when nsqd asks for a client certificate. Read-only once made, so the
// connections of one broker share it.
class TlsContext {
 public:
  // Throws Error(invalid_argument) naming the option and file that could not be loaded.
  explicit TlsContext(const Options& options);

  boost::asio::ssl::context& native() noexcept { return context_; }
  bool verifies() const noexcept { return verify_; }

 private:
  boost::asio::ssl::context context_;
  bool verify_;
};

// The TLS layer over a connection's socket, which the connection keeps owning (closing
// the socket ends the TLS session with it). Sets SNI (for a host name) and, when the
// context verifies, the name or address the certificate must carry: `host`.
struct TlsStream {
  TlsStream(boost::asio::ip::tcp::socket& socket, TlsContext& context, const std::string& host);

  boost::asio::ssl::stream<boost::asio::ip::tcp::socket&> stream;
  bool verifies;
};

// Why a TLS handshake failed, in words: the certificate check's verdict and what to do
// about it when that is what failed, else the error's text.
std::string tls_failure(TlsStream& tls, const boost::system::error_code& ec, const Options& options);

}  // namespace ferry::nsq
