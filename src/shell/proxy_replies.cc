// How ProxyServer answers: upstream replies (with the proxy's headers, rewritten for deferred
// tasks), cached details, its own errors in HiAPI's envelope, and the access log line and the
// metrics observer once a request is done.

#include <algorithm>

#include "hiapi/core/key_name.h"
#include "hiapi/shell/proxy_server.h"

namespace hiapi::shell {
namespace {

long long ms(core::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

}  // namespace

void ProxyServer::replyLocal(RequestCtx& ctx, int status, std::string_view body,
                             const HeaderViews& extra, std::string_view outcome) {
  if (ctx.answered) {
    return;
  }
  HeaderViews out;
  out.reserve(extra.size() + 3);
  out.push_back(HeaderView{"Content-Type", "application/json"});
  out.push_back(HeaderView{"X-Request-Id", ctx.request_id});
  out.push_back(HeaderView{"Cache-Control", "no-store"});
  out.insert(out.end(), extra.begin(), extra.end());
  ctx.outcome = std::string(outcome);
  sendReply(ctx, status, out, body);
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
  replyUpstream(*ctx, resp, age_s);
}

void ProxyServer::replyCached(uint64_t id, const core::CachedReply& reply, core::Duration age) {
  UpstreamResponse r;
  r.status = reply.status;
  r.headers.reserve(reply.headers.size());
  for (const auto& [k, v] : reply.headers) {
    r.headers.push_back(Header{k, v});
  }
  r.body = reply.body;
  replyWith(id, r, "hit",
            static_cast<long>(std::chrono::duration_cast<std::chrono::seconds>(age).count()));
}

void ProxyServer::replyErrorTo(uint64_t id, core::ProxyError e, std::string_view message,
                               int retry_after_s) {
  if (RequestCtx* ctx = find(id)) {
    ctx->poll_joined = false;
    replyError(*ctx, e, message, retry_after_s);
  }
}

void ProxyServer::replyUpstream(RequestCtx& ctx, const UpstreamResponse& resp, long age_s) {
  if (ctx.internal) {
    ctx.answered = true;
    done(ctx, resp.status);
    return;
  }
  HeaderViews out;
  out.reserve(resp.headers.size() + 2);
  if (!ctx.cache_result.empty()) {
    out.push_back(HeaderView{"X-HiAPI-Proxy-Cache", ctx.cache_result});
  }
  std::string age;
  if (age_s >= 0) {
    age = std::to_string(age_s);
    out.push_back(HeaderView{"Age", age});
  }
  const std::string* connection = findHeader(resp.headers, "Connection");
  const std::string_view conn_value = connection != nullptr ? *connection : std::string_view();
  for (const Header& h : resp.headers) {
    // A HEAD reply's length is the one a GET would have had: the upstream's, kept.
    if ((core::iequals(h.name, "Content-Length") && ctx.method != "HEAD") ||
        core::isHopByHop(h.name, conn_value)) {
      continue;
    }
    out.push_back(HeaderView{h.name, h.value});
  }
  ctx.outcome = ctx.cache_result == "hit"         ? "cache_hit"
                : ctx.cache_result == "coalesced" ? "coalesced"
                                                  : "forwarded";
  if ((!ctx.alias_id.empty() || ctx.list_merge) && defer_hook_ != nullptr &&
      resp.status >= 200 && resp.status < 300) {
    // A deferred task's client knows it by the proxy's id: HiAPI's is told beside it.
    if (!ctx.alias_id.empty()) {
      out.push_back(HeaderView{"X-HiAPI-Upstream-Task-Id", ctx.route.task_id});
    }
    if (std::optional<std::string> body = defer_hook_->rewrite(ctx, resp.body)) {
      sendReply(ctx, resp.status, out, *body);
      return;
    }
  }
  sendReply(ctx, resp.status, out, resp.body);
}

void ProxyServer::replyError(RequestCtx& ctx, core::ProxyError e, std::string_view message,
                             int retry_after_s) {
  if (ctx.answered) {
    return;
  }
  const core::ProxyErrorInfo& info = core::proxyErrorInfo(e);
  ctx.proxy_error = e;
  if (!ctx.deferred_id.empty() && defer_hook_ != nullptr) {
    defer_hook_->rejected(ctx, e);
  }
  if (ctx.client_gone || ctx.internal) {
    ctx.answered = true;
    done(ctx, info.status);
    return;
  }
  HeaderViews out;
  out.reserve(4);
  out.push_back(HeaderView{"Content-Type", "application/json"});
  out.push_back(HeaderView{core::kProxyErrorHeader, info.code});
  out.push_back(HeaderView{"X-Request-Id", ctx.request_id});
  if (retry_after_s < 0 && info.retry_helps) {
    retry_after_s = 1;  // the table says waiting helps; callers that know better pass their own
  }
  std::string retry_after;
  if (retry_after_s >= 0) {
    retry_after = std::to_string(retry_after_s);
    out.push_back(HeaderView{"Retry-After", retry_after});
  }
  const std::string body = core::renderProxyError(e, ctx.request_id, message);
  // A CONNECT has no body framing after it, and the rest of an oversized or unreadable request
  // is not read: close after these.
  const bool close = e == core::ProxyError::MethodNotAllowed ||
                     e == core::ProxyError::BodyTooLarge ||
                     e == core::ProxyError::HeadersTooLarge || e == core::ProxyError::BadRequest ||
                     e == core::ProxyError::RequestTimeout;
  ctx.outcome = std::string(info.code);
  if (!message.empty() && info.status >= 500) {
    log_.warn("proxy error", {{"request_id", ctx.request_id}, {"code", info.code}, {"detail", message}});
  }
  sendReply(ctx, info.status, out, body, close);
}

void ProxyServer::sendReply(RequestCtx& ctx, int status, const HeaderViews& headers,
                            std::string_view body, bool close) {
  ctx.answered = true;
  ctx.bytes_out = ctx.method == "HEAD" ? 0 : body.size();  // a HEAD reply goes without its body
  if (ctx.exchange != 0) {
    if (http_) {
      http_->reply(ctx.exchange, status, headers, body, close);
    }
    ctx.exchange = 0;
  }
  done(ctx, status);
}

std::string_view ProxyServer::outcomeOf(const RequestCtx& ctx) {
  if (!ctx.outcome.empty()) {
    return ctx.outcome;
  }
  if (ctx.cache_result == "hit") {
    return "cache_hit";
  }
  if (ctx.cache_result == "coalesced") {
    return "coalesced";
  }
  return ctx.attempts > 0 ? "forwarded" : "unknown";
}

void ProxyServer::done(RequestCtx& ctx, int status) {
  unhold(ctx);
  // A request ends holding no slot: one still held (no path handed it on) is freed now, not
  // when this request's spare is reused.
  ctx.slot.release();
  if (!ctx.deferred_id.empty()) {
    --deferred_live_;
  }
  if (!log_.enabled(core::LogLevel::Info)) {
    if (on_finished) {
      on_finished(ctx, status);
    }
    request_spares_.erase(requests_, ctx.id);
    return;
  }
  std::vector<LogField> fields{
      {"request_id", ctx.request_id},
      // The proxy's own polls have no client: they say so, and count apart from the clients'.
      {"client_addr", ctx.internal ? std::string_view("hiapi-proxy") : std::string_view(ctx.peer)},
      {"method", ctx.method},
      {"route", core::routeName(ctx.route.kind)},
      {"path", !ctx.path.empty() ? std::string_view(ctx.path)
                                 : std::string_view(ctx.upstream.target).substr(
                                       0, ctx.upstream.target.find('?'))},
      {"status", status},
      {"outcome", outcomeOf(ctx)},
      {"queued_ms", ms(ctx.queued)},
      {"upstream_ms", ms(ctx.upstream_time)},
      {"attempts", ctx.attempts},
      {"total_ms", ms(clock_.now() - ctx.received)},
      {"bytes_in", ctx.bytes_in},
      {"bytes_out", ctx.bytes_out},
  };
  if (!ctx.key_name.empty()) {
    fields.emplace_back("key", std::string(core::keyDisplayName(ctx.key_name)));
  }
  if (ctx.internal) {
    fields.emplace_back("client", "hiapi-proxy");
    fields.emplace_back("look", ctx.client.substr(ctx.client.rfind('-') + 1));
  } else if (!ctx.client.empty()) {
    fields.emplace_back("client", ctx.client);
  }
  // The client's User-Agent went on with the request: read it there, not from a copy.
  if (const std::string* ua = ctx.internal ? nullptr : findHeader(ctx.upstream.headers, "User-Agent");
      ua != nullptr) {
    fields.emplace_back("user_agent", std::string_view(*ua).substr(0, kMaxLoggedUserAgent));
  }
  if (!ctx.route.task_id.empty()) {
    fields.emplace_back("task", ctx.route.task_id);
  }
  if (!ctx.upstream_request_id.empty()) {
    fields.emplace_back("upstream_request_id", ctx.upstream_request_id);
  }
  if (!ctx.shadow.empty()) {
    fields.emplace_back("shadow", ctx.shadow);  // sent at once; enforcing would have held it
  }
  log_.log(core::LogLevel::Info, "request", fields);
  if (on_finished) {
    on_finished(ctx, status);
  }
  request_spares_.erase(requests_, ctx.id);
}

}  // namespace hiapi::shell
