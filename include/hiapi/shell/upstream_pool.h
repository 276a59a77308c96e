#pragma once
// Connections to the one configured upstream: keep-alive, bounded in number, one request at a
// time per connection, verified TLS, connect and response timeouts. The HTTP/1.1 client itself is
// UpstreamConn (upstream_conn.h). Moves bytes only: it never retries; the caller's retry step
// decides.

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/http.h>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/node_spares.h"
#include "hiapi/http/message.h"
#include "hiapi/http/method.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/tls.h"

namespace hiapi::shell {

class BufferBudget;

using http::Header;
using http::Headers;
using http::findHeader;

struct UpstreamRequest {
  http::Method method = http::Method::Get;
  std::string target;  ///< origin-form path and query, byte for byte from the client
  Headers headers;     ///< end-to-end headers; the pool adds Host
  std::string body;
  core::Duration timeout{};  ///< this attempt's response timeout; zero = the pool's default
};

enum class UpstreamError {
  None,
  Connect,         ///< could not connect (refused, unreachable, DNS)
  ConnectTimeout,  ///< no connection (or TLS handshake) within connect_timeout
  Tls,             ///< TLS handshake or certificate verification failed
  Timeout,         ///< no complete reply within response_timeout
  Reset,           ///< connection closed or reset before a complete reply
  Protocol,        ///< the reply could not be parsed
};

/// @return a short label for logs and metrics ("connect", "tls", ...).
std::string_view upstreamErrorName(UpstreamError e);

/// An upstream reply (status 0 when error != None) or the reason there is none.
struct UpstreamResponse : http::Response {
  UpstreamError error = UpstreamError::None;
  std::string message;             ///< detail for an error (OpenSSL reason, errno text)
  bool request_maybe_sent = true;  ///< false when it failed before any byte could be sent
  core::Duration latency{};
  /// When the request was written: its attempt's start on a connection that was already open;
  /// nullopt on a new one (part of the time went to connecting, and how much is not known here).
  std::optional<core::MonotonicTime> sent_at;
  /// Body bytes still counted in the pool's BufferBudget: released once the callback has run
  /// (by then the client's copy is counted where it waits), so no reply is uncounted in between.
  uint64_t budget_bytes = 0;
};

using UpstreamCallback = std::function<void(UpstreamResponse&&)>;

/// Thread-safety: the event loop thread only.
class UpstreamPool {
public:
  /// @param clock the loop's clock (must outlive the pool): attempt deadlines, idle times and
  ///        upstream durations are measured on it.
  /// @param resolver the name resolver to use (a test's, with its own hosts file); it must
  ///        outlive the pool, which does not free it. Null: the pool makes one from the system's
  ///        resolver configuration.
  /// @throws std::runtime_error when the TLS context cannot be built.
  UpstreamPool(event_base* base, const core::Clock& clock, const core::UpstreamConfig& cfg,
               Logger& log, evdns_base* resolver = nullptr);
  ~UpstreamPool();
  UpstreamPool(const UpstreamPool&) = delete;
  UpstreamPool& operator=(const UpstreamPool&) = delete;

  /// Sends @p req on an idle or new connection, or waits for one when the pool is full. @p req
  /// is serialized at once: the caller may change or free it afterwards (a retry sends the same
  /// request again without a copy). @p done is called exactly once, later (never from inside
  /// send), unless cancel() is called first. @return a handle for cancel().
  uint64_t send(const UpstreamRequest& req, UpstreamCallback done);

  /// Drops a request that is still waiting for a connection (nothing was sent). A request already
  /// on the wire is not cancelled (it may have created a task): @return false then.
  bool cancelIfWaiting(uint64_t handle);
  /// @return whether @p handle still waits for a connection (nothing sent yet).
  bool isWaiting(uint64_t handle) const;

  /// Reply bodies being read count against @p budget (see BufferBudget); set before sending.
  void setBufferBudget(BufferBudget* budget) { budget_ = budget; }

  size_t busyConnections() const;
  size_t idleConnections() const;
  size_t waiting() const { return waiting_.size(); }

private:
  struct Conn;
  /// One request from send() to its callback.
  struct Attempt {
    uint64_t id = 0;
    std::string wire;  ///< the request's bytes (serializeRequest)
    bool head = false;
    UpstreamCallback done;
    Conn* conn = nullptr;  ///< null while waiting
    core::MonotonicTime started{};
    std::optional<core::MonotonicTime> sent_at;  ///< see UpstreamResponse::sent_at
    core::Duration timeout{};  ///< this attempt's response timeout
    /// When its answer is due, counted from send(): time spent waiting for a connection is
    /// part of it (the caller's deadline does not wait either).
    core::MonotonicTime deadline{};
  };

  Conn* takeConnection();
  Conn* newConnection();
  void start(Attempt& a, Conn* c);
  /// Ends @p c's attempt with @p resp; the callback runs from the deferred event.
  void finish(Conn* c, UpstreamResponse&& resp);
  void complete(Attempt& a, UpstreamResponse&& resp);
  void release(Conn* c);
  void discard(Conn* c);
  void pump();
  void closeIdleExpired();
  /// Answers (upstream timeout, nothing sent) the waiting requests whose deadline has passed,
  /// and sets wait_timer_ for the next one.
  void expireWaiting();
  /// Ends waiting @p a (already out of waiting_) as a timeout: nothing was sent.
  void timeOutWaiting(Attempt& a);
  static void onWaitTimer(evutil_socket_t, short, void* arg);

  static void onResponseTimeout(evutil_socket_t, short, void* arg);
  static void onConnectTimeout(evutil_socket_t, short, void* arg);
  static void onDeferred(evutil_socket_t, short, void* arg);
  static void onIdleSweep(evutil_socket_t, short, void* arg);

  event_base* base_;
  const core::Clock& clock_;
  evdns_base* dns_ = nullptr;
  bool owns_dns_ = false;  ///< dns_ was made here (not the caller's resolver)
  core::UpstreamConfig cfg_;
  Logger& log_;
  std::unique_ptr<TlsClientContext> tls_;
  std::string host_header_;
  uint64_t next_id_ = 1;
  std::vector<std::unique_ptr<Conn>> conns_;
  std::deque<uint64_t> waiting_;
  std::unordered_map<uint64_t, Attempt> attempts_;  ///< nodes: an Attempt never moves
  core::NodeSpares<std::unordered_map<uint64_t, Attempt>> attempt_spares_;
  std::vector<std::unique_ptr<Conn>> graveyard_;    ///< closed; freed on the next loop turn
  event* deferred_ = nullptr;
  event* idle_sweep_ = nullptr;
  BufferBudget* budget_ = nullptr;
  event* wait_timer_ = nullptr;  ///< the earliest deadline of a request waiting for a connection
  core::MonotonicTime wait_timer_at_{};
  /// Callbacks due, run from deferred_ (never from inside send or a socket callback).
  std::vector<std::pair<UpstreamCallback, UpstreamResponse>> completions_;
  std::vector<std::pair<UpstreamCallback, UpstreamResponse>> running_;  ///< keeps its capacity
};

}  // namespace hiapi::shell
