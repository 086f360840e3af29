#include "tls.hpp"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <boost/asio/ip/address.hpp>

#include "ferry/error.hpp"

namespace ferry::nsq {

namespace ssl = boost::asio::ssl;

TlsContext::TlsContext(const Options& options) : context_(ssl::context::tls_client), verify_(!options.tls_insecure) {
  // nsqd's own default minimum is TLS 1.0; ferry does not go below 1.2.
  SSL_CTX_set_min_proto_version(context_.native_handle(), TLS1_2_VERSION);
  context_.set_options(ssl::context::default_workarounds | ssl::context::no_compression);
  auto load = [&](const char* option, const std::string& file, auto&& fn) {
    boost::system::error_code ec;
    fn(ec);
    if (ec)
      throw Error(Errc::invalid_argument,
                  std::string("nsq option ") + option + ": cannot load '" + file + "' (" + ec.message() + ")");
  };
  if (verify_) {
    context_.set_verify_mode(ssl::verify_peer);
    if (!options.tls_ca.empty())
      load("tls_ca", options.tls_ca, [&](auto& ec) { context_.load_verify_file(options.tls_ca, ec); });
    else
      load("tls", "the system's CA certificates", [&](auto& ec) { context_.set_default_verify_paths(ec); });
  } else {
    context_.set_verify_mode(ssl::verify_none);
  }
  if (!options.tls_cert.empty()) {
    load("tls_cert", options.tls_cert, [&](auto& ec) { context_.use_certificate_chain_file(options.tls_cert, ec); });
    // (OpenSSL also checks here that the key is the certificate's.)
    load("tls_key", options.tls_key,
         [&](auto& ec) { context_.use_private_key_file(options.tls_key, ssl::context::pem, ec); });
  }
}

TlsStream::TlsStream(boost::asio::ip::tcp::socket& socket, TlsContext& context, const std::string& host)
    : stream(socket, context.native()), verifies(context.verifies()) {
  SSL* handle = stream.native_handle();
  boost::system::error_code not_an_address;
  boost::asio::ip::make_address(host, not_an_address);
  if (not_an_address) SSL_set_tlsext_host_name(handle, host.c_str());  // SNI takes names only
  if (!verifies) return;
  // OpenSSL checks the name (or the address, for an IP) as part of verifying the chain.
  if (not_an_address) {
    SSL_set_hostflags(handle, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    SSL_set1_host(handle, host.c_str());
  } else {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(handle), host.c_str());
  }
}

std::string tls_failure(TlsStream& tls, const boost::system::error_code& ec, const Options& options) {
  if (tls.verifies) {
    const long result = SSL_get_verify_result(tls.stream.native_handle());
    if (result == X509_V_ERR_HOSTNAME_MISMATCH || result == X509_V_ERR_IP_ADDRESS_MISMATCH)
      return std::string("its certificate was not accepted (") + X509_verify_cert_error_string(result) +
             "): connect with a name or address the certificate lists";
    if (result != X509_V_OK)
      return std::string("its certificate was not accepted (") + X509_verify_cert_error_string(result) +
             (options.tls_ca.empty() ? "): give the CA that signed it as tls_ca=<PEM file>"
                                     : "): is tls_ca=" + options.tls_ca + " the CA that signed it?");
  }
  // Under TLS 1.2 an nsqd that wants a client certificate ends the handshake itself.
  if (options.tls_cert.empty() && ec.category() == boost::asio::error::get_ssl_category())
    return ec.message() + " (if nsqd requires client certificates, give tls_cert=<PEM> and tls_key=<PEM>)";
  return ec.message();
}

}  // namespace ferry::nsq
