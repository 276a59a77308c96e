// HttpServer's listener: binding the address, accepting a connection and setting it up, and
// pausing accept at the connection cap or when descriptors run out (with a backed-off retry).
// Kept apart from http_server.cc, which serves connections once they exist: this file is about
// the listening socket's state, not a connection's.

#include <algorithm>
#include <string>

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <llhttp.h>

#include "hiapi/shell/event_util.h"
#include "hiapi/shell/http_server.h"
#include "http_conn.h"

namespace hiapi::shell {
namespace {

// After accept() fails for want of descriptors: first retry, and the most it backs off to. A
// closing connection retries at once (it freed one).
constexpr core::Duration kAcceptRetryFirst = std::chrono::milliseconds(50);
constexpr core::Duration kAcceptRetryMax = std::chrono::seconds(1);
// Accept pauses are logged at most this often (a client load at the cap would pause and resume
// with every connection that closes).
constexpr core::Duration kAcceptLogEvery = std::chrono::seconds(60);

/// "address:port" ("[v6]:port"), or "" for another family.
std::string formatPeer(const sockaddr* sa) {
  char host[INET6_ADDRSTRLEN] = {};
  if (sa != nullptr && sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
    return std::string(host) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa != nullptr && sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
    return "[" + std::string(host) + "]:" + std::to_string(ntohs(in6->sin6_port));
  }
  return {};
}

}  // namespace

bool HttpServer::listen(const std::string& address, uint16_t port, std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(address.c_str(), service.c_str(), &hints, &res); rc != 0) {
    error = gai_strerror(rc);
    return false;
  }
  for (addrinfo* ai = res; ai != nullptr && listener_ == nullptr; ai = ai->ai_next) {
    listener_ = evconnlistener_new_bind(base_, &HttpServer::onAccept, this,
                                        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                            LEV_OPT_CLOSE_ON_EXEC,
                                        SOMAXCONN, ai->ai_addr, static_cast<int>(ai->ai_addrlen));
    if (listener_ == nullptr) {
      error = evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR());
    }
  }
  freeaddrinfo(res);
  if (listener_ == nullptr) {
    return false;
  }
  evconnlistener_set_error_cb(listener_, &HttpServer::onAcceptError);
  port_ = boundPort(evconnlistener_get_fd(listener_));
  return true;
}

void HttpServer::stopAccepting() {
  if (listener_ != nullptr) {
    evconnlistener_free(listener_);
    listener_ = nullptr;
  }
  if (accept_retry_ != nullptr) {
    event_free(accept_retry_);
    accept_retry_ = nullptr;
  }
}

void HttpServer::pauseAccepting() {
  if (listener_ == nullptr || accept_paused_) {
    return;
  }
  evconnlistener_disable(listener_);
  accept_paused_ = true;
  const core::MonotonicTime now = coarseNow();
  if (last_pause_log_ == core::MonotonicTime{} || now - last_pause_log_ >= kAcceptLogEvery) {
    last_pause_log_ = now;
    log_.warn("accepting paused",
              {{"connections", static_cast<uint64_t>(conns_.size())},
               {"max_connections", static_cast<uint64_t>(limits_.max_connections)},
               {"reason", accept_failing_ ? "out of file descriptors" : "connection cap"}});
  }
}

void HttpServer::maybeResumeAccepting() {
  if (listener_ == nullptr || !accept_paused_ || accept_failing_ ||
      conns_.size() >= limits_.max_connections) {
    return;
  }
  if (evconnlistener_enable(listener_) == 0) {
    accept_paused_ = false;
  }
}

void HttpServer::onAcceptRetry(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<HttpServer*>(arg);
  self->accept_failing_ = false;
  self->maybeResumeAccepting();
}

void HttpServer::onAcceptError(evconnlistener*, void* arg) {
  auto* self = static_cast<HttpServer*>(arg);
  const int err = EVUTIL_SOCKET_ERROR();
  ++self->accept_failures_;
  // EMFILE and friends (libevent retries EINTR, EAGAIN and ECONNABORTED itself): the pending
  // connection stays in the backlog, so the listener would fire again at once. Pause, and try
  // again when a connection closes or after a growing delay; say so once per burst.
  if (!self->accept_failing_ && self->accept_failures_logged_ + 1 == self->accept_failures_) {
    self->log_.warn("accept failed: pausing",
                    {{"error", evutil_socket_error_to_string(err)},
                     {"connections", static_cast<uint64_t>(self->conns_.size())}});
  }
  self->accept_retry_delay_ = self->accept_failing_
                                  ? std::min(self->accept_retry_delay_ * 2, kAcceptRetryMax)
                                  : kAcceptRetryFirst;
  self->accept_failing_ = true;
  if (self->accept_retry_ == nullptr) {
    self->accept_retry_ = evtimer_new(self->base_, &HttpServer::onAcceptRetry, self);
  }
  self->pauseAccepting();
  if (self->accept_retry_ != nullptr) {
    const timeval tv = toTimeval(self->accept_retry_delay_);
    evtimer_add(self->accept_retry_, &tv);
  }
}

void HttpServer::onAccept(evconnlistener*, evutil_socket_t fd, sockaddr* peer, int, void* arg) {
  auto* self = static_cast<HttpServer*>(arg);
  if (self->accept_failures_ != self->accept_failures_logged_) {
    self->log_.info("accepting again", {{"failed_accepts", self->accept_failures_ -
                                                               self->accept_failures_logged_}});
    self->accept_failures_logged_ = self->accept_failures_;
  }
  ++self->accepted_;
  auto* c = new Conn();
  c->peer = formatPeer(peer);
  c->server = self;
  c->fd = fd;
  const int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // replies go out whole anyway
  c->ev = event_new(self->base_, fd, EV_READ | EV_WRITE | EV_CLOSED | EV_PERSIST | EV_ET,
                    &HttpServer::onSocket, c);
  c->timer = evtimer_new(self->base_, &HttpServer::onTimer, c);
  if (c->ev == nullptr || c->timer == nullptr || event_add(c->ev, nullptr) != 0) {
    if (c->ev != nullptr) event_free(c->ev);
    if (c->timer != nullptr) event_free(c->timer);
    evutil_closesocket(fd);
    delete c;
    return;
  }
  llhttp_init(&c->parser, HTTP_REQUEST, &requestParserSettings());
  c->parser.data = c;
  c->last_activity = coarseNow();
  self->conns_.insert(c);
  self->armTimer(*c, self->limits_.idle_timeout);
  if (self->conns_.size() >= self->limits_.max_connections) {
    self->pauseAccepting();
  }
}

}  // namespace hiapi::shell
