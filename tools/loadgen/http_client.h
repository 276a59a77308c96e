#pragma once
// A small blocking HTTP/1.1 client for the load generator: one keep-alive connection to one
// host:port (plain TCP, loopback in practice), a deadline on every request, Content-Length and
// chunked bodies. Not thread-safe: one instance per thread.

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace hiapi::load {

using Clock = std::chrono::steady_clock;
using Headers = std::vector<std::pair<std::string, std::string>>;

/// `http://host:port` (an optional path is ignored); false on anything else (no TLS).
struct Endpoint {
  std::string host;
  uint16_t port = 0;
  static bool parse(const std::string& url, Endpoint* out, std::string* error);
};

struct Response {
  int status = 0;          ///< 0 = no answer (connect error, reset, timeout, malformed reply)
  std::string error;       ///< why status is 0
  bool timed_out = false;
  Headers headers;
  std::string body;
  /// @return the first header named @p name (case-insensitive), "" when absent.
  std::string header(const std::string& name) const;
};

class HttpClient {
public:
  explicit HttpClient(Endpoint ep) : ep_(std::move(ep)) {}
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  /// Sends one request and reads its reply before @p deadline. A reused keep-alive connection
  /// that turns out closed before any reply byte is retried once on a fresh connection.
  Response request(const std::string& method, const std::string& target, const Headers& headers,
                   const std::string& body, Clock::time_point deadline);

  void close();

private:
  bool connect(Clock::time_point deadline, std::string* error);
  Response once(const std::string& raw, const std::string& method, Clock::time_point deadline,
                bool* nothing_received);

  Endpoint ep_;
  int fd_ = -1;
};

}  // namespace hiapi::load
