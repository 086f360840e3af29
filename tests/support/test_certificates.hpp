#pragma once
// Throwaway TLS certificates for tests, made at test time with the openssl command
// (Debian's openssl, scripts/deps.sh test): a CA, a server certificate it signs for
// localhost and 127.0.0.1, and a client certificate it signs. EC P-256 keys, valid for
// two days. Used by the RabbitMQ fixture and the NSQ TLS tests.

#include <filesystem>
#include <string>
#include <vector>

namespace ferry::testing {

struct TestCertificates {
  std::filesystem::path dir;

  std::filesystem::path ca() const { return dir / "ca.pem"; }
  std::filesystem::path server_cert() const { return dir / "server.pem"; }
  std::filesystem::path server_key() const { return dir / "server.key"; }
  std::filesystem::path client_cert() const { return dir / "client.pem"; }
  std::filesystem::path client_key() const { return dir / "client.key"; }
};

// Makes ca.pem (and ca.key), server.pem / server.key and client.pem / client.key in `dir`,
// which must exist; `ca_name` is the CA's common name. Throws std::runtime_error with
// openssl's output when a step fails.
TestCertificates make_test_certificates(const std::filesystem::path& dir, const std::string& ca_name = "ferry test CA");

// Runs `args` (args[0] an absolute path) to completion; throws std::runtime_error with its
// output (kept in `log`) when it fails.
void run_command(const std::vector<std::string>& args, const std::filesystem::path& log);

}  // namespace ferry::testing
