#pragma once
// Sharing one key's budget and tier slots between instances (store.kind: redis): the decisions,
// with no I/O. The shell (src/shell/redis_store.cc) carries them to Redis and back.
//
// SharedBudget is a RateBudget that spends tokens reserved from a bucket kept in Redis. Redis
// runs the bucket in its own time (`TIME`), so instances whose clocks disagree still share one
// budget; this class only ever uses durations of its own clock. With a deep queue one round trip
// reserves a block of tokens (at most rate × reserve_window); tokens left unspent once the queue
// is empty go back. A pause after an upstream 429 is handed to the shell, which stores it in
// Redis so every instance waits. While Redis is unreachable (or answers nonsense for this key),
// the budget is a local token bucket with this instance's share: rate / live instances, burst /
// live instances (at least one token) — never unlimited.
//
// Coming back from an outage, an instance settles: for a while it spends a token only when both
// the store grants it and its local share still has it. The instances do not see the store
// return at the same moment (each retries on its own backoff), and one back on the shared bucket
// at the full rate beside another still on its local share would together exceed the rate. A
// bucket the store lost (Redis restarted) is created empty while settling: the instances have
// just spent their shares, and a full burst on top would exceed the upstream's own bucket.
//
// Tokens held here are gone from the store's bucket but not yet from the gateway's, which sees
// them only when they are spent. Were the store's bucket to refill up to the whole burst
// meanwhile, it would hand out tokens the gateway's bucket, capped at the burst, never grew:
// a token held a while (for a bottleneck's planned look) would then meet an upstream 429. So
// the store is told what each instance holds (with every reservation, and in a report of its
// own when spending made the store's figure stale), and its bucket refills only up to the
// burst less what all instances hold.

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>

#include "hiapi/core/clock.h"
#include "hiapi/core/token_bucket.h"

namespace hiapi::core {

/// The share of a budget or ceiling one of @p instances live instances may use alone.
struct LocalShare {
  double rate = 0;      ///< tokens per second
  double burst = 1;     ///< at least 1
  /// @return the share of @p ceiling running tasks: at least one slot.
  static uint32_t slots(uint32_t ceiling, uint32_t instances);
  static LocalShare of(double rate, double burst, uint32_t instances);
};

/// How many tokens one round trip asks for: what waits (at least one), at most
/// max(1, rate × window) and at most the burst.
double reservationSize(double rate, double burst, Duration window, size_t waiting);

/// See the file comment. Thread-safety: not thread-safe (single event loop).
class SharedBudget final : public RateBudget {
public:
  /// @param rate_per_s the key's rate; @param burst its burst
  /// @param reserve_window see reservationSize()
  /// @param instances live instances as last counted (>= 1), for the local share
  SharedBudget(double rate_per_s, double burst, Duration reserve_window, MonotonicTime now,
               uint32_t instances = 1);

  // ---- for the shell -------------------------------------------------------------------------
  /// A reservation to send now, in tokens (what waits, or what the last reserve window spent
  /// when that is more, less what is held, at most a block), or nullopt: none is needed, one is
  /// in flight, the store said to wait, or the store is down. Marks one in flight when it
  /// returns a value.
  std::optional<double> reservationToSend(MonotonicTime now, size_t waiting);
  /// The reply to it: @p granted tokens (all asked, or at least one, or none), and when not all
  /// were granted, how long the store says until the next one is there.
  void onReserved(double granted, Duration retry_in, MonotonicTime now);
  /// Tokens to give back now (held, unspent, nothing waits, none granted within a window):
  /// zero when none. Taken from what this instance holds the moment it returns them.
  double surplusToReturn(MonotonicTime now, size_t waiting);
  /// @return the tokens held here, to report to the store now in a call that asks for and gives
  ///         back nothing, or nullopt: the store's figure is current (or a reply is awaited),
  ///         or it was sent within the reserve window (at least kHeldReportGap) and lives on
  ///         for more than half of @p field_life (how long the store keeps it).
  std::optional<double> heldReportDue(MonotonicTime now, Duration field_life) const;
  /// The store was sent @p held as this instance's held tokens (with any call) at @p now.
  void onHeldSent(double held, MonotonicTime now);
  /// A pause to store (its length from @p now), once each: a 429's cool-down for every instance.
  std::optional<Duration> pauseToShare(MonotonicTime now);
  /// Another instance's pause, seen in a reply: no token before @p until.
  void onSharedPause(MonotonicTime until);
  /// The store cannot be used for this key (unreachable, timed out, wrong type): the local
  /// share applies until onStoreUp(). A reservation in flight is forgotten.
  void onStoreDown(MonotonicTime now);
  /// The store is usable again. Back from an outage, the local share keeps applying as well for
  /// @p settle (see the file comment), or until endSettling().
  void onStoreUp(MonotonicTime now, Duration settle = Duration::zero());
  /// Every instance is known to be back on the store: the shared bucket alone decides.
  void endSettling() { settle_until_.reset(); }
  bool settling(MonotonicTime now) const { return settle_until_ && now < *settle_until_; }
  /// @return the tokens a bucket missing from the store starts with: the burst, except while
  ///         settling (empty: its tokens were just spent from the local shares).
  double missingBucketTokens(MonotonicTime now) const { return settling(now) ? 0.0 : burst_; }
  /// Live instances as counted from heartbeats (floored at 1): resizes the local share.
  void setInstances(uint32_t instances, MonotonicTime now);
  /// The scheduler's phase margin (LimitsConfig::phase_margin): the store grants a token only
  /// this long after its bucket has it, as the local bucket would.
  void setPhaseMargin(Duration margin) { margin_ = margin; }
  /// @return the margin in tokens at the current rate (the store keeps it behind each grant).
  double marginTokens() const;
  bool degraded() const { return degraded_; }
  /// @return tokens spent from the local share since the last call (for a metric).
  double takeLocalSpent() { return std::exchange(local_spent_, 0.0); }
  bool inFlight() const { return in_flight_; }
  double held() const { return held_; }
  uint32_t instances() const { return instances_; }

  // ---- RateBudget ----------------------------------------------------------------------------
  bool tryAcquire(double n, MonotonicTime now) override;
  std::optional<Duration> timeUntilAvailable(double n, MonotonicTime now) const override;
  void refund(double n, MonotonicTime now) override;
  void setRate(double rate_per_s, MonotonicTime now) override;
  void setBurst(double burst, MonotonicTime now) override;
  void pauseUntil(MonotonicTime until) override;
  double available(MonotonicTime now) const override;
  double rate() const override { return rate_; }
  double burst() const override { return burst_; }

  /// How long a caller waits for a reply it has asked for before looking again (the shell's
  /// reply pumps the key anyway; this is a backstop).
  static constexpr Duration kReplyBackstop = std::chrono::milliseconds(50);
  /// Reports of held tokens spent since the last call are sent at most this often.
  static constexpr Duration kHeldReportGap = std::chrono::milliseconds(50);

private:
  void resetLocal(MonotonicTime now);
  void seen(MonotonicTime now) const { last_now_ = std::max(last_now_, now); }
  /// Rolls the spending windows forward to @p now.
  void rollSpent(MonotonicTime now);
  bool paused(MonotonicTime now) const { return pause_until_ && now < *pause_until_; }

  double rate_;
  double burst_;
  Duration window_;
  uint32_t instances_;
  bool degraded_ = false;
  TokenBucket local_;                ///< the local share, used while degraded
  double held_ = 0;                  ///< tokens reserved from the store and not spent
  double held_told_ = 0;             ///< held_ as the store last heard it (grants included)
  MonotonicTime held_told_at_{};
  bool in_flight_ = false;
  double local_spent_ = 0;
  Duration margin_{0};
  /// Tokens spent in the current reserve window and in the one before: the demand a
  /// reservation covers when requests are admitted as they come (nothing queues then).
  double spent_now_ = 0;
  double spent_last_ = 0;
  MonotonicTime spent_since_{};
  MonotonicTime next_ask_{};         ///< the store said no token before this
  MonotonicTime last_grant_{};
  std::optional<MonotonicTime> pause_until_;
  std::optional<MonotonicTime> pause_to_share_;
  std::optional<MonotonicTime> settle_until_;  ///< the local share applies too until then
  mutable MonotonicTime last_now_{};  ///< the latest time any call was given (pauseUntil())
};

}  // namespace hiapi::core
