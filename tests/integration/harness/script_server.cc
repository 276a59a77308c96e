#include "harness/script_server.h"

#include <cctype>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <memory>
#include <stdexcept>
#include <tuple>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hiapi/shell/upstream_conn.h"

namespace hiapi::test {

// ---- ServerConn ---------------------------------------------------------------------------------

ServerConn::ServerConn(int fd, size_t index, uint16_t peer_port,
                       const std::atomic<bool>& stopping)
    : fd_(fd), index_(index), peer_port_(peer_port), stopping_(stopping) {
  const timeval tv{10, 0};  // bounds every read: no test hangs on a lost byte
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

ServerConn::~ServerConn() {
  if (ssl_ != nullptr) {
    SSL_free(ssl_);  // no close_notify: the fault decides how the connection ends
  }
  ::close(fd_);
}

bool ServerConn::acceptTls(ssl_ctx_st* ctx) {
  ssl_ = SSL_new(ctx);
  if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1) {
    return false;
  }
  const bool ok = SSL_accept(ssl_) == 1;
  ERR_clear_error();  // a refused handshake is what some faults are for
  return ok;
}

ssize_t ServerConn::recvSome(char* buf, size_t len) {
  if (ssl_ != nullptr) {
    const int n = SSL_read(ssl_, buf, static_cast<int>(len));
    ERR_clear_error();
    return n > 0 ? n : -1;
  }
  return ::recv(fd_, buf, len, 0);
}

bool ServerConn::fill() {
  char tmp[64 * 1024];
  const ssize_t n = recvSome(tmp, sizeof tmp);
  if (n <= 0) {
    return false;
  }
  buf_.append(tmp, static_cast<size_t>(n));
  return true;
}

std::optional<std::string> ServerConn::readRequest() {
  size_t head_end;
  while ((head_end = buf_.find("\r\n\r\n")) == std::string::npos) {
    if (!fill()) {
      return std::nullopt;
    }
  }
  head_end += 4;
  std::string head = buf_.substr(0, head_end);
  for (char& c : head) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  size_t body = 0;
  if (const size_t cl = head.find("\r\ncontent-length:"); cl != std::string::npos) {
    body = std::stoul(head.substr(cl + 17));
  }
  while (buf_.size() < head_end + body) {
    if (!fill()) {
      return std::nullopt;
    }
  }
  std::string req = buf_.substr(0, head_end + body);
  buf_.erase(0, head_end + body);
  return req;
}

bool ServerConn::readSome() { return fill(); }

bool ServerConn::send(const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n;
    if (ssl_ != nullptr) {
      const int w = SSL_write(ssl_, data.data() + off, static_cast<int>(data.size() - off));
      ERR_clear_error();
      n = w > 0 ? w : -1;
    } else {
      n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    }
    if (n <= 0) {
      if (n < 0 && errno == EINTR && ssl_ == nullptr) {
        continue;
      }
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

bool ServerConn::sendByteByByte(const std::string& data, std::chrono::microseconds gap) {
  for (char ch : data) {
    if (stopping_ || !send(std::string(1, ch))) {
      return false;
    }
    std::this_thread::sleep_for(gap);  // the fault is the delay itself, not a wait for an event
  }
  return true;
}

void ServerConn::shutdownWrite() { ::shutdown(fd_, SHUT_WR); }

void ServerConn::waitForClose() {
  while (!stopping_ && fill()) {
    buf_.clear();
  }
}

void ServerConn::resetOnClose() {
  const linger l{1, 0};
  setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

// ---- faults -------------------------------------------------------------------------------------

std::string_view faultName(Fault f) {
  switch (f) {
  case Fault::Good:
    return "good";
  case Fault::Reset:
    return "reset";
  case Fault::TruncatedHeaders:
    return "truncated_headers";
  case Fault::MidBodyClose:
    return "mid_body_close";
  case Fault::Slow:
    return "slow";
  case Fault::Hang:
    return "hang";
  case Fault::Garbage:
    return "garbage";
  case Fault::OversizedHeaders:
    return "oversized_headers";
  case Fault::OversizedBody:
    return "oversized_body";
  case Fault::PlainText:
    return "plaintext";
  case Fault::HandshakeReset:
    return "handshake_reset";
  case Fault::HandshakeStall:
    return "handshake_stall";
  case Fault::WrongName:
    return "wrong_name";
  case Fault::WrongCa:
    return "wrong_ca";
  }
  return "unknown";
}

ScriptTls ScriptTls::create(const TempDir& dir) {
  const TestCa ca = TestCa::create(dir, {"localhost"}, {"127.0.0.1"}, "script");
  const TestCa other = TestCa::create(dir, {"localhost"}, {"127.0.0.1"}, "script-other");
  ScriptTls t;
  t.ca_cert = ca.ca_cert;
  t.cert = ca.server_cert;
  t.key = ca.server_key;
  std::tie(t.wrong_name_cert, t.wrong_name_key) =
      ca.issue(dir, {"not-the-upstream.example"}, {"127.0.0.2"}, "script-wrong-name");
  t.other_ca_cert = other.server_cert;
  t.other_ca_key = other.server_key;
  return t;
}

namespace {

ssl_ctx_st* serverContext(const std::string& cert, const std::string& key) {
  SSL_CTX* ctx = SSL_CTX_new(TLS_server_method());
  if (ctx == nullptr || SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1 ||
      SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
    SSL_CTX_free(ctx);
    throw std::runtime_error("script server: cannot load " + cert);
  }
  return ctx;
}

const char* reasonPhrase(int status) {
  switch (status) {
  case 200:
    return "OK";
  case 500:
    return "Internal Server Error";
  case 502:
    return "Bad Gateway";
  case 503:
    return "Service Unavailable";
  default:
    return "Reply";
  }
}

}  // namespace

// ---- ScriptServer -------------------------------------------------------------------------------

ScriptServer::ScriptServer(Handler handler, ScriptServerOptions options)
    : handler_(std::move(handler)) {
  start(options);
}

ScriptServer::ScriptServer(ScriptServerOptions options) { start(options); }

void ScriptServer::start(const ScriptServerOptions& options) {
  std::signal(SIGPIPE, SIG_IGN);
  options_ = options;
  if (options_.tls != nullptr) {
    ctx_good_ = serverContext(options_.tls->cert, options_.tls->key);
    ctx_wrong_name_ = serverContext(options_.tls->wrong_name_cert, options_.tls->wrong_name_key);
    ctx_other_ca_ = serverContext(options_.tls->other_ca_cert, options_.tls->other_ca_key);
  }
  listen_fd_ = ::socket(options_.v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const int one = 1;
  setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc = -1;
  if (options_.v6) {
    sockaddr_in6 sa{};
    sa.sin6_family = AF_INET6;
    sa.sin6_addr = in6addr_loopback;
    sa.sin6_port = htons(options_.port);
    rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  } else {
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(options_.port);
    rc = ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  }
  if (rc != 0 || ::listen(listen_fd_, 64) != 0) {
    return;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                   : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  acceptor_ = std::thread([this] { acceptLoop(); });
}

ScriptServer::~ScriptServer() {
  stop_ = true;
  if (acceptor_.joinable()) {
    acceptor_.join();
  }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);  // from here on connections are refused
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (int fd : open_fds_) {
      ::shutdown(fd, SHUT_RDWR);  // wakes handlers blocked in recv
    }
  }
  for (auto& t : workers_) {
    t.join();
  }
  for (ssl_ctx_st* ctx : {ctx_good_, ctx_wrong_name_, ctx_other_ca_}) {
    if (ctx != nullptr) {
      SSL_CTX_free(ctx);
    }
  }
}

void ScriptServer::setReply(int status, std::string body) {
  std::lock_guard<std::mutex> lock(mu_);
  reply_.emplace(status, std::move(body));
}

void ScriptServer::clearReply() {
  std::lock_guard<std::mutex> lock(mu_);
  reply_.reset();
}

std::string ScriptServer::replyBytes() {
  int status = 200;
  std::string body;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (reply_) {
      status = reply_->first;
      body = reply_->second;
    } else {
      body = R"({"code":200,"message":"success","data":{"taskId":"tk-script-)" +
             std::to_string(requests_) + R"(","status":"running"}})";
    }
  }
  return "HTTP/1.1 " + std::to_string(status) + " " + reasonPhrase(status) +
         "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

void ScriptServer::acceptLoop() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 20) <= 0) {
      continue;
    }
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int fd = ::accept4(listen_fd_, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
    if (fd < 0) {
      continue;
    }
    const uint16_t peer =
        ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                 : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    const Fault fault = fault_;  // the one in force when it was accepted
    std::lock_guard<std::mutex> lock(mu_);
    open_fds_.insert(fd);
    const size_t index = accepted_++;
    workers_.emplace_back([this, fd, index, peer, fault] { serve(fd, index, peer, fault); });
  }
}

void ScriptServer::serve(int fd, size_t index, uint16_t peer, Fault fault) {
  auto c = std::make_unique<ServerConn>(fd, index, peer, stop_);
  bool go_on = true;
  if (options_.tls != nullptr) {
    switch (fault) {
    case Fault::PlainText:
    case Fault::HandshakeReset:
    case Fault::HandshakeStall:
      break;  // no TLS at all: runFault speaks (or not) on the bare socket
    case Fault::WrongName:
      go_on = false;
      c->acceptTls(ctx_wrong_name_);  // the client refuses the certificate
      break;
    case Fault::WrongCa:
      go_on = false;
      c->acceptTls(ctx_other_ca_);
      break;
    default:
      go_on = c->acceptTls(ctx_good_);
      break;
    }
  }
  if (go_on) {
    if (handler_) {
      handler_(*c);
    } else {
      runFault(*c, fault);
    }
  }
  // Closed under the lock, so that the destructor never shuts down a number reused meanwhile.
  std::lock_guard<std::mutex> lock(mu_);
  open_fds_.erase(fd);
  c.reset();
}

void ScriptServer::runFault(ServerConn& c, Fault fault) {
  switch (fault) {
  case Fault::PlainText:
    if (c.readSome()) {
      c.send("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      c.shutdownWrite();
      c.waitForClose();
    }
    return;
  case Fault::HandshakeReset:
    if (c.readSome()) {
      c.resetOnClose();
    }
    return;
  case Fault::HandshakeStall:
    c.waitForClose();
    return;
  case Fault::WrongName:
  case Fault::WrongCa:
    return;  // only on a TLS server, where serve() ends them
  default:
    break;
  }
  if (!c.readRequest()) {
    return;
  }
  ++requests_;
  const std::string reply = replyBytes();
  const size_t head_end = reply.find("\r\n\r\n") + 4;
  switch (fault) {
  case Fault::Good:
    c.send(reply);
    return;
  case Fault::Reset:
    c.resetOnClose();
    return;
  case Fault::TruncatedHeaders:
    c.send(reply.substr(0, head_end / 2));
    return;
  case Fault::MidBodyClose:
    c.send(reply.substr(0, head_end + (reply.size() - head_end) / 2));
    return;
  case Fault::Slow:
    c.sendByteByByte(reply, options_.slow_gap);
    return;
  case Fault::Hang:
    c.waitForClose();
    return;
  case Fault::Garbage: {
    static constexpr char kGarbage[] = "SSH-2.0-OpenSSH_9.2\r\n\x00\x01\x02\xff\xfe garbage\r\n";
    c.send(std::string(kGarbage, sizeof kGarbage - 1));
    c.waitForClose();
    return;
  }
  case Fault::OversizedHeaders: {
    std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n";
    const std::string filler = "X-Filler: " + std::string(1024, 'f') + "\r\n";
    while (head.size() <= shell::UpstreamConn::kMaxResponseHeaders + filler.size()) {
      head += filler;
    }
    c.send(head + "\r\nok");
    c.waitForClose();
    return;
  }
  case Fault::OversizedBody:
    c.send("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(shell::UpstreamConn::kMaxResponseBody + 1) + "\r\n\r\n{\"code\"");
    c.waitForClose();
    return;
  default:
    return;
  }
}

}  // namespace hiapi::test
