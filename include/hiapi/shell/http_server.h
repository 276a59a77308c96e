#pragma once
// The client-facing HTTP/1.1 server: keep-alive connections on non-blocking sockets, each
// registered with epoll once (edge-triggered, read, write and peer-close), requests parsed with
// llhttp (nodejs's parser), replies written at once with one send.
//
// Why not evhttp: libevent's evhttp switches a connection's epoll interest off and on around
// every request and writes a reply only after another epoll round (six epoll_ctl per forwarded
// request on the two sides under B3's load); a proxy that must cost less than nginx cannot afford it.
//
// One request per connection is open at a time: bytes a client pipelines behind it wait in the
// connection's buffer until the reply is written. A client that closes its connection while its
// request is open is reported at once (Handler::onClientGone), so a queued request whose client
// left is never sent.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <event2/event.h>
#include <event2/listener.h>

#include "hiapi/core/clock.h"
#include "hiapi/core/node_spares.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/upstream_pool.h"  // Header, Headers

namespace hiapi::shell {

class BufferBudget;

/// A reply header by reference: replies are written at once, nothing needs to own a copy.
struct HeaderView {
  std::string_view name;
  std::string_view value;
};
using HeaderViews = std::vector<HeaderView>;

struct HttpServerLimits {
  uint64_t max_header_bytes = 64 * 1024;  ///< names + values + 4 per header line
  uint64_t max_body_bytes = 10 * 1024 * 1024;
  /// A connection with no open request and no progress for this long is closed.
  core::Duration idle_timeout = std::chrono::seconds(65);
  /// A request's line and headers must arrive within this of its first byte, however steadily
  /// they trickle in (slowloris): answered 408, then closed.
  core::Duration header_timeout = std::chrono::seconds(10);
  /// A request's body must arrive within this of the end of its headers.
  core::Duration body_timeout = std::chrono::seconds(60);
  /// Open client connections at most; at the cap accepting pauses until one closes.
  size_t max_connections = 4096;
};

/// What was wrong with a request the server could not read whole. The handler answers it like
/// any request (the connection closes after that answer).
enum class InboundProblem {
  None,
  Malformed,        ///< not HTTP/1.x the parser accepts
  HeadersTooLarge,  ///< over max_header_bytes
  BodyTooLarge,     ///< over max_body_bytes (declared or received)
  Timeout,          ///< headers or body not received within header_timeout / body_timeout
};

struct InboundRequest {
  std::string method;  ///< "GET", "POST", ... as sent (llhttp's names)
  std::string target;  ///< the request target, byte for byte
  Headers headers;     ///< in order, names as sent
  std::string body;    ///< de-chunked
  unsigned short http_major = 1;
  unsigned short http_minor = 1;
  InboundProblem problem = InboundProblem::None;
  /// With BodyTooLarge: the declared Content-Length, or the bytes received when chunked.
  uint64_t body_bytes_seen = 0;
  std::string peer;  ///< the client's "address:port", for the access log
};

/// Thread-safety: the event loop thread only.
class HttpServer {
public:
  class Handler {
  public:
    virtual ~Handler() = default;
    /// A request (or an unreadable one, see InboundRequest::problem) to answer with reply().
    /// May reply at once or later. @p req may be moved from.
    virtual void onRequest(uint64_t exchange, InboundRequest& req) = 0;
    /// The client of open exchange @p exchange closed or reset its connection; reply() to it is
    /// a no-op from now on.
    virtual void onClientGone(uint64_t exchange) = 0;
  };

  struct Conn;  ///< one client connection (opaque; public for the parser's callbacks)

  HttpServer(event_base* base, Handler& handler, Logger& log, HttpServerLimits limits);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  /// Binds @p address (IPv4 or IPv6 literal, or a name resolved now) and @p port (0: any).
  /// @return false, with the reason in @p error, on failure.
  bool listen(const std::string& address, uint16_t port, std::string& error);
  uint16_t port() const { return port_; }
  /// Stops accepting; open connections go on.
  void stopAccepting();
  void setLimits(const HttpServerLimits& limits);
  const HttpServerLimits& limits() const { return limits_; }

  /// Answers @p exchange. Adds Content-Length (none for 1xx, 204, 304; a HEAD reply keeps the
  /// one in @p headers, or has none when @p body is empty; any other reply's is replaced), Date when @p headers have none, and Connection when the connection closes after this reply (@p close, a client
  /// that asked for it, HTTP/1.0 without keep-alive, an unreadable request). A HEAD request's
  /// reply carries no body. No-op for an exchange that is closed or unknown.
  void reply(uint64_t exchange, int status, const HeaderViews& headers, std::string_view body,
             bool close = false);
  /// @return whether @p exchange is open (its client is still there, no reply yet).
  bool isOpen(uint64_t exchange) const { return open_.count(exchange) != 0; }
  /// @return open client connections.
  size_t connections() const { return conns_.size(); }
  /// Reply bytes waiting to be written count against @p budget (see BufferBudget).
  void setBufferBudget(BufferBudget* budget) { budget_ = budget; }
  /// Serves an already connected socket as if it had been accepted (fuzzing over a socketpair).
  void adoptForTest(evutil_socket_t fd) { onAccept(nullptr, fd, nullptr, 0, this); }
  /// @return whether accepting is paused (connection cap, or out of file descriptors).
  bool acceptPaused() const { return accept_paused_; }
  /// @return accept() calls that failed (out of descriptors, ...), for tests and metrics.
  uint64_t acceptFailures() const { return accept_failures_; }
  /// @return client connections accepted since the start.
  uint64_t accepted() const { return accepted_; }

private:
  static void onAccept(evconnlistener*, evutil_socket_t fd, sockaddr*, int, void* arg);
  static void onAcceptError(evconnlistener*, void* arg);
  static void onSocket(evutil_socket_t fd, short what, void* arg);
  static void onTimer(evutil_socket_t fd, short what, void* arg);

  void readIn(Conn& c, bool peer_closed);
  void parse(Conn& c);
  void dispatch(Conn& c);
  bool flush(Conn& c);
  void afterWrite(Conn& c);
  void startLinger(Conn& c);
  void clientGone(Conn& c);
  void destroy(Conn& c);
  void armTimer(Conn& c, core::Duration d);
  /// Pauses accepting (cap reached, or accept failing for want of descriptors).
  void pauseAccepting();
  /// Accepts again when nothing holds it paused (called when a connection closes and by the
  /// retry timer).
  void maybeResumeAccepting();
  static void onAcceptRetry(evutil_socket_t, short, void* arg);

  event_base* base_;
  Handler& handler_;
  Logger& log_;
  HttpServerLimits limits_;
  evconnlistener* listener_ = nullptr;
  BufferBudget* budget_ = nullptr;
  event* accept_retry_ = nullptr;  ///< resumes accepting after a failure for want of descriptors
  bool accept_paused_ = false;
  bool accept_failing_ = false;  ///< paused by a failed accept: the retry timer resumes it
  uint64_t accept_failures_ = 0;
  uint64_t accept_failures_logged_ = 0;  ///< failures up to the last log line (one per burst)
  core::Duration accept_retry_delay_{};
  core::MonotonicTime last_pause_log_{};
  uint16_t port_ = 0;
  uint64_t next_exchange_ = 1;
  uint64_t accepted_ = 0;
  std::unordered_set<Conn*> conns_;
  std::unordered_map<uint64_t, Conn*> open_;  ///< exchange → its connection
  core::NodeSpares<std::unordered_map<uint64_t, Conn*>> open_spares_;
};

}  // namespace hiapi::shell
