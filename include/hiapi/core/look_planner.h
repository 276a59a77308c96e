#pragma once
// LookPlanner: when the proxy should look upstream at a task itself, and how long what it last
// saw stays fresh. It answers from the task records, the learned durations and the tier and task
// settings; it changes nothing (TaskTracker marks the fetches it starts).
//
// Looks come from three sources: reconcile (a task holding a slot that nobody asked about for
// reconcile_interval), gate pressure (creates wait for a full tier gate: look at the tasks most
// likely to have ended, not before their likely end), and held polls (a client poll waits for
// its task's likely end). Before any task of a tier has ended, gate pressure looks only at each
// key's oldest task of it, at the tier's LearnPace.
//
// A LookPlanner is a view: cheap to make, it borrows everything it reads and must not outlive it.
// Thread-safety: const; safe while no other call changes what it borrows.

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/concurrency_gate.h"
#include "hiapi/core/config.h"
#include "hiapi/core/duration_estimator.h"
#include "hiapi/core/task_registry.h"

namespace hiapi::core {

/// The pace for (key's name, tier): asked each time a look at one of its tasks is planned.
using LearnPaceFn = std::function<LearnPace(const std::string& key, size_t tier)>;
/// What a look that finds a task of (key's name, tier) running costs that tier's makespan
/// (KeyScheduler::lookPrice()): asked where looks at it spread across varying run times.
using LookPriceFn = std::function<Duration(const std::string& key, size_t tier)>;
/// While the gateway of the key named counts in windows and its current one has a request to
/// spare, the latest moment a request may leave to count in it (KeyScheduler::
/// spareWindowSendBy()); else nullopt.
using SpareWindowFn = std::function<std::optional<MonotonicTime>(const std::string& key)>;

/// See the file comment. The methods mirror TaskTracker's, which documents them in full.
class LookPlanner {
public:
  /// @param tiers not empty
  /// @param learn_pace may be empty (LearnPace::Plain)
  /// @param look_price may be empty (looks cost nothing but their token)
  /// @param spare_window may be empty (no window is ever spare)
  LookPlanner(const TaskRegistry& registry, const DurationEstimator& durations,
              const std::vector<TierConfig>& tiers, const TasksConfig& cfg,
              const LearnPaceFn& learn_pace, const LookPriceFn& look_price,
              const SpareWindowFn& spare_window)
      : registry_(registry), durations_(durations), tiers_(tiers), cfg_(cfg),
        learn_pace_(learn_pace), look_price_(look_price), spare_window_(spare_window) {}

  size_t clampTier(size_t tier) const { return std::min(tier, tiers_.size() - 1); }
  Duration minPollInterval(size_t tier) const { return tiers_[clampTier(tier)].min_poll_interval; }
  /// @return the prior of @p r's model (modelPrior), which bounds its looks' gaps before any
  ///         task of its tier was seen ended.
  Duration priorOf(const TaskRecord& r) const;
  /// The pace of @p key's tier @p tier while none of its tasks has been seen ended.
  LearnPace learnPace(const std::string& key, size_t tier) const;
  /// What a look at a task of @p key's tier @p tier that finds it running costs (zero unset).
  Duration lookPrice(const std::string& key, size_t tier) const;

  /// How long after an upstream look at @p r at @p at the next is worthwhile.
  Duration refreshAfter(const TaskRecord& r, MonotonicTime at) const;
  /// How long @p r's cached reply is fresh: not_found_ttl for a 404, terminal_ttl (at least
  /// min_poll_interval) for a terminal detail, else refreshAfter() its fetch.
  Duration replyTtl(const TaskRecord& r) const;
  bool replyFresh(const TaskRecord& r, MonotonicTime now) const;
  /// When @p r is likely to have ended at the earliest: its creation plus the shortest of its
  /// tier's recent durations (its creation while nothing is known of its tier).
  MonotonicTime likelyEnd(const TaskRecord& r) const;
  /// When the proxy's own look at @p r is next due: @p now while a fetch is in flight, else
  /// when its last fetch stops being fresh or at its likely end, whichever is later.
  MonotonicTime nextLookAt(const TaskRecord& r, MonotonicTime now) const;

  /// Reconcile's tasks: due now and not in flight, longest idle first.
  std::vector<const TaskRecord*> dueForReconcile(MonotonicTime now) const;
  std::optional<MonotonicTime> nextReconcileAt() const;

  /// Gate pressure's tasks of @p key's tier @p tier: due now and not in flight, oldest first.
  std::vector<const TaskRecord*> dueForGatePressure(const std::string& key, size_t tier,
                                                    MonotonicTime now) const;
  std::optional<MonotonicTime> nextGatePressureAt(const std::string& key, size_t tier,
                                                  MonotonicTime now) const;
  LookPlan gatePressurePlan(const std::string& key, size_t tier, MonotonicTime now) const;

  std::optional<MonotonicTime> nextHeldLookAt(const TaskRecord& r, MonotonicTime now) const;
  std::optional<MonotonicTime> holdPollUntil(const TaskRecord& r, MonotonicTime now,
                                             Duration within) const;
  std::optional<MonotonicTime> likelyRunningUntil(const TaskRecord& r, MonotonicTime now) const;
  bool behindUnlearnedOldest(const TaskRecord& r) const;

private:
  /// Before any task of @p tier has ended: when @p key's oldest task of it holding a slot was
  /// created (gate-pressure looks go only to that one: while it runs, younger ones likely do
  /// too, and each look at them would be a token spent to learn nothing). nullopt otherwise.
  std::optional<MonotonicTime> oldestUnlearned(const std::string& key, size_t tier) const;
  /// A task gate pressure may look at: holds a slot of @p tier, not terminal, and, while the
  /// tier has no duration estimate, is the key's oldest (@p oldest).
  bool gatePressureCandidate(const TaskRecord& r, size_t tier,
                             std::optional<MonotonicTime> oldest) const;
  /// refreshAfter() for a tracked task whose tier has estimate @p estimate.
  Duration refreshAfterEstimate(const TaskRecord& r, MonotonicTime at, Duration estimate) const;
  /// The gap between looks at @p r past its likely end when its tier's recent durations lay
  /// @p spread apart (more than two end-poll intervals @p fine): see refreshAfterEstimate().
  Duration spreadLookGap(const TaskRecord& r, Duration spread, Duration fine,
                         Duration interval) const;

  const TaskRegistry& registry_;
  const DurationEstimator& durations_;
  const std::vector<TierConfig>& tiers_;
  const TasksConfig& cfg_;
  const LearnPaceFn& learn_pace_;
  const LookPriceFn& look_price_;
  const SpareWindowFn& spare_window_;
};

}  // namespace hiapi::core
