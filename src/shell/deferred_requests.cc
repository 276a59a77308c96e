// DeferredService answering clients about deferred tasks: polls of queued ones, cancels, lists
// that show them, and replies rewritten to the proxy's task ids.

#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/proxy_error.h"
#include "hiapi/core/task_json.h"
#include "hiapi/shell/deferred_service.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/task_service.h"

namespace hiapi::shell {
namespace {

// The `page` query parameter of @p target (1 when absent or unreadable).
long pageOf(std::string_view target) {
  const size_t q = target.find('?');
  if (q == std::string_view::npos) {
    return 1;
  }
  std::string_view query = target.substr(q + 1);
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view kv = query.substr(0, amp);
    if (kv.substr(0, 5) == "page=") {
      const std::string v(kv.substr(5));
      char* end = nullptr;
      const long p = std::strtol(v.c_str(), &end, 10);
      return end != v.c_str() && p >= 1 ? p : 1;
    }
    if (amp == std::string_view::npos) {
      break;
    }
    query.remove_prefix(amp + 1);
  }
  return 1;
}

// A cancel of task @p id: `DELETE /v1/tasks/{id}` or `POST /v1/tasks/{id}/cancel`.
std::optional<std::string> cancelTarget(std::string_view method, std::string_view target) {
  std::string_view path = target.substr(0, target.find('?'));
  constexpr std::string_view kTasks = "/v1/tasks/";
  if (path.substr(0, kTasks.size()) != kTasks) {
    return std::nullopt;
  }
  path.remove_prefix(kTasks.size());
  constexpr std::string_view kCancel = "/cancel";
  if (method == "POST" && path.size() > kCancel.size() &&
      path.substr(path.size() - kCancel.size()) == kCancel) {
    path.remove_suffix(kCancel.size());
  } else if (method != "DELETE") {
    return std::nullopt;
  }
  if (path.empty() || path.find('/') != std::string_view::npos) {
    return std::nullopt;
  }
  return std::string(path);
}

}  // namespace

bool DeferredService::ownedBy(const core::DeferredRecord& r, const RequestCtx& ctx) const {
  // A passthrough key is matched on the whole Authorization value (its name may have changed
  // with a restart); a configured key on its name.
  return r.auth.empty() ? r.key == ctx.key_name : r.auth == ctx.authorization;
}

std::optional<int64_t> DeferredService::estimatedStart(const core::DeferredRecord& r,
                                                       size_t position) const {
  const std::optional<size_t> tier = tierIndex(r.tier);
  if (!tier) {
    return std::nullopt;
  }
  const core::TierConfig& t = cfg_->limits.tiers[*tier];
  core::Duration d = t.expected_duration;
  const auto durations = tasks_.tracker().tierDurations(clock_.now());
  if (*tier < durations.size() && durations[*tier]) {
    d = durations[*tier]->value;
  }
  if (d <= core::Duration::zero()) {
    return std::nullopt;
  }
  // Waves of the tier's ceiling ahead of it, each about one task duration long.
  const size_t waves = (position - 1) / std::max<uint32_t>(t.max_running, 1) + 1;
  return wallMs() / 1000 + static_cast<int64_t>(core::toSeconds(d * waves));
}

bool DeferredService::intercept(RequestCtx& ctx) {
  if (ctx.route.kind == core::RouteKind::Poll && core::looksDeferred(ctx.route.task_id)) {
    const core::DeferredRecord* r = book_.find(ctx.route.task_id);
    std::optional<core::DeferredRecord> elsewhere;  // what the shared store said of it
    if (auto it = found_.find(ctx.id); it != found_.end()) {
      elsewhere = std::move(it->second);
      found_.erase(it);
      r = &*elsewhere;
    } else if (r == nullptr || !ownedBy(*r, ctx)) {
      if (!lookUpShared(ctx)) {
        proxy_.replyProxyError(ctx, core::ProxyError::TaskNotFound,
                               "Task not found: no task " + ctx.route.task_id + " for this key");
      }
      return true;
    }
    if (r->state == core::DeferredState::Submitted) {
      // HiAPI holds it now: the poll goes as a poll of HiAPI's id (cache and coalescing
      // included), and the reply is given back under the id the client knows.
      const std::string_view target = ctx.upstream.target;
      const size_t q = target.find('?');
      ctx.alias_id = r->id;
      ctx.route.task_id = r->task_id;
      ctx.upstream.target = "/v1/tasks/" + core::percentEncodeSegment(r->task_id) +
                            (q == std::string_view::npos ? "" : std::string(target.substr(q)));
      return false;
    }
    // Its place in another instance's queue is that instance's to know.
    const std::optional<size_t> position =
        elsewhere ? std::nullopt : book_.position(r->id);
    const std::optional<int64_t> start =
        position ? estimatedStart(*r, *position) : std::nullopt;
    const std::string pos = position ? std::to_string(*position) : std::string();
    HeaderViews extra{HeaderView{"X-HiAPI-Proxy-Deferred", core::deferredStateName(r->state)}};
    if (position) {
      extra.push_back(HeaderView{"X-HiAPI-Proxy-Queue-Position", pos});
    }
    proxy_.replyLocal(ctx, 200, core::renderDeferredDetail(*r, position, start), extra,
                      "deferred_detail");
    return true;
  }
  if (ctx.route.kind == core::RouteKind::Other && handleCancel(ctx)) {
    return true;
  }
  if (ctx.route.kind == core::RouteKind::List && book_.size() > 0) {
    ctx.list_merge = true;
  }
  return false;
}

bool DeferredService::cancelHeld(const std::string& id) {
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || r->state != core::DeferredState::Queued) {
    return true;
  }
  if (auto it = inflight_.find(id); it != inflight_.end()) {
    if (!proxy_.withdraw(it->second)) {
      return false;
    }
    inflight_.erase(it);
  }
  const int64_t now_ms = wallMs();
  if (!append(core::journalCancelled(id, now_ms))) {
    log_.warn("deferred cancel not written to the journal: a restart would submit the task",
              {{"task", id}});
  }
  if (metrics_ != nullptr) {
    metrics_->deferredOutcome(r->key, r->tier, "cancelled");
  }
  log_.info("deferred create cancelled", {{"task", id}, {"key", r->key}});
  book_.markCancelled(id, now_ms);
  retry_at_.erase(id);
  attempts_.erase(id);
  share(id);
  return true;
}

void DeferredService::replyNotQueued(RequestCtx& ctx, const core::DeferredRecord& r) {
  if (r.state == core::DeferredState::Cancelled) {
    proxy_.replyLocal(ctx, 200, core::renderDeferredCancelled(r.id),
                      {HeaderView{"X-HiAPI-Proxy-Deferred", "cancelled"}}, "deferred_cancel");
    return;
  }
  proxy_.replyProxyError(ctx, core::ProxyError::TaskNotQueued,
                         r.state == core::DeferredState::Submitted
                             ? "the task was submitted to HiAPI as " + r.task_id +
                                   "; HiAPI has no cancel"
                             : "the task is no longer queued (" +
                                   std::string(core::deferredStateName(r.state)) + ")");
}

bool DeferredService::handleCancel(RequestCtx& ctx) {
  const std::optional<std::string> raw = cancelTarget(ctx.method, ctx.upstream.target);
  if (!raw) {
    return false;
  }
  std::string id = *raw;
  if (auto decoded = core::percentDecode(id)) {
    id = std::move(*decoded);
  }
  if (!core::looksDeferred(id)) {
    return false;  // HiAPI's own task: its answer
  }
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || !ownedBy(*r, ctx)) {
    if (!cancelShared(ctx, id)) {
      proxy_.replyProxyError(ctx, core::ProxyError::TaskNotFound,
                             "Task not found: no task " + id + " for this key");
    }
    return true;
  }
  if (!cancelHeld(id)) {
    proxy_.replyProxyError(ctx, core::ProxyError::TaskNotQueued,
                           "the task is being submitted to HiAPI right now");
    return true;
  }
  replyNotQueued(ctx, *r);
  return true;
}

std::optional<std::string> DeferredService::rewrite(const RequestCtx& ctx, std::string_view body) {
  if (!ctx.alias_id.empty()) {
    return core::rewriteDetail(body, ctx.alias_id);
  }
  if (!ctx.list_merge) {
    return std::nullopt;
  }
  std::map<std::string, std::string, std::less<>> alias;
  for (const core::DeferredRecord* r : book_.all()) {
    if (r->state == core::DeferredState::Submitted && ownedBy(*r, ctx)) {
      alias.emplace(r->task_id, r->id);
    }
  }
  std::vector<const core::DeferredRecord*> extra;
  if (pageOf(ctx.upstream.target) == 1) {
    const std::vector<const core::DeferredRecord*> records = book_.all();
    for (auto it = records.rbegin(); it != records.rend(); ++it) {  // newest first
      if ((*it)->state != core::DeferredState::Submitted && ownedBy(**it, ctx)) {
        extra.push_back(*it);
      }
    }
  }
  if (alias.empty() && extra.empty()) {
    return std::nullopt;
  }
  return core::rewriteList(body, alias, extra);
}

}  // namespace hiapi::shell
