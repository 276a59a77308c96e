#include "hiapi/core/adaptive_rate.h"

#include <algorithm>
#include <cmath>

namespace hiapi::core {

namespace {
constexpr Duration kDecreaseGuard = std::chrono::seconds(1);
}  // namespace

Duration rateLimitResetDelay(double reset, std::chrono::system_clock::time_point wall_now) {
  if (!std::isfinite(reset) || reset <= 0) {
    return Duration::zero();
  }
  double seconds_left = reset;
  if (reset >= kRateLimitResetEpochThreshold) {
    const double wall_s = toSeconds(wall_now.time_since_epoch());
    seconds_left = reset - wall_s;
  }
  if (seconds_left <= 0) {
    return Duration::zero();
  }
  // Guard the conversion against absurd values; callers cap at max_cooldown anyway.
  seconds_left = std::min(seconds_left, 1e9);
  return fromSeconds(seconds_left);
}

AdaptiveRate::AdaptiveRate(const LimitsConfig& limits, Duration backoff_base)
    : backoff_base_(backoff_base) {
  reconfigure(limits);
}

void AdaptiveRate::reconfigure(const LimitsConfig& limits) {
  configured_rate_ = limits.rate.per_second > 0 ? limits.rate.per_second : 1.0;
  decrease_factor_ = std::clamp(limits.decrease_factor, 0.0, 1.0);
  min_fraction_ = std::clamp(limits.min_rate_fraction, 1e-6, 1.0);
  recovery_time_ = std::max(limits.recovery_time, Duration::zero());
  max_cooldown_ = std::max(limits.max_cooldown, Duration::zero());
  repeat_window_ = std::max(limits.repeat_window, Duration::zero());
  base_fraction_ = std::max(base_fraction_, min_fraction_);
}

double AdaptiveRate::fraction(MonotonicTime now) const {
  if (base_fraction_ >= 1.0) {
    return 1.0;
  }
  if (now <= recovery_start_) {
    return base_fraction_;
  }
  if (recovery_time_ <= Duration::zero()) {
    return 1.0;
  }
  const double progress = toSeconds(now - recovery_start_) / toSeconds(recovery_time_);
  return std::min(1.0, base_fraction_ + (1.0 - base_fraction_) * progress);
}

double AdaptiveRate::effectiveRate(MonotonicTime now) const {
  return configured_rate_ * fraction(now);
}

std::optional<MonotonicTime> AdaptiveRate::fullRecoveryAt() const {
  if (base_fraction_ >= 1.0) {
    return std::nullopt;
  }
  return recovery_start_ + recovery_time_;
}

MonotonicTime AdaptiveRate::pauseUntil(MonotonicTime until, MonotonicTime now) {
  until = std::min(until, now + max_cooldown_);
  if (until > cooldown_until_) {
    cooldown_until_ = until;
  }
  return cooldown_until_;
}

Duration AdaptiveRate::cooldownRemaining(MonotonicTime now) const {
  return now < cooldown_until_ ? cooldown_until_ - now : Duration::zero();
}

MonotonicTime AdaptiveRate::onRateLimited(MonotonicTime now, std::optional<Duration> retry_after,
                                          Random& random, bool inside_budget,
                                          bool sent_before_last) {
  ++consecutive_429_;
  const bool same_event =
      (last_event_ && (sent_before_last || now < *last_event_ + kDecreaseGuard)) ||
      now < cooldown_until_;
  const bool repeated = last_event_ && now - *last_event_ <= repeat_window_;
  const bool cut =
      !same_event && (!inside_budget || repeat_window_ <= Duration::zero() || repeated);
  Duration pause;
  if (retry_after) {
    pause = std::clamp(*retry_after, Duration::zero(), max_cooldown_);
  } else if (!same_event && !cut) {
    // A phase error: the gateway's bucket is one token short of ours. One token interval at
    // the rate we pace at brings ours back behind it.
    pause = std::min(fromSeconds(1.0 / std::max(effectiveRate(now), 1e-9)), max_cooldown_);
  } else {
    // Full jitter: uniform in [0, min(max, base * 2^(k-1))).
    const uint32_t exponent = std::min<uint32_t>(consecutive_429_ - 1, 30);
    const double ceiling_s =
        std::min(toSeconds(max_cooldown_), toSeconds(backoff_base_) * std::ldexp(1.0, exponent));
    pause = fromSeconds(random.uniform() * ceiling_s);
  }
  const MonotonicTime end = pauseUntil(now + pause, now);
  if (!same_event) {
    last_event_ = now;
  }
  last_reaction_ = same_event ? Reaction::SameEvent : cut ? Reaction::Decrease : Reaction::Resync;
  if (cut) {
    const double current = fraction(now);
    base_fraction_ = std::max(min_fraction_, current * decrease_factor_);
    ++decreases_;
  } else if (!same_event) {
    ++resyncs_;
  }
  // The climb back starts when the (possibly extended) cool-down ends.
  if (base_fraction_ < 1.0) {
    if (cut) {
      recovery_start_ = end;
    } else if (end > recovery_start_) {
      // Freeze the climb at its current value and restart it after the longer cool-down.
      base_fraction_ = fraction(now);
      recovery_start_ = end;
    }
  }
  return end;
}

void AdaptiveRate::onSuccess(MonotonicTime /*now*/) { consecutive_429_ = 0; }

}  // namespace hiapi::core
