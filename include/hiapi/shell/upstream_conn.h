#pragma once
// One HTTP/1.1 client connection to the upstream, written for the hot path: a non-blocking socket
// registered once with libevent, edge-triggered for both directions, never re-armed per request.
// A request goes out with one send (or SSL_write) the moment it is handed over; the reply is read
// with recv until the socket is drained and parsed with llhttp. What nginx does per
// request (one write, one read) instead of evhttp's epoll_ctl toggling and FIONREAD probes.
//
// It moves bytes and classifies failures; pooling, timeouts and retries are its owner's business.

#include <cstdint>
#include <string>
#include <vector>

#include <sys/socket.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <openssl/ssl.h>

#include "hiapi/core/config.h"
#include "hiapi/http/response_parser.h"
#include "hiapi/shell/buffer_budget.h"
#include "hiapi/shell/upstream_pool.h"

namespace hiapi::shell {

/// Writes @p req as HTTP/1.1 bytes into @p out (cleared first): the request line, Host
/// (@p host_header), the caller's headers (any that could smuggle a header or a second request,
/// with a bare CR, LF or NUL, dropped), Content-Length and the body.
void serializeRequest(std::string& out, const UpstreamRequest& req, std::string_view host_header);

/// Thread-safety: the event loop thread only.
class UpstreamConn {
public:
  /// Receives the outcome of an exchange.
  class Owner {
  public:
    virtual ~Owner() = default;
    /// The exchange started by send() ended: a complete reply or an error (latency unset). Called
    /// from the socket event handler, or from inside send() when it fails at once; afterwards the
    /// connection is either reusable() or closed().
    virtual void onExchangeDone(UpstreamConn& conn, UpstreamResponse&& resp) = 0;
    /// An idle connection saw EOF, an error or unexpected bytes and is closed now.
    virtual void onIdleClosed(UpstreamConn& conn) = 0;
  };

  /// Largest reply body accepted; more is a protocol error.
  static constexpr size_t kMaxResponseBody = 64 * 1024 * 1024;
  /// Largest reply header section (names and values) accepted; more is a protocol error.
  static constexpr size_t kMaxResponseHeaders = 256 * 1024;

  /// @param dns may be null (blocking resolution then); @param tls null for plain http.
  UpstreamConn(event_base* base, evdns_base* dns, const core::UpstreamConfig& cfg,
               const TlsClientContext* tls, Owner& owner);
  ~UpstreamConn();
  UpstreamConn(const UpstreamConn&) = delete;
  UpstreamConn& operator=(const UpstreamConn&) = delete;

  /// Prepares what can fail before any I/O (the SSL object). @return false with @p error.
  bool init(std::string& error);

  /// Starts one exchange: connects first when needed, else writes @p wire (a request as
  /// serializeRequest made it) at once. One exchange at a time (the previous one must have ended
  /// with the connection reusable()). @p head: a HEAD request (its reply has no body).
  void send(std::string_view wire, bool head);

  /// Closes the socket without telling the owner (timeouts, expiry, shutdown). Idempotent.
  void close();

  /// @return whether TCP is connected and, for https, the handshake is done.
  bool established() const { return state_ == State::Open; }
  /// @return whether it is open with no exchange in flight (can take the next request).
  bool reusable() const { return state_ == State::Open && !busy_; }
  bool closed() const { return state_ == State::Closed; }
  /// Reply bodies being read count against @p budget; over it, reading pauses. Null: unbounded.
  void setBufferBudget(BufferBudget* budget) { budget_ = budget; }

  /// @return whether a complete reply came back on it before (the socket worked).
  bool answeredBefore() const { return answered_ > 0; }

private:
  enum class State { Init, Resolving, Connecting, Handshaking, Open, Closed };
  struct DnsWait;

  void startConnect();
  void connectTo(const sockaddr* sa, socklen_t len);
  void onConnected();
  bool handshake();
  bool flush();
  /// Reads once into in_ (through TLS when on). @return the bytes read; 0 when nothing more
  /// can be read now: it would block, or eof_, read_errno_ or tls_read_error_ says why not.
  size_t readChunk();
  void readReply(short what);
  void readIdle();
  /// The parser refused the reply (not merely cut short by EOF).
  bool protocolError() const;
  void onEof();
  void deliver();
  void fail(UpstreamError error, std::string message, bool maybe_sent);
  void failConnect(int err);
  void failTls(const std::string& fallback);
  void resetReply(bool head);

  static void onEvent(evutil_socket_t fd, short what, void* arg);
  static void onResolved(int result, evutil_addrinfo* res, void* arg);

  /// Drops the failed socket and connects to the next resolved address. @return false when
  /// none is left.
  bool tryNextAddress();
  /// Brings budget_ up to date with the body held.
  void countBody();

  event_base* base_;
  evdns_base* dns_;
  const core::UpstreamConfig& cfg_;
  const TlsClientContext* tls_;
  Owner& owner_;

  State state_ = State::Init;
  evutil_socket_t fd_ = -1;
  event* ev_ = nullptr;  ///< READ|WRITE|CLOSED|PERSIST|ET, added once for the socket's life
  SSL* ssl_ = nullptr;
  DnsWait* dns_wait_ = nullptr;
  evdns_getaddrinfo_request* dns_req_ = nullptr;
  BufferBudget* budget_ = nullptr;
  uint64_t budget_counted_ = 0;  ///< reply body bytes counted in budget_
  /// Resolved addresses not tried yet: a refused connect tries the next (a name with an IPv6
  /// and an IPv4 address, a service on one of them).
  std::vector<std::pair<sockaddr_storage, socklen_t>> next_addrs_;
  uint64_t answered_ = 0;

  // The exchange in flight. out_ and in_ keep their capacity from one request to the next.
  bool busy_ = false;
  std::string out_;
  size_t out_off_ = 0;
  http::ResponseParser parser_{{kMaxResponseHeaders, kMaxResponseBody}};
  UpstreamResponse reply_;
  bool eof_ = false;
  int read_errno_ = 0;           ///< recv failed with this (ECONNRESET, ...)
  std::string tls_read_error_;   ///< a TLS failure after the handshake
  char in_[16 * 1024];
};

}  // namespace hiapi::shell
