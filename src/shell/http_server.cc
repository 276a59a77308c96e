// HttpServer's connections: reading, driving the request parser (http_request_parser.cc),
// dispatching to the handler, writing replies, timeouts, linger and close. Binding and accepting
// are http_accept.cc.

#include "hiapi/shell/http_server.h"

#include <algorithm>
#include <cctype>
#include <optional>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <llhttp.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hiapi/core/http_rules.h"
#include "hiapi/shell/buffer_budget.h"
#include "hiapi/shell/event_util.h"
#include "http_conn.h"

namespace hiapi::shell {
namespace {

// Read this much per recv(); a request that fits (all of the proxy's usual ones) takes one.
constexpr size_t kReadChunk = 16 * 1024;
// After a reply that closes the connection: how long unread request bytes are drained before
// the socket is closed (closing with unread bytes resets the connection, and the reset can
// destroy the reply before the client has read it).
constexpr core::Duration kLinger = std::chrono::seconds(2);
// A connection keeps at most this much of a buffer it no longer needs.
constexpr size_t kKeepCapacity = 64 * 1024;

std::string_view reasonPhrase(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 413: return "Payload Too Large";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Entity";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  default: break;
  }
  if (status >= 500) return "Server Error";
  if (status >= 400) return "Client Error";
  if (status >= 300) return "Redirection";
  if (status >= 200) return "Success";
  return "Informational";
}

// RFC 9110 IMF-fixdate, formatted once per second.
std::string_view httpDate() {
  static time_t last = 0;
  static char buf[40];
  static size_t len = 0;
  const time_t now = std::time(nullptr);
  if (now != last || len == 0) {
    tm t{};
    gmtime_r(&now, &t);
    len = std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &t);
    last = now;
  }
  return {buf, len};
}

bool bodyAllowed(int status) { return status >= 200 && status != 204 && status != 304; }

// Keeps a connection alive while one of its handlers runs (a callback may close it).
struct BusyGuard {
  HttpServer::Conn& c;
  explicit BusyGuard(HttpServer::Conn& conn) : c(conn) { ++c.busy; }
  ~BusyGuard() { --c.busy; }
  BusyGuard(const BusyGuard&) = delete;
  BusyGuard& operator=(const BusyGuard&) = delete;
};

}  // namespace

HttpServer::HttpServer(event_base* base, Handler& handler, Logger& log, HttpServerLimits limits)
    : base_(base), handler_(handler), log_(log) {
  setLimits(limits);
}

void HttpServer::setLimits(const HttpServerLimits& limits) {
  limits_ = limits;
  if (limits_.max_connections == 0) {
    limits_.max_connections = 1;
  }
  if (conns_.size() >= limits_.max_connections) {
    pauseAccepting();
  } else {
    maybeResumeAccepting();
  }
}

HttpServer::~HttpServer() {
  stopAccepting();
  for (Conn* c : conns_) {
    event_free(c->ev);
    event_free(c->timer);
    evutil_closesocket(c->fd);
    delete c;
  }
}


void HttpServer::armTimer(Conn& c, core::Duration d) {
  const timeval tv = toTimeval(std::max(d, core::Duration(std::chrono::milliseconds(1))));
  evtimer_add(c.timer, &tv);
}

void HttpServer::onTimer(evutil_socket_t, short, void* arg) {
  auto& c = *static_cast<Conn*>(arg);
  HttpServer& self = *c.server;
  if (c.lingering || c.dead) {
    if (c.busy == 0) {
      self.destroy(c);
    }
    return;
  }
  if (c.exchange != 0 && c.out.empty()) {
    self.armTimer(c, self.limits_.idle_timeout);  // waiting for our own answer: not idle
    return;
  }
  const core::MonotonicTime now = coarseNow();
  std::optional<core::Duration> phase_left;
  if (c.exchange == 0 && c.phase != Conn::Phase::Idle) {
    const core::Duration limit = c.phase == Conn::Phase::Headers ? self.limits_.header_timeout
                                                                 : self.limits_.body_timeout;
    phase_left = c.phase_started + limit - now;
    if (*phase_left <= core::Duration::zero()) {
      // However steadily its bytes come, the request took too long: answer 408 and close.
      {
        BusyGuard guard(c);  // a reply from inside dispatch must not free it under us
        c.req.problem = InboundProblem::Timeout;
        c.in.clear();
        self.dispatch(c);
      }
      if (c.dead && c.busy == 0) {
        self.destroy(c);
      }
      return;
    }
  }
  const core::Duration idle = now - c.last_activity;
  if (idle < self.limits_.idle_timeout) {
    core::Duration next = self.limits_.idle_timeout - idle;
    if (phase_left) {
      next = std::min(next, *phase_left);
    }
    self.armTimer(c, next);
    return;
  }
  // Idle, or a request or reply that makes no progress: close. An open exchange's client is
  // treated as gone.
  self.clientGone(c);
  if (c.busy == 0) {
    self.destroy(c);
  }
}

void HttpServer::onSocket(evutil_socket_t, short what, void* arg) {
  auto& c = *static_cast<Conn*>(arg);
  HttpServer& self = *c.server;
  {
    BusyGuard guard(c);
    if ((what & EV_WRITE) != 0 && !c.out.empty() && !c.dead) {
      c.last_activity = coarseNow();
      if (self.flush(c) && c.out.empty()) {
        self.afterWrite(c);
      }
    }
    if ((what & (EV_READ | EV_CLOSED)) != 0 && !c.dead) {
      self.readIn(c, (what & EV_CLOSED) != 0);
    }
  }
  if (c.dead && c.busy == 0) {
    self.destroy(c);
  }
}

void HttpServer::readIn(Conn& c, bool peer_closed) {
  // Edge-triggered: read until the socket is drained. A short read means drained, unless the
  // peer closed (EV_CLOSED): then read on to see the end.
  const size_t cap = limits_.max_header_bytes + limits_.max_body_bytes + kReadChunk;
  while (!c.dead) {
    if (c.exchange != 0 && c.in.size() > cap) {
      c.read_blocked = true;  // a client pipelining more than one request's worth: wait
      return;
    }
    char buf[kReadChunk];
    const ssize_t n = ::recv(c.fd, buf, sizeof buf, 0);
    if (n > 0) {
      c.last_activity = coarseNow();
      if (!c.lingering) {
        c.in.append(buf, static_cast<size_t>(n));
      }
      if (static_cast<size_t>(n) < sizeof buf && !peer_closed) {
        break;
      }
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;
    }
    // EOF or an error: the client has gone (a lingering close is complete).
    if (c.lingering) {
      c.dead = true;
      return;
    }
    clientGone(c);
    return;
  }
  c.read_blocked = false;
  if (!c.dead && !c.lingering) {
    parse(c);
  }
}

void HttpServer::parse(Conn& c) {
  BusyGuard guard(c);
  c.parsing = true;
  while (!c.dead && !c.lingering && c.exchange == 0 && c.out.empty() && !c.in.empty()) {
    const llhttp_errno_t err = llhttp_execute(&c.parser, c.in.data(), c.in.size());
    if (err == HPE_PAUSED) {
      // Stopped after a message (or at a request to refuse): the rest waits for the reply.
      c.in.erase(0, static_cast<size_t>(llhttp_get_error_pos(&c.parser) - c.in.data()));
      llhttp_resume(&c.parser);
      if (c.message_done || c.req.problem != InboundProblem::None) {
        dispatch(c);
      }
      continue;
    }
    if (err != HPE_OK) {
      // Unreadable, or stopped by a callback over a limit (which set the problem). Or
      // HPE_PAUSED_UPGRADE: a complete CONNECT or Upgrade request, answered like any other;
      // nothing after it is HTTP, so the connection closes after the answer.
      c.in.clear();
      if (err == HPE_PAUSED_UPGRADE) {
        if (c.message_done) {
          dispatch(c);  // answered like any request; the connection closes after it
        }
        break;
      }
      if (c.req.problem == InboundProblem::None) {
        c.req.problem = InboundProblem::Malformed;
      }
      if (c.req.method.empty()) {
        c.req.method = llhttp_method_name(static_cast<llhttp_method_t>(c.parser.method));
      }
      dispatch(c);
      break;
    }
    c.in.clear();
    // Everything parsed, request incomplete: wait for more, at most until its deadline (set
    // once per phase: a request that arrives in one read never needs it).
    if (!c.deadline_armed && c.phase != Conn::Phase::Idle) {
      c.deadline_armed = true;
      const core::Duration limit = c.phase == Conn::Phase::Headers ? limits_.header_timeout
                                                                   : limits_.body_timeout;
      if (limit < limits_.idle_timeout) {
        armTimer(c, c.phase_started + limit - coarseNow());
      }
    }
    // Tell a client that waits for it that the body is welcome.
    if (c.expect_continue) {
      c.expect_continue = false;
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      c.out.append(kContinue);
      flush(c);
    }
    break;
  }
  c.parsing = false;
  if (c.in.capacity() > kKeepCapacity && c.in.size() < kKeepCapacity / 2) {
    c.in.shrink_to_fit();
  }
}

void HttpServer::dispatch(Conn& c) {
  c.exchange = next_exchange_++;
  c.head = c.req.method == "HEAD";
  c.http10 = c.req.http_major == 1 && c.req.http_minor == 0;
  if (c.req.problem != InboundProblem::None || !c.message_done) {
    c.keep_alive = false;  // the rest of this request is not read: close after the answer
  }
  c.message_done = false;
  c.expect_continue = false;
  open_spares_.put(open_, c.exchange, &c);
  InboundRequest req = std::move(c.req);
  c.req = InboundRequest{};
  req.peer = c.peer;
  handler_.onRequest(c.exchange, req);
}

void HttpServer::reply(uint64_t exchange, int status, const HeaderViews& headers,
                       std::string_view body, bool close) {
  auto it = open_.find(exchange);
  if (it == open_.end()) {
    return;
  }
  Conn& c = *it->second;
  open_spares_.erase(open_, it);
  c.exchange = 0;
  const bool closing = close || !c.keep_alive;
  std::string& out = c.out;  // empty: one exchange at a time
  out.reserve(256 + body.size());
  char num[24];
  out.append("HTTP/1.1 ");
  out.append(num, static_cast<size_t>(std::to_chars(num, num + sizeof num, status).ptr - num));
  out.push_back(' ');
  out.append(reasonPhrase(status));
  out.append("\r\n");
  bool has_date = false;
  bool has_length = false;
  for (const HeaderView& h : headers) {
    if (!has_date && core::iequals(h.name, "Date")) {
      has_date = true;
    }
    // Only a HEAD reply may carry a length of its own: the length a GET would have had.
    if (c.head && core::iequals(h.name, "Content-Length")) {
      has_length = true;
    } else if (core::iequals(h.name, "Content-Length")) {
      continue;
    }
    out.append(h.name).append(": ").append(h.value).append("\r\n");
  }
  if (!has_date) {
    out.append("Date: ").append(httpDate()).append("\r\n");
  }
  // A HEAD reply with no body and no length of its own (an upstream that sent none) gets none:
  // "0" would say that a GET's body is empty.
  if (bodyAllowed(status) && !has_length && !(c.head && body.empty())) {
    out.append("Content-Length: ");
    out.append(num, static_cast<size_t>(std::to_chars(num, num + sizeof num, body.size()).ptr - num));
    out.append("\r\n");
  }
  if (closing) {
    out.append("Connection: close\r\n");
  } else if (c.http10) {
    out.append("Connection: keep-alive\r\n");
  }
  out.append("\r\n");
  if (bodyAllowed(status) && !c.head) {
    out.append(body);
  }
  c.close_after = closing;
  c.last_activity = coarseNow();
  if (flush(c) && c.out.empty()) {
    afterWrite(c);
  }
  if (c.dead && c.busy == 0) {
    destroy(c);
  }
}

bool HttpServer::flush(Conn& c) {
  size_t done = 0;
  while (done < c.out.size()) {
    const ssize_t n = ::send(c.fd, c.out.data() + done, c.out.size() - done, MSG_NOSIGNAL);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      break;  // the rest goes on the next write edge
    }
    c.out.clear();
    if (budget_ != nullptr) {
      budget_->adjust(c.budget_counted, 0);
    }
    clientGone(c);
    return false;
  }
  if (done == c.out.size()) {
    c.out.clear();
    if (c.out.capacity() > kKeepCapacity) {
      c.out.shrink_to_fit();
    }
  } else {
    c.out.erase(0, done);
  }
  if (budget_ != nullptr) {
    budget_->adjust(c.budget_counted, c.out.size());
  }
  return true;
}

void HttpServer::afterWrite(Conn& c) {
  if (c.close_after) {
    startLinger(c);
    return;
  }
  if (!c.parsing) {
    if (c.read_blocked) {
      readIn(c, false);  // parses too
    } else {
      parse(c);
    }
  }
}

void HttpServer::startLinger(Conn& c) {
  c.lingering = true;
  c.in.clear();
  c.in.shrink_to_fit();
  ::shutdown(c.fd, SHUT_WR);
  armTimer(c, kLinger);
  readIn(c, false);  // what is already there; EOF ends it
}

void HttpServer::clientGone(Conn& c) {
  c.dead = true;
  if (c.exchange != 0) {
    const uint64_t ex = c.exchange;
    c.exchange = 0;
    open_spares_.erase(open_, ex);
    BusyGuard guard(c);
    handler_.onClientGone(ex);
  }
}

void HttpServer::destroy(Conn& c) {
  if (c.exchange != 0) {
    open_spares_.erase(open_, c.exchange);  // not reported: only the server's own teardown gets here
  }
  conns_.erase(&c);
  if (budget_ != nullptr) {
    budget_->adjust(c.budget_counted, 0);
  }
  event_free(c.ev);
  event_free(c.timer);
  evutil_closesocket(c.fd);
  delete &c;
  accept_failing_ = false;  // a descriptor is free again
  maybeResumeAccepting();
}

}  // namespace hiapi::shell
