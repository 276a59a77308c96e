#include "hiapi/shell/event_util.h"
#include "hiapi/shell/proxy_server.h"

#include "hiapi/core/key_name.h"
#include "hiapi/core/normalize.h"
#include "hiapi/version.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>

namespace hiapi::shell {
namespace {

// The official clients give up after 60 s; every answer must leave the proxy before that.
constexpr core::Duration kAnswerWithin = std::chrono::seconds(57);
// Ids of the proxy's own requests (exchange ids of client requests never get this high). Below
// bit 48: a request id shows the low 48 bits of the id times an odd number, which differ for ids
// that differ below bit 48, so the proxy's own polls never show a client request's id.
constexpr uint64_t kInternalIds = uint64_t{1} << 47;
// Passthrough keys whose names are remembered (see prepare()).
constexpr size_t kMaxKeyNames = 1024;

HttpServerLimits serverLimits(const core::ListenConfig& l) {
  return HttpServerLimits{l.max_header_bytes, l.max_body_bytes,   l.client_timeout,
                          l.header_timeout,   l.body_timeout,     l.max_connections};
}

}  // namespace

ProxyServer::ProxyServer(event_base* base, Timers& timers, core::Random& random,
                         core::ConfigSharedPtr cfg, UpstreamPool& pool, Logger& log)
    : base_(base), timers_(timers), clock_(timers.clock()), cfg_(std::move(cfg)), pool_(pool),
      log_(log) {
  const auto half = [&random] { return static_cast<uint64_t>(random.uniform() * 4294967296.0); };
  id_salt_ = (half() << 32) ^ half();
}

ProxyServer::~ProxyServer() {
  for (auto& [id, ctx] : requests_) {
    unhold(*ctx);
  }
  http_.reset();  // closes the client connections; nothing is reported back any more
}

void ProxyServer::setConfig(core::ConfigSharedPtr cfg) {
  cfg_ = std::move(cfg);
  key_names_.clear();  // the configured keys may have changed names
  if (http_) {
    http_->setLimits(serverLimits(cfg_->listen));
  }
}

bool ProxyServer::listen() {
  const core::ListenConfig& l = cfg_->listen;
  http_ = std::make_unique<HttpServer>(base_, static_cast<HttpServer::Handler&>(*this), log_,
                                       serverLimits(l));
  http_->setBufferBudget(budget_);
  std::string error;
  if (!http_->listen(l.address, l.port, error)) {
    log_.error("cannot listen", {{"address", l.address}, {"port", l.port}, {"error", error}});
    return false;
  }
  port_ = http_->port();
  return true;
}

void ProxyServer::stopAccepting() {
  draining_ = true;
  if (http_) {
    http_->stopAccepting();
  }
}

void ProxyServer::abortPending() {
  std::vector<uint64_t> ids;
  for (auto& [id, ctx] : requests_) {
    ids.push_back(id);
  }
  for (uint64_t id : ids) {
    RequestCtx* ctx = find(id);
    if (ctx == nullptr) {
      continue;
    }
    if (ctx->pool_handle != 0) {
      pool_.cancelIfWaiting(ctx->pool_handle);
    }
    if (admission_ != nullptr) {
      admission_->clientGone(*ctx);
    }
    replyError(*ctx, core::ProxyError::ShuttingDown);
  }
}

RequestCtx* ProxyServer::find(uint64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

void ProxyServer::onClientGone(uint64_t exchange) {
  RequestCtx* found = find(exchange);  // a client request's id is its exchange
  if (found == nullptr || found->exchange != exchange || found->answered || found->internal) {
    return;
  }
  RequestCtx& ctx = *found;
  ctx.client_gone = true;
  ctx.exchange = 0;
  ctx.outcome = "client_gone";
  // Never send a request whose client has gone: drop it from admission or the pool's waiting
  // line. One already on the wire completes (it may have created a task).
  bool dropped = false;
  if (ctx.poll_joined) {
    dropped = true;
  } else if (ctx.pool_handle != 0) {
    dropped = pool_.cancelIfWaiting(ctx.pool_handle);
    if (dropped) {
      ctx.pool_handle = 0;
      if (admission_ != nullptr) {
        admission_->clientGone(ctx);  // returns its slot
      }
    }
  } else {
    if (admission_ != nullptr) {
      admission_->clientGone(ctx);
    }
    dropped = true;
  }
  if (poll_hook_ != nullptr && (ctx.poll_joined || ctx.poll_fetcher)) {
    poll_hook_->pollerGone(ctx, !dropped);
  }
  if (dropped) {
    // Not from inside the server's connection teardown: on the next loop turn.
    event_base_once(
        base_, -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* a) {
          auto* pair = static_cast<std::pair<ProxyServer*, uint64_t>*>(a);
          if (RequestCtx* c = pair->first->find(pair->second)) {
            pair->first->done(*c, 0);
          }
          delete pair;
        },
        new std::pair<ProxyServer*, uint64_t>(this, ctx.id), nullptr);
  }
}

RequestCtx& ProxyServer::newCtx(uint64_t id) {
  // A client request takes its HttpServer exchange id (so that onClientGone finds it); the
  // proxy's own requests count in a space of their own.
  id = id != 0 ? id : kInternalIds | next_id_++;
  std::unique_ptr<RequestCtx>& owned = request_spares_.reuse(requests_, id);
  if (owned) {
    *owned = RequestCtx{};  // a finished request's: its strings keep their capacity
  } else {
    owned = std::make_unique<RequestCtx>();
  }
  RequestCtx& ctx = *owned;
  ctx.id = id;
  // "hp-" and 12 hex digits (48 bits of a salted, scrambled counter): 15 characters, short
  // enough for std::string to keep without an allocation, formatted by hand (every request).
  static constexpr char kHex[] = "0123456789abcdef";
  char rid[15] = {'h', 'p', '-'};
  const uint64_t v = id_salt_ ^ (ctx.id * 0x9E3779B97F4A7C15ull);
  for (int i = 0; i < 12; ++i) {
    rid[3 + i] = kHex[(v >> (44 - 4 * i)) & 0xF];
  }
  ctx.request_id.assign(rid, sizeof rid);
  ctx.received = clock_.now();
  ctx.deadline = ctx.received + kAnswerWithin;
  return ctx;
}

void ProxyServer::admitCtx(RequestCtx& ctx) {
  if (admission_ == nullptr) {
    forward(ctx);
    return;
  }
  const uint64_t id = ctx.id;
  const bool client_create = ctx.route.kind == core::RouteKind::Create && !ctx.internal;
  admission_->admit(ctx);
  // admit() may have answered the request at once (a full queue) and freed ctx: look it up.
  if (defer_hook_ != nullptr && client_create) {
    if (RequestCtx* c = find(id); c != nullptr && admission_->isWaiting(*c)) {
      defer_hook_->waiting(*c);
    }
  }
}

void ProxyServer::decided(const AdmissionDecision& d) {
  RequestCtx* c = find(d.id);
  if (c == nullptr) {
    return;
  }
  if (!d.refuse) {
    forward(*c);
    return;
  }
  if (c->poll_fetcher && poll_hook_ != nullptr) {
    poll_hook_->fetchRejected(*c, *d.refuse, d.retry_after_s);  // the joiners get the same answer
  }
  replyError(*c, *d.refuse, {}, d.retry_after_s);
}

bool ProxyServer::answerDeferred(uint64_t id, std::string_view body) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr || ctx->answered || ctx->client_gone || admission_ == nullptr ||
      !admission_->isWaiting(*ctx)) {
    return false;
  }
  admission_->clientGone(*ctx);  // withdrawn: its token and slot reservations go back
  replyLocal(*ctx, 200, body, {HeaderView{"X-HiAPI-Proxy-Deferred", "queued"}}, "deferred");
  return true;
}

uint64_t ProxyServer::submitDeferred(const DeferredSubmission& s) {
  RequestCtx& ctx = newCtx();
  ctx.internal = true;
  ctx.deferred_id = s.deferred_id;
  ++deferred_live_;
  ctx.method = "POST";
  ctx.client = s.client;
  ctx.key_name = s.key_name;
  ctx.route.kind = core::RouteKind::Create;
  ctx.authorization = s.authorization;
  ctx.deadline = ctx.received + s.time_left;
  ctx.upstream.method = http::Method::Post;
  ctx.upstream.target = s.target;
  ctx.upstream.headers = s.headers;
  ctx.upstream.headers.push_back(Header{"Authorization", s.authorization});
  ctx.upstream.body = s.body;
  const uint64_t id = ctx.id;
  admitCtx(ctx);
  return id;
}

bool ProxyServer::withdraw(uint64_t id) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr || ctx->answered) {
    return false;
  }
  if (ctx->pool_handle != 0) {
    if (!pool_.cancelIfWaiting(ctx->pool_handle)) {
      return false;  // on the wire: its answer will come
    }
    ctx->pool_handle = 0;
  }
  if (admission_ != nullptr) {
    admission_->clientGone(*ctx);
  }
  ctx->answered = true;
  ctx->outcome = "withdrawn";
  done(*ctx, 0);
  return true;
}

void ProxyServer::admitById(uint64_t id) {
  if (RequestCtx* c = find(id)) {
    c->poll_joined = false;
    admitCtx(*c);
  }
}

uint64_t ProxyServer::internalPoll(const std::string& key_name, const std::string& authorization,
                                   const std::string& task_id, std::optional<size_t> unblocks,
                                   std::optional<core::MonotonicTime> wait_until,
                                   bool spare_token) {
  RequestCtx& ctx = newCtx();
  ctx.internal = true;
  ctx.unblocks = unblocks;
  ctx.wait_until = wait_until;
  if (spare_token) {
    ctx.poll_early_until = ctx.received;
  }
  ctx.method = "GET";
  ctx.client = spare_token ? "hiapi-proxy-held"
               : unblocks  ? "hiapi-proxy-gate"
                           : "hiapi-proxy-reconcile";
  ctx.key_name = key_name;
  ctx.route.kind = core::RouteKind::Poll;
  ctx.route.task_id = task_id;
  ctx.poll_fetcher = true;
  ctx.authorization = authorization;
  ctx.upstream.method = http::Method::Get;
  ctx.upstream.target = "/v1/tasks/" + core::percentEncodeSegment(task_id);
  ctx.upstream.headers.push_back(Header{"Accept", "application/json"});
  ctx.upstream.headers.push_back(Header{"User-Agent", "hiapi-proxy/" HIAPI_PROXY_VERSION});
  ctx.upstream.headers.push_back(Header{"Authorization", authorization});
  const uint64_t id = ctx.id;
  admitCtx(ctx);
  return id;
}

void ProxyServer::holdPoll(uint64_t id, core::Duration wait) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr || ctx->answered || ctx->hold_timer != nullptr) {
    return;
  }
  ctx->poll_held = true;
  ctx->hold_timer = timers_.make([this, id] { serveHeldNow(id); });
  ctx->hold_timer->armAt(clock_.now() + wait);
}

void ProxyServer::serveHeldNow(uint64_t id) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr || ctx->hold_timer == nullptr) {
    return;  // gone, or already served
  }
  unhold(*ctx);
  if (!ctx->answered && !ctx->client_gone) {
    serve(*ctx);
  }
}

void ProxyServer::resume(uint64_t id) {
  RequestCtx* ctx = find(id);
  if (ctx != nullptr && !ctx->answered && !ctx->client_gone) {
    serve(*ctx);
  }
}

void ProxyServer::unhold(RequestCtx& ctx) { ctx.hold_timer.reset(); }

void ProxyServer::onRequest(uint64_t exchange, InboundRequest& req) {
  RequestCtx& ctx = newCtx(exchange);
  ctx.exchange = exchange;
  ctx.method = std::move(req.method);
  ctx.peer = std::move(req.peer);
  ctx.bytes_in = std::max<uint64_t>(req.body.size(), req.body_bytes_seen);
  switch (req.problem) {
  case InboundProblem::None:
    break;
  case InboundProblem::Malformed:
    replyError(ctx, core::ProxyError::BadRequest, "the request is not HTTP/1.1 hiapi-proxy can read");
    return;
  case InboundProblem::HeadersTooLarge:
    replyError(ctx, core::ProxyError::HeadersTooLarge);
    return;
  case InboundProblem::BodyTooLarge:
    replyError(ctx, core::ProxyError::BodyTooLarge,
               "request body of " + std::to_string(req.body_bytes_seen) +
                   (req.body.empty() ? " bytes" : " bytes or more") + " exceeds the limit of " +
                   std::to_string(cfg_->listen.max_body_bytes) + " bytes");
    return;
  case InboundProblem::Timeout:
    replyError(ctx, core::ProxyError::RequestTimeout);
    return;
  }
  if (!prepare(ctx, req)) {
    return;  // answered with a proxy error
  }
  serve(ctx);
}

void ProxyServer::serve(RequestCtx& ctx) {
  // A client that leaves while its request waits (here or in admission) is seen by HttpServer's
  // read edge: onClientGone() drops the request.
  if (defer_hook_ != nullptr && !ctx.poll_held && defer_hook_->intercept(ctx)) {
    return;  // a request about a deferred task the proxy answers itself
  }
  if (poll_hook_ != nullptr && ctx.route.kind == core::RouteKind::Poll) {
    ClientPollDecision d = poll_hook_->beginClientPoll(ctx);
    switch (d.action) {
    case ClientPollDecision::Action::Hit:
      replyCached(ctx.id, *d.reply, d.age);
      return;
    case ClientPollDecision::Action::Join:
      return;  // answered with the fetch in flight's reply
    case ClientPollDecision::Action::Hold:
      holdPoll(ctx.id, d.hold);
      return;
    case ClientPollDecision::Action::Fetch:
      break;
    }
  }
  admitCtx(ctx);
}

bool ProxyServer::prepare(RequestCtx& ctx, InboundRequest& req) {
  if (draining_) {
    replyError(ctx, core::ProxyError::ShuttingDown);
    return false;
  }
  core::InboundHead head{ctx.method, std::move(req.target), std::move(req.headers)};
  auto normalized = core::normalize(std::move(head), *cfg_, {cfg_->listen.address, port_});
  if (auto* refusal = std::get_if<core::Refusal>(&normalized)) {
    ctx.path = std::move(refusal->path);  // (a forwarded request's path is its target's)
    ctx.client = std::move(refusal->client);
    replyError(ctx, refusal->error, refusal->message);
    return false;
  }
  core::Normalized& n = std::get<core::Normalized>(normalized);
  ctx.route = std::move(n.route);
  ctx.client = std::move(n.client);
  if (n.client_deadline) {
    ctx.deadline = std::min(ctx.deadline, ctx.received + *n.client_deadline);
  }
  ctx.key_name = n.key != nullptr ? n.key->name : keyNameFor(n.authorization);
  ctx.authorization = n.authorization;
  ctx.upstream.headers = std::move(n.headers);
  ctx.upstream.headers.push_back(Header{"Authorization", std::move(n.authorization)});
  ctx.upstream.body = std::move(req.body);  // byte for byte (HttpServer checked max_body_bytes)
  ctx.upstream.method = n.method;
  ctx.upstream.target = std::move(n.target);
  return true;
}

const std::string& ProxyServer::keyNameFor(std::string_view authorization) {
  // A service sends the same key on every request: remember which name it maps to.
  if (auto known = key_names_.find(authorization); known != key_names_.end()) {
    return known->second;
  }
  const auto token = core::bearerToken(authorization);
  const core::Secret secret(token ? *token : std::string(authorization));
  std::string name;
  for (const core::KeyConfig& k : cfg_->keys) {
    if (k.key == secret) {
      name = k.name;
    }
  }
  if (name.empty()) {
    name = key_identity_.nameOf(secret.reveal());
  }
  if (key_names_.size() >= kMaxKeyNames) {
    key_names_.clear();  // many keys come and go: start over rather than grow
  }
  return key_names_.emplace(std::string(authorization), std::move(name)).first->second;
}

void ProxyServer::forward(RequestCtx& ctx) {
  if (ctx.answered || ctx.client_gone) {
    return;
  }
  const auto now = clock_.now();
  if (ctx.attempts == 0) {
    ctx.queued = now - ctx.received;
  }
  const core::Duration left = ctx.deadline - now;
  if (left <= core::Duration::zero()) {
    replyError(ctx, core::ProxyError::UpstreamTimeout, "no time left before the client's deadline");
    return;
  }
  ++ctx.attempts;
  ctx.upstream.timeout = left;
  const uint64_t id = ctx.id;
  ctx.pool_handle = pool_.send(ctx.upstream, [this, id](UpstreamResponse&& resp) {
    onUpstream(id, std::move(resp));
  });
}

void ProxyServer::onUpstream(uint64_t id, UpstreamResponse&& resp) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr) {
    return;
  }
  ctx->pool_handle = 0;
  ctx->upstream_time += resp.latency;
  if (resp.status >= 400) {
    if (auto f = core::parseUpstreamError(resp.body); f.request_id) {
      ctx->upstream_request_id = *f.request_id;
    }
  }
  if (admission_ != nullptr && !ctx->client_gone && admission_->completed(*ctx, resp)) {
    return;  // the hook retries it (a client leaving meanwhile stops the retry)
  }
  if (admission_ != nullptr && ctx->client_gone) {
    admission_->completed(*ctx, resp);  // budgets and task tracking still learn from it
  }
  if (poll_hook_ != nullptr) {
    poll_hook_->observe(*ctx, resp);
    if (ctx->poll_fetcher) {
      poll_hook_->fetchDone(*ctx, resp);  // answers the polls that joined this fetch
      ctx = find(id);
      if (ctx == nullptr) {
        return;
      }
      ctx->cache_result = "miss";
    }
  }
  if (!ctx->deferred_id.empty() && defer_hook_ != nullptr) {
    defer_hook_->submitted(*ctx, resp);
    ctx = find(id);
    if (ctx == nullptr) {
      return;
    }
  }
  if (ctx->client_gone || ctx->internal) {
    ctx->answered = true;
    done(*ctx, resp.status);
    return;
  }
  switch (resp.error) {
  case UpstreamError::None:
    replyUpstream(*ctx, resp);
    return;
  case UpstreamError::Tls:
    replyError(*ctx, core::ProxyError::UpstreamTlsError, "TLS with the upstream failed: " + resp.message);
    return;
  case UpstreamError::Timeout:
  case UpstreamError::ConnectTimeout:
    replyError(*ctx, core::ProxyError::UpstreamTimeout, resp.message);
    return;
  case UpstreamError::Connect:
  case UpstreamError::Reset:
  case UpstreamError::Protocol:
    replyError(*ctx, core::ProxyError::UpstreamUnreachable, resp.message);
    return;
  }
}

}  // namespace hiapi::shell
