#pragma once
// DurationEstimator: what the proxy has learned of how long each tier's tasks run, from the
// brackets in which it saw them end (after the last running status, by the first terminal one).
//
// A narrow bracket's upper end is averaged in (EWMA: looks land just after ends rather than just
// before), a wide bracket only moves the estimate inside it, and an end seen by the first look
// aimed at the estimate nudges it lower, by steps that double while that repeats (so an estimate
// that is too long comes down in a few tasks). A tier's expected_duration, when set, is the
// starting estimate (as if two tasks had been seen); so, on an instance sharing its key through
// the store, is an estimate another instance learned (adopt()). Estimates follow their tier by
// name across setTiers().
//
// Run times vary (the same model takes longer on one prompt than on another), and one estimate
// cannot say how much: a long task pulls it up and every shorter one's end would then go unseen
// until it. So each tier also keeps the brackets its last few tasks were seen to end in
// (range()): looks start at the shortest age by which one had ended, and their gap grows with
// how far apart the brackets surely lie.
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/concurrency_gate.h"
#include "hiapi/core/config.h"

namespace hiapi::core {

/// Where a tier's duration estimate came from (what /status shows an operator).
enum class DurationSource {
  None,        ///< nothing known yet
  Configured,  ///< the tier's expected_duration
  Shared,      ///< another instance's estimate, through the shared store
  Learned,     ///< refined by ends this instance saw (whatever it started from)
};
/// @return "none", "expected_duration", "shared" or "learned".
const char* durationSourceName(DurationSource s);

/// See the file comment. Tier indices are clamped to the last tier.
class DurationEstimator {
public:
  /// Sets the tiers (names, expected_duration, min_poll_interval), keeping what was learned of
  /// each tier that keeps its name. @p tiers must not be empty.
  void setTiers(const std::vector<TierConfig>& tiers);

  /// @return the typical duration once two ends were seen (or expected_duration); else nullopt.
  std::optional<Duration> typical(size_t tier) const;
  /// @return the estimate once one end was seen; else nullopt.
  std::optional<Duration> first(size_t tier) const;
  /// @return the gap between looks around a task's likely end: 1/20 of the estimate (one ended
  ///         task is enough), at least 100 ms and at most min_poll_interval; min_poll_interval
  ///         before any end was seen.
  Duration endPollInterval(size_t tier) const;

  /// How far apart the durations of a tier's recent tasks (the last kRecent) surely lay, with
  /// the estimate: where its next task's end most likely falls. Each end is known only within
  /// a bracket (after the last look that saw it running, by the first that saw it ended), and
  /// a task seen ended late did not run long: so the range is what no single duration could
  /// have given.
  struct Range {
    Duration low{};   ///< the estimate, or an age by which a recent task had ended if shorter
    Duration high{};  ///< the estimate, or an age a recent task was seen running at if longer
  };
  /// @return the range once one end was seen (or expected_duration); else nullopt.
  std::optional<Range> range(size_t tier) const;
  /// How many recent ends range() spans.
  static constexpr size_t kRecent = 8;

  /// What one instance has seen of a tier, as shared through the store (store.kind redis).
  struct Known {
    Duration estimate{};
    uint32_t samples = 0;  ///< ends seen (2 for an expected_duration); 0: nothing known
    DurationSource source = DurationSource::None;  ///< not carried between instances
  };
  /// @return what is known of @p tier's duration here (samples 0 before any end).
  Known known(size_t tier) const;
  /// Another instance's estimate of @p tier, seen through the shared store. Taken only while
  /// this instance has not learned the tier itself (fewer than two ends, as typical() asks)
  /// and the other has seen more: several instances sharing one key each see only part of
  /// its tasks, and each learning the first wave on its own would spend the key's budget on
  /// looks at unlearned tasks several times over. Once learned here, this instance's own
  /// looks refine its estimate and its probes (which another estimate would upset).
  /// @return whether the estimate changed.
  bool adopt(size_t tier, Known other);

  /// A task of @p tier created at @p created, last seen running at @p last_running_seen, was
  /// seen ended at @p now (> created).
  /// @param pace the tier's pace of looks, asked only for its first end: where the budget binds
  ///        (Sparse) the bracket's upper end is taken, but no later than the sparse pace's look
  ///        after its lower end (sparseLookGap, with the task's model @p prior); else its
  ///        middle.
  void learn(size_t tier, MonotonicTime created, MonotonicTime last_running_seen,
             MonotonicTime now, const std::function<LearnPace()>& pace,
             Duration prior = Duration::max());

private:
  /// What was learned of one tier's task duration.
  struct Learned {
    Duration estimate{};   ///< see typical()
    uint32_t samples = 0;  ///< ends seen
    DurationSource source = DurationSource::None;
    /// Ends seen in a row by the first look aimed at the estimate (how hard to probe lower).
    uint32_t hits = 0;
    /// When the task whose end last moved the estimate was created (once per wave).
    MonotonicTime probed{};
    /// The age a task was last seen running at close to its end (zero: none): probes stop above.
    Duration floor{};
    /// The brackets of the last ends (a ring of kRecent, `seen` filled): see Range.
    std::array<std::pair<Duration, Duration>, kRecent> recent{};
    size_t seen = 0;
  };
  /// The end of a task, known to lie in (lower, upper] of its age.
  struct Bracket {
    Duration lower{};
    Duration upper{};
    MonotonicTime created{};
  };

  size_t clamp(size_t tier) const { return std::min(tier, tiers_.size() - 1); }
  void learnNarrow(Learned& l, const Bracket& b, Duration fine, bool same_wave);
  void probeLower(Learned& l, const Bracket& b, Duration fine);

  std::vector<TierConfig> tiers_;
  std::vector<Learned> learned_;  ///< one per tier, as tiers_
};

/// A tier's duration as one instance knows it, by the tier's name (the shared store carries
/// them between instances).
struct NamedDuration {
  std::string tier;
  DurationEstimator::Known known;
};

}  // namespace hiapi::core
