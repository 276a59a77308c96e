#include "hiapi/core/shared_budget.h"

#include <algorithm>
#include <cmath>

namespace hiapi::core {

uint32_t LocalShare::slots(uint32_t ceiling, uint32_t instances) {
  // Rounded down, so that the instances' shares together never exceed the ceiling, except that
  // each keeps one slot: with more instances than slots, no instance may be shut out entirely.
  return std::max<uint32_t>(1, ceiling / std::max<uint32_t>(1, instances));
}

LocalShare LocalShare::of(double rate, double burst, uint32_t instances) {
  const double n = std::max<uint32_t>(1, instances);
  return LocalShare{rate / n, std::max(1.0, burst / n)};
}

double reservationSize(double rate, double burst, Duration window, size_t waiting) {
  const double block = std::max(1.0, std::floor(rate * toSeconds(window)));
  const double want = std::max<double>(1.0, static_cast<double>(waiting));
  return std::max(1.0, std::min({want, block, std::floor(burst)}));
}

SharedBudget::SharedBudget(double rate_per_s, double burst, Duration reserve_window,
                           MonotonicTime now, uint32_t instances)
    : rate_(rate_per_s), burst_(burst), window_(reserve_window),
      instances_(std::max<uint32_t>(1, instances)),
      local_(LocalShare::of(rate_per_s, burst, instances_).rate,
             LocalShare::of(rate_per_s, burst, instances_).burst, now, false),
      spent_since_(now), next_ask_(now), last_grant_(now), last_now_(now) {}

void SharedBudget::rollSpent(MonotonicTime now) {
  if (window_ <= Duration::zero() || now - spent_since_ < window_) {
    return;
  }
  spent_last_ = now - spent_since_ < 2 * window_ ? spent_now_ : 0.0;
  spent_now_ = 0;
  spent_since_ = now;
}

void SharedBudget::resetLocal(MonotonicTime now) {
  // Starts empty: the store's bucket may have been spent just before it went away, and each of
  // the instances starting with a full share would together send a burst more than allowed.
  const LocalShare s = LocalShare::of(rate_, burst_, instances_);
  local_ = TokenBucket(s.rate, s.burst, now, false);
  if (pause_until_ && now < *pause_until_) {
    local_.pauseUntil(*pause_until_);
  }
}

std::optional<double> SharedBudget::reservationToSend(MonotonicTime now, size_t waiting) {
  seen(now);
  if (degraded_ || in_flight_ || now < next_ask_ || paused(now) || waiting == 0) {
    return std::nullopt;
  }
  // Never more than a burst held: tokens held here are tokens no other instance can use.
  const double needed = std::min(static_cast<double>(waiting), burst_);
  if (held_ + kTokenEpsilon >= needed) {
    return std::nullopt;
  }
  in_flight_ = true;
  rollSpent(now);
  // Requests admitted as they come leave no queue behind them: what the last window spent
  // says how many the next round trip should cover.
  const double demand = std::min(std::max(needed, spent_last_), burst_);
  const double block = reservationSize(rate_, burst_, window_,
                                       static_cast<size_t>(std::ceil(demand - held_)));
  return std::min(demand - held_, std::max(block, 1.0));
}

double SharedBudget::marginTokens() const {
  // As KeyScheduler::marginTokens: the store keeps this much in its bucket behind every grant.
  const double tokens = toSeconds(margin_) * rate_;
  return std::clamp(std::min(tokens, 0.25), 0.0, std::max(0.0, burst_ - 1.0));
}

void SharedBudget::onReserved(double granted, Duration retry_in, MonotonicTime now) {
  seen(now);
  in_flight_ = false;
  if (degraded_) {
    return;  // a late reply: its tokens are spent by the local share's own
  }
  held_ += std::max(0.0, granted);
  held_told_ += std::max(0.0, granted);  // the store added its grant to what it was told
  last_grant_ = now;
  if (retry_in > Duration::zero()) {
    next_ask_ = now + retry_in;
  }
}

double SharedBudget::surplusToReturn(MonotonicTime now, size_t waiting) {
  if (degraded_ || waiting != 0 || held_ < kTokenEpsilon || now - last_grant_ < window_) {
    return 0.0;
  }
  return std::exchange(held_, 0.0);
}

std::optional<double> SharedBudget::heldReportDue(MonotonicTime now, Duration field_life) const {
  if (degraded_ || in_flight_) {
    return std::nullopt;
  }
  const Duration since = now - held_told_at_;
  // Spent since the store heard: its bucket keeps room for tokens that are gone, which costs the
  // other instances throughput (never a 429), so a report waits for a window's spending.
  const bool stale =
      held_told_ > held_ + kTokenEpsilon && since >= std::max(window_, kHeldReportGap);
  // Still held: the store forgets an instance's figure after field_life (a killed instance's
  // tokens must not keep room for ever), so it is sent again well before.
  const bool expiring = held_ > kTokenEpsilon && since >= field_life / 2;
  if (!stale && !expiring) {
    return std::nullopt;
  }
  return held_;
}

void SharedBudget::onHeldSent(double held, MonotonicTime now) {
  held_told_ = held;
  held_told_at_ = now;
}

std::optional<Duration> SharedBudget::pauseToShare(MonotonicTime now) {
  if (!pause_to_share_) {
    return std::nullopt;
  }
  const MonotonicTime until = *pause_to_share_;
  pause_to_share_.reset();
  if (until <= now) {
    return std::nullopt;
  }
  return until - now;
}

void SharedBudget::onSharedPause(MonotonicTime until) {
  if (!pause_until_ || *pause_until_ < until) {
    pause_until_ = until;
  }
  local_.pauseUntil(until);
}

void SharedBudget::onStoreDown(MonotonicTime now) {
  in_flight_ = false;
  if (degraded_) {
    return;
  }
  degraded_ = true;
  settle_until_.reset();
  resetLocal(now);
  local_.returnTokens(held_, now);  // reserved from the store already: still this instance's
  held_ = 0;
}

void SharedBudget::onStoreUp(MonotonicTime now, Duration settle) {
  if (!degraded_) {
    return;
  }
  degraded_ = false;
  held_ = 0;
  next_ask_ = now;
  // The local bucket carries on as it stands: what the share spent just now still counts.
  if (settle > Duration::zero()) {
    settle_until_ = now + settle;
  }
}

void SharedBudget::setInstances(uint32_t instances, MonotonicTime now) {
  instances = std::max<uint32_t>(1, instances);
  if (instances == instances_) {
    return;
  }
  instances_ = instances;
  const LocalShare s = LocalShare::of(rate_, burst_, instances_);
  local_.setRate(s.rate, now);
  local_.setBurst(s.burst, now);
}

bool SharedBudget::tryAcquire(double n, MonotonicTime now) {
  seen(now);
  if (degraded_) {
    const bool taken = local_.consume(n, now);
    local_spent_ += taken ? n : 0.0;
    return taken;
  }
  if (paused(now) || held_ + kTokenEpsilon < n) {
    return false;
  }
  if (settling(now) && !local_.consume(n, now)) {
    return false;
  }
  held_ = std::max(0.0, held_ - n);
  rollSpent(now);
  spent_now_ += n;
  return true;
}

std::optional<Duration> SharedBudget::timeUntilAvailable(double n, MonotonicTime now) const {
  seen(now);
  if (n > burst_ + kTokenEpsilon) {
    return std::nullopt;
  }
  if (degraded_) {
    // A wanted amount above the local share's burst would be "never" there: the share's burst
    // is the most the scheduler can wait for.
    return local_.timeUntilAvailable(std::min(n, local_.burst()), now);
  }
  if (paused(now)) {
    return *pause_until_ - now;
  }
  Duration shared = kReplyBackstop;
  if (held_ + marginTokens() + kTokenEpsilon >= n) {
    shared = Duration::zero();
  } else if (now < next_ask_) {
    shared = next_ask_ - now;
  }
  if (!settling(now)) {
    return shared;
  }
  // The local share's wait, but never past the end of settling.
  const Duration local = local_.timeUntilAvailable(std::min(n, local_.burst()), now)
                             .value_or(*settle_until_ - now);
  return std::max(shared, std::min(local, *settle_until_ - now));
}

void SharedBudget::refund(double n, MonotonicTime now) {
  seen(now);
  if (n <= 0) {
    return;
  }
  if (degraded_) {
    local_.returnTokens(n, now);
    return;
  }
  if (settling(now)) {
    local_.returnTokens(n, now);
  }
  held_ = std::min(held_ + n, burst_);
}

void SharedBudget::setRate(double rate_per_s, MonotonicTime now) {
  if (rate_per_s <= 0 || rate_per_s == rate_) {
    return;
  }
  rate_ = rate_per_s;
  local_.setRate(LocalShare::of(rate_, burst_, instances_).rate, now);
}

void SharedBudget::setBurst(double burst, MonotonicTime now) {
  if (burst <= 0) {
    return;
  }
  burst_ = burst;
  held_ = std::min(held_, burst_);
  local_.setBurst(LocalShare::of(rate_, burst_, instances_).burst, now);
}

void SharedBudget::pauseUntil(MonotonicTime until) {
  local_.pauseUntil(until);
  // The scheduler uses a pause that ends in the past to trim the balance to what is left of it
  // (an allowance of (now - until) × rate tokens): only a pause still to come is a cool-down.
  // The scheduler reads available(now) just before it trims, so last_now_ is that now.
  if (until > last_now_) {
    if (!pause_until_ || *pause_until_ < until) {
      pause_until_ = until;
      pause_to_share_ = until;
    }
    held_ = 0;
  } else {
    held_ = std::min(held_, toSeconds(last_now_ - until) * rate_);
  }
}

double SharedBudget::available(MonotonicTime now) const {
  seen(now);
  if (degraded_) {
    return local_.balance(now);
  }
  if (paused(now)) {
    return -toSeconds(*pause_until_ - now) * rate_;
  }
  // The phase margin the scheduler wants on top of a token was kept in the store's bucket when
  // it granted the token (marginTokens()): it is counted here rather than held.
  const double shared = held_ + marginTokens();
  return settling(now) ? std::min(shared, local_.balance(now)) : shared;
}

}  // namespace hiapi::core
