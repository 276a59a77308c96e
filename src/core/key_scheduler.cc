#include "hiapi/core/key_scheduler.h"

#include <algorithm>
#include <cmath>

#include "hiapi/core/model_prior.h"
#include "hiapi/core/retry_policy.h"

namespace hiapi::core {

namespace {

void earliest(std::optional<MonotonicTime>& acc, std::optional<MonotonicTime> t) {
  if (t && (!acc || *t < *acc)) {
    acc = t;
  }
}

}  // namespace

KeyScheduler::KeyScheduler(const LimitsConfig& limits, const QueueConfig& queue,
                           MonotonicTime now, Random& random, RateBudgetPtr budget)
    : random_(random),
      limits_(limits),
      matcher_(limits.tiers),
      budget_(std::move(budget)),
      adaptive_(limits),
      queue_deadline_(queue.deadline),
      create_gather_(queue.create_gather),
      queue_(queue.max_size, queue.max_per_client) {
  if (!budget_) {
    budget_ = std::make_unique<TokenBucket>(adaptive_.configuredRate(),
                                            sanitizedBurst(limits.burst), now);
  }
  for (const TierConfig& tier : matcher_.tiers()) {
    planner_.setTierPrior(gates_.size(), tierPrior(tier));
    gates_.push_back(std::make_unique<ConcurrencyGate>(tier.max_running, tier.lease,
                                                       limits.recovery_time, now));
  }
  shapeSendLog();
  guarded_ = guardWanted();
}

size_t KeyScheduler::clampTier(size_t tier) const { return std::min(tier, gates_.size() - 1); }

size_t KeyScheduler::tierFor(std::string_view model,
                             std::optional<std::string_view> route) const {
  return matcher_.match(model, route);
}

void KeyScheduler::applyRate(MonotonicTime now) {
  const double rate = adaptive_.effectiveRate(now);
  if (rate > 0 && std::abs(rate - budget_->rate()) > 1e-12 * rate) {
    budget_->setRate(rate, now);
  }
}

void KeyScheduler::pauseBudget(MonotonicTime until) {
  // Empty the budget so that exactly one token is there when the pause ends.
  budget_->pauseUntil(until - fromSeconds(1.0 / budget_->rate()));
}

bool KeyScheduler::laneOpen(std::optional<size_t> lane, MonotonicTime now) const {
  return !lane || *lane >= gates_.size() || gates_[*lane]->canAcquire(now);
}

QueueEntry KeyScheduler::queueEntryFor(const RequestInfo& request, const Pending& p,
                                       MonotonicTime now) const {
  QueueEntry entry;
  entry.id = request.id;
  entry.client = request.client;
  entry.priority = request.priority;
  entry.deadline = request.deadline;
  entry.enqueued = now;
  if (entry.priority == Priority::Background) {
    // Background work waits for spare tokens, but not without bound: at a budget that never has
    // one it would wait out its deadline and the client would get a queue_timeout for a poll.
    // After three quarters of its time it waits with the creates, with a quarter left to be
    // served: in arrival order within its client (a flood's creates, queued first and due
    // first, still go before the same flood's polls; ahead of them, as polls, B2 measured the
    // last creates timing out), fair across clients. A poll that may free a slot of a full gate
    // with creates waiting goes from its task's likely end: dispatch() judges the gate then.
    const Duration left = std::max(Duration::zero(), request.deadline - now);
    entry.background_until = now + std::min(left, queue_deadline_) * 3 / 4;
    if (request.background_until && request.unblocks && *request.unblocks < gates_.size()) {
      entry.unblock_at = *request.background_until;
    }
  }
  if (p.route == RouteKind::Create && !p.held_slot) {
    entry.lane = p.tier;
  } else if (p.route == RouteKind::Poll && request.unblocks && *request.unblocks < gates_.size()) {
    entry.lane = kUnblockLanes + *request.unblocks;
  }
  return entry;
}

SubmitResult KeyScheduler::submit(const RequestInfo& request, MonotonicTime now) {
  if (pending_.count(request.id) != 0 ||
      std::any_of(ready_.begin(), ready_.end(),
                  [&](const Admitted& a) { return a.id == request.id; })) {
    return SubmitResult::DuplicateId;
  }
  Pending p;
  p.route = request.route;
  p.held_slot = request.held_slot;
  p.enqueued = now;
  if (request.route == RouteKind::Create) {
    p.tier = clampTier(request.tier.value_or(gates_.size() - 1));
    if (p.held_slot) {
      // Trust the slot's real tier when we know it.
      if (auto it = slot_tier_.find(*p.held_slot); it != slot_tier_.end()) {
        p.tier = it->second;
      } else {
        p.held_slot.reset();  // expired or unknown: the retry needs a new slot
      }
    }
  }
  QueueEntry entry = queueEntryFor(request, p, now);
  if (admitAtOnce(entry, p.route, now)) {
    ++counters_.submitted;
    return SubmitResult::Queued;
  }
  const std::optional<size_t> lane = entry.lane;
  switch (queue_.push(std::move(entry))) {
    case EnqueueResult::Queued:
      if (p.route == RouteKind::Create && !p.held_slot && create_gather_ > Duration::zero()) {
        if (!gathering_) {
          gathering_ = true;
          gather_start_ = now;
        }
        last_create_ = now;
      }
      break;
    case EnqueueResult::DuplicateId:
      return SubmitResult::DuplicateId;
    case EnqueueResult::QueueFull:
    case EnqueueResult::ClientFull:
      ++counters_.queue_full;
      return SubmitResult::QueueFull;
  }
  ++counters_.submitted;
  ++queued_by_route_[static_cast<size_t>(p.route)];
  pending_.emplace(request.id, p);
  // Throttle reason, judged now: what would hold it back.
  if (adaptive_.inCooldown(now)) {
    ++counters_.throttled_cooldown;
  } else if (!laneOpen(lane, now)) {
    ++counters_.throttled_concurrency;
  } else if (budget_->available(now) < static_cast<double>(queue_.size())) {
    // Fewer tokens than requests waiting (this one included).
    ++counters_.throttled_rate;
  }
  return SubmitResult::Queued;
}

bool KeyScheduler::admitAtOnce(const QueueEntry& entry, RouteKind route, MonotonicTime now) {
  // Nothing waits, so fairness has nobody to order this request against, and the queue's
  // bookkeeping (half a dozen node allocations, some 3,600 instructions per request) buys
  // nothing. The same tests as dispatch()'s loop for one entry with no lane.
  if (!queue_.empty() || !ready_.empty() || route == RouteKind::Create || entry.lane ||
      entry.priority == Priority::Background || adaptive_.inCooldown(now)) {
    return false;
  }
  const BottleneckPlanner::Reserve reserve = planner_.reserveFor(load(), now);
  if (!takeToken(now)) {
    return false;
  }
  if (budget_->available(now) + kTokenEpsilon < reserve.tokens) {
    giveToken(now);  // kept for a bottleneck's look: this one waits in the queue
    return false;
  }
  Admitted a;
  a.id = entry.id;
  a.route = route;
  a.seq = nextSeq();
  ready_.push_back(a);
  ++counters_.admitted;
  return true;
}

void KeyScheduler::dropPending(uint64_t id, MonotonicTime /*now*/) {
  auto it = pending_.find(id);
  if (it == pending_.end()) {
    return;
  }
  --queued_by_route_[static_cast<size_t>(it->second.route)];
  if (it->second.held_slot) {
    releaseSlot(*it->second.held_slot, ReleaseReason::NotCreated, MonotonicTime{});
  }
  pending_.erase(it);
}

bool KeyScheduler::cancel(uint64_t id, MonotonicTime now) {
  if (auto it = std::find_if(ready_.begin(), ready_.end(),
                             [id](const Admitted& a) { return a.id == id; });
      it != ready_.end()) {
    ready_.erase(it);
    giveToken(now);
    --counters_.admitted;
    ++counters_.cancelled;
    return true;
  }
  if (!queue_.remove(id)) {
    return false;
  }
  dropPending(id, now);
  ++counters_.cancelled;
  return true;
}

void KeyScheduler::refresh(MonotonicTime now, Dispatch* out) {
  std::vector<SlotId> expired;
  for (auto& gate : gates_) {
    counters_.leases_expired += gate->expireLeases(now, &expired);
  }
  for (SlotId id : expired) {
    slot_tier_.erase(id);
  }
  if (out != nullptr) {
    out->expired_slots.insert(out->expired_slots.end(), expired.begin(), expired.end());
  }
  rollWindow(now);
  applyRate(now);
}

Dispatch KeyScheduler::dispatch(MonotonicTime now) {
  Dispatch out;
  dispatch(now, out);
  return out;
}

void KeyScheduler::dispatch(MonotonicTime now, Dispatch& out) {
  out.admitted.assign(ready_.begin(), ready_.end());  // admitted by submit() before anything else
  ready_.clear();
  out.expired.clear();
  out.expired_slots.clear();
  out.wake_at.reset();
  refresh(now, &out);

  for (QueueEntry& e : queue_.popExpired(now)) {
    dropPending(e.id, now);
    ++counters_.queue_timeout;
    out.expired.push_back(e.id);
  }

  // Background work (polls of tasks that are likely still running, reconcile polls) waits for
  // spare tokens until its background_until (see submit()), then with the creates.
  queue_.promoteBackground(now, Priority::Create);
  // A background poll that may free a slot of a full gate creates wait for goes with them from
  // its task's likely end. Judged now, not when it was queued: a gate that had a slot free then
  // (a create was about to take it) may be the bottleneck now, and the task's end, unseen,
  // would keep it full: the next wave would start seconds late.
  for (size_t t = 0; t < gates_.size(); ++t) {
    if (planner_.blocked(load(), t, now)) {
      queue_.promoteBackgroundOnLane(kUnblockLanes + t, now, Priority::Create);
    }
  }

  if (gathering_ && now >= gatherEnd()) {
    gathering_ = false;
  }
  // While creates are gathered, their lanes are closed (creates holding a slot have none).
  const auto open = [this, now](std::optional<size_t> lane) {
    return !(gathering_ && lane && *lane < gates_.size()) && laneOpen(lane, now);
  };
  BottleneckPlanner::Reserve reserve = planner_.reserveFor(load(), now);
  bool waiting_for_token = false;
  double tokens_wanted = 1.0;
  for (bool first = true; !queue_.empty() && !adaptive_.inCooldown(now); first = false) {
    if (!first) {
      // The last admission may have filled the tier's free slot: it is blocked again, and its
      // next looks need their tokens.
      reserve = planner_.reserveFor(load(), now);
    }
    // Reserve the token first; give it back if no entry can use it.
    if (!takeToken(now)) {
      waiting_for_token = true;
      break;
    }
    // Tokens kept for a bottleneck's imminent look: only its lanes' client requests (its
    // creates, the proxy's look) may dig into them, not background polls of its tasks.
    const bool spare = budget_->available(now) + kTokenEpsilon >= reserve.tokens;
    std::optional<QueueEntry> entry;
    if (spare) {
      entry = queue_.popNext(open, planner_.bottlenecks(load(), now, /*creates_by_prior=*/true),
                             /*first_only=*/false,
                             /*background=*/!planner_.othersWaitForTokens(load(), now));
    } else {
      const std::vector<size_t> lanes{reserve.tier, kUnblockLanes + reserve.tier};
      const auto reserved = [&](std::optional<size_t> lane) {
        return lane && (*lane == lanes[0] || *lane == lanes[1]) && open(lane);
      };
      entry = queue_.popNext(reserved, lanes, /*first_only=*/true);
    }
    if (!entry) {
      giveToken(now);
      if (!spare) {
        waiting_for_token = true;
        tokens_wanted = reserve.tokens + 1.0;
      }
      break;
    }
    admitEntry(std::move(*entry), now, out);
  }

  setWake(now, open, waiting_for_token ? std::optional<double>(tokens_wanted) : std::nullopt,
          out);
}

void KeyScheduler::admitEntry(QueueEntry entry, MonotonicTime now, Dispatch& out) {
  auto pit = pending_.find(entry.id);
  Pending p = pit->second;
  pending_.erase(pit);
  --queued_by_route_[static_cast<size_t>(p.route)];

  Admitted a;
  a.id = entry.id;
  a.route = p.route;
  a.waited = now - entry.enqueued;
  if (p.route == RouteKind::Create) {
    a.tier = *p.tier;
    if (p.held_slot && slot_tier_.count(*p.held_slot) != 0) {
      a.slot = p.held_slot;
    } else {
      if (p.held_slot && !gates_[*p.tier]->canAcquire(now)) {
        // Its held slot's lease ran out while it waited: it needs a new slot, and must wait
        // on its tier's lane for one.
        giveToken(now);
        p.held_slot.reset();
        entry.lane = p.tier;
        pending_.emplace(entry.id, p);
        ++queued_by_route_[static_cast<size_t>(p.route)];
        queue_.push(std::move(entry));  // just popped, so there is room
        return;
      }
      const SlotId slot = next_slot_id_++;
      // The lane was open at this same `now`, so this cannot fail; stay safe regardless.
      if (!gates_[*p.tier]->acquireWithId(slot, now)) {
        giveToken(now);
        out.expired.push_back(entry.id);
        ++counters_.queue_timeout;
        return;
      }
      slot_tier_.emplace(slot, *p.tier);
      a.slot = slot;
    }
  }
  a.seq = nextSeq();
  ++counters_.admitted;
  out.admitted.push_back(a);
}

void KeyScheduler::setWake(MonotonicTime now, const AdmissionQueue::LaneOpen& open,
                           std::optional<double> tokens_wanted, Dispatch& out) const {
  if (queue_.empty()) {
    return;
  }
  earliest(out.wake_at, queue_.nextDeadline());
  earliest(out.wake_at, queue_.nextBackgroundUntil());  // held back for other instances' creates
  if (gathering_) {
    earliest(out.wake_at, gatherEnd());
  }
  if (queue_.hasEligible(open)) {
    if (adaptive_.inCooldown(now)) {
      earliest(out.wake_at, adaptive_.cooldownUntil());
    } else if (windowClosed(now)) {
      earliest(out.wake_at, windowOpensAt(now));
    } else if (tokens_wanted) {
      const double wanted = std::min(*tokens_wanted + marginTokens(), budget_->burst());
      if (auto wait = budget_->timeUntilAvailable(wanted, now)) {
        earliest(out.wake_at, now + std::max(*wait, Duration(1)));
      }
    }
  }
  for (size_t t = 0; t < gates_.size(); ++t) {
    if (queue_.hasLane(t) && !gates_[t]->canAcquire(now)) {
      earliest(out.wake_at, gates_[t]->nextLeaseExpiry());
      earliest(out.wake_at, gates_[t]->nextRecoveryAt(now));
    }
    if (planner_.blocked(load(), t, now)) {
      earliest(out.wake_at, queue_.nextUnblockAt(kUnblockLanes + t));
    }
  }
  if (out.wake_at && *out.wake_at <= now) {
    out.wake_at = now + Duration(1);  // never ask for a timer in the past
  }
}


MonotonicTime KeyScheduler::gatherEnd() const {
  return std::min(last_create_ + create_gather_ / 5, gather_start_ + create_gather_);
}

bool KeyScheduler::tierBinds(size_t tier, MonotonicTime now) const {
  return planner_.tierBinds(load(), tier, now);
}

bool KeyScheduler::budgetBinds(MonotonicTime now) const {
  return planner_.budgetBinds(load(), now);
}

LearnPace KeyScheduler::learnPace(size_t tier, MonotonicTime now) const {
  return planner_.learnPace(load(), tier, now);
}

Duration KeyScheduler::lookPrice(size_t tier, MonotonicTime now) const {
  return planner_.lookPrice(load(), tier, now);
}

std::vector<size_t> KeyScheduler::blockedTiers(MonotonicTime now) const {
  std::vector<size_t> out;
  for (size_t t = 0; t < gates_.size(); ++t) {
    if (planner_.blocked(load(), t, now)) {
      out.push_back(t);
    }
  }
  return out;
}

size_t KeyScheduler::tokensWanted(MonotonicTime now) const {
  size_t waiting = queue_.size();
  for (size_t t : blockedTiers(now)) {
    waiting -= std::min(waiting, waitingCreates(t));
  }
  const double reserve = waiting == 0 ? 0.0 : planner_.reserveFor(load(), now).tokens;
  return waiting + static_cast<size_t>(std::ceil(std::max(0.0, reserve)));
}

void KeyScheduler::unadmit(const Admitted& admitted, MonotonicTime now) {
  giveToken(now);
  if (admitted.slot) {
    releaseSlot(*admitted.slot, ReleaseReason::NotCreated, now);
  }
  if (counters_.admitted > 0) {
    --counters_.admitted;
  }
}

bool KeyScheduler::releaseSlot(SlotId slot, ReleaseReason reason, MonotonicTime /*now*/) {
  auto it = slot_tier_.find(slot);
  if (it == slot_tier_.end()) {
    return false;
  }
  const bool released = gates_[it->second]->release(slot, reason);
  slot_tier_.erase(it);
  return released;
}

bool KeyScheduler::extendLease(SlotId slot, MonotonicTime new_expiry) {
  auto it = slot_tier_.find(slot);
  if (it == slot_tier_.end()) {
    return false;
  }
  return gates_[it->second]->extendLease(slot, new_expiry);
}

std::string_view shadowReasonName(ShadowReason r) {
  switch (r) {
  case ShadowReason::Cooldown:
    return "cooldown";
  case ShadowReason::Concurrency:
    return "concurrency";
  case ShadowReason::Rate:
    return "rate";
  case ShadowReason::None:
    break;
  }
  return "";
}

ShadowAdmission KeyScheduler::admitShadow(const RequestInfo& request, MonotonicTime now) {
  ShadowAdmission out;
  std::optional<size_t> tier;
  if (request.route == RouteKind::Create && !request.held_slot) {
    tier = clampTier(request.tier.value_or(gates_.size() - 1));
  }
  if (adaptive_.inCooldown(now)) {
    out.would_wait = ShadowReason::Cooldown;
  } else if (tier && !gates_[*tier]->canAcquire(now)) {
    out.would_wait = ShadowReason::Concurrency;
  }
  // The token is taken whenever it is there, so that the bucket shows what is spent.
  if (!budget_->tryAcquire(1.0, now) && out.would_wait == ShadowReason::None) {
    out.would_wait = ShadowReason::Rate;
  }
  if (tier) {
    out.slot = restoreSlot(*tier, now + gates_[*tier]->lease());
  }
  out.seq = nextSeq();
  ++counters_.submitted;
  ++counters_.admitted;
  switch (out.would_wait) {
  case ShadowReason::Cooldown:
    ++counters_.shadow_cooldown;
    break;
  case ShadowReason::Concurrency:
    ++counters_.shadow_concurrency;
    break;
  case ShadowReason::Rate:
    ++counters_.shadow_rate;
    break;
  case ShadowReason::None:
    break;
  }
  return out;
}

SlotId KeyScheduler::restoreSlot(size_t tier, MonotonicTime lease_expiry) {
  tier = clampTier(tier);
  const SlotId slot = next_slot_id_++;
  gates_[tier]->restoreWithId(slot, lease_expiry);
  slot_tier_.emplace(slot, tier);
  return slot;
}

Duration KeyScheduler::estimatedWait(MonotonicTime now) const {
  const double rate = std::max(adaptive_.effectiveRate(now), 1e-9);
  const double tokens = budget_->available(now);
  const double ahead = static_cast<double>(queue_.size()) + 1.0;
  Duration wait = adaptive_.cooldownRemaining(now);
  const double token_wait_s = std::max(0.0, (ahead - std::max(tokens, 0.0)) / rate);
  return wait + fromSeconds(std::min(token_wait_s, 1e9));
}

uint32_t KeyScheduler::retryAfterSeconds(MonotonicTime now) const {
  const double s = std::ceil(toSeconds(estimatedWait(now)));
  const double cap = std::max(1.0, std::ceil(toSeconds(limits_.max_cooldown)));
  return static_cast<uint32_t>(std::clamp(s, 1.0, cap));
}

Snapshot KeyScheduler::snapshot(MonotonicTime now) const {
  Snapshot s;
  s.configured_rate = adaptive_.configuredRate();
  s.effective_rate = adaptive_.effectiveRate(now);
  s.tokens = budget_->available(now);
  s.burst = budget_->burst();
  s.cooldown_remaining = adaptive_.cooldownRemaining(now);
  s.advertised_limit = advertised_limit_;
  s.advertised_remaining = advertised_remaining_;
  s.window_guard = guarded_;
  s.queue_depth = queue_.size();
  for (size_t p = 0; p < kPriorityCount; ++p) {
    s.queued_by_priority[p] = queue_.size(static_cast<Priority>(p));
  }
  s.queued_by_route = queued_by_route_;
  for (size_t t = 0; t < gates_.size(); ++t) {
    const ConcurrencyGate& g = *gates_[t];
    TierSnapshot ts;
    ts.name = matcher_.tier(t).name;
    ts.running = g.running();
    ts.ceiling = g.ceiling();
    ts.effective_ceiling = g.effectiveCeiling(now);
    ts.queued = queue_.laneSize(t);
    ts.queued_elsewhere = planner_.remoteWaiting(t);
    ts.leases = g.leases();
    ts.leases_expired = g.expiredTotal();
    ts.ceiling_lowered = g.loweredTotal();
    s.tiers.push_back(std::move(ts));
  }
  s.counters = counters_;
  return s;
}

}  // namespace hiapi::core
