#pragma once
// The admin listener (default 127.0.0.1:9787, separate from the proxy port):
//   GET /metrics  Prometheus text format 0.0.4 (Content-Type: text/plain; version=0.0.4)
//   GET /healthz  200 "ok" while the loop runs
//   GET /readyz   200 "ready" when ready() holds, else 503 "not ready"
//   GET /status   200 JSON from the status callback (the daemon's redacted snapshot)
//   GET /config   200 YAML: the effective configuration, keys redacted (once setConfigDump())
//   PUT /limits/… runtime limits (once setLimitsHandler()), from a loopback peer only
// Anything else: 404 (405 for a method other than GET/HEAD on a known path).

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

struct event_base;
struct evhttp;
struct evhttp_request;
struct evhttp_bound_socket;

namespace hiapi::shell {

class Metrics;

/// Thread-safety: loop thread only (construct, listen, close and destroy on the thread that runs
/// @p base, or while it is not running).
class AdminServer {
public:
  /// @param status_json called for /status; must return a JSON document
  /// @param ready called for /readyz
  /// @param before_scrape called before each /metrics serialisation (refresh gauges there)
  AdminServer(event_base* base, Metrics& metrics, std::function<std::string()> status_json,
              std::function<bool()> ready, std::function<void()> before_scrape);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  /// Binds @p address:@p port (port 0 = a free port). @return false on failure (see lastError()).
  bool listen(const std::string& address, uint16_t port);
  /// @return the bound port, 0 before listen() succeeded or after close().
  uint16_t port() const { return port_; }
  /// Stops listening and drops open admin connections.
  void close();
  /// @return why the last listen() failed ("" when it did not).
  const std::string& lastError() const { return last_error_; }

  /// Serves GET /config with what @p config_yaml returns (the effective configuration, keys
  /// redacted); without it /config is a 404.
  void setConfigDump(std::function<std::string()> config_yaml) {
    config_yaml_ = std::move(config_yaml);
  }

  /// What a PUT under /limits/ answers: status and a JSON body.
  struct LimitsReply {
    int status = 200;
    std::string body;
  };
  /// Serves PUT /limits/<rest> with @p handler(rest, body, peer). Only a loopback peer may
  /// change limits (others get 403), whatever address the listener is bound to.
  void setLimitsHandler(
      std::function<LimitsReply(std::string_view rest, std::string_view body,
                                const std::string& peer)> handler) {
    limits_ = std::move(handler);
  }

  /// Requests served (all paths), for tests and logs.
  uint64_t served() const { return served_; }

private:
  static void onRequest(evhttp_request* req, void* arg);
  void handle(evhttp_request* req);
  /// PUT /limits/<rest>. @param method an evhttp_cmd_type.
  void handleLimits(evhttp_request* req, int method, std::string_view rest);

  event_base* base_;
  Metrics& metrics_;
  std::function<std::string()> status_json_;
  std::function<bool()> ready_;
  std::function<void()> before_scrape_;
  std::function<std::string()> config_yaml_;
  std::function<LimitsReply(std::string_view, std::string_view, const std::string&)> limits_;
  evhttp* http_ = nullptr;
  uint16_t port_ = 0;
  uint64_t served_ = 0;
  std::string last_error_;
};

}  // namespace hiapi::shell
