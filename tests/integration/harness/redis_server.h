#pragma once
// A redis-server of the test's own for the shared-store tests: a free loopback port, nothing
// kept on disk, TLS or a password when asked.

#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "harness/harness.h"

namespace hiapi::test {

/// What a redis-server needs to speak TLS only (clients are not asked for certificates).
struct RedisTls {
  std::string cert, key, ca;
};

/// A redis-server of the test's own, on a loopback port, with nothing kept on disk.
class RedisServer {
public:
  RedisServer(const TempDir& dir, uint16_t port, const std::string& password = {},
              std::optional<RedisTls> tls = std::nullopt)
      : port_(port), tls_(std::move(tls)) {
    std::vector<std::string> argv{"/usr/bin/redis-server", "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", dir.path()};
    if (tls_) {
      argv.insert(argv.end(), {"--port", "0", "--tls-port", std::to_string(port),
                               "--tls-cert-file", tls_->cert, "--tls-key-file", tls_->key,
                               "--tls-ca-cert-file", tls_->ca, "--tls-auth-clients", "no"});
    } else {
      argv.insert(argv.end(), {"--port", std::to_string(port)});
    }
    if (!password.empty()) {
      argv.insert(argv.end(), {"--requirepass", password});
    }
    proc_ = std::make_unique<Process>(argv, dir.file("redis-" + std::to_string(++starts_)));
    waitFor([&] { return cli("PING") == "PONG" || !proc_->running(); }, 10000ms);
  }
  ~RedisServer() { kill(SIGTERM); }
  bool up() { return proc_->running() && (cli("PING") == "PONG" || !password_.empty()); }
  void kill(int sig) {
    if (proc_ && proc_->running()) {
      proc_->signal(sig);
      proc_->wait(10000ms);
    }
  }
  /// Runs redis-cli; @return its output's first line.
  std::string cli(const std::string& args) const {
    const std::string cmd = "/usr/bin/redis-cli -p " + std::to_string(port_) +
                            (tls_ ? " --tls --cacert " + tls_->ca : std::string()) + " " + args +
                            " 2>&1";
    FILE* f = ::popen(cmd.c_str(), "r");
    if (f == nullptr) {
      return {};
    }
    char buf[4096] = {};
    std::string out;
    if (std::fgets(buf, sizeof buf, f) != nullptr) {
      out = buf;
    }
    ::pclose(f);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) {
      out.pop_back();
    }
    return out;
  }
  uint16_t port() const { return port_; }

private:
  uint16_t port_;
  std::optional<RedisTls> tls_;
  std::string password_;
  std::unique_ptr<Process> proc_;
  static inline int starts_ = 0;
};

inline std::string secretFile(const TempDir& dir) {
  dir.write("store.secret", std::string(32, 'k'));
  return dir.file("store.secret");
}

}  // namespace hiapi::test
