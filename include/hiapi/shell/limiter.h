#pragma once
// The limiter's shell: one KeyScheduler per key (the pure core decides), timers for its wake-ups
// and for retry delays, and the retry step ("should") around RetryPolicy ("would").

#include <memory>
#include <string>
#include <unordered_map>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/key_scheduler.h"
#include "hiapi/core/node_spares.h"
#include "hiapi/core/retry_policy.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/timers.h"

namespace hiapi::shell {

class Metrics;
class RedisStore;

/// Thread-safety: loop thread only.
class Limiter final : public AdmissionHook, public core::SlotReleaser {
public:
  /// @param timers its timers and its clock. @param random jitter and idempotency keys.
  Limiter(Timers& timers, core::Random& random, core::ConfigSharedPtr cfg, Logger& log,
          Metrics* metrics = nullptr);
  ~Limiter() override;
  Limiter(const Limiter&) = delete;
  Limiter& operator=(const Limiter&) = delete;

  // AdmissionHook
  void setSink(AdmissionSink* sink) override { sink_ = sink; }
  void admit(RequestCtx& ctx) override;
  void clientGone(RequestCtx& ctx) override;
  bool completed(RequestCtx& ctx, const UpstreamResponse& resp) override;
  /// A waiting request whose priority, poll_early_until or unblocks has changed waits from now
  /// on as they say (at the tail of its lane; its deadline stays).
  /// @return whether it was waiting (nothing changes otherwise).
  bool requeue(RequestCtx& ctx);
  /// @return whether @p ctx waits for admission.
  bool isWaiting(const RequestCtx& ctx) const override;

  /// Creates the state of key @p name now rather than at its first request, so that its
  /// gauges exist from the start.
  void addKey(const std::string& name) { keyState(name); }

  /// Applies a new configuration, keeping state for keys and tiers that still exist.
  void reconfigure(core::ConfigSharedPtr cfg);

  /// Forgets the state of unconfigured keys idle for @p idle_for with nothing waiting or running.
  /// @return how many were forgotten. Runs every minute with kIdleKeyTtl.
  size_t forgetIdleKeys(core::Duration idle_for);
  static constexpr core::Duration kIdleKeyTtl = std::chrono::minutes(30);

  /// Per-key snapshots for /status and metrics (key names only).
  std::vector<std::pair<std::string, core::Snapshot>> snapshots() const;

  /// @return (key name, tier) for every tier gate that is full while creates wait for it.
  std::vector<std::pair<std::string, size_t>> blockedTiers() const;

  /// The looks the proxy plans at the tasks holding slots of @p key's blocked tier @p tier
  /// (KeyScheduler::setLookPlan: tokens are kept in reserve for them).
  void setLookPlan(const std::string& key, size_t tier, core::LookPlan plan);
  /// @return the pace of looks at @p key's tier @p tier while none of its tasks has been seen
  ///         ended: Eager where the tier bounds the makespan (KeyScheduler::tierBinds),
  ///         Sparse where the budget does (KeyScheduler::budgetBinds), else Plain.
  core::LearnPace learnPace(const std::string& key, size_t tier) const;
  /// The key's KeyScheduler::lookPrice() (zero for a key not seen yet).
  core::Duration lookPrice(const std::string& key, size_t tier) const;
  /// The key's KeyScheduler::spareWindowSendBy() (nullopt for a key not seen yet).
  std::optional<core::MonotonicTime> spareWindowSendBy(const std::string& key) const;

  /// Typical task duration per tier index (task tracking learns them); every key's scheduler
  /// ranks bottleneck tiers by it. Applied to keys seen later too.
  void setTierDurations(std::vector<std::optional<core::TierDuration>> durations);

  /// Gives a slot back (task terminal, duplicate create).
  void releaseSlot(const std::string& key, uint64_t slot, core::ReleaseReason reason);
  /// SlotReleaser: a request's GatePermit frees its slot. The key dispatches again on its next
  /// timer turn, not from here: a permit may be dropped in the middle of the server's work.
  void releaseHeld(const std::string& key, uint64_t slot) override;
  /// Re-occupies a slot for a task read from the state file. @return the slot id.
  uint64_t restoreSlot(const std::string& key, size_t tier, core::Duration lease_left);

  /// Shares every key's budget through @p store (store.kind: redis); nullptr = local buckets.
  /// Set before the first key is created; the store must outlive the limiter's keys.
  void setStore(RedisStore* store) { store_ = store; }
  /// Dispatches @p key again (the store's reply changed its budget). Unknown keys: nothing.
  void pumpKey(const std::string& key);

  /// Hook: called when a create succeeded with its task id (task tracking).
  std::function<void(const RequestCtx&, const std::string& task_id)> on_task_created;
  /// Hook: called for each lease that ran out.
  std::function<void(const std::string& key, uint64_t slot)> on_lease_expired;

private:
  struct Waiter {
    RequestCtx* ctx;
    core::MonotonicTime since{};  ///< when it last entered the queue (queue wait metrics)
  };

  struct KeyState;
  struct RetryTimer;

  /// Observes how long @p w waited, ending with @p outcome (sent, queue_timeout, client_gone).
  void observeWait(const KeyState& ks, const Waiter& w, core::RouteKind route,
                   std::string_view outcome, core::Duration waited);

  KeyState& keyState(const std::string& key);
  /// @return @p key's scheduler, or nullptr for a key not seen yet (the planner's questions
  ///         about a key must not create it).
  const core::KeyScheduler* schedulerOf(const std::string& key) const;
  core::LimitsConfig limitsFor(const std::string& key) const;
  /// The priority @p ctx waits with (its route; poll_early_until, unblocks, internal).
  static core::Priority priorityOf(const RequestCtx& ctx);
  void submit(KeyState& ks, RequestCtx& ctx, core::Priority prio);
  /// limits.mode shadow: sends @p ctx now, counting what would have held it back.
  void sendInShadow(KeyState& ks, RequestCtx& ctx, const core::RequestInfo& info,
                    core::MonotonicTime now);
  void reject(uint64_t id, core::ProxyError e, int retry_after_s);
  void pump(KeyState& ks);
  /// One dispatch of @p ks and its callbacks. @return the dispatch's wake_at.
  std::optional<core::MonotonicTime> pumpOnce(KeyState& ks);
  size_t waitingTotal() const;
  void arm(KeyState& ks, std::optional<core::MonotonicTime> wake_at);
  /// A retry delay ended: @p id goes back into @p key's queue (both by value: the timer that
  /// called this is gone by then).
  void retryDue(std::string key, uint64_t id);
  // completed()'s steps (limiter_outcome.cc).
  /// Feeds @p out to @p ks's scheduler and counts the reply in the metrics.
  void learnFrom(KeyState& ks, const RequestCtx& ctx, const core::UpstreamOutcome& out,
                 core::Duration latency, core::MonotonicTime now);
  /// A create's slot after its reply: held by the created task, or given back at once.
  void settleCreateSlot(RequestCtx& ctx, const std::string& body, bool success);
  /// Asks the retry policy and the budget; arms the retry timer. @return whether it retries.
  bool scheduleRetry(KeyState& ks, RequestCtx& ctx, const UpstreamResponse& resp,
                     const core::UpstreamOutcome& out, core::MonotonicTime now);
  void sweep();

  Timers& timers_;
  AdmissionSink* sink_ = nullptr;
  const core::Clock& clock_;
  core::Random& random_;
  std::unique_ptr<Timer> sweep_;
  core::ConfigSharedPtr cfg_;
  RedisStore* store_ = nullptr;
  Logger& log_;
  Metrics* metrics_;
  std::unique_ptr<core::RetryPolicy> retry_policy_;
  std::unordered_map<std::string, std::unique_ptr<KeyState>> keys_;
  std::vector<std::optional<core::TierDuration>> tier_durations_;
  /// Every request between admit() and its final answer.
  std::unordered_map<uint64_t, Waiter> handles_;
  core::NodeSpares<std::unordered_map<uint64_t, Waiter>> handle_spares_;
  /// Requests waiting out a retry delay.
  std::unordered_map<uint64_t, std::unique_ptr<RetryTimer>> retry_timers_;
};

}  // namespace hiapi::shell
