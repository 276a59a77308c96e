#include "hiapi/shell/event_util.h"
#include "hiapi/shell/proxy_server.h"

#include "hiapi/version.h"

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <random>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/keyvalq_struct.h>
#include <netinet/in.h>
#include <sys/socket.h>

namespace hiapi::shell {
namespace {

// The official clients give up after 60 s; every answer must leave the proxy before that.
constexpr core::Duration kAnswerWithin = std::chrono::seconds(57);
constexpr std::string_view kKeySelectHeader = "X-HiAPI-Key";

std::string methodName(evhttp_cmd_type t) {
  switch (t) {
  case EVHTTP_REQ_GET:
    return "GET";
  case EVHTTP_REQ_POST:
    return "POST";
  case EVHTTP_REQ_HEAD:
    return "HEAD";
  case EVHTTP_REQ_PUT:
    return "PUT";
  case EVHTTP_REQ_DELETE:
    return "DELETE";
  case EVHTTP_REQ_OPTIONS:
    return "OPTIONS";
  case EVHTTP_REQ_TRACE:
    return "TRACE";
  case EVHTTP_REQ_CONNECT:
    return "CONNECT";
  case EVHTTP_REQ_PATCH:
    return "PATCH";
  }
  return "UNKNOWN";
}

long long ms(core::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

bool isLoopbackName(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Parses a client's deadline header: "5s", "2500ms" or a plain number of seconds.
std::optional<core::Duration> parseClientDeadline(const char* v) {
  if (v == nullptr) {
    return std::nullopt;
  }
  if (auto d = core::parseDuration(v)) {
    return d;
  }
  char* end = nullptr;
  const double s = std::strtod(v, &end);
  if (end != v && *end == '\0' && s > 0) {
    return core::fromSeconds(s);
  }
  return std::nullopt;
}

}  // namespace

ProxyServer::ProxyServer(event_base* base, core::ConfigSharedPtr cfg, UpstreamPool& pool,
                         Logger& log)
    : base_(base), cfg_(std::move(cfg)), pool_(pool), log_(log) {
  std::random_device rd;
  id_salt_ = (static_cast<uint64_t>(rd()) << 32) ^ rd();
}

ProxyServer::~ProxyServer() {
  for (auto& [id, ctx] : requests_) {
    unwatchClient(*ctx);
    unhold(*ctx);
    if (ctx->client_conn != nullptr && !ctx->client_gone) {
      evhttp_connection_set_closecb(ctx->client_conn, nullptr, nullptr);
    }
  }
  if (http_ != nullptr) {
    evhttp_free(http_);
  }
}

bool ProxyServer::listen() {
  http_ = evhttp_new(base_);
  if (http_ == nullptr) {
    log_.error("evhttp_new failed");
    return false;
  }
  const core::ListenConfig& l = cfg_->listen;
  // libevent 2.1 answers bodies and headers over its own limits with a plain 413 of its own;
  // set those hard limits above ours so that the usual oversize request gets our envelope
  // (413 body_too_large / 431 headers_too_large), and memory stays bounded.
  evhttp_set_max_body_size(http_, static_cast<ev_ssize_t>(l.max_body_bytes * 2 + (1u << 20)));
  evhttp_set_max_headers_size(http_, static_cast<ev_ssize_t>(l.max_header_bytes * 2 + 8192));
  evhttp_set_allowed_methods(http_, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                        EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                        EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
  evhttp_set_default_content_type(http_, nullptr);
  evhttp_set_timeout(http_, static_cast<int>(std::chrono::duration_cast<std::chrono::seconds>(
                                                 l.client_timeout)
                                                 .count()));
  evhttp_set_gencb(http_, &ProxyServer::onRequest, this);
  bound_ = evhttp_bind_socket_with_handle(http_, l.address.c_str(), l.port);
  if (bound_ == nullptr) {
    log_.error("cannot listen", {{"address", l.address}, {"port", l.port}});
    return false;
  }
  port_ = boundPort(evhttp_bound_socket_get_fd(bound_));
  return true;
}

void ProxyServer::stopAccepting() {
  draining_ = true;
  if (bound_ != nullptr && http_ != nullptr) {
    evhttp_del_accept_socket(http_, bound_);
    bound_ = nullptr;
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

void ProxyServer::onRequest(evhttp_request* req, void* arg) {
  static_cast<ProxyServer*>(arg)->handle(req);
}

RequestCtx* ProxyServer::find(uint64_t id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

void ProxyServer::onClientClose(evhttp_connection* conn, void* arg) {
  auto* self = static_cast<ProxyServer*>(arg);
  auto byc = self->by_conn_.find(conn);
  RequestCtx* found = byc == self->by_conn_.end() ? nullptr : self->find(byc->second);
  if (found == nullptr || found->client_conn != conn || found->answered || found->internal) {
    return;
  }
  self->by_conn_.erase(byc);
  RequestCtx& ctx = *found;
  ctx.client_gone = true;
  ctx.client_conn = nullptr;
  self->unwatchClient(ctx);
  if (conn == self->freeing_conn_) {
    ctx.req = nullptr;  // evhttp_connection_free frees it with the connection
  }
  ctx.outcome = "client_gone";
  // Never send a request whose client has gone: drop it from admission or the pool's waiting
  // line. One already on the wire completes (it may have created a task).
  bool dropped = false;
  if (ctx.poll_joined) {
    dropped = true;
  } else if (ctx.pool_handle != 0) {
    dropped = self->pool_.cancelIfWaiting(ctx.pool_handle);
    if (dropped) {
      ctx.pool_handle = 0;
      if (self->admission_ != nullptr) {
        self->admission_->clientGone(ctx);  // returns its slot
      }
    }
  } else {
    if (self->admission_ != nullptr) {
      self->admission_->clientGone(ctx);
    }
    dropped = true;
  }
  if (self->poll_hook_ != nullptr && (ctx.poll_joined || ctx.poll_fetcher)) {
    self->poll_hook_->pollerGone(ctx, !dropped);
  }
  if (dropped) {
    // Not from inside libevent's connection teardown: on the next loop turn.
    const uint64_t rid = ctx.id;
    event_base_once(
        self->base_, -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* a) {
          auto* pair = static_cast<std::pair<ProxyServer*, uint64_t>*>(a);
          if (RequestCtx* c = pair->first->find(pair->second)) {
            pair->first->done(*c, 0);
          }
          delete pair;
        },
        new std::pair<ProxyServer*, uint64_t>(self, rid), nullptr);
  }
}

RequestCtx& ProxyServer::newCtx() {
  auto owned = std::make_unique<RequestCtx>();
  RequestCtx& ctx = *owned;
  ctx.id = next_id_++;
  char rid[32];
  std::snprintf(rid, sizeof rid, "hp-%016llx",
                static_cast<unsigned long long>(id_salt_ ^ (ctx.id * 0x9E3779B97F4A7C15ull)));
  ctx.request_id = rid;
  ctx.received = core::MonotonicClock::now();
  ctx.deadline = ctx.received + kAnswerWithin;
  requests_.emplace(ctx.id, std::move(owned));
  return ctx;
}

void ProxyServer::admitCtx(RequestCtx& ctx) {
  if (admission_ == nullptr) {
    forward(ctx);
    return;
  }
  const uint64_t id = ctx.id;
  admission_->admit(
      ctx,
      [this, id] {
        if (RequestCtx* c = find(id)) {
          forward(*c);
        }
      },
      [this, id](core::ProxyError e, int retry_after_s) {
        if (RequestCtx* c = find(id)) {
          if (c->poll_fetcher && poll_hook_ != nullptr) {
            poll_hook_->fetchRejected(*c, e, retry_after_s);  // the joiners get the same answer
          }
          replyError(*c, e, {}, retry_after_s);
        }
      });
}

void ProxyServer::admitById(uint64_t id) {
  if (RequestCtx* c = find(id)) {
    c->poll_joined = false;
    admitCtx(*c);
  }
}

uint64_t ProxyServer::internalPoll(const std::string& key_name, const std::string& authorization,
                                   const std::string& task_id, std::optional<size_t> unblocks) {
  RequestCtx& ctx = newCtx();
  ctx.internal = true;
  ctx.unblocks = unblocks;
  ctx.method = "GET";
  ctx.client = unblocks ? "hiapi-proxy-gate" : "hiapi-proxy-reconcile";
  ctx.key_name = key_name;
  ctx.route.kind = core::RouteKind::Poll;
  ctx.route.task_id = task_id;
  ctx.poll_fetcher = true;
  ctx.authorization = authorization;
  ctx.upstream.method = EVHTTP_REQ_GET;
  std::string enc;
  for (unsigned char c : task_id) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      enc.push_back(static_cast<char>(c));
    } else {
      char b[4];
      std::snprintf(b, sizeof b, "%%%02X", c);
      enc += b;
    }
  }
  ctx.upstream.target = "/v1/tasks/" + enc;
  ctx.upstream.headers.push_back(Header{"Accept", "application/json"});
  ctx.upstream.headers.push_back(Header{"User-Agent", "hiapi-proxy/" HIAPI_PROXY_VERSION});
  ctx.upstream.headers.push_back(Header{"Authorization", authorization});
  const uint64_t id = ctx.id;
  admitCtx(ctx);
  return id;
}

// libevent 2.1 stops reading a client's socket while its request is being processed, so a client
// that goes away is not noticed until the reply is written. A waiting request watches its socket
// for EOF itself, without reading from it (MSG_PEEK), and frees the connection when it closes.
void ProxyServer::watchClient(RequestCtx& ctx) {
  if (ctx.client_conn == nullptr || ctx.client_watch != nullptr) {
    return;
  }
  bufferevent* bev = evhttp_connection_get_bufferevent(ctx.client_conn);
  const evutil_socket_t fd = bev != nullptr ? bufferevent_getfd(bev) : -1;
  if (fd < 0) {
    return;
  }
  auto* arg = new std::pair<ProxyServer*, uint64_t>(this, ctx.id);
  ctx.client_watch = event_new(base_, fd, EV_READ | EV_PERSIST, &ProxyServer::onClientReadable, arg);
  if (ctx.client_watch == nullptr || event_add(ctx.client_watch, nullptr) != 0) {
    if (ctx.client_watch != nullptr) {
      event_free(ctx.client_watch);
      ctx.client_watch = nullptr;
    }
    delete arg;
  }
}

void ProxyServer::holdPoll(uint64_t id, core::Duration wait) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr || ctx->answered || ctx->hold_timer != nullptr) {
    return;
  }
  ctx->poll_held = true;
  auto* arg = new std::pair<ProxyServer*, uint64_t>(this, id);
  ctx->hold_timer = evtimer_new(base_, &ProxyServer::onHoldTimer, arg);
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(wait).count();
  const timeval tv{static_cast<time_t>(us / 1'000'000),
                   static_cast<suseconds_t>(us % 1'000'000)};
  if (ctx->hold_timer == nullptr || evtimer_add(ctx->hold_timer, &tv) != 0) {
    if (ctx->hold_timer != nullptr) {
      event_free(ctx->hold_timer);
      ctx->hold_timer = nullptr;
    }
    delete arg;
    serve(*ctx);  // cannot wait: serve it now (poll_held keeps it from being held again)
  }
}

void ProxyServer::onHoldTimer(evutil_socket_t, short, void* arg) {
  const auto [self, id] = *static_cast<std::pair<ProxyServer*, uint64_t>*>(arg);
  self->serveHeldNow(id);
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

namespace {
// Frees an event of a request (client watch, hold timer) and its (server, request id) argument.
void freeRequestEvent(event*& ev) {
  if (ev == nullptr) {
    return;
  }
  delete static_cast<std::pair<ProxyServer*, uint64_t>*>(event_get_callback_arg(ev));
  event_free(ev);
  ev = nullptr;
}
}  // namespace

void ProxyServer::unhold(RequestCtx& ctx) { freeRequestEvent(ctx.hold_timer); }

void ProxyServer::unwatchClient(RequestCtx& ctx) { freeRequestEvent(ctx.client_watch); }

void ProxyServer::onClientReadable(evutil_socket_t fd, short, void* arg) {
  auto* pa = static_cast<std::pair<ProxyServer*, uint64_t>*>(arg);
  ProxyServer* self = pa->first;
  RequestCtx* ctx = self->find(pa->second);
  if (ctx == nullptr) {
    return;
  }
  char b;
  const ssize_t n = ::recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n > 0) {
    self->unwatchClient(*ctx);  // a pipelined request: libevent reads it after our reply
    return;
  }
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
    return;
  }
  // EOF or reset: the client has gone.
  evhttp_connection* conn = ctx->client_conn;
  self->unwatchClient(*ctx);
  if (conn == nullptr) {
    return;
  }
  self->freeing_conn_ = conn;
  evhttp_connection_free(conn);  // calls onClientClose, then frees the request
  self->freeing_conn_ = nullptr;
}

void ProxyServer::handle(evhttp_request* req) {
  RequestCtx& ctx = newCtx();
  ctx.req = req;
  ctx.client_conn = evhttp_request_get_connection(req);
  ctx.method = methodName(evhttp_request_get_command(req));
  if (ctx.client_conn != nullptr) {
    by_conn_[ctx.client_conn] = ctx.id;
    evhttp_connection_set_closecb(ctx.client_conn, &ProxyServer::onClientClose, this);
  }
  if (!prepare(ctx)) {
    return;  // answered with a proxy error
  }
  serve(ctx);
}

void ProxyServer::serve(RequestCtx& ctx) {
  const uint64_t id = ctx.id;
  if (poll_hook_ != nullptr && ctx.route.kind == core::RouteKind::Poll &&
      poll_hook_->beginClientPoll(ctx)) {
    if (RequestCtx* c = find(id); c != nullptr && !c->answered) {
      watchClient(*c);  // joined to a fetch in flight, or held until its task's likely end
    }
    return;
  }
  admitCtx(ctx);
  // Only a request that still waits needs to notice its client leaving: one already on the wire
  // completes anyway (it may have created a task).
  if (RequestCtx* c = find(id);
      c != nullptr && !c->answered && (c->pool_handle == 0 || pool_.isWaiting(c->pool_handle))) {
    watchClient(*c);
  }
}

bool ProxyServer::prepare(RequestCtx& ctx) {
  const core::Config& cfg = *cfg_;
  if (draining_) {
    replyError(ctx, core::ProxyError::ShuttingDown);
    return false;
  }
  if (ctx.method == "CONNECT") {
    replyError(ctx, core::ProxyError::MethodNotAllowed);
    return false;
  }
  const char* raw_uri = evhttp_request_get_uri(ctx.req);
  std::string target = raw_uri != nullptr ? raw_uri : "";
  if (auto abs = core::parseAbsoluteUri(target)) {
    const bool ours = abs->host == cfg.upstream.host || isLoopbackName(abs->host) ||
                      abs->host == cfg.listen.address;
    if (!ours) {
      replyError(ctx, core::ProxyError::NotAnOpenProxy,
                 "hiapi-proxy forwards only to " + cfg.upstream.url + ", not to " + abs->host);
      return false;
    }
    target = abs->path_and_query;
  }
  if (target.empty() || target.front() != '/') {
    replyError(ctx, core::ProxyError::BadRequest, "request target must start with /");
    return false;
  }
  const std::string path = target.substr(0, target.find('?'));
  auto route = core::matchRoute(ctx.method, path);
  if (!route) {
    replyError(ctx, core::ProxyError::NotFound,
               "hiapi-proxy forwards only /v1/... paths; set the base URL to http://" +
                   cfg.listen.address + ":" + std::to_string(port_));
    return false;
  }
  ctx.route = std::move(*route);

  // Headers: end-to-end ones go on; hop-by-hop, Host, Content-Length (recomputed), the key and
  // the proxy's own control headers stay here.
  const evkeyvalq* in = evhttp_request_get_input_headers(ctx.req);
  std::vector<std::string> conn_tokens;
  uint64_t header_bytes = 0;
  for (const evkeyval* kv = in->tqh_first; kv != nullptr; kv = kv->next.tqe_next) {
    header_bytes += std::strlen(kv->key) + std::strlen(kv->value) + 4;
    if (core::iequals(kv->key, "Connection")) {
      auto t = core::connectionTokens(kv->value);
      conn_tokens.insert(conn_tokens.end(), t.begin(), t.end());
    }
  }
  if (header_bytes > cfg.listen.max_header_bytes) {
    replyError(ctx, core::ProxyError::HeadersTooLarge);
    return false;
  }
  const char* authorization = nullptr;
  const char* key_select = nullptr;
  const char* deadline_hdr = nullptr;
  for (const evkeyval* kv = in->tqh_first; kv != nullptr; kv = kv->next.tqe_next) {
    if (core::iequals(kv->key, "Authorization")) {
      authorization = kv->value;
      continue;
    }
    if (core::iequals(kv->key, cfg.queue.client_header)) {
      ctx.client = kv->value;
      continue;
    }
    if (core::iequals(kv->key, cfg.queue.deadline_header)) {
      deadline_hdr = kv->value;
      continue;
    }
    if (core::iequals(kv->key, kKeySelectHeader)) {
      key_select = kv->value;
      continue;
    }
    if (core::iequals(kv->key, "Host") || core::iequals(kv->key, "Content-Length") ||
        core::isHopByHop(kv->key, conn_tokens)) {
      continue;
    }
    ctx.upstream.headers.push_back(Header{kv->key, kv->value});
  }
  if (ctx.client.size() > 64) {
    ctx.client.resize(64);  // a bounded fairness class, not a free-form label
  }
  if (auto d = parseClientDeadline(deadline_hdr)) {
    ctx.deadline = std::min(ctx.deadline, ctx.received + *d);
  }

  // The key.
  if (cfg.key_mode == core::KeyMode::Inject) {
    const core::KeyConfig* key = cfg.keys.empty() ? nullptr : &cfg.keys.front();
    if (key_select != nullptr) {
      key = nullptr;
      for (const core::KeyConfig& k : cfg.keys) {
        if (k.name == key_select) {
          key = &k;
        }
      }
      if (key == nullptr) {
        replyError(ctx, core::ProxyError::MissingApiKey,
                   std::string("no configured key is named '") + key_select + "'");
        return false;
      }
    }
    if (key == nullptr || key->key.empty()) {
      replyError(ctx, core::ProxyError::MissingApiKey);
      return false;
    }
    ctx.key_name = key->name;
    ctx.authorization = "Bearer " + key->key.reveal();
    ctx.upstream.headers.push_back(Header{"Authorization", ctx.authorization});
  } else {
    if (authorization == nullptr || *authorization == '\0') {
      replyError(ctx, core::ProxyError::MissingApiKey);
      return false;
    }
    const auto token = core::bearerToken(authorization);
    const core::Secret secret(token ? *token : std::string(authorization));
    for (const core::KeyConfig& k : cfg.keys) {
      if (k.key == secret) {
        ctx.key_name = k.name;
      }
    }
    if (ctx.key_name.empty()) {
      ctx.key_name = "pt-" + secret.fingerprint();
    }
    ctx.authorization = authorization;
    ctx.upstream.headers.push_back(Header{"Authorization", authorization});
  }

  // The body, byte for byte.
  evbuffer* body = evhttp_request_get_input_buffer(ctx.req);
  const size_t len = evbuffer_get_length(body);
  if (len > cfg.listen.max_body_bytes) {
    replyError(ctx, core::ProxyError::BodyTooLarge,
               "request body of " + std::to_string(len) + " bytes exceeds the limit of " +
                   std::to_string(cfg.listen.max_body_bytes) + " bytes");
    return false;
  }
  ctx.upstream.body.resize(len);
  if (len > 0) {
    evbuffer_copyout(body, ctx.upstream.body.data(), len);
  }
  ctx.upstream.method = evhttp_request_get_command(ctx.req);
  ctx.upstream.target = std::move(target);
  return true;
}

void ProxyServer::forward(RequestCtx& ctx) {
  if (ctx.answered || ctx.client_gone) {
    return;
  }
  const auto now = core::MonotonicClock::now();
  if (ctx.attempts == 0) {
    ctx.queued = now - ctx.received;
  }
  const core::Duration left = ctx.deadline - now;
  if (left <= core::Duration::zero()) {
    replyError(ctx, core::ProxyError::UpstreamTimeout, "no time left before the client's deadline");
    return;
  }
  ++ctx.attempts;
  UpstreamRequest copy = ctx.upstream;
  copy.timeout = left;
  const uint64_t id = ctx.id;
  ctx.pool_handle = pool_.send(std::move(copy), [this, id](UpstreamResponse&& resp) {
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
    watchClient(*ctx);  // it waits again: a client leaving now must stop the retry
    return;             // the hook retries it
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

void ProxyServer::replyWith(uint64_t id, const UpstreamResponse& resp, std::string_view cache,
                            long age_s) {
  RequestCtx* ctx = find(id);
  if (ctx == nullptr || ctx->answered) {
    return;
  }
  ctx->poll_joined = false;
  ctx->cache_result = std::string(cache);
  if (ctx->client_gone || ctx->internal) {
    ctx->answered = true;
    done(*ctx, resp.status);
    return;
  }
  if (resp.error != UpstreamError::None) {
    replyError(*ctx, core::ProxyError::UpstreamUnreachable, resp.message);
    return;
  }
  if (age_s >= 0) {
    evhttp_add_header(evhttp_request_get_output_headers(ctx->req), "Age",
                      std::to_string(age_s).c_str());
  }
  replyUpstream(*ctx, resp);
}

void ProxyServer::replyErrorTo(uint64_t id, core::ProxyError e, std::string_view message,
                               int retry_after_s) {
  if (RequestCtx* ctx = find(id)) {
    ctx->poll_joined = false;
    replyError(*ctx, e, message, retry_after_s);
  }
}

void ProxyServer::replyUpstream(RequestCtx& ctx, const UpstreamResponse& resp) {
  if (ctx.internal) {
    ctx.answered = true;
    done(ctx, resp.status);
    return;
  }
  evkeyvalq* out = evhttp_request_get_output_headers(ctx.req);
  if (!ctx.cache_result.empty()) {
    evhttp_add_header(out, "X-HiAPI-Proxy-Cache", ctx.cache_result.c_str());
  }
  std::vector<std::string> conn_tokens;
  if (const std::string* c = findHeader(resp.headers, "Connection")) {
    conn_tokens = core::connectionTokens(*c);
  }
  for (const Header& h : resp.headers) {
    if (core::iequals(h.name, "Content-Length") || core::isHopByHop(h.name, conn_tokens)) {
      continue;
    }
    evhttp_add_header(out, h.name.c_str(), h.value.c_str());
  }
  evbuffer* buf = evbuffer_new();
  if (!resp.body.empty()) {
    evbuffer_add(buf, resp.body.data(), resp.body.size());
  }
  ctx.outcome = "forwarded";
  sendReply(ctx, resp.status, buf);
  evbuffer_free(buf);
}

void ProxyServer::replyError(RequestCtx& ctx, core::ProxyError e, std::string_view message,
                             int retry_after_s) {
  if (ctx.answered) {
    return;
  }
  const core::ProxyErrorInfo& info = core::proxyErrorInfo(e);
  ctx.proxy_error = e;
  if (ctx.client_gone || ctx.internal) {
    ctx.answered = true;
    done(ctx, info.status);
    return;
  }
  evkeyvalq* out = evhttp_request_get_output_headers(ctx.req);
  evhttp_clear_headers(out);
  evhttp_add_header(out, "Content-Type", "application/json");
  evhttp_add_header(out, std::string(core::kProxyErrorHeader).c_str(),
                    std::string(info.code).c_str());
  evhttp_add_header(out, "X-Request-Id", ctx.request_id.c_str());
  if (retry_after_s < 0 && info.retry_helps) {
    retry_after_s = 1;  // the table says waiting helps; callers that know better pass their own
  }
  if (retry_after_s >= 0) {
    evhttp_add_header(out, "Retry-After", std::to_string(retry_after_s).c_str());
  }
  const std::string body = core::renderProxyError(e, ctx.request_id, message);
  // libevent leaves Content-Length off some replies (CONNECT): always state it.
  evhttp_add_header(out, "Content-Length", std::to_string(body.size()).c_str());
  if (e == core::ProxyError::MethodNotAllowed || e == core::ProxyError::BodyTooLarge ||
      e == core::ProxyError::HeadersTooLarge) {
    // libevent closes after the reply when the request asked for it; a CONNECT reply has no
    // body framing otherwise, and an oversized request is not worth keeping the socket for.
    evkeyvalq* in = evhttp_request_get_input_headers(ctx.req);
    evhttp_remove_header(in, "Connection");
    evhttp_add_header(in, "Connection", "close");
  }
  evbuffer* buf = evbuffer_new();
  evbuffer_add(buf, body.data(), body.size());
  ctx.outcome = std::string(info.code);
  if (!message.empty() && info.status >= 500) {
    log_.warn("proxy error", {{"request_id", ctx.request_id}, {"code", info.code}, {"detail", message}});
  }
  sendReply(ctx, info.status, buf);
  evbuffer_free(buf);
}

void ProxyServer::sendReply(RequestCtx& ctx, int status, evbuffer* body) {
  ctx.answered = true;
  unwatchClient(ctx);
  if (ctx.client_conn != nullptr) {
    evhttp_connection_set_closecb(ctx.client_conn, nullptr, nullptr);
    by_conn_.erase(ctx.client_conn);
  }
  evhttp_send_reply(ctx.req, status, nullptr, body);
  ctx.req = nullptr;  // libevent owns and frees it now
  done(ctx, status);
}

void ProxyServer::done(RequestCtx& ctx, int status) {
  unwatchClient(ctx);
  unhold(ctx);
  if (ctx.client_conn != nullptr) {
    auto byc = by_conn_.find(ctx.client_conn);
    if (byc != by_conn_.end() && byc->second == ctx.id) {
      by_conn_.erase(byc);
    }
  }
  if (ctx.req != nullptr && ctx.client_gone) {
    // An orphaned request (its connection is gone): ours to free.
    evhttp_request_free(ctx.req);
    ctx.req = nullptr;
  }
  if (!log_.enabled(core::LogLevel::Info)) {
    if (on_finished) {
      on_finished(ctx, status);
    }
    requests_.erase(ctx.id);
    return;
  }
  std::vector<LogField> fields{
      {"request_id", ctx.request_id},
      {"method", ctx.method},
      {"route", core::routeName(ctx.route.kind)},
      {"status", status},
      {"outcome", ctx.outcome.empty() ? std::string("unknown") : ctx.outcome},
      {"queued_ms", ms(ctx.queued)},
      {"upstream_ms", ms(ctx.upstream_time)},
      {"attempts", ctx.attempts},
      {"total_ms", ms(core::MonotonicClock::now() - ctx.received)},
  };
  if (!ctx.key_name.empty()) {
    fields.emplace_back("key", ctx.key_name);
  }
  if (!ctx.client.empty()) {
    fields.emplace_back("client", ctx.client);
  }
  if (!ctx.route.task_id.empty()) {
    fields.emplace_back("task", ctx.route.task_id);
  }
  if (!ctx.upstream_request_id.empty()) {
    fields.emplace_back("upstream_request_id", ctx.upstream_request_id);
  }
  log_.log(core::LogLevel::Info, "request", fields);
  if (on_finished) {
    on_finished(ctx, status);
  }
  requests_.erase(ctx.id);
}

}  // namespace hiapi::shell
