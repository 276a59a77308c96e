#include "hiapi/shell/deferred_service.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/proxy_error.h"
#include "hiapi/core/retry_policy.h"
#include "hiapi/core/task_json.h"
#include "hiapi/shell/deferred_share.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/task_service.h"

namespace hiapi::shell {
namespace {

// Expiry, resubmissions, journal retries and compaction run this often.
constexpr core::Duration kSweep = std::chrono::seconds(1);
// A submission HiAPI turned away for now (429, 409 processing, 5xx, network) goes again after
// this, doubling with each attempt up to kResubmitMax (the key's cooldown paces it too).
constexpr core::Duration kResubmitMin = std::chrono::seconds(2);
constexpr core::Duration kResubmitMax = std::chrono::minutes(1);
// The journal is rewritten when it holds this many lines and four times the live records.
constexpr size_t kCompactLines = 1000;

}  // namespace

DeferredService::DeferredService(Timers& timers, core::Random& random, core::ConfigSharedPtr cfg,
                                 ProxyServer& proxy, Limiter& limiter, TaskService& tasks,
                                 Logger& log, Metrics* metrics)
    : timers_(timers), cfg_(std::move(cfg)), proxy_(proxy), limiter_(limiter), tasks_(tasks),
      log_(log), metrics_(metrics), clock_(timers.clock()), random_(random) {
  due_timer_ = timers_.make([this] { deferDue(); });
  sweep_ = timers_.make([this] { onSweep(); });
  sweep_->armAt(clock_.now() + kSweep);
}

DeferredService::~DeferredService() {
  if (fd_ >= 0) {
    ::close(fd_);
  }
}

int64_t DeferredService::wallMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             clock_.wallNow().time_since_epoch())
      .count();
}

void DeferredService::reconfigure(core::ConfigSharedPtr cfg) { cfg_ = std::move(cfg); }

// ---- deferring -----------------------------------------------------------------------------

std::optional<size_t> DeferredService::tierIndex(const std::string& name) const {
  const auto& tiers = cfg_->limits.tiers;
  for (size_t i = 0; i < tiers.size(); ++i) {
    if (tiers[i].name == name) {
      return i;
    }
  }
  return std::nullopt;
}

void DeferredService::waiting(RequestCtx& ctx) {
  // With a journal configured but not writable now, the check still runs: a create that would
  // have been deferred is counted (deferred_refused_total{reason="store"}) and keeps waiting.
  if (path_.empty() || !ctx.tier || ctx.attempts > 0) {
    return;
  }
  const auto& tiers = cfg_->limits.tiers;
  const core::TierConfig& t = tiers[std::min(*ctx.tier, tiers.size() - 1)];
  if (!t.defer) {
    return;
  }
  due_.emplace(clock_.now() + t.defer_after, ctx.id);
  armDue();
}

void DeferredService::armDue() {
  if (due_.empty()) {
    due_timer_->cancel();
    return;
  }
  due_timer_->armAt(due_.begin()->first);
}

core::DeferredRecord DeferredService::recordFor(const RequestCtx& ctx, int64_t now_ms) {
  core::DeferredRecord r;
  r.id = core::makeDeferredId(now_ms, random_);
  r.key = ctx.key_name;
  r.client = ctx.client;
  const auto& tiers = cfg_->limits.tiers;
  r.tier = tiers[std::min(*ctx.tier, tiers.size() - 1)].name;
  r.model = ctx.model;
  r.target = ctx.upstream.target;
  r.body = ctx.upstream.body;
  r.accepted_ms = now_ms;
  bool has_key = false;
  for (const Header& h : ctx.upstream.headers) {
    if (core::iequals(h.name, "Authorization")) {
      continue;
    }
    has_key = has_key || core::iequals(h.name, "Idempotency-Key");
    r.headers.emplace_back(h.name, h.value);
  }
  if (!has_key) {
    // HiAPI dedupes by key and raw body: a submission repeated after a crash finds the task
    // the first one made.
    r.headers.emplace_back("Idempotency-Key", "hiapi-proxy-" + r.id);
  }
  bool configured = false;
  for (const core::KeyConfig& k : cfg_->keys) {
    configured = configured || k.name == r.key;
  }
  if (!configured) {
    r.auth = ctx.authorization;  // a passthrough key: needed to submit it after a restart
  }
  return r;
}

void DeferredService::deferDue() {
  const auto now = clock_.now();
  std::vector<uint64_t> ids;
  while (!due_.empty() && due_.begin()->first <= now) {
    ids.push_back(due_.begin()->second);
    due_.erase(due_.begin());
  }
  // Every create due now is written with one fsync, then all of them are answered.
  std::vector<core::DeferredRecord> records;
  std::vector<uint64_t> request_ids;
  std::string lines;
  const int64_t now_ms = wallMs();
  for (uint64_t id : ids) {
    RequestCtx* ctx = proxy_.find(id);
    if (ctx == nullptr || ctx->answered || ctx->client_gone || !ctx->tier ||
        !limiter_.isWaiting(*ctx)) {
      continue;  // sent, answered or gone meanwhile
    }
    if (!storeReady()) {
      if (metrics_ != nullptr) {
        metrics_->deferredRefused("store");
      }
      continue;
    }
    if (book_.queued() + records.size() >= cfg_->deferred.max_total ||
        book_.queuedFor(ctx->key_name) + records.size() >= cfg_->deferred.max_per_key) {
      if (metrics_ != nullptr) {
        metrics_->deferredRefused("full");
      }
      continue;  // it waits as any create does (and may hear queue_full / queue_timeout)
    }
    core::DeferredRecord r = recordFor(*ctx, now_ms);
    lines += core::journalAccept(r);
    records.push_back(std::move(r));
    request_ids.push_back(id);
  }
  if (!records.empty()) {
    if (!append(lines)) {
      if (metrics_ != nullptr) {
        for (size_t i = 0; i < records.size(); ++i) {
          metrics_->deferredRefused("store");
        }
      }
      records.clear();  // not kept, so not promised: they go on waiting
    }
    for (size_t i = 0; i < records.size(); ++i) {
      core::DeferredRecord& r = records[i];
      const std::string id = r.id;
      const std::string key = r.key;
      const std::string tier = r.tier;
      book_.add(std::move(r));
      if (!proxy_.answerDeferred(request_ids[i], core::renderDeferredCreate(id))) {
        // Nothing ran between the check and here; should it ever, the record is not promised.
        book_.markCancelled(id, now_ms);
        append(core::journalCancelled(id, now_ms));
        continue;
      }
      if (metrics_ != nullptr) {
        metrics_->deferredOutcome(key, tier, "accepted");
      }
      log_.info("create deferred", {{"task", id}, {"key", key}, {"tier", tier}});
      share(id);
      submit(*book_.find(id));
    }
  }
  armDue();
}

std::string DeferredService::authFor(const core::DeferredRecord& r) const {
  if (!r.auth.empty()) {
    return r.auth;
  }
  for (const core::KeyConfig& k : cfg_->keys) {
    if (k.name == r.key) {
      return "Bearer " + k.key.reveal();
    }
  }
  return {};
}

void DeferredService::submit(const core::DeferredRecord& r) {
  const std::string auth = authFor(r);
  if (auth.empty()) {
    fail(r.id, 0, "KEY_UNAVAILABLE",
         "the key '" + r.key + "' this task was accepted for is no longer configured");
    return;
  }
  const core::Duration age = std::chrono::milliseconds(wallMs() - r.accepted_ms);
  const core::Duration left = cfg_->deferred.max_age - age;
  if (left <= core::Duration::zero()) {
    return;  // the sweep expires it
  }
  DeferredSubmission s;
  s.deferred_id = r.id;
  // A passthrough key's name comes from a secret that may have changed with a restart: the
  // submission goes under the name the key has now, with the requests its clients send.
  s.key_name = r.auth.empty() ? r.key : proxy_.keyNameFor(r.auth);
  s.authorization = auth;
  s.client = r.client;
  s.target = r.target;
  for (const auto& [name, value] : r.headers) {
    s.headers.push_back(Header{name, value});
  }
  s.body = r.body;
  s.time_left = left;
  retry_at_.erase(r.id);
  const std::string id = r.id;
  inflight_[id] = 0;  // set below; submitDeferred may answer at once (a full queue)
  const uint64_t request = proxy_.submitDeferred(s);
  if (auto it = inflight_.find(id); it != inflight_.end()) {
    it->second = request;
  }
}

void DeferredService::resubmitLater(const std::string& id) {
  const int n = ++attempts_[id];
  // Full jitter: many deferred creates turned away together do not come back together.
  retry_at_[id] = clock_.now() + kResubmitMin / 2 +
                  core::fullJitterBackoff(kResubmitMin, kResubmitMax, static_cast<uint32_t>(n),
                                          random_);
}

void DeferredService::fail(const std::string& id, int status, std::string code,
                           std::string message) {
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr) {
    return;
  }
  const int64_t now_ms = wallMs();
  append(core::journalFailed(id, status, code, message, now_ms));
  log_.warn("deferred create failed",
            {{"task", id}, {"key", r->key}, {"status", status}, {"code", code}});
  if (metrics_ != nullptr) {
    metrics_->deferredOutcome(r->key, r->tier, "failed");
  }
  book_.markFailed(id, status, std::move(code), std::move(message), now_ms);
  attempts_.erase(id);
  retry_at_.erase(id);
  share(id);
}

void DeferredService::submitted(RequestCtx& ctx, const UpstreamResponse& resp) {
  const std::string id = ctx.deferred_id;
  inflight_.erase(id);
  const core::DeferredRecord* r = book_.find(id);
  if (r == nullptr || r->state != core::DeferredState::Queued) {
    return;
  }
  const int status = resp.error == UpstreamError::None ? resp.status : 0;
  if (status >= 200 && status < 300) {
    std::optional<std::string> task = core::parseCreatedTaskId(resp.body);
    if (!task) {
      fail(id, status, "UPSTREAM_REPLY_UNREADABLE",
           "HiAPI accepted the create but its reply named no taskId");
      return;
    }
    const int64_t now_ms = wallMs();
    // Not fatal if lost: after a restart the resubmission is answered with this same task.
    append(core::journalSubmitted(id, *task, now_ms));
    if (metrics_ != nullptr) {
      metrics_->deferredOutcome(r->key, r->tier, "submitted");
      metrics_->deferredWait(r->tier, static_cast<double>(now_ms - r->accepted_ms) / 1000.0);
    }
    log_.info("deferred create submitted", {{"task", id}, {"upstream_task", *task},
                                            {"key", r->key}, {"request_id", ctx.request_id}});
    book_.markSubmitted(id, std::move(*task), now_ms);
    attempts_.erase(id);
    share(id);
    return;
  }
  // What waiting can fix goes again; what it cannot is the task's answer.
  const bool transient = status == 0 || status == 408 || status == 409 || status == 425 ||
                         status == 429 || status >= 500;
  if (transient) {
    resubmitLater(id);
    return;
  }
  const core::UpstreamErrorFields f = core::parseUpstreamError(resp.body);
  std::string code = f.code ? *f.code : "HTTP_" + std::to_string(status);
  std::string message = f.message ? *f.message : "HiAPI refused the create";
  if (!ctx.upstream_request_id.empty()) {
    message += " (request_id " + ctx.upstream_request_id + ")";
  }
  fail(id, status, std::move(code), std::move(message));
}

void DeferredService::rejected(RequestCtx& ctx, core::ProxyError e) {
  const std::string id = ctx.deferred_id;
  inflight_.erase(id);
  if (e == core::ProxyError::ShuttingDown) {
    return;  // kept in the journal: the next start submits it
  }
  const core::DeferredRecord* r = book_.find(id);
  if (r != nullptr && r->state == core::DeferredState::Queued) {
    resubmitLater(id);  // the sweep expires it once deferred.max_age has passed
  }
}

void DeferredService::taskEnded(const std::string& key, const std::string& task_id) {
  const core::DeferredRecord* r = book_.byTask(key, task_id);
  if (r == nullptr || r->task_ended) {
    return;
  }
  const std::string id = r->id;
  book_.markTaskEnded(id);
  append(core::journalEnded(id));
}

// ---- sweep ---------------------------------------------------------------------------------

void DeferredService::onSweep() {
  sweep_->armAt(clock_.now() + kSweep);
  sweep();
}

void DeferredService::sweep() {
  const auto now = clock_.now();
  retryStore(now);
  const int64_t now_ms = wallMs();
  const core::DeferredBook::Due due =
      book_.due(now_ms, cfg_->deferred.max_age, cfg_->deferred.keep);
  for (const std::string& id : due.expire) {
    if (auto it = inflight_.find(id); it != inflight_.end()) {
      if (!proxy_.withdraw(it->second)) {
        continue;  // on the wire: its answer decides
      }
      inflight_.erase(it);
    }
    const core::DeferredRecord* r = book_.find(id);
    if (metrics_ != nullptr) {
      metrics_->deferredOutcome(r->key, r->tier, "expired");
    }
    log_.warn("deferred create expired", {{"task", id}, {"key", r->key}, {"tier", r->tier}});
    append(core::journalExpired(id, now_ms));
    book_.markExpired(id, now_ms);
    retry_at_.erase(id);
    attempts_.erase(id);
    share(id);
  }
  if (!due.forget.empty()) {
    std::string lines;
    for (const std::string& id : due.forget) {
      lines += core::journalForget(id);
      book_.forget(id);
    }
    append(lines);
  }
  std::vector<std::string> again;
  for (const auto& [id, at] : retry_at_) {
    if (at <= now) {
      again.push_back(id);
    }
  }
  for (const std::string& id : again) {
    retry_at_.erase(id);
    if (const core::DeferredRecord* r = book_.find(id);
        r != nullptr && r->state == core::DeferredState::Queued && inflight_.count(id) == 0) {
      submit(*r);
    }
  }
  if (store_ok_ && journal_lines_ > kCompactLines && journal_lines_ > 4 * book_.size()) {
    compact();
  }
  if (share_ != nullptr) {
    syncShared();
    checkCancelWaits();
  }
}

void DeferredService::refreshGauges() {
  if (metrics_ == nullptr) {
    return;
  }
  std::map<std::pair<std::string, std::string>, size_t> counts;
  for (const core::KeyConfig& k : cfg_->keys) {
    for (const core::TierConfig& t : cfg_->limits.tiers) {
      counts[{k.name, t.name}] = 0;
    }
  }
  for (const core::DeferredRecord* r : book_.all()) {
    if (r->state == core::DeferredState::Queued) {
      ++counts[{r->key, r->tier}];
    }
  }
  for (const auto& [kt, n] : counts) {
    metrics_->setDeferredQueued(kt.first, kt.second, n);
  }
  metrics_->setDeferredStoreReady(storeReady());
}

}  // namespace hiapi::shell
