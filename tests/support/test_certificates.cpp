#include "test_certificates.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <stdexcept>

extern char** environ;

namespace ferry::testing {

namespace fs = std::filesystem;

void run_command(const std::vector<std::string>& args, const fs::path& log) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&actions, 1, 2);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  std::string line;
  for (const auto& a : args) line += a + " ";
  if (spawned != 0) throw std::runtime_error("cannot run " + line + "(is it installed? scripts/deps.sh test)");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::ifstream in(log, std::ios::binary);
    std::string output((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    throw std::runtime_error("command failed: " + line + "\n" + output);
  }
}

TestCertificates make_test_certificates(const fs::path& dir, const std::string& ca_name) {
  TestCertificates certs{dir};
  const std::string openssl = "/usr/bin/openssl";
  const std::string curve = "ec_paramgen_curve:prime256v1";
  const fs::path log = dir / "openssl.log";
  auto path = [&](const char* name) { return (dir / name).string(); };
  run_command({openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", curve, "-nodes", "-keyout", path("ca.key"), "-out",
               certs.ca().string(), "-days", "2", "-subj", "/CN=" + ca_name},
              log);
  {
    std::ofstream ext(dir / "server.ext", std::ios::trunc);
    ext << "subjectAltName = DNS:localhost, IP:127.0.0.1\n";
    std::ofstream client_ext(dir / "client.ext", std::ios::trunc);
    client_ext << "extendedKeyUsage = clientAuth\n";
    if (!ext || !client_ext) throw std::runtime_error("cannot write in " + dir.string());
  }
  int serial = 1;
  for (const std::string name : {"server", "client"}) {
    const std::string subject = name == "server" ? "/CN=localhost" : "/CN=ferry test client";
    const std::string key = (dir / (name + ".key")).string();
    const std::string csr = (dir / (name + ".csr")).string();
    run_command(
        {openssl, "req", "-newkey", "ec", "-pkeyopt", curve, "-nodes", "-keyout", key, "-out", csr, "-subj", subject},
        log);
    run_command({openssl, "x509", "-req", "-in", csr, "-CA", certs.ca().string(), "-CAkey", path("ca.key"),
                 "-set_serial", std::to_string(++serial), "-out", (dir / (name + ".pem")).string(), "-days", "2",
                 "-extfile", (dir / (name + ".ext")).string()},
                log);
  }
  return certs;
}

}  // namespace ferry::testing
