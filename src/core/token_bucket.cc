#include "hiapi/core/token_bucket.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace hiapi::core {

namespace {
// A timer set for "when the tokens are there" must find them there despite rounding.
constexpr double kWakeSlackSeconds = 1e-6;
}  // namespace

TokenBucket::TokenBucket(double rate_per_s, double burst, MonotonicTime now, bool start_full)
    : origin_(now), rate_(rate_per_s), burst_(burst) {
  assert(rate_per_s > 0);
  assert(burst > 0);
  zero_time_ = start_full ? -burst_ / rate_ : 0.0;
}

double TokenBucket::balance(MonotonicTime now) const {
  return std::min((secondsOf(now) - zero_time_) * rate_, burst_);
}

bool TokenBucket::consume(double n, MonotonicTime now) {
  const double tokens = balance(now);
  if (tokens + kTokenEpsilon < n) {
    return false;
  }
  // Moves zero_time_ forward by at least n / rate_ (see the class comment).
  zero_time_ = std::max(zero_time_, secondsOf(now) - (tokens - n) / rate_);
  return true;
}

std::optional<Duration> TokenBucket::consumeWithBorrow(double n, MonotonicTime now) {
  if (n > burst_) {
    return std::nullopt;
  }
  const double tokens = balance(now);
  zero_time_ = std::max(zero_time_, secondsOf(now) - (tokens - n) / rate_);
  if (tokens + kTokenEpsilon >= n) {
    return Duration::zero();
  }
  return fromSeconds((n - tokens) / rate_ + kWakeSlackSeconds);
}

std::optional<Duration> TokenBucket::timeUntilAvailable(double n, MonotonicTime now) const {
  if (n > burst_) {
    return std::nullopt;
  }
  const double tokens = balance(now);
  if (tokens + kTokenEpsilon >= n) {
    return Duration::zero();
  }
  const double wait_s = (n - tokens) / rate_ + kWakeSlackSeconds;
  return Duration(static_cast<Duration::rep>(std::ceil(wait_s * 1e9)));
}

std::optional<MonotonicTime> TokenBucket::timeWhenAvailable(double n, MonotonicTime now) const {
  auto wait = timeUntilAvailable(n, now);
  if (!wait) {
    return std::nullopt;
  }
  return now + *wait;
}

void TokenBucket::returnTokens(double n, MonotonicTime now) {
  if (n <= 0) {
    return;
  }
  zero_time_ -= n / rate_;
  // Cap the balance at the burst as seen at now: tokens returned never exceed the bucket.
  zero_time_ = std::max(zero_time_, secondsOf(now) - burst_ / rate_);
}

void TokenBucket::setRate(double rate_per_s, MonotonicTime now) {
  assert(rate_per_s > 0);
  if (rate_per_s <= 0 || rate_per_s == rate_) {
    return;
  }
  const double now_s = secondsOf(now);
  if (zero_time_ >= now_s) {
    // In debt or paused: the bucket stays empty until zero_time_ (a pause keeps its end).
    rate_ = rate_per_s;
    return;
  }
  const double tokens = balance(now);
  rate_ = rate_per_s;
  zero_time_ = now_s - tokens / rate_;
}

void TokenBucket::setBurst(double burst, MonotonicTime now) {
  assert(burst > 0);
  if (burst <= 0) {
    return;
  }
  const double tokens = std::min(balance(now), burst);
  burst_ = burst;
  zero_time_ = secondsOf(now) - tokens / rate_;
}

void TokenBucket::pauseUntil(MonotonicTime until) {
  zero_time_ = std::max(zero_time_, secondsOf(until));
}

}  // namespace hiapi::core
