#include "hiapi/shell/upstream_conn.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstring>
#include <utility>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <sys/socket.h>
#include <unistd.h>

namespace hiapi::shell {

void serializeRequest(std::string& out, const UpstreamRequest& req, std::string_view host_header) {
  http::writeRequest(out, http::methodName(req.method), req.target, host_header, req.headers,
                     req.body);
}

/// The argument of a pending evdns_getaddrinfo: it outlives a connection closed meanwhile (the
/// cancelled lookup still calls back, later), so the callback never sees a freed connection.
struct UpstreamConn::DnsWait {
  UpstreamConn* conn;
};

UpstreamConn::UpstreamConn(event_base* base, evdns_base* dns, const core::UpstreamConfig& cfg,
                           const TlsClientContext* tls, Owner& owner)
    : base_(base), dns_(dns), cfg_(cfg), tls_(tls), owner_(owner) {}

UpstreamConn::~UpstreamConn() { close(); }

bool UpstreamConn::init(std::string& error) {
  if (tls_ == nullptr) {
    return true;
  }
  ssl_ = tls_->newSsl(cfg_.host, error);
  if (ssl_ == nullptr) {
    return false;
  }
  // A write that would block is retried later from the same buffer, and may go out in parts.
  SSL_set_mode(ssl_, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_ENABLE_PARTIAL_WRITE);
  // A peer that closes without close_notify after a complete reply is common: it is read as
  // plain EOF, and the HTTP framing tells a cut reply from a whole one.
  SSL_set_options(ssl_, SSL_OP_IGNORE_UNEXPECTED_EOF);
  // One recv per read instead of one for the record header and one for the record.
  SSL_set_read_ahead(ssl_, 1);
  return true;
}

void UpstreamConn::send(std::string_view wire, bool head) {
  busy_ = true;
  out_.assign(wire);  // keeps out_'s capacity: no allocation
  out_off_ = 0;
  resetReply(head);
  if (state_ == State::Init) {
    startConnect();
  } else if (state_ == State::Open) {
    flush();  // at once: the socket is writable unless its buffer is full
  }
}

void UpstreamConn::close() {
  if (state_ == State::Closed) {
    return;
  }
  state_ = State::Closed;
  busy_ = false;
  if (budget_ != nullptr) {
    budget_->cancel(this);
    budget_->adjust(budget_counted_, 0);
  }
  if (dns_wait_ != nullptr) {
    dns_wait_->conn = nullptr;  // the callback frees it
    dns_wait_ = nullptr;
    if (dns_req_ != nullptr) {
      evdns_getaddrinfo_cancel(dns_req_);
    }
  }
  dns_req_ = nullptr;
  if (ev_ != nullptr) {
    event_free(ev_);
    ev_ = nullptr;
  }
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

// ---- connecting ---------------------------------------------------------------------------------

void UpstreamConn::startConnect() {
  // IP literals at once, with no resolver round.
  sockaddr_in v4{};
  if (inet_pton(AF_INET, cfg_.host.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(cfg_.port);
    connectTo(reinterpret_cast<const sockaddr*>(&v4), sizeof v4);
    return;
  }
  sockaddr_in6 v6{};
  if (inet_pton(AF_INET6, cfg_.host.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(cfg_.port);
    connectTo(reinterpret_cast<const sockaddr*>(&v6), sizeof v6);
    return;
  }
  evutil_addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  const std::string port = std::to_string(cfg_.port);
  if (dns_ == nullptr) {
    // No resolver could be set up (the pool logged it): a blocking lookup is the only way left
    // to reach the upstream, and a stalled loop beats refusing every request.
    evutil_addrinfo* res = nullptr;
    const int rc = evutil_getaddrinfo(cfg_.host.c_str(), port.c_str(), &hints, &res);
    auto* wait = new DnsWait{this};
    dns_wait_ = wait;
    onResolved(rc, res, wait);
    return;
  }
  state_ = State::Resolving;
  auto* wait = new DnsWait{this};
  dns_wait_ = wait;
  evdns_getaddrinfo_request* r = evdns_getaddrinfo(dns_, cfg_.host.c_str(), port.c_str(), &hints,
                                                   &UpstreamConn::onResolved, wait);
  // A name in /etc/hosts (or a failure) is answered from inside the call, which then returns
  // null and has freed the wait.
  if (dns_wait_ == wait) {
    dns_req_ = r;
  }
}

void UpstreamConn::onResolved(int result, evutil_addrinfo* res, void* arg) {
  auto* wait = static_cast<DnsWait*>(arg);
  UpstreamConn* c = wait->conn;
  delete wait;
  if (c == nullptr) {  // closed meanwhile (the lookup was cancelled)
    if (res != nullptr) {
      evutil_freeaddrinfo(res);
    }
    return;
  }
  c->dns_wait_ = nullptr;
  c->dns_req_ = nullptr;
  if (result != 0 || res == nullptr) {
    if (res != nullptr) {
      evutil_freeaddrinfo(res);
    }
    c->fail(UpstreamError::Connect,
            "cannot resolve " + c->cfg_.host + ": " + evutil_gai_strerror(result), false);
    return;
  }
  // Every address, in the resolver's order: the first that accepts the connection is used.
  c->next_addrs_.clear();
  for (const evutil_addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    sockaddr_storage ss{};
    const socklen_t len = static_cast<socklen_t>(std::min<size_t>(ai->ai_addrlen, sizeof ss));
    std::memcpy(&ss, ai->ai_addr, len);
    c->next_addrs_.emplace_back(ss, len);
  }
  evutil_freeaddrinfo(res);
  c->tryNextAddress();
}

bool UpstreamConn::tryNextAddress() {
  if (next_addrs_.empty()) {
    return false;
  }
  if (ev_ != nullptr) {
    event_free(ev_);
    ev_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  const auto [ss, len] = next_addrs_.front();
  next_addrs_.erase(next_addrs_.begin());
  connectTo(reinterpret_cast<const sockaddr*>(&ss), len);
  return true;
}

void UpstreamConn::connectTo(const sockaddr* sa, socklen_t len) {
  fd_ = ::socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd_ < 0) {
    const int e = errno;
    fail(UpstreamError::Connect, std::string("cannot create a socket: ") + std::strerror(e),
         false);
    return;
  }
  // A request is one write: nothing to gain from Nagle, only a delay when a write is split.
  const int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  state_ = State::Connecting;
  const int rc = ::connect(fd_, sa, len);
  if (rc != 0 && errno != EINPROGRESS) {
    failConnect(errno);
    return;
  }
  // Registered once, after connect (an unconnected socket polls as hung up), for the socket's
  // whole life: edge-triggered both ways, so no epoll_ctl per request. EV_CLOSED asks for
  // EPOLLRDHUP, which tells a short read that drained the data from one that also saw a FIN.
  ev_ = event_new(base_, fd_, EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET,
                  &UpstreamConn::onEvent, this);
  if (ev_ == nullptr || event_add(ev_, nullptr) != 0) {
    fail(UpstreamError::Connect, "cannot watch the upstream socket", false);
    return;
  }
  if (rc == 0) {
    onConnected();
  }
}

void UpstreamConn::onConnected() {
  if (ssl_ != nullptr) {
    state_ = State::Handshaking;
    if (SSL_set_fd(ssl_, fd_) != 1) {
      failTls("SSL_set_fd failed");
      return;
    }
    if (!handshake()) {
      return;
    }
  }
  state_ = State::Open;
  if (busy_) {
    flush();
  }
}

bool UpstreamConn::handshake() {
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_connect(ssl_);
  if (rc == 1) {
    return true;
  }
  const int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
    return false;  // the next edge, whichever way, retries it
  }
  if (err == SSL_ERROR_SYSCALL) {
    const int e = errno;
    failTls(e != 0 ? std::string("TLS handshake failed: ") + std::strerror(e)
                   : std::string("TLS handshake failed: the upstream closed the connection"));
  } else {
    failTls("TLS handshake failed");
  }
  return false;
}

// ---- the socket ---------------------------------------------------------------------------------

void UpstreamConn::onEvent(evutil_socket_t, short what, void* arg) {
  auto* c = static_cast<UpstreamConn*>(arg);
  switch (c->state_) {
  case State::Connecting: {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(c->fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
      err = errno;
    }
    if (err != 0) {
      c->failConnect(err);
    } else if ((what & EV_WRITE) != 0) {
      c->onConnected();
    }
    return;
  }
  case State::Handshaking:
    if (c->handshake()) {
      c->state_ = State::Open;
      if (c->busy_) {
        c->flush();
      }
    }
    return;
  case State::Open:
    // With TLS, any edge may be the one an SSL_read or SSL_write waited for (renegotiation,
    // key updates, tickets), so TLS reads on every event.
    if (!c->busy_) {
      if ((what & (EV_READ | EV_CLOSED)) != 0 || c->ssl_ != nullptr) {
        c->readIdle();
      }
      return;
    }
    if (c->out_off_ < c->out_.size() && !c->flush()) {
      return;
    }
    if ((what & (EV_READ | EV_CLOSED)) != 0 || c->ssl_ != nullptr) {
      c->readReply(what);
    }
    return;
  case State::Init:
  case State::Resolving:
  case State::Closed:
    return;
  }
}

bool UpstreamConn::flush() {
  while (out_off_ < out_.size()) {
    const size_t left = out_.size() - out_off_;
    if (ssl_ != nullptr) {
      ERR_clear_error();
      errno = 0;
      // With partial writes on, the retry after WANT_* passes the same bytes (a moving buffer is
      // allowed as well).
      const int n = SSL_write(ssl_, out_.data() + out_off_,
                              static_cast<int>(std::min<size_t>(left, INT_MAX)));
      if (n > 0) {
        out_off_ += static_cast<size_t>(n);
        continue;
      }
      const int err = SSL_get_error(ssl_, n);
      if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
        return true;
      }
      const int e = errno;
      std::string why = err == SSL_ERROR_SYSCALL && e != 0 ? std::strerror(e)
                                                           : drainOpensslErrors();
      fail(UpstreamError::Reset,
           "upstream connection closed: " + (why.empty() ? std::string("TLS write failed") : why),
           true);
      return false;
    }
    const ssize_t n = ::send(fd_, out_.data() + out_off_, left, MSG_NOSIGNAL);
    if (n >= 0) {
      out_off_ += static_cast<size_t>(n);
      if (static_cast<size_t>(n) < left) {
        return true;  // the socket buffer is full: the next write edge goes on
      }
      continue;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return true;
    }
    // Like every failure on a connection that may have carried bytes: the caller decides.
    const int e = errno;
    fail(UpstreamError::Reset, std::string("upstream connection closed: ") + std::strerror(e),
         true);
    return false;
  }
  return true;
}

void UpstreamConn::countBody() {
  if (budget_ != nullptr) {
    budget_->adjust(budget_counted_, reply_.body.size());
  }
}

size_t UpstreamConn::readChunk() {
  if (ssl_ != nullptr) {
    ERR_clear_error();
    errno = 0;
    const int rc = SSL_read(ssl_, in_, sizeof in_);
    if (rc > 0) {
      return static_cast<size_t>(rc);
    }
    const int err = SSL_get_error(ssl_, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      return 0;
    }
    if (err == SSL_ERROR_ZERO_RETURN) {
      eof_ = true;
    } else if (err == SSL_ERROR_SYSCALL && errno != 0) {
      read_errno_ = errno;
    } else if (err == SSL_ERROR_SYSCALL) {
      eof_ = true;
    } else {
      tls_read_error_ = drainOpensslErrors();
      if (tls_read_error_.empty()) {
        tls_read_error_ = "TLS read failed";
      }
    }
    return 0;
  }
  for (;;) {
    const ssize_t rc = ::recv(fd_, in_, sizeof in_, 0);
    if (rc > 0) {
      return static_cast<size_t>(rc);
    }
    if (rc == 0) {
      eof_ = true;
    } else if (errno == EINTR) {
      continue;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK) {
      read_errno_ = errno;
    }
    return 0;
  }
}

void UpstreamConn::readReply(short what) {
  for (;;) {
    if (budget_ != nullptr && budget_->overFor(budget_counted_)) {
      // Clients hold too much already: leave the rest in the socket until they take some. Edge-
      // triggered, so the resume reads again itself.
      budget_->wait(this, [this] {
        if (state_ == State::Open && busy_ && ev_ != nullptr) {
          event_active(ev_, EV_READ, 0);
        }
      });
      return;
    }
    const size_t n = readChunk();
    if (n == 0) {
      break;
    }
    const bool go_on = parser_.feed(in_, n);
    countBody();
    if (!go_on) {
      break;
    }
    // A short recv drained the socket: the next byte brings a new edge. Unless a FIN came too
    // (EV_CLOSED), or the reply is not complete yet: then read on to EAGAIN or EOF, since a FIN
    // or reset reported with the data brings no later edge (libevent folds EPOLLERR into
    // READ|WRITE, without EV_CLOSED).
    if (ssl_ == nullptr && parser_.complete() && n < sizeof in_ && (what & EV_CLOSED) == 0) {
      break;
    }
  }

  if (protocolError()) {
    const http::ResponseParser::Problem problem = parser_.problem();
    const bool malformed = problem == http::ResponseParser::Problem::ObsFold ||
                           problem == http::ResponseParser::Problem::Invalid;
    fail(UpstreamError::Protocol,
         malformed ? "invalid reply from the upstream: " + parser_.describe() : parser_.describe(),
         true);
  } else if (parser_.complete()) {
    deliver();
  } else if (eof_) {
    onEof();
  } else if (read_errno_ != 0) {
    fail(UpstreamError::Reset,
         std::string("upstream connection closed: ") + std::strerror(read_errno_), true);
  } else if (!tls_read_error_.empty()) {
    fail(UpstreamError::Reset, "upstream connection closed: " + tls_read_error_, true);
  }
}

void UpstreamConn::readIdle() {
  // Nothing may arrive between replies: EOF, an error or stray bytes all end the connection, so
  // that the next request never reads them as its reply.
  if (ssl_ != nullptr) {
    ERR_clear_error();
    const int rc = SSL_read(ssl_, in_, sizeof in_);
    if (rc <= 0) {
      const int err = SSL_get_error(ssl_, rc);
      if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return;  // a session ticket or nothing
      }
      ERR_clear_error();
    }
  } else {
    const ssize_t rc = ::recv(fd_, in_, sizeof in_, 0);
    if (rc < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
      return;
    }
  }
  close();
  owner_.onIdleClosed(*this);
}

bool UpstreamConn::protocolError() const {
  using Problem = http::ResponseParser::Problem;
  const Problem p = parser_.problem();
  return p != Problem::None && p != Problem::Incomplete;
}

void UpstreamConn::onEof() {
  parser_.finish();  // ends a body delimited by the close
  if (parser_.complete()) {
    deliver();
    return;
  }
  // Also on a reused connection that the upstream closed just as the request went out: whether
  // it was processed is unknown, so request_maybe_sent stays true and the caller's retry policy
  // decides (as with evhttp).
  fail(UpstreamError::Reset,
       parser_.gotBytes() ? "upstream closed the connection before the reply was complete"
                  : "upstream closed the connection without a reply",
       true);
}

void UpstreamConn::deliver() {
  ++answered_;
  const bool reuse = parser_.keepAlive() && !parser_.trailing() && !eof_ && read_errno_ == 0 &&
                     tls_read_error_.empty() && out_off_ == out_.size();
  busy_ = false;
  UpstreamResponse reply = std::move(reply_);
  reply_.body.clear();
  // The count goes with the body: the pool releases it after the callback.
  reply.budget_bytes = std::exchange(budget_counted_, 0);
  if (!reuse) {
    close();
  }
  owner_.onExchangeDone(*this, std::move(reply));
}

void UpstreamConn::fail(UpstreamError error, std::string message, bool maybe_sent) {
  close();
  UpstreamResponse r;
  r.error = error;
  r.message = std::move(message);
  r.request_maybe_sent = maybe_sent;
  owner_.onExchangeDone(*this, std::move(r));
}

void UpstreamConn::failConnect(int err) {
  if (state_ == State::Connecting && tryNextAddress()) {
    return;
  }
  fail(UpstreamError::Connect, std::string("cannot connect to the upstream: ") + std::strerror(err),
       false);
}

void UpstreamConn::failTls(const std::string& fallback) {
  // Read the verification result and OpenSSL's queue before close() frees the SSL.
  fail(UpstreamError::Tls, describeTlsFailure(ssl_, 0, fallback), false);
}

void UpstreamConn::resetReply(bool head) {
  reply_.error = UpstreamError::None;
  parser_.begin(reply_, head);
  countBody();
  reply_.message.clear();
  reply_.request_maybe_sent = true;
  reply_.latency = {};
  eof_ = false;
  read_errno_ = 0;
  tls_read_error_.clear();
}

}  // namespace hiapi::shell
