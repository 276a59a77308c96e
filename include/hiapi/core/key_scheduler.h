#pragma once
// KeyScheduler: the admission facade the shell uses, one per API key. It combines the key's
// RateBudget (token bucket), AdaptiveRate (effective rate and key-wide cool-down), one
// ConcurrencyGate per tier, and the AdmissionQueue.
//
// Pull style — the shell never sleeps and the scheduler never calls back:
//   1. submit() every request that must go upstream (nothing is admitted inside submit());
//   2. call dispatch(now) after every submit / cancel / releaseSlot / onUpstreamOutcome /
//      reconfigure, and when the timer for the last Dispatch::wake_at fires;
//   3. send each Dispatch::admitted request at once; answer each Dispatch::expired one with
//      429 queue_timeout and Retry-After = retryAfterSeconds(now);
//   4. report each upstream answer with onUpstreamOutcome(); release a create's slot with
//      releaseSlot() when the create fails / is never sent (NotCreated) or its task reaches a
//      terminal status (TaskFinished). Leases end slots that are never released.
// wake_at is the earliest time anything could change on its own (a token, the cool-down end, a
// deadline, a lease expiry, a ceiling recovery step): there is no busy loop, and no timer while
// nothing waits.
//
// Admission of one request = one token, plus (for a create without a held slot) one slot of its
// tier; both are reserved together and committed together, or neither. Head-of-line blocking is
// per tier lane: a create waiting for a full heavy gate does not block polls or light creates.
//
// 429 handling (onUpstreamOutcome):
//   - rate 429 (by code; unknown cause on poll/list/other; unknown on a create when no other task
//     of its tier is running): key-wide cool-down from Retry-After (capped at max_cooldown), a
//     resync or full-jitter backoff; a multiplicative rate decrease only when rate 429s repeat
//     within repeat_window or the gateway advertises a lower limit (see adaptive_rate.h);
//   - concurrency 429 (by code; unknown cause on a create while other tasks of its tier run): the
//     tier's effective ceiling drops (see concurrency_gate.h); no cool-down.
// The gateway's own counters (`X-RateLimit-*` on any answer) keep the bucket in phase with it:
//   - Remaining r answers a request after which n more were admitted, so at most r - n remain:
//     the bucket never holds a whole token more than that (a whole one: Remaining counts whole
//     tokens, so a bucket in phase may hold a fraction more);
//   - with Reset, no more than r - n are admitted before the reset plus the phase margin (a
//     window allowance); after it, one per token interval until the next answer tells how many
//     the reset freed (all of a fixed window's limit, one of a sliding window's or a bucket's);
//   - a Limit below the configured burst becomes the bucket's burst (the gateway's is smaller);
//   - a Reset more than 1.5 token intervals off at the configured rate shows a gateway that
//     counts in windows (a bucket's next token is never more than one off): what such a window
//     leaves unused is lost at its reset, so while one has a request to spare, a look due
//     shortly after its reset is better sent just before it (spareWindowSendBy());
//   - all of it as of the answered request's send (UpstreamOutcome::sent_at), not its answer's
//     arrival: the gateway counted that request a one-way trip after it left, and counts the
//     next one a one-way trip after it leaves, so between sends the two clocks agree. Read as of
//     the answer, every counter would be a round trip old: each reset a round trip late, each
//     bucket short of a round trip's refill. Only the phase margin covers a trip that is
//     shorter than the one answered.
// Without those counters nothing tells a window from a bucket before a 429: a window lets
//   through only `burst` where a bucket of the configured rate and burst would send more. From
//   the first rate 429 (or from the start, with limits.pace_without_counters: window) the key
//   also keeps to a SendLog of `burst` per burst / rate (plus the phase margin), the strictest
//   shape with that rate and burst, at the same long-run rate, until the gateway sends
//   X-RateLimit-Remaining. The log counts the sends before the 429 too: the gateway does.
// Phase margin: a token is usable limits.phase_margin after the bucket has it (at most a quarter
//   of a token interval, and never more than the burst allows), so that a request paced at the
//   gateway's exact rate reaches it after its token, not a few milliseconds before.
//
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "hiapi/core/adaptive_rate.h"
#include "hiapi/core/admission_queue.h"
#include "hiapi/core/bottleneck_planner.h"
#include "hiapi/core/clock.h"
#include "hiapi/core/concurrency_gate.h"
#include "hiapi/core/config.h"
#include "hiapi/core/send_log.h"
#include "hiapi/core/tier_matcher.h"
#include "hiapi/core/token_bucket.h"

namespace hiapi::core {

/// One request that wants to go upstream.
struct RequestInfo {
  uint64_t id = 0;                    ///< shell's request id; unique among waiting requests
  RouteKind route = RouteKind::Other;
  Priority priority = Priority::Other;
  std::string client;                 ///< client class (X-HiAPI-Client value or a shared default)
  /// Creates: the tier from tierFor(). A create without one goes to the fallback (last) tier;
  /// other routes ignore it.
  std::optional<size_t> tier;
  /// A retried create that still holds its slot from the first attempt: needs only a token.
  /// The scheduler releases it (NotCreated) if the retry is cancelled or expires while queued.
  std::optional<SlotId> held_slot;
  MonotonicTime deadline{};           ///< queue_timeout at this time if not admitted by then
  /// Background requests: wait like client requests (with the creates, in arrival order
  /// within a client) after 3/4 of queue.deadline,
  /// or from this time on (a poll of a task from its likely end) while the request may free a
  /// slot of a tier whose full gate creates wait for (see unblocks; judged at every dispatch).
  /// Otherwise such a poll would only tell its client sooner, and it must not take tokens from
  /// creates.
  std::optional<MonotonicTime> background_until;
  /// Polls: the tier whose full gate this poll may free a slot of (the proxy's own poll of a task
  /// that has likely ended, while creates wait). It goes with that tier's creates when the tier
  /// is a bottleneck (see setTierDuration()).
  std::optional<size_t> unblocks;
};

enum class SubmitResult {
  Queued,       ///< waits; watch dispatch()
  QueueFull,    ///< answer 429 queue_full with Retry-After = retryAfterSeconds(now)
  DuplicateId,  ///< a request with this id is already waiting (a shell bug)
};

/// Why an upstream 429 came, as the shell read it from the error code.
enum class Limit429Cause { Rate, Concurrency, Unknown };

/// @return the cause named by an upstream error code (`RATE_LIMIT_EXCEEDED`,
///         `concurrency_limit_exceeded`, ...): contains "concurren" → Concurrency, "rate" →
///         Rate, else Unknown. Thread-safety: pure.
Limit429Cause classify429Code(std::string_view error_code);

/// One upstream answer (or failure) of an admitted request.
struct UpstreamOutcome {
  int status = 0;                     ///< HTTP status; 0 = connection failure
  /// Admitted::seq of the attempt this answers (nullopt: unknown, counts as the latest).
  std::optional<uint64_t> seq;
  RouteKind route = RouteKind::Other;
  std::optional<size_t> tier;         ///< creates: the tier of the slot
  std::optional<SlotId> slot;         ///< creates: the slot, if still held
  Limit429Cause cause = Limit429Cause::Unknown;
  std::optional<std::string> retry_after;  ///< raw Retry-After header
  RateLimitHeaders ratelimit;         ///< X-RateLimit-*
  std::chrono::system_clock::time_point wall_now{};  ///< for HTTP-date / epoch values
  /// When the request left for the gateway (nullopt: unknown, read as the answer's arrival).
  /// X-RateLimit-* describe the gateway as of this send (see the file comment).
  std::optional<MonotonicTime> sent_at;
};

/// One request let through by dispatch(): send it now.
struct Admitted {
  uint64_t id = 0;
  std::optional<SlotId> slot;         ///< creates: the slot it holds (new or held_slot)
  size_t tier = 0;                    ///< creates: its tier; others: 0 (meaningless)
  RouteKind route = RouteKind::Other;
  Duration waited{};                  ///< time spent queued
  /// Admission sequence number (1, 2, ... per key): give it back in UpstreamOutcome::seq, so
  /// that the gateway's X-RateLimit-Remaining is read net of what was sent after it.
  uint64_t seq = 0;
};

/// What dispatch() decided.
struct Dispatch {
  std::vector<Admitted> admitted;     ///< send these, in this order
  std::vector<uint64_t> expired;      ///< answer these 429 queue_timeout (held slots released)
  std::vector<SlotId> expired_slots;  ///< leases that ran out during this call
  std::optional<MonotonicTime> wake_at;  ///< call dispatch() again at this time (nullopt: only
                                         ///< after the next event)
};

/// Counters for metrics (monotonic).
struct SchedulerCounters {
  uint64_t submitted = 0;
  uint64_t admitted = 0;
  uint64_t cancelled = 0;
  // Throttle reasons: why a submitted request could not go at once (judged at submit), plus the
  // rejections.
  uint64_t throttled_rate = 0;         ///< fewer tokens than waiting requests
  uint64_t throttled_concurrency = 0;  ///< its tier's gate was full
  uint64_t throttled_cooldown = 0;     ///< the key was cooling down
  uint64_t queue_full = 0;
  uint64_t queue_timeout = 0;
  // Upstream signals.
  uint64_t upstream_429_rate = 0;
  uint64_t upstream_429_concurrency = 0;
  uint64_t leases_expired = 0;
  uint64_t rate_decreases = 0;
  uint64_t rate_resyncs = 0;           ///< rate 429s answered as phase errors (pause, no cut)
  uint64_t rate_guards = 0;            ///< rate 429s that made the key keep to a SendLog
  // Shadow mode (admitShadow): requests sent at once that the limits would have held back.
  uint64_t shadow_rate = 0;
  uint64_t shadow_concurrency = 0;
  uint64_t shadow_cooldown = 0;
};

struct TierSnapshot {
  std::string name;
  uint32_t running = 0;
  uint32_t ceiling = 0;
  uint32_t effective_ceiling = 0;
  size_t queued = 0;                  ///< waiting for a slot of this tier
  size_t queued_elsewhere = 0;        ///< other instances' creates waiting for it (shared store)
  std::vector<std::pair<SlotId, MonotonicTime>> leases;  ///< earliest expiry first
  uint64_t leases_expired = 0;
  uint64_t ceiling_lowered = 0;
};

struct Snapshot {
  double configured_rate = 0;         ///< requests per second
  double effective_rate = 0;
  double tokens = 0;                  ///< may be negative while paused
  double burst = 0;
  Duration cooldown_remaining{};
  size_t queue_depth = 0;
  std::array<size_t, kPriorityCount> queued_by_priority{};
  std::array<size_t, 4> queued_by_route{};  ///< indexed by RouteKind
  std::vector<TierSnapshot> tiers;
  SchedulerCounters counters;
  std::optional<double> advertised_limit;      ///< last X-RateLimit-Limit seen
  std::optional<double> advertised_remaining;  ///< last X-RateLimit-Remaining seen
  bool window_guard = false;                   ///< keeping to a SendLog (see the file comment)
};

/// What would have held back a request that shadow mode sent at once.
enum class ShadowReason { None, Cooldown, Concurrency, Rate };

/// @return "cooldown", "concurrency", "rate" (metric label values); "" for None.
std::string_view shadowReasonName(ShadowReason r);

/// What admitShadow() did.
struct ShadowAdmission {
  std::optional<SlotId> slot;  ///< a create's slot, taken even above its tier's ceiling
  ShadowReason would_wait = ShadowReason::None;
  uint64_t seq = 0;  ///< as Admitted::seq
};

/// See the file comment. Thread-safety: not thread-safe.
class KeyScheduler {
public:
  /// @param limits the key's limits (the shell applies KeyConfig rate/burst overrides first);
  ///        empty tiers mean defaultTiers()
  /// @param queue max_size (per key here) and max_per_client
  /// @param now the current time
  /// @param random jitter for backoff; must outlive the scheduler
  /// @param budget the rate budget to draw on; nullptr = a local TokenBucket (starts full)
  KeyScheduler(const LimitsConfig& limits, const QueueConfig& queue, MonotonicTime now,
               Random& random, RateBudgetPtr budget = nullptr);

  /// @return the tier for a create's model and body route (TierMatcher rules).
  size_t tierFor(std::string_view model, std::optional<std::string_view> route) const;

  /// Queues a request. Never reports an admission by itself: call dispatch(). When nothing waits
  /// (and nothing taken this way is still unreported), a request that dispatch() would admit
  /// first anyway (not a create, no lane, not background, a spare token, no cooldown) takes its
  /// token now and skips the queue's bookkeeping; the next dispatch() reports it first.
  /// @return Queued, QueueFull (also when the client's share is full) or DuplicateId.
  SubmitResult submit(const RequestInfo& request, MonotonicTime now);

  /// Drops a waiting request (its client went away) and releases its held slot, if any.
  /// @return true when it was waiting.
  bool cancel(uint64_t id, MonotonicTime now);

  /// Admits what can go now (see the file comment).
  Dispatch dispatch(MonotonicTime now);
  /// The same into @p out, whose vectors are cleared and reused (no allocation per call once
  /// they have grown: the limiter dispatches on every request).
  void dispatch(MonotonicTime now, Dispatch& out);

  /// Undoes an admission that was never sent (client gone between dispatch and send): refunds
  /// the token and releases the slot (NotCreated).
  void unadmit(const Admitted& admitted, MonotonicTime now);

  /// Frees a slot: exactly once; unknown, expired or already released ids are a no-op.
  /// @return true when the slot was held.
  bool releaseSlot(SlotId slot, ReleaseReason reason, MonotonicTime now);

  /// Moves a held slot's lease end (a task seen still running). @return false when not held.
  bool extendLease(SlotId slot, MonotonicTime new_expiry);

  /// Shadow mode (limits.mode: shadow): @p request goes now, whatever the limits say. It takes a
  /// token if one is there and, as a create without a held slot, a slot of its tier even above
  /// the ceiling, so that the budget and the gates count what really runs upstream. What would
  /// have held it back (cooldown first, then a full gate, then no token) is returned and
  /// counted in SchedulerCounters::shadow_*.
  ShadowAdmission admitShadow(const RequestInfo& request, MonotonicTime now);

  /// Re-occupies a slot for a task known from a state file (even above the ceiling).
  /// @param tier its tier (clamped to the last)
  /// @return the new slot id.
  SlotId restoreSlot(size_t tier, MonotonicTime lease_expiry);

  /// Feeds an upstream answer: 429 handling, success, X-RateLimit-* (see the file comment).
  void onUpstreamOutcome(const UpstreamOutcome& outcome, MonotonicTime now);

  /// @return an estimate of how long a request submitted now would wait (cool-down + queue
  ///         ahead of it at the effective rate).
  Duration estimatedWait(MonotonicTime now) const;
  /// @return estimatedWait() rounded up to whole seconds, within [1, max(1, max_cooldown)]:
  ///         the integer Retry-After for queue_full / queue_timeout answers.
  uint32_t retryAfterSeconds(MonotonicTime now) const;

  /// @return the state for /status and metrics.
  Snapshot snapshot(MonotonicTime now) const;

  /// How long a task of @p tier runs (task tracking learns it; before that, how long its oldest
  /// running task has run so far, a lower bound), or nullopt when not known. Ranks bottleneck
  /// tiers: the one with the most work left (waves of waiting creates times this duration) takes
  /// a token first, for its creates and for polls that may free one of its slots. A tier not
  /// learned yet counts as long as the longest duration or lower bound of any tier (at least
  /// 1 s): knowing nothing, tiers rank by waves alone — a lower bound only says which tier
  /// started first, and ranking by it would put the light tier (whose first creates came
  /// first) ahead of the heavy one at start-up.
  void setTierDuration(size_t tier, std::optional<TierDuration> duration) {
    planner_.setTierDuration(tier, duration);
  }

  /// The proxy's planned looks at the tasks holding slots of @p tier (task tracking knows:
  /// TaskTracker::gatePressurePlan). While the tier's gate is full with creates waiting and it
  /// is the bottleneck with the most work left, tokens are kept in reserve for its looks and
  /// for the creates they let go (a look and a create each, as long as creates wait): as many
  /// as the bucket must hold now for every planned one to find its tokens on time. Other
  /// requests take a token only while more are left. The reserve is at most the burst when the
  /// tier's work left outlasts the budget's (a refill lost to a full bucket costs nothing
  /// then), else min(2, burst - 1) (it never fills the bucket: no throughput lost).
  void setLookPlan(size_t tier, LookPlan plan) { planner_.setLookPlan(tier, std::move(plan)); }
  /// Creates other instances sharing this key (store.kind: redis) hold waiting for @p tier's
  /// gate (0: none, or no shared store). They count as this instance's own would in
  /// blockedTiers(), the bottleneck ranking and tierBinds()/budgetBinds(): a slot this
  /// instance's task holds is one they wait for, so its end is looked for as urgently. The
  /// tokens kept for the creates a look lets go stay this instance's own creates' (another
  /// instance takes its create's token itself).
  void setRemoteWaiting(size_t tier, size_t creates) { planner_.setRemoteWaiting(tier, creates); }

  /// @return the tiers whose gate is full while creates wait for it (a poll that finds one of
  ///         their tasks finished frees capacity someone is waiting for).
  std::vector<size_t> blockedTiers(MonotonicTime now) const;
  /// @return the tokens the bucket should hold for what waits now: one for each queued request
  ///         that can go once it has one (creates at a full gate need none yet: held for them,
  ///         tokens would sit idle while another instance's requests wait), and, while any
  ///         does, the bottleneck's reserve on top (dispatch(): a request outside its lanes
  ///         goes only with more than the reserve left). A budget that holds no more than it
  ///         is asked for (SharedBudget) would otherwise keep such a request waiting until its
  ///         deadline.
  size_t tokensWanted(MonotonicTime now) const;
  /// @return whether @p tier's work left (waves of waiting creates times its duration) is at
  ///         least the budget's (the tokens the waiting requests and running tasks still need,
  ///         over the rate): then the tier, not the budget, bounds the makespan.
  bool tierBinds(size_t tier, MonotonicTime now) const;
  /// @return whether the budget bounds the makespan: the waiting requests and running tasks
  ///         need more tokens than the bucket holds, and more time than any tier's work
  ///         (tierBinds()), even should the first end of a tier not learned yet be seen half
  ///         its oldest task's age late (core::LearnPace::Sparse).
  bool budgetBinds(MonotonicTime now) const;
  /// @return the pace of looks at @p tier while none of its tasks has been seen ended: Eager
  ///         where it binds (tierBinds()), Sparse where the budget does (budgetBinds()), else
  ///         Plain. One count of the tokens needed for both questions.
  LearnPace learnPace(size_t tier, MonotonicTime now) const;
  /// @return what a look that finds a task of @p tier running costs the tier: the token
  ///         interval, times the share of the budget the tier's own requests (a create and a
  ///         look per waiting create, a look per running task) take over its work left. Where
  ///         that share is high, a wasted look is a create of the tier waiting for a token;
  ///         zero while none of its creates waits.
  Duration lookPrice(size_t tier, MonotonicTime now) const;
  /// @return while the gateway counts in windows (see the file comment) and its current window,
  ///         as the key's sends see it, allows at least one more: the latest moment a request
  ///         may leave to count in that window (its reset less twice the phase margin). nullopt
  ///         otherwise.
  std::optional<MonotonicTime> spareWindowSendBy(MonotonicTime now) const;

  /// Hot reload: new rate/burst/adaptive settings and tiers. Tiers that still exist (by name)
  /// keep their running slots and lowered ceilings; slots of removed tiers are dropped; waiting
  /// creates of removed tiers move to the fallback (last) tier.
  void reconfigure(const LimitsConfig& limits, MonotonicTime now);
  void reconfigure(const LimitsConfig& limits, const QueueConfig& queue, MonotonicTime now);

  const TierMatcher& tiers() const { return matcher_; }
  const RateBudget& budget() const { return *budget_; }
  const AdaptiveRate& adaptive() const { return adaptive_; }
  const ConcurrencyGate& gate(size_t tier) const { return *gates_.at(tier); }
  size_t queueDepth() const { return queue_.size(); }
  /// @return creates waiting for a slot of @p tier (its lane).
  size_t waitingCreates(size_t tier) const { return queue_.laneSize(clampTier(tier)); }
  const SchedulerCounters& counters() const { return counters_; }

private:
  struct Pending {
    RouteKind route;
    std::optional<size_t> tier;        ///< creates only
    std::optional<SlotId> held_slot;
    MonotonicTime enqueued;
  };

  void refresh(MonotonicTime now, Dispatch* out);
  /// dispatch()'s admission of @p entry, popped with its token taken: into out.admitted; back
  /// onto its tier's lane when its held slot lapsed; expired when no slot can be had.
  void admitEntry(QueueEntry entry, MonotonicTime now, Dispatch& out);
  /// Sets out.wake_at: the earliest time anything could change on its own. @p tokens_wanted:
  /// the tokens the queue waits for, nullopt when it does not wait for tokens.
  void setWake(MonotonicTime now, const AdmissionQueue::LaneOpen& open,
               std::optional<double> tokens_wanted, Dispatch& out) const;
  /// submit()'s queue entry for @p request: its deadline, its lane, and for background work how
  /// long it waits for spare tokens.
  QueueEntry queueEntryFor(const RequestInfo& request, const Pending& p, MonotonicTime now) const;
  /// submit()'s shortcut: @return whether @p entry was admitted at once (into ready_).
  bool admitAtOnce(const QueueEntry& entry, RouteKind route, MonotonicTime now);
  bool laneOpen(std::optional<size_t> lane, MonotonicTime now) const;
  void dropPending(uint64_t id, MonotonicTime now);
  void applyRate(MonotonicTime now);
  void pauseBudget(MonotonicTime until);
  /// Takes one token for an admission: the gateway's window allows one, and the bucket holds one
  /// plus the phase margin. @return whether taken.
  bool takeToken(MonotonicTime now);
  /// Gives back a token takeToken() took (the admission did not happen).
  void giveToken(MonotonicTime now);
  /// Numbers an admission (Admitted::seq).
  uint64_t nextSeq() { return ++admission_seq_; }
  /// @return the phase margin in tokens at the current rate (see the file comment).
  double marginTokens() const;
  /// @return whether the gateway's window allows no more admissions before its reset.
  bool windowClosed(MonotonicTime now) const {
    return (window_end_ && now < *window_end_ && window_allowance_ < 1.0) ||
           (guarded_ && !sends_.allows(now));
  }
  /// Past the gateway's announced reset and without newer news, assumes one more admission
  /// per token interval (see the comment inside).
  void rollWindow(MonotonicTime now);
  /// @return when windowClosed() stops holding (the gateway's reset, the guard's next send).
  MonotonicTime windowOpensAt(MonotonicTime now) const;
  /// A rate 429 came with no X-RateLimit-Remaining ever seen: keep to the guard from now on.
  void guardWindow();
  /// @return whether the key keeps to the guard (see the file comment).
  bool guardWanted() const;
  /// Shapes sends_ for the current burst and configured rate.
  void shapeSendLog();
  /// Reads the gateway's X-RateLimit-* (see the file comment).
  void onGatewayCounters(const UpstreamOutcome& o, MonotonicTime now);
  /// onGatewayCounters()' window: @p left more (Remaining less the sends since; may be
  /// negative) before the gateway's reset at @p reset_at, as the key's sends see it.
  void onGatewayReset(MonotonicTime reset_at, double left, MonotonicTime now);
  /// @return the burst to use: the configured one, or a lower advertised limit.
  double effectiveBurst() const;
  /// @return @p burst, at least one token (fewer would never admit a request).
  static double sanitizedBurst(double burst) { return burst >= 1.0 ? burst : 1.0; }
  size_t clampTier(size_t tier) const;
  /// The planner's view of this key now.
  KeyLoad load() const { return KeyLoad{queue_, gates_, *budget_}; }

  Random& random_;
  LimitsConfig limits_;
  TierMatcher matcher_;
  RateBudgetPtr budget_;
  AdaptiveRate adaptive_;
  std::vector<std::unique_ptr<ConcurrencyGate>> gates_;
  Duration queue_deadline_;  ///< queue.deadline (background work waits at most 3/4)
  Duration create_gather_;   ///< queue.create_gather
  /// Creates arriving together are gathered (see QueueConfig::create_gather): while gathering,
  /// no create without a held slot is admitted, until gatherEnd().
  bool gathering_ = false;
  MonotonicTime gather_start_{};
  MonotonicTime last_create_{};
  MonotonicTime gatherEnd() const;
  BottleneckPlanner planner_;  ///< tier durations and look plans; bottlenecks and reserve
  AdmissionQueue queue_;
  std::unordered_map<uint64_t, Pending> pending_;
  /// Admitted by submit() (see there), reported by the next dispatch(). At most one.
  std::vector<Admitted> ready_;
  std::unordered_map<SlotId, size_t> slot_tier_;
  std::array<size_t, 4> queued_by_route_{};
  SlotId next_slot_id_ = 1;
  SchedulerCounters counters_;
  uint64_t admission_seq_ = 0;
  // The gateway's own view (X-RateLimit-*): see the file comment.
  std::optional<double> advertised_limit_;
  std::optional<double> advertised_remaining_;
  std::optional<MonotonicTime> window_end_;
  double window_allowance_ = 0.0;
  std::optional<MonotonicTime> window_reset_;  ///< the reset the gateway last announced
  /// This key's recent sends, kept whether or not the guard holds: the gateway counts the sends
  /// before its 429 in its window too, so the guard starts from them.
  SendLog sends_{1, std::chrono::seconds(1)};
  bool guarded_ = false;                       ///< keeping to sends_ (see the file comment)
  bool gateway_windowed_ = false;              ///< a Reset showed a window (see the file comment)
  bool window_shown_ = false;                  ///< a rate 429 came before any counters
  std::optional<uint64_t> rate_429_seq_;       ///< admission_seq_ when the last rate 429 came
};

}  // namespace hiapi::core
