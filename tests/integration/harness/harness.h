#pragma once
// Test harness for integration tests: temp dirs, a test CA made with the openssl CLI at test
// time, child processes (the daemon, the simulator), a blocking loopback HTTP client, and an
// in-process HTTP(S) upstream that records what it received.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "harness/loop_thread.h"

struct event_base;
struct evhttp;
struct evhttp_request;
struct ssl_ctx_st;

namespace hiapi::test {

using namespace std::chrono_literals;

/// A directory removed (with its content) at destruction.
class TempDir {
public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  void write(const std::string& name, const std::string& content) const;

private:
  std::string path_;
};

std::string readFile(const std::string& path);

/// Runs a shell command; @return its exit status (0 = ok).
int runCommand(const std::string& cmd);

/// A CA and a server certificate signed by it, made with the openssl CLI.
struct TestCa {
  std::string ca_cert, ca_key, server_cert, server_key;
  /// @param dns_names / ips the server certificate's subjectAltName entries.
  static TestCa create(const TempDir& dir, const std::vector<std::string>& dns_names,
                       const std::vector<std::string>& ips, const std::string& prefix = "srv");
  /// Signs one more server certificate with this CA (another name, say), its files named after
  /// @p prefix in @p dir. @return {certificate, key}.
  std::pair<std::string, std::string> issue(const TempDir& dir,
                                            const std::vector<std::string>& dns_names,
                                            const std::vector<std::string>& ips,
                                            const std::string& prefix) const;
};

/// A child process with its stdout and stderr in files.
class Process {
public:
  Process(const std::vector<std::string>& argv, const std::string& log_prefix,
          const std::vector<std::string>& extra_env = {});
  ~Process();
  pid_t pid() const { return pid_; }
  void signal(int sig);
  /// Waits for exit. @return the exit status, or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  bool running();
  std::string out() const;
  std::string err() const;

private:
  pid_t pid_ = -1;
  std::string out_path_, err_path_;
  std::optional<int> status_;
};

/// @return a 127.0.0.1 port that was free a moment ago and that nothing listens on (connections
///         to it are refused).
uint16_t unusedPort();

/// Polls @p pred every 10 ms until it holds or @p timeout passes.
bool waitFor(const std::function<bool()>& pred, std::chrono::milliseconds timeout);

/// @return the sum of the samples of metric @p name (a whole sample name, e.g.
///         "hiapi_proxy_queue_depth") in Prometheus text @p text whose labels contain
///         @p label_part (e.g. `tier="all"`; empty: every sample).
double metricSum(const std::string& text, const std::string& name,
                 const std::string& label_part = {});

struct HttpResponse {
  int status = 0;  ///< 0: no answer (connection failed or closed)
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string header(const std::string& name) const;  ///< "" when absent; case-insensitive
  bool has(const std::string& name) const;
};

/// One blocking HTTP/1.1 request over a fresh loopback connection.
/// @param raw_request the whole request; when empty it is built from the other arguments.
HttpResponse httpRequest(uint16_t port, const std::string& method, const std::string& target,
                         const std::vector<std::pair<std::string, std::string>>& headers = {},
                         const std::string& body = {},
                         std::chrono::milliseconds timeout = 10s);
/// Sends bytes as they are and reads one response.
HttpResponse httpRaw(uint16_t port, const std::string& raw, std::chrono::milliseconds timeout = 10s);

/// A connected socket that sends a request and can be closed before the answer (disconnect
/// tests). Thread-safety: one thread.
class OpenRequest {
public:
  OpenRequest(uint16_t port, const std::string& raw);
  ~OpenRequest();
  void close();
  /// Reads one response (blocking up to @p timeout).
  HttpResponse read(std::chrono::milliseconds timeout = 10s);

private:
  int fd_ = -1;
  bool head_ = false;  ///< the request is HEAD: its response has no body
};

/// What the in-process upstream recorded of one request.
struct RecordedRequest {
  std::string method;
  std::string uri;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::string header(const std::string& name) const;
  bool has(const std::string& name) const;
};

/// An in-process HTTP(S) upstream on 127.0.0.1, its own event loop thread. By default it answers
/// 200 with a fixed JSON body and some headers (hop-by-hop ones included, to check filtering).
class TestUpstream {
public:
  struct Reply {
    int status = 200;
    std::vector<std::pair<std::string, std::string>> headers;
    std::string body;
    std::chrono::milliseconds delay{0};
    bool no_reply = false;  ///< never answer (timeout tests)
  };
  using Handler = std::function<Reply(const RecordedRequest&)>;

  /// @param cert/key when set, TLS.
  explicit TestUpstream(const std::string& cert = {}, const std::string& key = {});
  ~TestUpstream();
  uint16_t port() const { return port_; }
  void setHandler(Handler h);
  std::vector<RecordedRequest> requests() const;
  size_t count() const;

private:
  static void onRequest(evhttp_request* req, void* arg);

  LoopThread loop_;  // first: freed last, after the evhttp on it
  evhttp* http_ = nullptr;
  ssl_ctx_st* ssl_ctx_ = nullptr;
  uint16_t port_ = 0;
  mutable std::mutex mu_;
  Handler handler_;
  std::vector<RecordedRequest> requests_;
  std::vector<evhttp_request*> held_;
};

/// Runs the real hiapi-proxy binary with a config file written to a temp dir.
class ProxyProcess {
public:
  /// @param yaml the configuration (listen.port should be 0).
  ProxyProcess(const TempDir& dir, const std::string& yaml,
               const std::vector<std::string>& extra_env = {},
               const std::string& name = "proxy");
  ~ProxyProcess();
  uint16_t port() const { return port_; }
  uint16_t adminPort() const { return admin_port_; }
  Process& process() { return *proc_; }
  bool started() const { return port_ != 0; }
  std::string configPath() const { return config_path_; }

private:
  std::unique_ptr<Process> proc_;
  std::string config_path_;
  uint16_t port_ = 0;
  uint16_t admin_port_ = 0;
};

/// Runs the hiapi-sim binary with the given flags (port 0, port file).
class SimProcess {
public:
  SimProcess(const TempDir& dir, const std::vector<std::string>& flags,
             const std::string& name = "sim");
  ~SimProcess();
  uint16_t port() const { return port_; }
  bool started() const { return port_ != 0; }
  Process& process() { return *proc_; }

private:
  std::unique_ptr<Process> proc_;
  uint16_t port_ = 0;
};

}  // namespace hiapi::test
