#pragma once
// BottleneckPlanner: which of one key's tiers bound its makespan, and how many tokens its
// scheduler keeps back for the bottleneck's planned looks.
//
// A tier whose waiting creates outnumber its free slots is a bottleneck; the one with the most
// work left (waves of waiting creates times its task duration) goes first, for its creates and
// for the proxy's polls that may free one of its slots. While its gate is full and looks at its
// tasks are planned (LookPlan, from task tracking), the bucket keeps the tokens those looks and
// the creates they let go will need. Whether a tier or the budget binds also sets the pace of
// looks at a tier none of whose tasks has been seen ended (LearnPace). With a shared store the
// creates other instances hold waiting for a tier count too: the slots of a key's tier are
// shared, so one of this instance's tasks holding a slot another instance's create waits for is
// as much a bottleneck as if the create were waiting here.
//
// It keeps what the shell tells it (tier durations, look plans) and reads the key's queue, gates
// and budget from a KeyLoad given to each call; it changes nothing of them.
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "hiapi/core/admission_queue.h"
#include "hiapi/core/clock.h"
#include "hiapi/core/concurrency_gate.h"
#include "hiapi/core/token_bucket.h"

namespace hiapi::core {

/// Polls that may free a slot of tier t wait on lane kUnblockLanes + t: no gate, but named
/// separately so that a bottleneck tier's turn covers them (see BottleneckPlanner::bottlenecks).
inline constexpr size_t kUnblockLanes = size_t{1} << 20;

/// One key's state as the planner reads it: its queue (lanes = tiers), its tiers' gates and its
/// rate budget. Borrowed for one call.
struct KeyLoad {
  const AdmissionQueue& queue;
  const std::vector<std::unique_ptr<ConcurrencyGate>>& gates;
  const RateBudget& budget;
};

/// See the file comment. Tier indices are those of KeyLoad::gates.
class BottleneckPlanner {
public:
  struct Reserve {
    double tokens = 0.0;  ///< kept back from requests outside this tier's lanes
    size_t tier = 0;      ///< its creates and the polls that may free one of its slots
  };

  /// See KeyScheduler::setTierDuration().
  void setTierDuration(size_t tier, std::optional<TierDuration> duration);
  /// @p tier's prior (tierPrior): what its tasks count as taking, before one of them has been
  /// seen ended, when bottlenecks() orders creates.
  void setTierPrior(size_t tier, Duration prior);
  /// See KeyScheduler::setLookPlan().
  void setLookPlan(size_t tier, LookPlan plan);
  /// See KeyScheduler::setRemoteWaiting().
  void setRemoteWaiting(size_t tier, size_t creates);
  size_t remoteWaiting(size_t tier) const {
    return tier < remote_waiting_.size() ? remote_waiting_[tier] : 0;
  }

  /// @return the bottleneck tiers, most work left first, each as two lanes: its creates', then
  ///         its unblocking polls' (kUnblockLanes + tier).
  /// @param creates_by_prior order the create lanes counting a tier none of whose tasks has
  ///        been seen ended at least at its prior (the unblocking polls keep their order).
  std::vector<size_t> bottlenecks(const KeyLoad& load, MonotonicTime now,
                                  bool creates_by_prior = false) const;
  /// @return the tokens to keep for the makespan tier's planned looks (none: tokens = 0).
  Reserve reserveFor(const KeyLoad& load, MonotonicTime now) const;
  /// @return whether @p tier's gate is full while creates wait for it.
  bool blocked(const KeyLoad& load, size_t tier, MonotonicTime now) const;
  /// @return whether other instances hold creates waiting for a tier whose gate has a free
  ///         slot, while the budget binds: they wait for tokens of the key's one budget. In one
  ///         instance they would go before background work, being client requests; so they do
  ///         across instances. Where a tier binds, tokens come soon for every create, and what
  ///         the others wrote may be a heartbeat old: holding background work back for it would
  ///         leave slots idle.
  bool othersWaitForTokens(const KeyLoad& load, MonotonicTime now) const;
  /// See KeyScheduler::tierBinds(), budgetBinds() and learnPace().
  bool tierBinds(const KeyLoad& load, size_t tier, MonotonicTime now) const;
  bool budgetBinds(const KeyLoad& load, MonotonicTime now) const;
  LearnPace learnPace(const KeyLoad& load, size_t tier, MonotonicTime now) const;
  /// See KeyScheduler::lookPrice().
  Duration lookPrice(const KeyLoad& load, size_t tier, MonotonicTime now) const;

private:
  /// Creates waiting for @p tier's gate: this instance's (its lane) and, with a shared store,
  /// the other instances' (setRemoteWaiting()).
  size_t waiting(const KeyLoad& load, size_t tier) const;
  /// The unit of work of a tier with no duration known (see bottlenecks()).
  Duration unknownTierUnit() const;
  /// The tokens still needed by what waits and runs: a create and a look per waiting create, a
  /// look per running task, one per other waiting request.
  double tokensNeeded(const KeyLoad& load) const;
  /// budgetBinds() given tokensNeeded() / rate.
  bool budgetBinds(const KeyLoad& load, double budget_seconds, MonotonicTime now) const;
  /// The seconds @p tier's waiting creates need: their waves times its duration (or a lower
  /// bound of it, see KeyScheduler::setTierDuration()).
  double tierWork(const KeyLoad& load, size_t tier, MonotonicTime now) const;
  /// The tokens @p plan's looks need at its first, given @p creates waiting and a cap.
  static double reserveForPlan(const LookPlan& plan, size_t creates, double rate, double cap,
                               MonotonicTime now);

  std::vector<std::optional<TierDuration>> tier_duration_;
  std::vector<Duration> tier_prior_;
  std::vector<LookPlan> tier_looks_;
  std::vector<size_t> remote_waiting_;
};

}  // namespace hiapi::core
