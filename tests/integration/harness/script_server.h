#pragma once
// A scripted upstream for tests: a loopback listener on a thread of its own that runs, per
// accepted connection and on that connection's own thread with a blocking socket, either a test's
// handler (byte for byte what the upstream does) or one of a fixed set of faults (a reset, a reply
// cut short, a hang, garbage, TLS that must fail, ...). TestUpstream, being evhttp, can only send
// well-formed replies; this one can send anything.
//
// SIGPIPE is ignored (as the daemon does) so that writing to a connection the proxy has closed
// ends the handler instead of the test.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "harness/harness.h"

struct ssl_st;
struct ssl_ctx_st;

namespace hiapi::test {

/// One accepted connection, seen from a ScriptServer's handler (its own thread, a blocking
/// socket; with TLS, after the handshake). Every read is bounded (10 s): no test hangs on a byte
/// that never comes. The connection is closed when the handler returns.
class ServerConn {
public:
  ServerConn(int fd, size_t index, uint16_t peer_port, const std::atomic<bool>& stopping);
  ~ServerConn();
  ServerConn(const ServerConn&) = delete;
  ServerConn& operator=(const ServerConn&) = delete;

  size_t index() const { return index_; }
  uint16_t peerPort() const { return peer_port_; }

  /// Runs the server side of a TLS handshake with @p ctx. @return whether it succeeded.
  bool acceptTls(ssl_ctx_st* ctx);

  /// Reads one request: the head and a Content-Length body. @return nullopt on EOF or error.
  std::optional<std::string> readRequest();
  /// Reads whatever arrives first (a TLS ClientHello, say). @return false on EOF or error.
  bool readSome();
  /// Writes all of @p data. @return false once the peer is gone.
  bool send(const std::string& data);
  /// One byte per write, @p gap apart (so that the client sees them in separate reads). Stops
  /// when the peer is gone or the server stops. @return whether all were written.
  bool sendByteByByte(const std::string& data,
                      std::chrono::microseconds gap = std::chrono::microseconds(300));
  /// Sends FIN (the socket is closed when the handler returns).
  void shutdownWrite();
  /// Waits until the peer closes (or the server stops).
  void waitForClose();
  /// Makes the close at the handler's end a reset (SO_LINGER 0: RST instead of FIN).
  void resetOnClose();

private:
  bool fill();
  ssize_t recvSome(char* buf, size_t len);

  int fd_;
  size_t index_;
  uint16_t peer_port_;
  const std::atomic<bool>& stopping_;
  ssl_st* ssl_ = nullptr;
  std::string buf_;
};

/// What a ScriptServer without a handler does with each connection (the fault in force when the
/// connection is accepted).
enum class Fault {
  Good,              ///< reads the request, sends the reply (setReply), closes
  Reset,             ///< reads the request, then resets the connection (RST, no reply)
  TruncatedHeaders,  ///< reads the request, sends part of a status line and headers, closes
  MidBodyClose,      ///< reads the request, sends the headers and half the body, closes
  Slow,              ///< reads the request, dribbles the reply a byte at a time (slowGap apart)
  Hang,              ///< reads the request and never answers (until the peer closes)
  Garbage,           ///< reads the request, answers bytes that are not HTTP, waits for close
  OversizedHeaders,  ///< a reply header section over UpstreamConn::kMaxResponseHeaders
  OversizedBody,     ///< a reply whose Content-Length is over UpstreamConn::kMaxResponseBody
  // Only on a TLS server (ScriptServerOptions::tls):
  PlainText,         ///< no TLS: reads the ClientHello, answers a plain HTTP 400, closes
  HandshakeReset,    ///< reads the ClientHello, then resets the connection
  HandshakeStall,    ///< accepts the TCP connection and never says a TLS word
  WrongName,         ///< a certificate from the right CA for another name
  WrongCa,           ///< a certificate for the right name from another CA
};

/// @return the fault's name for test output ("reset", "wrong_ca", ...).
std::string_view faultName(Fault f);

/// Certificates for a TLS ScriptServer: the upstream's own and the two kinds of wrong one.
struct ScriptTls {
  std::string ca_cert;  ///< the CA the proxy should trust
  std::string cert, key;  ///< signed by ca_cert for 127.0.0.1 and localhost
  std::string wrong_name_cert, wrong_name_key;  ///< signed by ca_cert for another name
  std::string other_ca_cert, other_ca_key;      ///< for 127.0.0.1 and localhost, another CA
  /// Makes them all in @p dir with the openssl CLI (TestCa).
  static ScriptTls create(const TempDir& dir);
};

struct ScriptServerOptions {
  bool v6 = false;         ///< listen on ::1 instead of 127.0.0.1
  uint16_t port = 0;       ///< 0: any free port; else this one (an upstream that comes back)
  const ScriptTls* tls = nullptr;  ///< TLS on every connection (must outlive the server)
  /// The delay between two bytes of a Fault::Slow reply.
  std::chrono::milliseconds slow_gap{50};
};

/// Thread-safety: every method may be called from any thread.
class ScriptServer {
public:
  using Handler = std::function<void(ServerConn&)>;

  /// Runs @p handler for each connection (after the TLS handshake, with options.tls).
  explicit ScriptServer(Handler handler, ScriptServerOptions options = {});
  /// Performs the fault set with setFault() (Fault::Good at first) on each connection.
  explicit ScriptServer(ScriptServerOptions options = {});
  /// Closes the listener, wakes and joins every connection's thread.
  ~ScriptServer();
  ScriptServer(const ScriptServer&) = delete;
  ScriptServer& operator=(const ScriptServer&) = delete;

  bool ok() const { return port_ != 0; }
  uint16_t port() const { return port_; }
  /// Connections accepted so far.
  size_t accepted() const { return accepted_; }
  /// Requests read so far by the fault script (not counted for a handler's own reads).
  size_t requests() const { return requests_; }

  /// The fault for connections accepted from now on.
  void setFault(Fault f) { fault_ = f; }
  /// The reply of Fault::Good and the one the reply faults send part of. Default: 200 with
  /// `{"code":200,"message":"success","data":{"taskId":"tk-script-<n>","status":"running"}}`,
  /// n counting the requests (so that creates get distinct task ids). A reply with status and
  /// body given here gets Content-Type, Content-Length and Connection: close.
  void setReply(int status, std::string body);
  /// Back to the default reply.
  void clearReply();

private:
  void start(const ScriptServerOptions& options);
  void acceptLoop();
  void serve(int fd, size_t index, uint16_t peer, Fault fault);
  void runFault(ServerConn& c, Fault fault);
  std::string replyBytes();

  Handler handler_;
  ScriptServerOptions options_;
  ssl_ctx_st* ctx_good_ = nullptr;
  ssl_ctx_st* ctx_wrong_name_ = nullptr;
  ssl_ctx_st* ctx_other_ca_ = nullptr;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> accepted_{0};
  std::atomic<size_t> requests_{0};
  std::atomic<Fault> fault_{Fault::Good};
  std::thread acceptor_;
  mutable std::mutex mu_;
  std::optional<std::pair<int, std::string>> reply_;
  std::set<int> open_fds_;
  std::vector<std::thread> workers_;
};

}  // namespace hiapi::test
