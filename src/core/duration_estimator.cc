#include "hiapi/core/duration_estimator.h"

#include <algorithm>

namespace hiapi::core {
namespace {

/// The shortest gap between polls of a task around its likely end (see endPollInterval).
constexpr Duration kMinEndPollInterval = std::chrono::milliseconds(100);

}  // namespace

const char* durationSourceName(DurationSource s) {
  switch (s) {
  case DurationSource::None:
    return "none";
  case DurationSource::Configured:
    return "expected_duration";
  case DurationSource::Shared:
    return "shared";
  case DurationSource::Learned:
    return "learned";
  }
  return "none";
}

void DurationEstimator::setTiers(const std::vector<TierConfig>& tiers) {
  const std::vector<TierConfig> old_tiers = std::move(tiers_);
  const std::vector<Learned> old_learned = std::move(learned_);
  tiers_ = tiers;
  // What was learned follows its tier by name (tiers may have moved in a reload): the estimate
  // and what steers the next probe (the wave that last moved it, the floor). A tier without
  // it starts from its expected_duration, as if two tasks had been seen.
  learned_.assign(tiers_.size(), Learned{});
  for (size_t i = 0; i < tiers_.size(); ++i) {
    for (size_t j = 0; j < old_tiers.size() && j < old_learned.size(); ++j) {
      if (old_tiers[j].name == tiers_[i].name && old_learned[j].samples != 0) {
        learned_[i] = old_learned[j];
      }
    }
    if (learned_[i].samples == 0 && tiers_[i].expected_duration > Duration::zero()) {
      learned_[i].estimate = tiers_[i].expected_duration;
      learned_[i].samples = 2;
      learned_[i].source = DurationSource::Configured;
    }
  }
}

std::optional<Duration> DurationEstimator::typical(size_t tier) const {
  const size_t t = clamp(tier);
  if (t >= learned_.size() || learned_[t].samples < 2) {
    return std::nullopt;
  }
  return learned_[t].estimate;
}

std::optional<Duration> DurationEstimator::first(size_t tier) const {
  const size_t t = clamp(tier);
  if (t >= learned_.size() || learned_[t].samples == 0) {
    return std::nullopt;
  }
  return learned_[t].estimate;
}

Duration DurationEstimator::endPollInterval(size_t tier) const {
  const Duration interval = tiers_[clamp(tier)].min_poll_interval;
  const std::optional<Duration> estimate = first(tier);
  if (!estimate) {
    return interval;
  }
  return std::clamp<Duration>(*estimate / 20, std::min<Duration>(kMinEndPollInterval, interval),
                              interval);
}

std::optional<DurationEstimator::Range> DurationEstimator::range(size_t tier) const {
  const std::optional<Duration> estimate = first(tier);
  if (!estimate) {
    return std::nullopt;
  }
  const Learned& l = learned_[clamp(tier)];
  Range r{*estimate, *estimate};
  for (size_t i = 0; i < std::min(l.seen, kRecent); ++i) {
    r.high = std::max(r.high, l.recent[i].first);
    r.low = std::min(r.low, l.recent[i].second);
  }
  return r;
}

DurationEstimator::Known DurationEstimator::known(size_t tier) const {
  const size_t t = clamp(tier);
  if (t >= learned_.size()) {
    return Known{};
  }
  return Known{learned_[t].estimate, learned_[t].samples, learned_[t].source};
}

bool DurationEstimator::adopt(size_t tier, Known other) {
  const size_t t = clamp(tier);
  if (t >= learned_.size() || other.samples == 0 || other.estimate <= Duration::zero()) {
    return false;
  }
  Learned& l = learned_[t];
  if (l.samples >= 2 || other.samples <= l.samples) {
    return false;
  }
  const Learned before = l;
  // Its probing state starts afresh: the estimate is the other's, not a bracket seen here.
  l = Learned{};
  l.estimate = other.estimate;
  l.samples = std::min<uint32_t>(other.samples, 2);
  l.source = DurationSource::Shared;
  return before.estimate != l.estimate || before.samples != l.samples;
}

void DurationEstimator::learn(size_t tier, MonotonicTime created, MonotonicTime last_running_seen,
                              MonotonicTime now, const std::function<LearnPace()>& pace,
                              Duration prior) {
  // The task ended in (a, b]: after the last running status seen, by the first terminal one.
  const MonotonicTime a = std::max(last_running_seen, created);
  const Bracket b{a - created, now - created, created};
  const size_t t = clamp(tier);
  Learned& l = learned_[t];  // setTiers() keeps one per tier
  Duration& e = l.estimate;
  const Duration mid = b.lower > Duration::zero() ? b.lower + (b.upper - b.lower) / 2 : b.upper;
  l.recent[l.seen % kRecent] = {b.lower, b.upper};
  ++l.seen;
  if (l.samples == 0) {
    // Its middle; but where the budget binds (LearnPace::Sparse: its looks bracket the end
    // widely) the upper end, so that the next tasks are looked at after their ends rather than
    // before: there a look too early costs a create its token, one too late only lateness the
    // tier has slack for (and probing lower below brings a long estimate down). Not past where
    // the sparse pace put the look after the lower end, though: a look that came later than
    // that waited for a token (the budget binds), and its lateness says nothing of the task.
    // Taken as the duration, it would hold the tier's slots idle for every later wave while
    // probing lower brings it down step by step.
    if (pace() == LearnPace::Sparse) {
      e = b.lower > Duration::zero()
              ? std::min(b.upper,
                         b.lower + sparseLookGap(b.lower, tiers_[t].min_poll_interval, prior))
              : b.upper;
    } else {
      e = mid;
    }
  } else {
    // A narrow bracket (polls close together around the end) is a measurement: average it in.
    // A wide one only bounds the duration: move the estimate into it, and when the end was seen
    // by the first poll aimed at the estimate, probe a little lower next time, so that an
    // estimate that is too long does not stay so (one that is too short corrects itself: the
    // next end is bracketed narrowly by the end polls).
    const Duration fine = endPollInterval(t);
    // Tasks started together end together: the first of a wave's ends moves the estimate, the
    // others (seen by looks aimed at the same estimate) say no more than it did, and counting
    // them all would move it twice as far within one wave.
    const MonotonicTime probed_at = l.probed;
    const Duration apart = created > probed_at ? created - probed_at : probed_at - created;
    const bool same_wave = probed_at != MonotonicTime{} && apart < e / 2;
    if (b.upper - b.lower <= std::max<Duration>(2 * fine, e / 10)) {
      learnNarrow(l, b, fine, same_wave);
    } else if (e <= b.lower) {
      e = mid;  // it ran longer than that
    } else if (b.upper - e <= fine + fine / 2 && !same_wave) {
      probeLower(l, b, fine);
    }
  }
  ++l.samples;
  l.source = DurationSource::Learned;
}

void DurationEstimator::learnNarrow(Learned& l, const Bracket& b, Duration fine, bool same_wave) {
  // Aim at the bracket's upper end: a look just after the end costs a little lateness, a look
  // just before it costs a wasted request and another end-poll interval.
  Duration& e = l.estimate;
  if (same_wave) {
    e = std::max(e, b.lower + fine / 16);
  } else {
    e = std::chrono::duration_cast<Duration>(e * 0.7 + b.upper * 0.3);
    l.probed = b.created;
  }
  l.hits = 0;
  l.floor = same_wave ? std::max(l.floor, b.lower) : b.lower;  // seen running this close to its end
}

void DurationEstimator::probeLower(Learned& l, const Bracket& b, Duration fine) {
  // Seen ended by the first look aimed at it (or before it): it may have ended long before.
  // Probe lower, by steps that double while looks keep landing after the end (an estimate that
  // is far too long comes down in a few waves, one that is right barely moves). Once per wave
  // (doubled within one, the next wave's looks came a tenth of a second early).
  Duration& e = l.estimate;
  const Duration step = (fine / 8) * (1 << std::min<uint32_t>(l.hits, 4));
  const Duration probed = std::min(e, b.upper) - step;
  // Not below the age a recent task was seen running at, near its end (a narrow bracket's lower
  // end): a look there would most likely find this one running too and cost a request and an
  // end-poll interval. The floor sinks by a quarter of each probe it stops, so that durations
  // that do shorten are still followed (the steps double meanwhile).
  const Duration stop = std::min(e, l.floor + fine / 8);
  if (l.floor > Duration::zero() && probed < stop) {
    e = stop;
    l.floor -= step / 4;
  } else {
    e = probed;
  }
  ++l.hits;
  l.probed = b.created;
}

}  // namespace hiapi::core
