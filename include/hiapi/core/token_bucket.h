#pragma once
// A key's request budget. `RateBudget` is the interface the scheduler draws on (a later issue backs
// it with Redis so that several hosts share one key's budget); `TokenBucket` is the local,
// folly-style implementation: its only state is `zero_time_`, the moment the bucket would have
// been empty. Tokens are derived, `min((now - zero_time_) * rate, burst)`, so there is no refill
// timer, and an earlier `now` than one already seen simply sees fewer tokens (reverse-time safe).

#include <memory>
#include <optional>

#include "hiapi/core/clock.h"

namespace hiapi::core {

/// A budget of requests per second with a burst. Thread-safety: implementations need not be
/// thread-safe; the core is single-threaded.
class RateBudget {
public:
  virtual ~RateBudget() = default;

  /// Takes @p n tokens if they are all there now.
  /// @param n tokens wanted (> 0)
  /// @param now the current monotonic time
  /// @return true when taken (commit), false when not (nothing changed).
  virtual bool tryAcquire(double n, MonotonicTime now) = 0;

  /// @param n tokens wanted
  /// @param now the current monotonic time
  /// @return how long until @p n tokens are there (zero when they are there now), or nullopt when
  ///         @p n exceeds the burst (never).
  virtual std::optional<Duration> timeUntilAvailable(double n, MonotonicTime now) const = 0;

  /// Gives back @p n tokens taken earlier (a cancelled or never-sent request). The balance never
  /// exceeds the burst.
  virtual void refund(double n, MonotonicTime now) = 0;

  /// Changes the rate; the current token count carries over unchanged (continuity). While the
  /// budget is empty until a future time (paused or borrowed), that time is kept.
  /// @param rate_per_s new rate, > 0
  virtual void setRate(double rate_per_s, MonotonicTime now) = 0;

  /// Changes the burst; tokens above the new burst are dropped.
  virtual void setBurst(double burst, MonotonicTime now) = 0;

  /// No token is available before @p until (key-wide pause after an upstream 429): the balance
  /// becomes zero at @p until. Never moves the state backwards.
  virtual void pauseUntil(MonotonicTime until) = 0;

  /// @return tokens available at @p now (negative while in debt / paused).
  virtual double available(MonotonicTime now) const = 0;

  /// @return the current rate in tokens per second.
  virtual double rate() const = 0;
  /// @return the current burst.
  virtual double burst() const = 0;
};

using RateBudgetPtr = std::unique_ptr<RateBudget>;

/// How little of a token a budget may lack and still give it. Rounding in token arithmetic
/// (refill time by rate, a store's grants in millionths, sums of parts) must not turn one
/// token into 0.9999999999: a request would wait for a token that, but for rounding, is there,
/// and a budget that holds only what it asked for would never ask again.
inline constexpr double kTokenEpsilon = 1e-6;

/// folly-style token bucket on MonotonicTime. All methods are O(1) and never throw.
/// Thread-safety: not thread-safe (single event-loop thread).
class TokenBucket final : public RateBudget {
public:
  /// @param rate_per_s tokens per second, > 0
  /// @param burst bucket size, >= 1 (a request costs one token)
  /// @param now the current time
  /// @param start_full whether the bucket starts with @p burst tokens (else empty)
  TokenBucket(double rate_per_s, double burst, MonotonicTime now, bool start_full = true);

  /// Takes @p n tokens if available. @return true when taken; false changes nothing.
  bool consume(double n, MonotonicTime now);

  /// Takes @p n tokens, going into debt if needed, so later callers wait behind this one.
  /// @return how long the caller must wait before acting (zero if the tokens were there), or
  ///         nullopt (nothing taken) when @p n exceeds the burst.
  std::optional<Duration> consumeWithBorrow(double n, MonotonicTime now);

  /// @return the earliest time at which @p n tokens are available (>= @p now, rounded up to
  ///         the next nanosecond plus a microsecond so that a timer at that time finds them),
  ///         or nullopt when @p n exceeds the burst.
  std::optional<MonotonicTime> timeWhenAvailable(double n, MonotonicTime now) const;

  /// Gives back @p n tokens (a cancellation); the balance is capped at the burst at @p now.
  void returnTokens(double n, MonotonicTime now);

  /// @return the balance at @p now: at most burst, negative when borrowed or paused.
  double balance(MonotonicTime now) const;

  // RateBudget
  bool tryAcquire(double n, MonotonicTime now) override { return consume(n, now); }
  std::optional<Duration> timeUntilAvailable(double n, MonotonicTime now) const override;
  void refund(double n, MonotonicTime now) override { returnTokens(n, now); }
  void setRate(double rate_per_s, MonotonicTime now) override;
  void setBurst(double burst, MonotonicTime now) override;
  void pauseUntil(MonotonicTime until) override;
  double available(MonotonicTime now) const override { return balance(now); }
  double rate() const override { return rate_; }
  double burst() const override { return burst_; }

private:
  double secondsOf(MonotonicTime t) const { return toSeconds(t - origin_); }

  MonotonicTime origin_;    ///< fixed reference so the doubles stay small and precise
  double rate_;             ///< tokens per second
  double burst_;            ///< tokens
  double zero_time_;        ///< seconds since origin_ at which the balance is (or was) zero
};

}  // namespace hiapi::core
