// KeyScheduler, what comes back: upstream answers (429 handling, the gateway's X-RateLimit-*
// counters, the window guard) and hot reloads, and the token accounting they steer. Admission
// itself is in key_scheduler.cc.

#include <algorithm>
#include <cmath>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/key_scheduler.h"
#include "hiapi/core/model_prior.h"
#include "hiapi/core/retry_policy.h"

namespace hiapi::core {

Limit429Cause classify429Code(std::string_view error_code) {
  const std::string code = asciiLowerCopy(error_code);
  if (code.find("concurren") != std::string::npos) {
    return Limit429Cause::Concurrency;
  }
  if (code.find("rate") != std::string::npos) {
    return Limit429Cause::Rate;
  }
  return Limit429Cause::Unknown;
}

double KeyScheduler::effectiveBurst() const {
  const double configured = sanitizedBurst(limits_.burst);
  if (advertised_limit_ && *advertised_limit_ >= 1.0) {
    return std::min(configured, std::floor(*advertised_limit_));
  }
  return configured;
}

double KeyScheduler::marginTokens() const {
  // At most a quarter of a token, and never so much that one token and the margin exceed the
  // burst (a burst of 1 would then never admit anything).
  const double tokens = toSeconds(limits_.phase_margin) * budget_->rate();
  return std::clamp(std::min(tokens, 0.25), 0.0, std::max(0.0, budget_->burst() - 1.0));
}

bool KeyScheduler::takeToken(MonotonicTime now) {
  rollWindow(now);  // an admission at submit comes without a dispatch's refresh()
  if (windowClosed(now) || budget_->available(now) + kTokenEpsilon < 1.0 + marginTokens() ||
      !budget_->tryAcquire(1.0, now)) {
    return false;
  }
  if (window_end_ && now < *window_end_) {
    window_allowance_ -= 1.0;
  }
  sends_.record(now);
  return true;
}

void KeyScheduler::giveToken(MonotonicTime now) {
  budget_->refund(1.0, now);
  if (window_end_ && now < *window_end_) {
    window_allowance_ += 1.0;
  }
  sends_.unrecord();
}

void KeyScheduler::rollWindow(MonotonicTime now) {
  if (!window_end_ || now < *window_end_) {
    return;
  }
  // At its reset the gateway lets at least one more through: a fixed window all of its limit,
  // a sliding window or a bucket one. Which, its next answer says; until then one per token
  // interval, for as long as the bucket takes to fill (a gateway that stopped sending its
  // counters leaves the pacing to the bucket then).
  const Duration step = fromSeconds(1.0 / budget_->rate());
  const Duration fresh = fromSeconds(budget_->burst() / budget_->rate()) + step;
  if (window_reset_ && now - *window_reset_ < fresh) {
    while (*window_end_ <= now) {
      *window_end_ += step;
    }
    window_allowance_ = 1.0;
  } else {
    window_end_.reset();
  }
}

std::optional<MonotonicTime> KeyScheduler::spareWindowSendBy(MonotonicTime now) const {
  // Only an announced window (not the step rollWindow() assumes past it).
  if (!gateway_windowed_ || !window_end_ || !window_reset_ || *window_end_ != *window_reset_ ||
      now >= *window_end_ || window_allowance_ < 1.0) {
    return std::nullopt;
  }
  // window_end_ is the reset plus one margin; a send by the reset less two arrives before it
  // with a margin's arrival jitter.
  return *window_end_ - 3 * fromSeconds(marginTokens() / budget_->rate());
}

MonotonicTime KeyScheduler::windowOpensAt(MonotonicTime now) const {
  MonotonicTime at = now;
  if (window_end_ && now < *window_end_ && window_allowance_ < 1.0) {
    at = *window_end_;
  }
  return guarded_ ? std::max(at, sends_.nextAllowed(now)) : at;
}

void KeyScheduler::guardWindow() {
  // Only Remaining says where the gateway's window stands; a Limit alone does not.
  if (advertised_remaining_ || window_shown_) {
    return;
  }
  window_shown_ = true;
  if (!guarded_) {
    guarded_ = true;
    ++counters_.rate_guards;
  }
}

bool KeyScheduler::guardWanted() const {
  return !advertised_remaining_ &&
         (window_shown_ || limits_.pace_without_counters == UncountedPacing::Window);
}

void KeyScheduler::shapeSendLog() {
  const double burst = std::max(1.0, std::floor(effectiveBurst()));
  const Duration window = fromSeconds(burst / adaptive_.configuredRate()) + limits_.phase_margin;
  sends_.setShape(static_cast<size_t>(burst), window);
}

void KeyScheduler::onGatewayCounters(const UpstreamOutcome& o, MonotonicTime now) {
  const RateLimitHeaders& h = o.ratelimit;
  if (h.limit && std::isfinite(*h.limit) && *h.limit >= 1.0) {
    advertised_limit_ = *h.limit;
    const double burst = effectiveBurst();
    if (burst != budget_->burst()) {
      budget_->setBurst(burst, now);
      shapeSendLog();
    }
  }
  if (!h.remaining || !std::isfinite(*h.remaining)) {
    return;
  }
  advertised_remaining_ = std::max(0.0, *h.remaining);
  guarded_ = false;  // the gateway's counters say what the guard could only assume
  // Admitted after the request this answers: the gateway has counted them since, or will.
  const double sent_after =
      o.seq && *o.seq <= admission_seq_ ? static_cast<double>(admission_seq_ - *o.seq) : 0.0;
  const double whole = std::floor(*advertised_remaining_);
  // The counters are the gateway's as of the answered request's send (see the file comment).
  const MonotonicTime at = o.sent_at && *o.sent_at <= now ? *o.sent_at : now;
  // When the gateway's reset comes, as the key's sends see it: seconds from the count, so from
  // the send; an epoch time is a moment of the wall clock, read at the answer's arrival (whole
  // seconds of another machine's clock: no precision a round trip would matter to).
  std::optional<MonotonicTime> reset_at;
  if (h.reset) {
    const Duration d = std::min(rateLimitResetDelay(*h.reset, o.wall_now), limits_.max_cooldown);
    if (d > Duration::zero()) {
      reset_at = (*h.reset < kRateLimitResetEpochThreshold ? at : now) + d;
    }
  }
  const Duration delay = reset_at ? *reset_at - at : Duration::zero();
  if (toSeconds(delay) * adaptive_.configuredRate() > 1.5) {
    gateway_windowed_ = true;  // half a token interval more than a bucket's next token
  }
  // Remaining counts whole tokens, so a bucket in phase holds less than what remains + 1; one that
  // holds more is ahead of the gateway and drops back to what the gateway surely has. With the
  // part of the next token that Reset tells: every shape lets one more through at its reset (a
  // bucket its next token, a sliding window its oldest request, a fixed window all), so the
  // bucket has it then, not a whole token interval after this answer. Dropping that part would
  // cost up to a token interval at each such answer.
  // And with what a bucket gateway refilled since the send: no more than the rate over that
  // time, nor more than fills it (a full gateway's refill is lost, so after the sends counted
  // since it holds at least its burst less those), which keeps this a floor of what it holds.
  const double rate = budget_->rate();
  const double refill = toSeconds(now - at) * rate;
  const double burst = budget_->burst();
  const double surely = std::max(0.0, std::min(whole + refill, burst) - sent_after);
  if (budget_->available(now) >= surely + 1.0) {
    const double next =
        delay > Duration::zero() ? std::clamp(1.0 - toSeconds(delay) * rate, 0.0, 1.0) : 0.0;
    const double level = std::max(0.0, std::min(whole + next + refill, burst) - sent_after);
    budget_->pauseUntil(now - fromSeconds(level / rate));
  }
  if (reset_at) {
    onGatewayReset(*reset_at, whole - sent_after, now);
  }
}

void KeyScheduler::onGatewayReset(MonotonicTime reset_at, double left, MonotonicTime now) {
  // The margin again: a request sent right at the reset could arrive a little before it.
  const MonotonicTime end = reset_at + fromSeconds(marginTokens() / budget_->rate());
  // Past the announced reset the window only rolls on by assumption (rollWindow()); an answer
  // replaces that assumption rather than merging with it, or a bucket's refill would be read
  // as a window that allows nothing until the assumed step ends.
  const bool announced = window_end_ && window_reset_ && *window_end_ == *window_reset_;
  if (end <= now) {
    // The reset came while the answer was on its way back. It freed one more at least; past it
    // the key assumes one per token interval (rollWindow()), which this answer replaces with
    // what remained before the reset and the one it freed. Not none until the next step, nor
    // the bucket alone: that would burst what a sliding window frees one by one.
    if (!announced || now >= *window_end_) {
      window_end_ = end;
      window_reset_ = end;
      rollWindow(now);
      if (window_end_) {
        window_allowance_ = std::max(0.0, left + 1.0);
      }
    }
    return;
  }
  const double allowance = std::max(0.0, left);
  if (announced && now < *window_end_ && end <= *window_end_ + std::chrono::milliseconds(1)) {
    // The same window seen through another answer: the smaller allowance is the newer news.
    window_allowance_ = std::min(window_allowance_, allowance);
    window_end_ = std::max(*window_end_, end);
    window_reset_ = window_end_;
  } else {
    window_allowance_ = allowance;
    window_end_ = end;
    window_reset_ = end;
  }
}

void KeyScheduler::onUpstreamOutcome(const UpstreamOutcome& o, MonotonicTime now) {
  refresh(now, nullptr);
  if (o.status == 429) {
    Limit429Cause cause = o.cause;
    std::optional<size_t> tier;
    if (o.tier) {
      tier = clampTier(*o.tier);
    }
    if (o.slot) {
      if (auto it = slot_tier_.find(*o.slot); it != slot_tier_.end()) {
        tier = it->second;
      }
    }
    if (cause == Limit429Cause::Unknown) {
      cause = Limit429Cause::Rate;
      if (o.route == RouteKind::Create && tier) {
        uint32_t others = gates_[*tier]->running();
        if (o.slot && gates_[*tier]->holds(*o.slot) && others > 0) {
          --others;
        }
        if (others > 0) {
          cause = Limit429Cause::Concurrency;
        }
      }
    }
    if (cause == Limit429Cause::Concurrency && o.route == RouteKind::Create && tier) {
      ++counters_.upstream_429_concurrency;
      gates_[*tier]->onConcurrencyLimited(now, o.slot);
    } else {
      ++counters_.upstream_429_rate;
      std::optional<Duration> retry_after;
      if (o.retry_after) {
        retry_after = parseRetryAfter(*o.retry_after, o.wall_now);
      }
      // Outside the gateway's budget when it advertises a lower limit than configured (read
      // from this answer first): then the budget really is smaller and one 429 is enough.
      onGatewayCounters(o, now);
      const bool inside_budget =
          !(advertised_limit_ && *advertised_limit_ < sanitizedBurst(limits_.burst));
      const uint64_t decreases = adaptive_.decreases();
      const uint64_t resyncs = adaptive_.resyncs();
      // Admitted before the last rate 429 came back: it was already on its way, so its 429
      // answers the same excess (a window that refused one refuses what followed it).
      const bool sent_before_last = o.seq && rate_429_seq_ && *o.seq <= *rate_429_seq_;
      const MonotonicTime end =
          adaptive_.onRateLimited(now, retry_after, random_, inside_budget, sent_before_last);
      rate_429_seq_ = admission_seq_;
      guardWindow();
      counters_.rate_decreases += adaptive_.decreases() - decreases;
      counters_.rate_resyncs += adaptive_.resyncs() - resyncs;
      applyRate(now);
      pauseBudget(end);
      return;
    }
  } else if (o.status >= 200 && o.status < 500) {
    adaptive_.onSuccess(now);
  }
  onGatewayCounters(o, now);
}

void KeyScheduler::reconfigure(const LimitsConfig& limits, const QueueConfig& queue,
                               MonotonicTime now) {
  queue_deadline_ = queue.deadline;
  create_gather_ = queue.create_gather;
  queue_.setLimits(queue.max_size, queue.max_per_client);
  reconfigure(limits, now);
}

void KeyScheduler::reconfigure(const LimitsConfig& limits, MonotonicTime now) {
  refresh(now, nullptr);
  limits_ = limits;
  adaptive_.reconfigure(limits);
  budget_->setBurst(effectiveBurst(), now);
  applyRate(now);
  shapeSendLog();  // at the new rate and burst
  guarded_ = guardWanted();

  TierMatcher matcher(limits.tiers);
  std::vector<std::unique_ptr<ConcurrencyGate>> gates(matcher.size());
  std::vector<size_t> old_to_new(gates_.size(), matcher.size() - 1);
  std::vector<bool> kept(gates_.size(), false);
  for (size_t o = 0; o < gates_.size(); ++o) {
    if (auto n = matcher.indexOf(matcher_.tier(o).name); n && !gates[*n]) {
      const TierConfig& tc = matcher.tier(*n);
      gates_[o]->reconfigure(tc.max_running, tc.lease, limits.recovery_time, now);
      gates[*n] = std::move(gates_[o]);
      old_to_new[o] = *n;
      kept[o] = true;
    }
  }
  for (size_t n = 0; n < gates.size(); ++n) {
    planner_.setTierPrior(n, tierPrior(matcher.tier(n)));
    if (!gates[n]) {
      const TierConfig& tc = matcher.tier(n);
      gates[n] = std::make_unique<ConcurrencyGate>(tc.max_running, tc.lease, limits.recovery_time,
                                                   now);
    }
  }
  // Slots of removed tiers are dropped; the others follow their tier.
  for (auto it = slot_tier_.begin(); it != slot_tier_.end();) {
    if (!kept[it->second]) {
      it = slot_tier_.erase(it);
    } else {
      it->second = old_to_new[it->second];
      ++it;
    }
  }
  for (auto& [id, p] : pending_) {
    if (p.tier) {
      if (p.held_slot && slot_tier_.count(*p.held_slot) == 0) {
        p.held_slot.reset();
      }
      p.tier = old_to_new[*p.tier];
    }
  }
  // Waiting creates follow their tier; a retry whose held slot was dropped now needs a new slot,
  // so it moves onto its tier's lane.
  queue_.remapLanes([this](const QueueEntry& e) -> std::optional<size_t> {
    const Pending& p = pending_.at(e.id);
    if (p.route == RouteKind::Create && !p.held_slot) {
      return p.tier;
    }
    return std::nullopt;
  });
  matcher_ = std::move(matcher);
  gates_ = std::move(gates);
}

}  // namespace hiapi::core
