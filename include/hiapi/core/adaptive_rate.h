#pragma once
// AdaptiveRate: the key's effective request rate and its key-wide cool-down.
//
// Reaction to a rate 429, in proportion to what it says:
//   - a phase error: the proxy was inside its configured budget and the gateway's advertised one,
//     and no other rate 429 came within `repeat_window`. Two buckets with the same rate and burst
//     drift a few milliseconds apart and one request lands early; the budget has not shrunk.
//     The key pauses (Retry-After, else one token interval: a resync) and the rate stays.
//   - a budget error: rate 429s repeat within `repeat_window`, or the proxy was outside the
//     gateway's budget (its advertised limit is lower than configured). The effective fraction
//     of the configured rate is multiplied by `decrease_factor` (floor `min_rate_fraction`).
//   429s that arrive within one second of the previous one, or while the cool-down it started
//   still runs, are answers to requests sent before the first one was seen: one event, one
//   reaction (one per "round trip").
// Recovery: linear (additive) increase. From the end of the cool-down, the fraction rises in a
//   straight line from its decreased value back to 1.0, reaching it after `recovery_time` without
//   a further rate 429. "Success" is the absence of rate 429s, so an idle key recovers too.
// Cool-down: nothing is sent on the key until the cool-down ends. Its length is the 429's
//   `Retry-After` when present, else a resync (one token interval) for a phase error and
//   full-jitter exponential backoff (uniform in [0, min(max_cooldown, base * 2^(k-1))) for the
//   k-th consecutive rate 429; a success resets k) otherwise. Either way it is capped at
//   `max_cooldown` (a silly `Retry-After: 561635` pauses 60 s, not a week).

#include <cstdint>
#include <optional>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"

namespace hiapi::core {

/// `X-RateLimit-*` response headers, parsed as numbers (absent or malformed = nullopt).
struct RateLimitHeaders {
  std::optional<double> limit;
  std::optional<double> remaining;
  /// Seconds until the reset when < 1e9, else a Unix epoch time in seconds.
  std::optional<double> reset;
};

/// Threshold under which `X-RateLimit-Reset` is read as seconds-until-reset, not epoch seconds.
inline constexpr double kRateLimitResetEpochThreshold = 1e9;

/// @return how long until the reset named by @p reset (clamped at zero, not yet capped).
/// @param reset the header value (seconds-from-now when < 1e9, else Unix epoch seconds)
/// @param wall_now the current wall-clock time. Thread-safety: pure.
Duration rateLimitResetDelay(double reset, std::chrono::system_clock::time_point wall_now);

/// Thread-safety: not thread-safe (single event-loop thread).
class AdaptiveRate {
public:
  /// @param limits rate, decrease_factor, min_rate_fraction, recovery_time, max_cooldown
  /// @param backoff_base first backoff step when a 429 has no Retry-After
  AdaptiveRate(const LimitsConfig& limits, Duration backoff_base = std::chrono::seconds(1));

  /// Applies new limits, keeping the current fraction and cool-down.
  void reconfigure(const LimitsConfig& limits);

  /// How a rate 429 was answered (see the file comment).
  enum class Reaction { SameEvent, Resync, Decrease };

  /// A rate 429 was seen.
  /// @param now when it was seen
  /// @param retry_after the parsed Retry-After (nullopt when absent or unparseable)
  /// @param random jitter source for the backoff when @p retry_after is absent
  /// @param inside_budget whether the request was inside the configured budget and the
  ///        gateway's advertised one (false: the budget really is smaller, so cut at once)
  /// @param sent_before_last whether the request went out before the last rate 429 was seen:
  ///        then it answers the same excess and is no news (never a repeat, never a cut)
  /// @return the cool-down end (>= now; capped at now + max_cooldown)
  MonotonicTime onRateLimited(MonotonicTime now, std::optional<Duration> retry_after,
                              Random& random, bool inside_budget = true,
                              bool sent_before_last = false);
  /// @return how the last rate 429 was answered.
  Reaction lastReaction() const { return last_reaction_; }

  /// A non-429 answer: resets the consecutive-429 count used by the backoff.
  void onSuccess(MonotonicTime now);

  /// Extends the cool-down to at least @p until (capped at now + max_cooldown).
  /// @return the cool-down end.
  MonotonicTime pauseUntil(MonotonicTime until, MonotonicTime now);

  /// @return the effective rate at @p now (requests per second).
  double effectiveRate(MonotonicTime now) const;
  /// @return effective / configured, in [min_rate_fraction, 1].
  double fraction(MonotonicTime now) const;
  /// @return the configured rate.
  double configuredRate() const { return configured_rate_; }
  /// @return whether the key is cooling down at @p now.
  bool inCooldown(MonotonicTime now) const { return now < cooldown_until_; }
  /// @return the cool-down end (may be in the past).
  MonotonicTime cooldownUntil() const { return cooldown_until_; }
  /// @return time left in the cool-down (zero when none).
  Duration cooldownRemaining(MonotonicTime now) const;
  /// @return when the fraction will be back at 1.0 (nullopt when already there).
  std::optional<MonotonicTime> fullRecoveryAt() const;
  /// @return consecutive rate 429s (backoff exponent).
  uint32_t consecutive429() const { return consecutive_429_; }
  /// @return decreases applied so far.
  uint64_t decreases() const { return decreases_; }
  /// @return rate 429s answered as phase errors (pause, no cut) so far.
  uint64_t resyncs() const { return resyncs_; }

private:
  double configured_rate_;
  double decrease_factor_;
  double min_fraction_;
  Duration recovery_time_;
  Duration max_cooldown_;
  Duration backoff_base_;
  Duration repeat_window_;

  double base_fraction_ = 1.0;       ///< fraction at recovery_start_
  MonotonicTime recovery_start_{};   ///< when the linear climb from base_fraction_ starts
  MonotonicTime cooldown_until_{};
  std::optional<MonotonicTime> last_event_;  ///< the last rate 429 that was not a same-event one
  Reaction last_reaction_ = Reaction::SameEvent;
  uint32_t consecutive_429_ = 0;
  uint64_t decreases_ = 0;
  uint64_t resyncs_ = 0;
};

}  // namespace hiapi::core
