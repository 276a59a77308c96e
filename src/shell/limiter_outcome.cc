// The limiter's reply side: what it learns from an upstream reply (the scheduler's rate and
// ceiling feedback, the reply's metrics), what becomes of a create's slot, and the retry step
// ("should") around RetryPolicy ("would"). Kept apart from admission (limiter.cc) because it
// starts from a reply rather than a request and owns the retry timers.

#include <chrono>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/key_name.h"
#include "hiapi/core/task_json.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "limiter_key_state.h"

namespace hiapi::shell {
namespace {

std::optional<double> headerNumber(const std::string& v) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  if (end == v.c_str()) {
    return std::nullopt;
  }
  return d;
}

// Retry-After and the X-RateLimit-* headers of a reply, in one pass over its headers (the first
// of each counts).
void readLimitHeaders(const Headers& headers, core::UpstreamOutcome& out) {
  for (const Header& h : headers) {
    if (!out.retry_after && core::iequals(h.name, "Retry-After")) {
      out.retry_after = h.value;
    } else if (h.name.size() > 12 && core::iequals(h.name.substr(0, 12), "X-RateLimit-")) {
      const std::string_view rest = std::string_view(h.name).substr(12);
      std::optional<double>* field = core::iequals(rest, "Limit")       ? &out.ratelimit.limit
                                     : core::iequals(rest, "Remaining") ? &out.ratelimit.remaining
                                     : core::iequals(rest, "Reset")     ? &out.ratelimit.reset
                                                                        : nullptr;
      if (field != nullptr && !*field) {
        *field = headerNumber(h.value);
      }
    }
  }
}

/// The scheduler's view of an upstream reply to @p ctx.
core::UpstreamOutcome outcomeOf(const RequestCtx& ctx, const UpstreamResponse& resp,
                                std::chrono::system_clock::time_point wall) {
  core::UpstreamOutcome out;
  out.status = resp.error == UpstreamError::None ? resp.status : 0;
  out.route = ctx.route.kind;
  out.tier = ctx.tier;
  out.slot = ctx.slot.id();
  out.seq = ctx.admission_seq;
  out.wall_now = wall;
  out.sent_at = resp.sent_at;
  if (resp.status == 429) {
    const core::UpstreamErrorFields f = core::parseUpstreamError(resp.body);
    out.cause = f.code ? core::classify429Code(*f.code) : core::Limit429Cause::Unknown;
  }
  readLimitHeaders(resp.headers, out);
  return out;
}

}  // namespace

bool Limiter::completed(RequestCtx& ctx, const UpstreamResponse& resp) {
  KeyState& ks = keyState(ctx.key_name);
  const auto now = clock_.now();
  const auto wall = clock_.wallNow();
  const core::UpstreamOutcome out = outcomeOf(ctx, resp, wall);
  learnFrom(ks, ctx, out, resp.latency, now);
  if (ctx.attempts == 1) {
    ks.budget->onRequest(now);
  }
  const bool success = resp.error == UpstreamError::None && resp.status >= 200 && resp.status < 300;
  if (ctx.route.kind == core::RouteKind::Create && ctx.slot) {
    settleCreateSlot(ctx, resp.body, success);
  }
  const bool retry = !success && !ctx.client_gone && scheduleRetry(ks, ctx, resp, out, now);
  if (!retry) {
    handle_spares_.erase(handles_, ctx.id);  // the proxy answers it now
  }
  pump(ks);
  return retry;
}

void Limiter::learnFrom(KeyState& ks, const RequestCtx& ctx, const core::UpstreamOutcome& out,
                        core::Duration latency, core::MonotonicTime now) {
  const uint64_t resyncs_before = ks.sched->counters().rate_resyncs;
  const uint64_t decreases_before = ks.sched->counters().rate_decreases;
  const uint64_t guards_before = ks.sched->counters().rate_guards;
  ks.sched->onUpstreamOutcome(out, now);
  if (metrics_ == nullptr) {
    return;
  }
  metrics_->upstreamRequest(ctx.key_name, core::routeName(ctx.route.kind), out.status,
                            core::toSeconds(latency));
  if (out.status == 429) {
    const char* cause = out.cause == core::Limit429Cause::Rate          ? "rate"
                        : out.cause == core::Limit429Cause::Concurrency ? "concurrency"
                                                                        : "unknown";
    metrics_->upstream429(ctx.key_name, cause);
    if (ks.sched->counters().rate_resyncs > resyncs_before) {
      metrics_->rateReaction(ctx.key_name, "resync");
    }
    if (ks.sched->counters().rate_decreases > decreases_before) {
      metrics_->rateReaction(ctx.key_name, "decrease");
    }
    if (ks.sched->counters().rate_guards > guards_before) {
      metrics_->rateReaction(ctx.key_name, "guard");
    }
  }
}

void Limiter::settleCreateSlot(RequestCtx& ctx, const std::string& body, bool success) {
  if (success) {
    // The task holds its slot until a terminal status is seen or the lease runs out.
    const std::optional<std::string> task = core::parseCreatedTaskId(body);
    if (task && on_task_created) {
      on_task_created(ctx, *task);
    } else if (!task) {
      log_.warn("create succeeded without a readable taskId: its slot waits for the lease",
                {{"request_id", ctx.request_id}, {"key", core::keyDisplayName(ctx.key_name)}});
    }
    ctx.slot.detach();  // the task tracker holds it now, or the lease will end it
  } else {
    // No task was created (or we cannot tell it was): the slot goes back at once. A retry
    // waits for a slot again, under the ceiling a concurrency 429 may have lowered.
    ctx.slot.release();
  }
}

bool Limiter::scheduleRetry(KeyState& ks, RequestCtx& ctx, const UpstreamResponse& resp,
                            const core::UpstreamOutcome& out, core::MonotonicTime now) {
  core::RetryInput in;
  in.method = core::parseHttpMethod(ctx.method);
  in.route = ctx.route.kind;
  in.status = out.status;
  in.bytes_sent = resp.request_maybe_sent;
  in.has_idempotency_key = ctx.has_idempotency_key;
  in.retry_after = out.retry_after;
  in.attempt = static_cast<uint32_t>(ctx.attempts);
  in.time_left = ctx.deadline - now;
  in.wall_now = out.wall_now;
  const core::RetryDecision dec = retry_policy_->decide(in, random_);
  if (!dec.retry) {
    return false;
  }
  if (!ks.budget->tryRetry(now)) {
    log_.warn("retry budget spent: answering with the upstream reply",
              {{"request_id", ctx.request_id}, {"key", core::keyDisplayName(ctx.key_name)}});
    return false;
  }
  if (metrics_ != nullptr) {
    metrics_->retry(ctx.key_name, core::retryReasonName(dec.reason));
  }
  log_.debug("retrying", {{"request_id", ctx.request_id},
                          {"reason", core::retryReasonName(dec.reason)},
                          {"delay_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                           dec.delay)
                                           .count()}});
  auto rt = std::make_unique<RetryTimer>();
  rt->key = ctx.key_name;
  rt->timer = timers_.make([this, key = ctx.key_name, id = ctx.id] { retryDue(key, id); });
  rt->timer->armAt(clock_.now() + dec.delay);
  retry_timers_[ctx.id] = std::move(rt);
  return true;
}

void Limiter::retryDue(std::string key, uint64_t id) {
  retry_timers_.erase(id);  // frees the timer that called this
  auto h = handles_.find(id);
  if (h == handles_.end()) {
    return;
  }
  // Back into the queue at its head (retries first); its decision sends it again.
  submit(keyState(key), *h->second.ctx, core::Priority::Retry);
}

}  // namespace hiapi::shell
