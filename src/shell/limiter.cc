// The limiter's admission side: keys and their schedulers, the queue, dispatch and its timers,
// and the state other services read or adjust. What happens once the upstream has answered is
// limiter_outcome.cc.

#include "hiapi/shell/limiter.h"

#include <unordered_set>

#include "limiter_key_state.h"
#include "hiapi/core/http_rules.h"
#include "hiapi/core/task_json.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/redis_store.h"

namespace hiapi::shell {
namespace {

std::string randomIdempotencyKey(core::Random& r) {
  static const char* kHex = "0123456789abcdef";
  std::string out = "hiapi-proxy-";
  for (int i = 0; i < 32; ++i) {
    out.push_back(kHex[static_cast<int>(r.uniform() * 16) & 15]);
  }
  return out;
}

}  // namespace

namespace {
constexpr core::Duration kSweepEvery = std::chrono::minutes(1);
}  // namespace

Limiter::Limiter(Timers& timers, core::Random& random, core::ConfigSharedPtr cfg, Logger& log,
                 Metrics* metrics)
    : timers_(timers), clock_(timers.clock()), random_(random), cfg_(std::move(cfg)), log_(log),
      metrics_(metrics), retry_policy_(std::make_unique<core::RetryPolicy>(cfg_->retry)) {
  sweep_ = timers_.make([this] { sweep(); });
  sweep_->armAt(clock_.now() + kSweepEvery);
}

Limiter::~Limiter() = default;

void Limiter::sweep() {
  forgetIdleKeys(kIdleKeyTtl);
  sweep_->armAt(clock_.now() + kSweepEvery);
}

size_t Limiter::forgetIdleKeys(core::Duration idle_for) {
  // Passthrough keys appear as clients use them; a key nobody used for a while, with nothing
  // waiting and no task running, is forgotten so that memory stays bounded. Configured keys stay.
  const auto now = clock_.now();
  std::unordered_set<std::string> busy;
  for (const auto& [id, h] : handles_) {
    busy.insert(h.ctx->key_name);
  }
  for (const auto& [id, rt] : retry_timers_) {
    busy.insert(rt->key);
  }
  size_t forgotten = 0;
  for (auto it = keys_.begin(); it != keys_.end();) {
    KeyState& ks = *it->second;
    bool configured = false;
    for (const core::KeyConfig& k : cfg_->keys) {
      configured = configured || k.name == ks.name;
    }
    bool running = false;
    const std::vector<core::TierSnapshot> tiers = ks.sched->snapshot(now).tiers;
    for (size_t t = 0; t < tiers.size(); ++t) {
      // A shared store's placeholder slots stand for other instances' tasks, not this one's.
      const size_t others = store_ != nullptr ? store_->placeholders(ks.name, t) : 0;
      running = running || tiers[t].running > others;
    }
    if (!configured && !running && ks.waiting.empty() && busy.count(ks.name) == 0 &&
        now - ks.last_used >= idle_for) {
      if (store_ != nullptr) {
        store_->forgetKey(ks.name);
      }
      it = keys_.erase(it);
      ++forgotten;
    } else {
      ++it;
    }
  }
  return forgotten;
}

core::LimitsConfig Limiter::limitsFor(const std::string& key) const {
  core::LimitsConfig l = cfg_->limits;
  for (const core::KeyConfig& k : cfg_->keys) {
    if (k.name == key) {
      if (k.rate) {
        l.rate = *k.rate;
      }
      if (k.burst) {
        l.burst = *k.burst;
      }
    }
  }
  return l;
}

Limiter::KeyState& Limiter::keyState(const std::string& key) {
  auto it = keys_.find(key);
  if (it != keys_.end()) {
    return *it->second;
  }
  auto ks = std::make_unique<KeyState>();
  ks->name = key;
  const core::LimitsConfig limits = limitsFor(key);
  ks->sched = std::make_unique<core::KeyScheduler>(
      limits, cfg_->queue, clock_.now(), random_,
      store_ != nullptr ? store_->makeBudget(key, limits.rate.per_second, limits.burst,
                                             limits.phase_margin, clock_.now())
                        : nullptr);
  ks->budget = std::make_unique<core::RetryBudget>(cfg_->retry.budget_ratio,
                                                   cfg_->retry.budget_min_retries);
  for (size_t t = 0; t < tier_durations_.size(); ++t) {
    ks->sched->setTierDuration(t, tier_durations_[t]);
  }
  KeyState* raw = ks.get();
  ks->timer = timers_.make([this, raw] { pump(*raw); });
  KeyState& ref = *ks;
  keys_.emplace(key, std::move(ks));
  return ref;
}

void Limiter::admit(RequestCtx& ctx) {
  KeyState& ks = keyState(ctx.key_name);
  ks.last_used = clock_.now();
  if (store_ != nullptr) {
    store_->bindKey(ks.name, ctx.authorization);
  }
  ctx.has_idempotency_key = findHeader(ctx.upstream.headers, "Idempotency-Key") != nullptr;
  if (ctx.route.kind == core::RouteKind::Create) {
    std::optional<std::string> route;
    if (auto body = core::parseCreateBody(ctx.upstream.body)) {
      ctx.model = body->model;
      route = body->route;
    }
    ctx.tier = ks.sched->tierFor(ctx.model, route ? std::optional<std::string_view>(*route)
                                                  : std::nullopt);
    if (!ctx.has_idempotency_key && cfg_->retry.idempotency == core::IdempotencyMode::Inject) {
      // Makes the proxy's own retries of this create safe: the server dedupes by key and body.
      ctx.upstream.headers.push_back(Header{"Idempotency-Key", randomIdempotencyKey(random_)});
      ctx.has_idempotency_key = true;
    }
  }
  if (auto h = handles_.find(ctx.id); h != handles_.end()) {
    h->second = Waiter{&ctx};
  } else {
    handle_spares_.put(handles_, ctx.id, Waiter{&ctx});
  }
  submit(ks, ctx, priorityOf(ctx));
}

core::Priority Limiter::priorityOf(const RequestCtx& ctx) {
  core::Priority prio = core::Priority::Other;
  switch (ctx.route.kind) {
  case core::RouteKind::Create:
    prio = core::Priority::Create;
    break;
  case core::RouteKind::Poll:
  case core::RouteKind::List:
    prio = core::Priority::Poll;
    break;
  case core::RouteKind::Other:
    prio = core::Priority::Other;
    break;
  }
  if (ctx.poll_early_until) {
    // By its tier's typical duration the task is still running: the answer is most likely
    // "still running", so the fetch waits for a token nobody else needs (with the proxy's own
    // reconcile polls) instead of taking one from any service's create; for a bounded time
    // (core::RequestInfo::background_until: the task's likely end when creates wait for its
    // tier's full gate, since then it is the poll that frees a slot).
    prio = core::Priority::Background;
  }
  if (ctx.internal && ctx.deferred_id.empty()) {
    // Reconcile polls and looks for held polls: the lowest priority, same budget. A poll that
    // frees a full gate's slot for waiting creates goes like a client's poll.
    prio = ctx.unblocks && !ctx.poll_early_until ? core::Priority::Poll
                                                 : core::Priority::Background;
  }
  return prio;
}

bool Limiter::isWaiting(const RequestCtx& ctx) const {
  auto kit = keys_.find(ctx.key_name);
  return kit != keys_.end() && kit->second->waiting.count(ctx.id) != 0;
}

bool Limiter::requeue(RequestCtx& ctx) {
  auto kit = keys_.find(ctx.key_name);
  if (kit == keys_.end() || !kit->second->unwait(ctx.id)) {
    return false;
  }
  KeyState& ks = *kit->second;
  ks.sched->cancel(ctx.id, clock_.now());
  submit(ks, ctx, priorityOf(ctx));  // its entry stays in handles_
  return true;
}

void Limiter::reject(uint64_t id, core::ProxyError e, int retry_after_s) {
  auto it = handles_.find(id);
  if (it == handles_.end()) {
    return;
  }
  handle_spares_.erase(handles_, it);
  sink_->decided(AdmissionDecision{id, e, retry_after_s});
}

void Limiter::submit(KeyState& ks, RequestCtx& ctx, core::Priority prio) {
  const auto now = clock_.now();
  core::RequestInfo info;
  info.id = ctx.id;
  info.route = ctx.route.kind;
  info.priority = prio;
  info.client = ctx.client;
  info.tier = ctx.tier;
  info.held_slot = ctx.slot.id();
  if (prio == core::Priority::Background) {
    info.background_until = ctx.poll_early_until;
  }
  info.unblocks = ctx.unblocks;
  info.deadline = std::min(ctx.received + cfg_->queue.deadline, ctx.deadline);
  if (ctx.wait_until) {
    info.deadline = std::min(info.deadline, *ctx.wait_until);
  }
  if (prio == core::Priority::Retry) {
    // A retry may wait until the client's own deadline, not only the queue's.
    info.deadline = ctx.deadline - std::chrono::seconds(1);
  }
  if (!ctx.deferred_id.empty()) {
    info.deadline = ctx.deadline;  // no client waits on it: it may wait until it expires
  }
  if (cfg_->limits.mode == core::LimitMode::Shadow) {
    sendInShadow(ks, ctx, info, now);
    return;
  }
  // queue.max_size bounds the waiting requests of all keys together (each scheduler also
  // enforces it for its own key); retries already hold a place and are not turned away here.
  const bool full = prio != core::Priority::Retry && waitingTotal() >= cfg_->queue.max_size;
  const core::SubmitResult r = full ? core::SubmitResult::QueueFull : ks.sched->submit(info, now);
  if (r != core::SubmitResult::Queued) {
    ctx.slot.release();
    reject(ctx.id, core::ProxyError::QueueFull, static_cast<int>(ks.sched->retryAfterSeconds(now)));
    return;
  }
  if (auto h = handles_.find(ctx.id); h != handles_.end()) {
    h->second.since = now;
  }
  ks.waiting_spares.insert(ks.waiting, ctx.id);
  pump(ks);
}

void Limiter::sendInShadow(KeyState& ks, RequestCtx& ctx, const core::RequestInfo& info,
                           core::MonotonicTime now) {
  const core::ShadowAdmission a = ks.sched->admitShadow(info, now);
  if (a.slot) {
    ctx.slot = core::GatePermit(*this, ks.name, *a.slot);
  }
  ctx.admission_seq = a.seq;
  ctx.shadow = core::shadowReasonName(a.would_wait);
  if (auto h = handles_.find(ctx.id); h != handles_.end()) {
    observeWait(ks, h->second, ctx.route.kind, "sent", core::Duration::zero());
  }
  sink_->decided(AdmissionDecision{ctx.id, std::nullopt, -1});
}

void Limiter::observeWait(const KeyState& ks, const Waiter& w, core::RouteKind route,
                          std::string_view outcome, core::Duration waited) {
  if (metrics_ != nullptr && !w.ctx->internal) {
    metrics_->queueWait(ks.name, core::routeName(route), outcome, core::toSeconds(waited));
  }
}

size_t Limiter::waitingTotal() const {
  size_t n = 0;
  for (const auto& [name, ks] : keys_) {
    n += ks->waiting.size();
  }
  return n;
}

void Limiter::pump(KeyState& ks) {
  // Decisions below may submit to this same key (a rejected look's joiners fetch
  // themselves): that pump must not run inside this one, whose timer would then be armed from a
  // dispatch that had not seen the new request — it would wait with no timer.
  if (ks.pumping) {
    ks.pump_again = true;
    return;
  }
  ks.pumping = true;
  if (store_ != nullptr) {
    store_->beforePump(ks.name, *ks.sched);
  }
  std::optional<core::MonotonicTime> wake_at;
  do {
    ks.pump_again = false;
    wake_at = pumpOnce(ks);
  } while (ks.pump_again);
  ks.pumping = false;
  arm(ks, wake_at);
  if (store_ != nullptr) {
    store_->afterPump(ks.name, *ks.sched);
  }
}

void Limiter::pumpKey(const std::string& key) {
  if (auto it = keys_.find(key); it != keys_.end()) {
    pump(*it->second);
  }
}

std::optional<core::MonotonicTime> Limiter::pumpOnce(KeyState& ks) {
  const auto now = clock_.now();
  core::Dispatch& d = ks.dispatch;
  ks.sched->dispatch(now, d);
  for (uint64_t slot : d.expired_slots) {
    if (on_lease_expired) {
      on_lease_expired(ks.name, slot);
    }
    log_.warn("task slot lease expired", {{"key", ks.name}, {"slot", slot}});
  }
  for (uint64_t id : d.expired) {
    ks.unwait(id);
    auto it = handles_.find(id);
    if (it == handles_.end()) {
      continue;
    }
    RequestCtx& ctx = *it->second.ctx;
    ctx.slot.detach();  // freed by the scheduler with the expiry
    if (ctx.attempts == 0) {
      ctx.queued = now - ctx.received;  // the access log's queued_ms: it waited all this time
    }
    observeWait(ks, it->second, ctx.route.kind, "queue_timeout", now - it->second.since);
    reject(id, core::ProxyError::QueueTimeout, static_cast<int>(ks.sched->retryAfterSeconds(now)));
  }
  for (const core::Admitted& a : d.admitted) {
    ks.unwait(a.id);
    auto it = handles_.find(a.id);
    if (it == handles_.end()) {
      ks.sched->unadmit(a, now);  // nobody to send it for (never expected)
      continue;
    }
    if (a.slot && a.slot != it->second.ctx->slot.id()) {
      it->second.ctx->slot = core::GatePermit(*this, ks.name, *a.slot);
    }
    it->second.ctx->admission_seq = a.seq;
    observeWait(ks, it->second, a.route, "sent", a.waited);
    // Sends; handles_ keeps the entry until the final answer.
    sink_->decided(AdmissionDecision{a.id, std::nullopt, -1});
  }
  return d.wake_at;
}

void Limiter::arm(KeyState& ks, std::optional<core::MonotonicTime> wake_at) {
  if (wake_at == ks.armed_for && (!wake_at || ks.timer->armed())) {
    return;
  }
  ks.armed_for = wake_at;
  ks.timer->cancel();
  if (!wake_at) {
    return;
  }
  // Half a millisecond late, so that the bucket surely holds the token when it fires.
  ks.timer->armAt(*wake_at + std::chrono::microseconds(500));
}

void Limiter::clientGone(RequestCtx& ctx) {
  auto kit = keys_.find(ctx.key_name);
  if (kit == keys_.end()) {
    return;
  }
  KeyState& ks = *kit->second;
  const auto now = clock_.now();
  if (ks.unwait(ctx.id)) {
    ks.sched->cancel(ctx.id, now);  // returns the token reservation and a held slot
    ctx.slot.detach();
    if (auto h = handles_.find(ctx.id); h != handles_.end()) {
      observeWait(ks, h->second, ctx.route.kind, "client_gone", now - h->second.since);
    }
  }
  retry_timers_.erase(ctx.id);
  handle_spares_.erase(handles_, ctx.id);
  ctx.slot.release();
  pump(ks);
}

void Limiter::releaseSlot(const std::string& key, uint64_t slot, core::ReleaseReason reason) {
  KeyState& ks = keyState(key);
  ks.sched->releaseSlot(slot, reason, clock_.now());
  pump(ks);
}

void Limiter::releaseHeld(const std::string& key, uint64_t slot) {
  auto it = keys_.find(key);
  if (it == keys_.end()) {
    return;  // a key is forgotten only while it holds no slot: nothing is left to free
  }
  KeyState& ks = *it->second;
  const auto now = clock_.now();
  ks.sched->releaseSlot(slot, core::ReleaseReason::NotCreated, now);
  if (!ks.pumping) {
    arm(ks, now);  // a create waiting for this slot goes on the next loop turn
  }
}

uint64_t Limiter::restoreSlot(const std::string& key, size_t tier, core::Duration lease_left) {
  KeyState& ks = keyState(key);
  const auto now = clock_.now();
  const uint64_t slot = ks.sched->restoreSlot(tier, now + lease_left);
  pump(ks);
  return slot;
}

void Limiter::reconfigure(core::ConfigSharedPtr cfg) {
  cfg_ = std::move(cfg);
  retry_policy_ = std::make_unique<core::RetryPolicy>(cfg_->retry);
  const auto now = clock_.now();
  for (auto& [name, ks] : keys_) {
    ks->sched->reconfigure(limitsFor(name), cfg_->queue, now);
    ks->budget->reconfigure(cfg_->retry.budget_ratio, cfg_->retry.budget_min_retries);
    pump(*ks);
  }
}

std::vector<std::pair<std::string, core::Snapshot>> Limiter::snapshots() const {
  std::vector<std::pair<std::string, core::Snapshot>> out;
  const auto now = clock_.now();
  for (const auto& [name, ks] : keys_) {
    out.emplace_back(name, ks->sched->snapshot(now));
    if (store_ != nullptr) {
      store_->adjustSnapshot(name, out.back().second);
    }
  }
  return out;
}

std::vector<std::pair<std::string, size_t>> Limiter::blockedTiers() const {
  std::vector<std::pair<std::string, size_t>> out;
  const auto now = clock_.now();
  for (const auto& [name, ks] : keys_) {
    for (size_t tier : ks->sched->blockedTiers(now)) {
      out.emplace_back(name, tier);
    }
  }
  return out;
}

const core::KeyScheduler* Limiter::schedulerOf(const std::string& key) const {
  auto it = keys_.find(key);
  return it == keys_.end() ? nullptr : it->second->sched.get();
}

core::LearnPace Limiter::learnPace(const std::string& key, size_t tier) const {
  const core::KeyScheduler* s = schedulerOf(key);
  return s != nullptr ? s->learnPace(tier, clock_.now()) : core::LearnPace::Plain;
}

core::Duration Limiter::lookPrice(const std::string& key, size_t tier) const {
  const core::KeyScheduler* s = schedulerOf(key);
  return s != nullptr ? s->lookPrice(tier, clock_.now()) : core::Duration::zero();
}

std::optional<core::MonotonicTime> Limiter::spareWindowSendBy(const std::string& key) const {
  const core::KeyScheduler* s = schedulerOf(key);
  return s != nullptr ? s->spareWindowSendBy(clock_.now()) : std::nullopt;
}

void Limiter::setLookPlan(const std::string& key, size_t tier, core::LookPlan plan) {
  if (auto it = keys_.find(key); it != keys_.end()) {
    it->second->sched->setLookPlan(tier, std::move(plan));
  }
}

void Limiter::setTierDurations(std::vector<std::optional<core::TierDuration>> durations) {
  if (durations == tier_durations_) {
    return;
  }
  tier_durations_ = std::move(durations);
  for (auto& [name, ks] : keys_) {
    for (size_t t = 0; t < tier_durations_.size(); ++t) {
      ks->sched->setTierDuration(t, tier_durations_[t]);
    }
  }
}

}  // namespace hiapi::shell
