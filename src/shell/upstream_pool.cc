#include "hiapi/shell/event_util.h"
#include "hiapi/shell/upstream_pool.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/keyvalq_struct.h>
#include <openssl/err.h>
#include <sys/socket.h>

#include "hiapi/core/http_rules.h"

namespace hiapi::shell {
namespace {


constexpr ev_ssize_t kMaxResponseBody = 64 * 1024 * 1024;

}  // namespace

const std::string* findHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (core::iequals(h.name, name)) {
      return &h.value;
    }
  }
  return nullptr;
}

std::string_view upstreamErrorName(UpstreamError e) {
  switch (e) {
  case UpstreamError::None:
    return "none";
  case UpstreamError::Connect:
    return "connect";
  case UpstreamError::ConnectTimeout:
    return "connect_timeout";
  case UpstreamError::Tls:
    return "tls";
  case UpstreamError::Timeout:
    return "timeout";
  case UpstreamError::Reset:
    return "reset";
  case UpstreamError::Protocol:
    return "protocol";
  }
  return "unknown";
}

struct UpstreamPool::Conn {
  UpstreamPool* pool = nullptr;
  evhttp_connection* evcon = nullptr;
  SSL* ssl = nullptr;  // owned by the bufferevent
  bool busy = false;
  bool dead = false;
  bool answered_before = false;  // served a complete reply: the socket was established
  core::MonotonicTime idle_since{};
};

struct UpstreamPool::Attempt {
  UpstreamPool* pool = nullptr;
  uint64_t id = 0;
  UpstreamRequest req;
  UpstreamCallback done;
  Conn* conn = nullptr;
  evhttp_request* ereq = nullptr;
  event* timer = nullptr;
  event* connect_timer = nullptr;
  core::MonotonicTime started{};
  evhttp_request_error error_kind = EVREQ_HTTP_EOF;
  bool got_error = false;
  int saved_errno = 0;
  bool finished = false;
  core::Duration timeout{};

  ~Attempt() {
    if (timer != nullptr) {
      event_free(timer);
    }
    if (connect_timer != nullptr) {
      event_free(connect_timer);
    }
  }
};

UpstreamPool::UpstreamPool(event_base* base, const core::UpstreamConfig& cfg, Logger& log)
    : base_(base), cfg_(cfg), log_(log) {
  if (cfg_.scheme == "https") {
    tls_ = std::make_unique<TlsClientContext>(cfg_);
  }
  const bool default_port =
      (cfg_.scheme == "https" && cfg_.port == 443) || (cfg_.scheme == "http" && cfg_.port == 80);
  const bool v6 = cfg_.host.find(':') != std::string::npos;
  // Appends rather than operator+ on a literal: GCC 12 -O2 warns falsely (-Wrestrict, PR 105329).
  if (v6) {
    host_header_.append(1, '[').append(cfg_.host).append(1, ']');
  } else {
    host_header_ = cfg_.host;
  }
  if (!default_port) {
    host_header_.append(1, ':').append(std::to_string(cfg_.port));
  }
  // Name resolution on the loop, never a blocking getaddrinfo (IP literals resolve at once).
  dns_ = evdns_base_new(base_, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                   EVDNS_BASE_DISABLE_WHEN_INACTIVE);
  if (dns_ == nullptr) {
    log_.warn("evdns_base_new failed: falling back to blocking name resolution");
  }
  deferred_ = event_new(base_, -1, 0, &UpstreamPool::onDeferred, this);
  idle_sweep_ = event_new(base_, -1, EV_PERSIST, &UpstreamPool::onIdleSweep, this);
  const timeval sweep{1, 0};
  event_add(idle_sweep_, &sweep);
}

UpstreamPool::~UpstreamPool() {
  for (auto& c : conns_) {
    if (c->evcon != nullptr) {
      evhttp_connection_set_closecb(c->evcon, nullptr, nullptr);
      evhttp_connection_free(c->evcon);
      c->evcon = nullptr;
    }
  }
  for (auto& c : graveyard_) {
    if (c->evcon != nullptr) {
      evhttp_connection_set_closecb(c->evcon, nullptr, nullptr);
      evhttp_connection_free(c->evcon);
    }
  }
  attempts_.clear();
  if (deferred_ != nullptr) {
    event_free(deferred_);
  }
  if (idle_sweep_ != nullptr) {
    event_free(idle_sweep_);
  }
  if (dns_ != nullptr) {
    evdns_base_free(dns_, 0);
  }
}

size_t UpstreamPool::busyConnections() const {
  return static_cast<size_t>(
      std::count_if(conns_.begin(), conns_.end(), [](const auto& c) { return c->busy; }));
}

size_t UpstreamPool::idleConnections() const { return conns_.size() - busyConnections(); }

uint64_t UpstreamPool::send(UpstreamRequest req, UpstreamCallback done) {
  auto a = std::make_unique<Attempt>();
  a->pool = this;
  a->id = next_id_++;
  a->req = std::move(req);
  a->done = std::move(done);
  const uint64_t id = a->id;
  attempts_.emplace(id, std::move(a));
  waiting_.push_back(id);
  pump();
  return id;
}

bool UpstreamPool::cancelIfWaiting(uint64_t handle) {
  auto it = std::find(waiting_.begin(), waiting_.end(), handle);
  if (it == waiting_.end()) {
    return false;
  }
  waiting_.erase(it);
  attempts_.erase(handle);
  return true;
}

bool UpstreamPool::isWaiting(uint64_t handle) const {
  return std::find(waiting_.begin(), waiting_.end(), handle) != waiting_.end();
}

UpstreamPool::Conn* UpstreamPool::takeConnection() {
  // Most recently used first: keeps a small hot set and lets the rest idle out.
  Conn* best = nullptr;
  for (auto& c : conns_) {
    if (!c->busy && !c->dead && (best == nullptr || c->idle_since > best->idle_since)) {
      best = c.get();
    }
  }
  if (best != nullptr) {
    return best;
  }
  if (conns_.size() < cfg_.pool_size) {
    return newConnection();
  }
  return nullptr;
}

UpstreamPool::Conn* UpstreamPool::newConnection() {
  auto c = std::make_unique<Conn>();
  c->pool = this;
  bufferevent* bev = nullptr;
  if (tls_) {
    std::string error;
    c->ssl = tls_->newSsl(cfg_.host, error);
    if (c->ssl == nullptr) {
      log_.error("upstream tls setup failed", {{"error", error}});
      return nullptr;
    }
    bev = bufferevent_openssl_socket_new(base_, -1, c->ssl, BUFFEREVENT_SSL_CONNECTING,
                                         BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (bev == nullptr) {
      SSL_free(c->ssl);
      log_.error("bufferevent_openssl_socket_new failed", {{"error", drainOpensslErrors()}});
      return nullptr;
    }
    // A peer that closes without close_notify is common; treat it as EOF, not an error.
    bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
  } else {
    bev = bufferevent_socket_new(base_, -1, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
    if (bev == nullptr) {
      log_.error("bufferevent_socket_new failed");
      return nullptr;
    }
  }
  c->evcon = evhttp_connection_base_bufferevent_new(base_, dns_, bev, cfg_.host.c_str(),
                                                    cfg_.port);
  if (c->evcon == nullptr) {
    bufferevent_free(bev);
    log_.error("evhttp_connection_base_bufferevent_new failed");
    return nullptr;
  }
  evhttp_connection_set_retries(c->evcon, 0);
  const timeval tv = toTimeval(cfg_.response_timeout + std::chrono::seconds(1));
  evhttp_connection_set_timeout_tv(c->evcon, &tv);
  evhttp_connection_set_max_body_size(c->evcon, kMaxResponseBody);
  evhttp_connection_set_closecb(c->evcon, &UpstreamPool::onConnClose, c.get());
  c->idle_since = core::MonotonicClock::now();
  conns_.push_back(std::move(c));
  return conns_.back().get();
}

void UpstreamPool::pump() {
  while (!waiting_.empty()) {
    Conn* c = takeConnection();
    if (c == nullptr) {
      if (conns_.empty()) {
        // Could not even build a connection: fail the head instead of waiting forever.
        const uint64_t id = waiting_.front();
        waiting_.pop_front();
        auto it = attempts_.find(id);
        if (it != attempts_.end()) {
          UpstreamResponse r;
          r.error = UpstreamError::Connect;
          r.message = "cannot create an upstream connection";
          r.request_maybe_sent = false;
          finish(it->second.get(), std::move(r));
        }
        continue;
      }
      return;
    }
    const uint64_t id = waiting_.front();
    waiting_.pop_front();
    auto it = attempts_.find(id);
    if (it == attempts_.end()) {
      continue;
    }
    start(it->second.get(), c);
  }
}

void UpstreamPool::start(Attempt* a, Conn* c) {
  c->busy = true;
  a->conn = c;
  a->started = core::MonotonicClock::now();
  evhttp_request* req = evhttp_request_new(&UpstreamPool::onResponse, a);
  if (req == nullptr) {
    c->busy = false;
    UpstreamResponse r;
    r.error = UpstreamError::Connect;
    r.message = "evhttp_request_new failed";
    r.request_maybe_sent = false;
    finish(a, std::move(r));
    return;
  }
  evhttp_request_set_error_cb(req, &UpstreamPool::onError);
  evkeyvalq* out = evhttp_request_get_output_headers(req);
  evhttp_add_header(out, "Host", host_header_.c_str());
  for (const Header& h : a->req.headers) {
    evhttp_add_header(out, h.name.c_str(), h.value.c_str());
  }
  if (!a->req.body.empty()) {
    evbuffer_add(evhttp_request_get_output_buffer(req), a->req.body.data(), a->req.body.size());
  }
  a->ereq = req;
  a->timer = evtimer_new(base_, &UpstreamPool::onAttemptTimeout, a);
  const core::Duration limit =
      a->req.timeout > core::Duration::zero() ? std::min(a->req.timeout, cfg_.response_timeout)
                                              : cfg_.response_timeout;
  a->timeout = limit;
  const timeval tv = toTimeval(limit);
  evtimer_add(a->timer, &tv);
  if (!c->answered_before) {
    a->connect_timer = evtimer_new(base_, &UpstreamPool::onConnectTimeout, a);
    const timeval ctv = toTimeval(cfg_.connect_timeout);
    evtimer_add(a->connect_timer, &ctv);
  }
  if (evhttp_make_request(c->evcon, req, a->req.method, a->req.target.c_str()) != 0) {
    // libevent freed the request.
    a->ereq = nullptr;
    c->dead = true;
    UpstreamResponse r;
    r.error = UpstreamError::Connect;
    r.message = "evhttp_make_request failed";
    r.request_maybe_sent = false;
    finish(a, std::move(r));
  }
}

bool UpstreamPool::connectionEstablished(Conn* c) const {
  if (c->answered_before) {
    return true;
  }
  if (c->evcon == nullptr) {
    return false;
  }
  bufferevent* bev = evhttp_connection_get_bufferevent(c->evcon);
  const evutil_socket_t fd = bev != nullptr ? bufferevent_getfd(bev) : -1;
  if (fd < 0) {
    return false;
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return false;
  }
  return c->ssl == nullptr || SSL_is_init_finished(c->ssl) == 1;
}

void UpstreamPool::onConnectTimeout(evutil_socket_t, short, void* arg) {
  auto* a = static_cast<Attempt*>(arg);
  UpstreamPool* self = a->pool;
  if (a->finished || a->conn == nullptr || self->connectionEstablished(a->conn)) {
    return;
  }
  Conn* c = a->conn;
  c->dead = true;
  evhttp_request* req = a->ereq;
  a->ereq = nullptr;
  if (req != nullptr) {
    evhttp_cancel_request(req);  // frees req, resets the connection, calls onError(CANCEL)
  }
  UpstreamResponse r;
  r.error = UpstreamError::ConnectTimeout;
  r.message = "no connection to the upstream within " +
              std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 self->cfg_.connect_timeout)
                                 .count()) +
              " ms";
  r.request_maybe_sent = false;
  self->finish(a, std::move(r));
}

void UpstreamPool::onAttemptTimeout(evutil_socket_t, short, void* arg) {
  auto* a = static_cast<Attempt*>(arg);
  UpstreamPool* self = a->pool;
  if (a->finished) {
    return;
  }
  const bool established = a->conn != nullptr && self->connectionEstablished(a->conn);
  if (a->conn != nullptr) {
    a->conn->dead = true;
  }
  evhttp_request* req = a->ereq;
  a->ereq = nullptr;
  if (req != nullptr) {
    evhttp_cancel_request(req);
  }
  UpstreamResponse r;
  r.error = established ? UpstreamError::Timeout : UpstreamError::ConnectTimeout;
  r.message = "no reply from the upstream within " +
              std::to_string(
                  std::chrono::duration_cast<std::chrono::milliseconds>(a->timeout).count()) +
              " ms";
  r.request_maybe_sent = established;
  self->finish(a, std::move(r));
}

void UpstreamPool::onError(evhttp_request_error err, void* arg) {
  auto* a = static_cast<Attempt*>(arg);
  a->got_error = true;
  a->error_kind = err;
  a->saved_errno = EVUTIL_SOCKET_ERROR();
}

void UpstreamPool::onResponse(evhttp_request* req, void* arg) {
  auto* a = static_cast<Attempt*>(arg);
  UpstreamPool* self = a->pool;
  a->ereq = nullptr;  // libevent frees it after this callback
  if (a->finished) {
    return;
  }
  Conn* c = a->conn;
  UpstreamResponse r;
  const int code = req != nullptr ? evhttp_request_get_response_code(req) : 0;
  if (req == nullptr || code == 0 || a->got_error) {
    c->dead = true;
    // What happened: TLS, refused, timeout or reset. The connection was reset by libevent, but
    // the SSL object keeps its verify result and the bufferevent its OpenSSL errors.
    bufferevent* bev = c->evcon ? evhttp_connection_get_bufferevent(c->evcon) : nullptr;
    unsigned long ssl_err = 0;
    if (c->ssl != nullptr && bev != nullptr) {
      while (unsigned long e = bufferevent_get_openssl_error(bev)) {
        ssl_err = e;
      }
    }
    const bool tls_failed = c->ssl != nullptr && !c->answered_before &&
                            (ssl_err != 0 || SSL_get_verify_result(c->ssl) != X509_V_OK ||
                             SSL_is_init_finished(c->ssl) != 1);
    const int e = a->saved_errno;
    const bool connect_failed = !c->answered_before &&
                                (e == ECONNREFUSED || e == ENETUNREACH || e == EHOSTUNREACH ||
                                 e == EADDRNOTAVAIL || e == ECONNABORTED);
    if (connect_failed) {
      r.error = UpstreamError::Connect;
      r.message = std::string("cannot connect to the upstream: ") + std::strerror(e);
      r.request_maybe_sent = false;
    } else if (tls_failed) {
      r.error = UpstreamError::Tls;
      r.message = describeTlsFailure(c->ssl, ssl_err, "TLS handshake failed");
      r.request_maybe_sent = false;
    } else if (a->got_error && a->error_kind == EVREQ_HTTP_TIMEOUT) {
      r.error = UpstreamError::Timeout;
      r.message = "upstream connection timed out";
    } else if (a->got_error && (a->error_kind == EVREQ_HTTP_INVALID_HEADER ||
                                a->error_kind == EVREQ_HTTP_DATA_TOO_LONG)) {
      r.error = UpstreamError::Protocol;
      r.message = "invalid reply from the upstream";
    } else {
      r.error = UpstreamError::Reset;
      r.message = e != 0 ? std::string("upstream connection closed: ") + std::strerror(e)
                         : std::string("upstream closed the connection without a reply");
    }
    self->finish(a, std::move(r));
    return;
  }
  r.status = code;
  const evkeyvalq* in = evhttp_request_get_input_headers(req);
  bool close_after = false;
  for (const evkeyval* kv = in->tqh_first; kv != nullptr; kv = kv->next.tqe_next) {
    r.headers.push_back(Header{kv->key, kv->value});
    if (core::iequals(kv->key, "Connection")) {
      for (const std::string& t : core::connectionTokens(kv->value)) {
        close_after = close_after || t == "close";
      }
    }
  }
  evbuffer* body = evhttp_request_get_input_buffer(req);
  const size_t len = evbuffer_get_length(body);
  r.body.resize(len);
  if (len > 0) {
    evbuffer_copyout(body, r.body.data(), len);
  }
  c->answered_before = true;
  if (close_after) {
    c->dead = true;
  }
  self->finish(a, std::move(r));
}

void UpstreamPool::onConnClose(evhttp_connection*, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  c->dead = true;
  if (!c->busy) {
    // An idle keep-alive connection closed by the server: never reuse it (a TLS bufferevent
    // cannot reconnect), free it on the next loop turn.
    c->pool->discard(c);
  }
}

void UpstreamPool::finish(Attempt* a, UpstreamResponse&& resp) {
  if (a->finished) {
    return;
  }
  a->finished = true;
  if (a->timer != nullptr) {
    evtimer_del(a->timer);
  }
  if (a->connect_timer != nullptr) {
    evtimer_del(a->connect_timer);
  }
  resp.latency = core::MonotonicClock::now() - a->started;
  Conn* c = a->conn;
  a->conn = nullptr;
  auto it = attempts_.find(a->id);
  std::unique_ptr<Attempt> owned;
  if (it != attempts_.end()) {
    owned = std::move(it->second);
    attempts_.erase(it);
  }
  if (c != nullptr) {
    release(c, !c->dead);
  }
  if (owned) {
    completions_.emplace_back(std::move(owned), std::move(resp));
  }
  event_active(deferred_, EV_TIMEOUT, 0);
}

void UpstreamPool::release(Conn* c, bool reusable) {
  c->busy = false;
  if (!reusable) {
    discard(c);
    return;
  }
  c->idle_since = core::MonotonicClock::now();
  event_active(deferred_, EV_TIMEOUT, 0);  // pump waiting requests outside libevent's callback
}

void UpstreamPool::discard(Conn* c) {
  auto it = std::find_if(conns_.begin(), conns_.end(), [c](const auto& p) { return p.get() == c; });
  if (it == conns_.end()) {
    return;
  }
  graveyard_.push_back(std::move(*it));
  conns_.erase(it);
  event_active(deferred_, EV_TIMEOUT, 0);
}

void UpstreamPool::onDeferred(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<UpstreamPool*>(arg);
  // Free dead connections outside of libevent's own callbacks on them.
  auto graves = std::move(self->graveyard_);
  self->graveyard_.clear();
  for (auto& c : graves) {
    if (c->evcon != nullptr) {
      evhttp_connection_set_closecb(c->evcon, nullptr, nullptr);
      evhttp_connection_free(c->evcon);
      c->evcon = nullptr;
    }
  }
  auto done = std::move(self->completions_);
  self->completions_.clear();
  for (auto& [attempt, resp] : done) {
    if (attempt->done) {
      attempt->done(std::move(resp));
    }
  }
  self->pump();
}

void UpstreamPool::onIdleSweep(evutil_socket_t, short, void* arg) {
  static_cast<UpstreamPool*>(arg)->closeIdleExpired();
}

void UpstreamPool::closeIdleExpired() {
  const auto now = core::MonotonicClock::now();
  std::vector<Conn*> expired;
  for (auto& c : conns_) {
    if (!c->busy && now - c->idle_since > cfg_.idle_timeout) {
      expired.push_back(c.get());
    }
  }
  for (Conn* c : expired) {
    discard(c);
  }
}

}  // namespace hiapi::shell
