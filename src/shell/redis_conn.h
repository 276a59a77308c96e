#pragma once
// One connection to Redis on the proxy's loop: a libevent bufferevent, plain or OpenSSL
// (rediss://), carrying commands written by hiredis's formatter and replies read by hiredis's
// reader. Debian 12's hiredis (0.14) has no TLS of its own; its protocol code is used as it is,
// and only the bytes travel on the proxy's own (verified) TLS.
// Thread-safety: not thread-safe; the loop's thread only.

#include <cstdint>
#include <deque>
#include <functional>
#include <string>
#include <vector>

#include <event2/event.h>
#include <openssl/ssl.h>

struct bufferevent;
struct redisReader;
struct redisReply;

namespace hiapi::shell {

class RedisConn {
public:
  /// A reply, or nullptr when the connection failed before it came. The reply is freed after
  /// the call returns.
  using ReplyFn = std::function<void(redisReply*)>;
  /// @param on_connected called once the connection (and TLS handshake) is up.
  /// @param on_failed called once when it fails or closes, with why; every command still
  ///        waiting has had its ReplyFn called with nullptr first.
  RedisConn(event_base* base, std::function<void()> on_connected,
            std::function<void(const std::string& why)> on_failed);
  /// Drops the commands still waiting without calling them.
  ~RedisConn();
  RedisConn(const RedisConn&) = delete;
  RedisConn& operator=(const RedisConn&) = delete;

  /// Starts connecting to @p ip (IPv4 or IPv6 literal) and @p port; with @p ssl (owned from now
  /// on, host name check already set) the bytes go over TLS. @return false with @p error when it
  /// cannot even start.
  bool connect(const std::string& ip, uint16_t port, SSL* ssl, std::string& error);
  /// Queues @p argv (Redis pipelines: replies come in order). @return false when closed.
  bool command(const std::vector<std::string>& argv, ReplyFn done);
  /// Stops: no callback is called any more. Safe from inside a callback of this connection,
  /// which must then not be destroyed before that callback has returned.
  void close();

private:
  static void onRead(bufferevent* bev, void* arg);
  static void onEvent(bufferevent* bev, short what, void* arg);
  void readReplies();
  void fail(const std::string& why);

  event_base* base_;
  std::function<void()> on_connected_;
  std::function<void(const std::string&)> on_failed_;
  bufferevent* bev_ = nullptr;
  SSL* ssl_ = nullptr;  ///< owned by bev_ once it exists
  redisReader* reader_ = nullptr;
  std::deque<ReplyFn> waiting_;
  bool closed_ = false;  ///< by the owner (close()) or by a failure: no callback any more
};

}  // namespace hiapi::shell
