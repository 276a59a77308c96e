#include "hiapi/shell/upstream_pool.h"

#include <algorithm>

#include "hiapi/core/http_rules.h"
#include "hiapi/shell/buffer_budget.h"
#include "hiapi/shell/event_util.h"
#include "hiapi/shell/upstream_conn.h"

namespace hiapi::shell {

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

/// A pooled connection: the HTTP client, the attempt on it, and its two timers, made once for
/// the connection's life and re-armed per request (heap operations, no system calls).
struct UpstreamPool::Conn final : UpstreamConn::Owner {
  UpstreamPool* pool;
  UpstreamConn link;
  Attempt* attempt = nullptr;  ///< non-null while busy
  event* response_timer = nullptr;
  event* connect_timer = nullptr;
  core::MonotonicTime idle_since{};

  explicit Conn(UpstreamPool* p)
      : pool(p), link(p->base_, p->dns_, p->cfg_, p->tls_.get(), *this) {
    response_timer = evtimer_new(p->base_, &UpstreamPool::onResponseTimeout, this);
    connect_timer = evtimer_new(p->base_, &UpstreamPool::onConnectTimeout, this);
  }
  ~Conn() override {
    link.close();
    if (response_timer != nullptr) {
      event_free(response_timer);
    }
    if (connect_timer != nullptr) {
      event_free(connect_timer);
    }
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  void onExchangeDone(UpstreamConn&, UpstreamResponse&& resp) override {
    pool->finish(this, std::move(resp));
  }
  void onIdleClosed(UpstreamConn&) override { pool->discard(this); }
};

UpstreamPool::UpstreamPool(event_base* base, const core::Clock& clock,
                           const core::UpstreamConfig& cfg, Logger& log, evdns_base* resolver)
    : base_(base), clock_(clock), dns_(resolver), cfg_(cfg), log_(log) {
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
  if (dns_ == nullptr) {
    dns_ = evdns_base_new(base_, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                     EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    owns_dns_ = dns_ != nullptr;
    if (dns_ == nullptr) {
      log_.warn("evdns_base_new failed: falling back to blocking name resolution");
    }
  }
  deferred_ = event_new(base_, -1, 0, &UpstreamPool::onDeferred, this);
  idle_sweep_ = event_new(base_, -1, EV_PERSIST, &UpstreamPool::onIdleSweep, this);
  wait_timer_ = evtimer_new(base_, &UpstreamPool::onWaitTimer, this);
  const timeval sweep{1, 0};
  event_add(idle_sweep_, &sweep);
}

UpstreamPool::~UpstreamPool() {
  // Closing tells no one: pending callbacks are dropped, as before.
  conns_.clear();
  graveyard_.clear();
  attempts_.clear();
  completions_.clear();
  if (deferred_ != nullptr) {
    event_free(deferred_);
  }
  if (idle_sweep_ != nullptr) {
    event_free(idle_sweep_);
  }
  if (wait_timer_ != nullptr) {
    event_free(wait_timer_);
  }
  if (owns_dns_) {
    evdns_base_free(dns_, 0);
  }
}

size_t UpstreamPool::busyConnections() const {
  return static_cast<size_t>(std::count_if(conns_.begin(), conns_.end(),
                                           [](const auto& c) { return c->attempt != nullptr; }));
}

size_t UpstreamPool::idleConnections() const { return conns_.size() - busyConnections(); }

uint64_t UpstreamPool::send(const UpstreamRequest& req, UpstreamCallback done) {
  const uint64_t id = next_id_++;
  Attempt& a = attempt_spares_.reuse(attempts_, id);  // a kept one: its wire keeps its capacity
  a.id = id;
  serializeRequest(a.wire, req, host_header_);
  a.head = req.method == http::Method::Head;
  a.timeout = req.timeout > core::Duration::zero() ? std::min(req.timeout, cfg_.response_timeout)
                                                   : cfg_.response_timeout;
  a.done = std::move(done);
  a.conn = nullptr;
  a.started = {};
  a.sent_at.reset();
  a.deadline = clock_.now() + a.timeout;
  waiting_.push_back(id);
  pump();
  if (!waiting_.empty() && waiting_.back() == id && wait_timer_ != nullptr &&
      (wait_timer_at_ == core::MonotonicTime{} || a.deadline < wait_timer_at_)) {
    wait_timer_at_ = a.deadline;
    const timeval tv = toTimeval(std::max<core::Duration>(
        a.deadline - clock_.now(), std::chrono::milliseconds(1)));
    evtimer_add(wait_timer_, &tv);
  }
  return id;
}

void UpstreamPool::timeOutWaiting(Attempt& a) {
  UpstreamResponse r;
  r.error = UpstreamError::Timeout;
  r.message = "no upstream connection free within " +
              std::to_string(
                  std::chrono::duration_cast<std::chrono::milliseconds>(a.timeout).count()) +
              " ms";
  r.request_maybe_sent = false;
  complete(a, std::move(r));
}

void UpstreamPool::onWaitTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<UpstreamPool*>(arg);
  self->wait_timer_at_ = {};
  self->expireWaiting();
}

void UpstreamPool::expireWaiting() {
  const auto now = clock_.now();
  core::MonotonicTime next{};
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    auto a = attempts_.find(*it);
    if (a == attempts_.end()) {
      it = waiting_.erase(it);
      continue;
    }
    if (a->second.deadline <= now) {
      it = waiting_.erase(it);
      timeOutWaiting(a->second);
      continue;
    }
    if (next == core::MonotonicTime{} || a->second.deadline < next) {
      next = a->second.deadline;
    }
    ++it;
  }
  if (next != core::MonotonicTime{} && wait_timer_ != nullptr) {
    wait_timer_at_ = next;
    const timeval tv =
        toTimeval(std::max<core::Duration>(next - now, std::chrono::milliseconds(1)));
    evtimer_add(wait_timer_, &tv);
  }
}

bool UpstreamPool::cancelIfWaiting(uint64_t handle) {
  auto it = std::find(waiting_.begin(), waiting_.end(), handle);
  if (it == waiting_.end()) {
    return false;
  }
  waiting_.erase(it);
  attempt_spares_.erase(attempts_, handle);
  return true;
}

bool UpstreamPool::isWaiting(uint64_t handle) const {
  return std::find(waiting_.begin(), waiting_.end(), handle) != waiting_.end();
}

UpstreamPool::Conn* UpstreamPool::takeConnection() {
  // Most recently used first: keeps a small hot set and lets the rest idle out.
  Conn* best = nullptr;
  for (auto& c : conns_) {
    if (c->attempt == nullptr && c->link.reusable() &&
        (best == nullptr || c->idle_since > best->idle_since)) {
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
  auto c = std::make_unique<Conn>(this);
  if (c->response_timer == nullptr || c->connect_timer == nullptr) {
    log_.error("upstream connection setup failed", {{"error", "evtimer_new failed"}});
    return nullptr;
  }
  std::string error;
  if (!c->link.init(error)) {
    log_.error("upstream tls setup failed", {{"error", error}});
    return nullptr;
  }
  c->link.setBufferBudget(budget_);
  c->idle_since = clock_.now();
  conns_.push_back(std::move(c));
  return conns_.back().get();
}

void UpstreamPool::pump() {
  while (!waiting_.empty()) {
    const uint64_t id = waiting_.front();
    auto it = attempts_.find(id);
    if (it == attempts_.end()) {
      waiting_.pop_front();
      continue;
    }
    if (clock_.now() >= it->second.deadline) {
      waiting_.pop_front();
      timeOutWaiting(it->second);
      continue;
    }
    Conn* c = takeConnection();
    if (c == nullptr) {
      if (conns_.empty()) {
        // Could not even build a connection: fail the head instead of waiting forever.
        waiting_.pop_front();
        UpstreamResponse r;
        r.error = UpstreamError::Connect;
        r.message = "cannot create an upstream connection";
        r.request_maybe_sent = false;
        complete(it->second, std::move(r));
        continue;
      }
      return;
    }
    waiting_.pop_front();
    start(it->second, c);
  }
}

void UpstreamPool::start(Attempt& a, Conn* c) {
  c->attempt = &a;
  a.conn = c;
  a.started = clock_.now();
  a.sent_at = c->link.established() ? std::optional<core::MonotonicTime>(a.started) : std::nullopt;
  // The time it waited for a connection is spent: what is left of it bounds the reply.
  const timeval tv = toTimeval(
      std::max<core::Duration>(a.deadline - a.started, std::chrono::milliseconds(1)));
  evtimer_add(c->response_timer, &tv);
  if (!c->link.established()) {
    const timeval ctv = toTimeval(cfg_.connect_timeout);
    evtimer_add(c->connect_timer, &ctv);
  }
  // Connects, or writes at once on an open connection. It may end the attempt before it returns
  // (a failed write, a refused connect): finish() defers the callback, and neither a nor c is
  // touched here afterwards.
  c->link.send(a.wire, a.head);
}

void UpstreamPool::onConnectTimeout(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  UpstreamPool* self = c->pool;
  if (c->attempt == nullptr || c->link.established()) {
    return;
  }
  c->link.close();
  UpstreamResponse r;
  r.error = UpstreamError::ConnectTimeout;
  r.message = "no connection to the upstream within " +
              std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 self->cfg_.connect_timeout)
                                 .count()) +
              " ms";
  r.request_maybe_sent = false;
  self->finish(c, std::move(r));
}

void UpstreamPool::onResponseTimeout(evutil_socket_t, short, void* arg) {
  auto* c = static_cast<Conn*>(arg);
  UpstreamPool* self = c->pool;
  if (c->attempt == nullptr) {
    return;
  }
  const bool established = c->link.established();
  c->link.close();
  UpstreamResponse r;
  r.error = established ? UpstreamError::Timeout : UpstreamError::ConnectTimeout;
  r.message = "no reply from the upstream within " +
              std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 c->attempt->timeout)
                                 .count()) +
              " ms";
  r.request_maybe_sent = established;
  self->finish(c, std::move(r));
}

void UpstreamPool::finish(Conn* c, UpstreamResponse&& resp) {
  Attempt* a = c->attempt;
  if (a == nullptr) {
    return;
  }
  c->attempt = nullptr;
  evtimer_del(c->response_timer);
  evtimer_del(c->connect_timer);
  release(c);
  complete(*a, std::move(resp));
}

void UpstreamPool::complete(Attempt& a, UpstreamResponse&& resp) {
  resp.latency = a.started == core::MonotonicTime{} ? core::Duration::zero()
                                                    : clock_.now() - a.started;
  resp.sent_at = a.sent_at;
  completions_.emplace_back(std::move(a.done), std::move(resp));
  const uint64_t id = a.id;
  attempt_spares_.erase(attempts_, id);  // a is gone from here on
  event_active(deferred_, EV_TIMEOUT, 0);
}

void UpstreamPool::release(Conn* c) {
  if (!c->link.reusable()) {
    discard(c);
    return;
  }
  c->idle_since = clock_.now();
  // Waiting requests are pumped from the deferred event, outside the socket callback.
  event_active(deferred_, EV_TIMEOUT, 0);
}

void UpstreamPool::discard(Conn* c) {
  c->link.close();
  auto it = std::find_if(conns_.begin(), conns_.end(), [c](const auto& p) { return p.get() == c; });
  if (it == conns_.end()) {
    return;
  }
  // Its callback may be on the stack: free it on the next loop turn.
  graveyard_.push_back(std::move(*it));
  conns_.erase(it);
  event_active(deferred_, EV_TIMEOUT, 0);
}

void UpstreamPool::onDeferred(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<UpstreamPool*>(arg);
  self->graveyard_.clear();
  // A callback may call send(), which may queue completions of its own: they go to
  // completions_ and a later turn of this event.
  self->running_.swap(self->completions_);
  for (auto& [done, resp] : self->running_) {
    uint64_t counted = resp.budget_bytes;
    if (done) {
      done(std::move(resp));
    }
    if (self->budget_ != nullptr && counted > 0) {
      self->budget_->adjust(counted, 0);
    }
  }
  self->running_.clear();
  self->pump();
}

void UpstreamPool::onIdleSweep(evutil_socket_t, short, void* arg) {
  static_cast<UpstreamPool*>(arg)->closeIdleExpired();
}

void UpstreamPool::closeIdleExpired() {
  const auto now = clock_.now();
  std::vector<Conn*> expired;
  for (auto& c : conns_) {
    if (c->attempt == nullptr && now - c->idle_since > cfg_.idle_timeout) {
      expired.push_back(c.get());
    }
  }
  for (Conn* c : expired) {
    discard(c);
  }
}

}  // namespace hiapi::shell
