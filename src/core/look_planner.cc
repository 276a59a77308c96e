#include "hiapi/core/look_planner.h"

#include <algorithm>
#include <cmath>

#include "hiapi/core/model_prior.h"

namespace hiapi::core {

LearnPace LookPlanner::learnPace(const std::string& key, size_t tier) const {
  return learn_pace_ ? learn_pace_(key, tier) : LearnPace::Plain;
}

Duration LookPlanner::lookPrice(const std::string& key, size_t tier) const {
  return look_price_ ? look_price_(key, tier) : Duration::zero();
}

Duration LookPlanner::priorOf(const TaskRecord& r) const {
  return modelPrior(r.model, tiers_[clampTier(r.tier)].name);
}

// ---- freshness ------------------------------------------------------------------------------

Duration LookPlanner::refreshAfter(const TaskRecord& r, MonotonicTime at) const {
  const Duration interval = minPollInterval(r.tier);
  if (!r.tracked) {
    return interval;
  }
  // One finished task is enough to look right at the likely end and often around it (a wrong
  // guess costs a few polls of one task); holding a running detail long before it waits for the
  // typical duration (two), since a wrong guess there would hide an end.
  const std::optional<Duration> estimate = durations_.first(r.tier);
  if (!estimate) {
    // Nothing says when it ends. Where a look that finds it running costs a create its token
    // and the tier has slack (LearnPace::Sparse), back off with its age: at most half of it,
    // and at most a quarter of its model's prior.
    if (at > r.created && learnPace(r.id->first, clampTier(r.tier)) == LearnPace::Sparse) {
      return sparseLookGap(at - r.created, interval, priorOf(r));
    }
    return interval;
  }
  return refreshAfterEstimate(r, at, *estimate);
}

Duration LookPlanner::refreshAfterEstimate(const TaskRecord& r, MonotonicTime at,
                                           Duration estimate) const {
  const Duration interval = minPollInterval(r.tier);
  const Duration fine = durations_.endPollInterval(r.tier);
  const DurationEstimator::Range range =
      durations_.range(r.tier).value_or(DurationEstimator::Range{estimate, estimate});
  const MonotonicTime likely_end = r.created + range.low;
  if (at < likely_end) {
    // Long before the likely end: hold the running detail until then (at most max_hold), so
    // polls mid-task spend no budget. Shortly before it: look again right at it.
    const Duration to_end = likely_end - at;
    if (to_end <= interval) {
      return std::max(fine, to_end);
    }
    return cfg_.max_hold > Duration::zero() && durations_.typical(r.tier)
               ? std::max(interval, std::min(to_end, cfg_.max_hold))
               : interval;
  }
  // Past the likely end: look often for a while (the end is near), then at the plain pace
  // (this task is a long one). Where recent tasks ended far apart, looks at the end-poll pace
  // from the shortest to the longest would spend many requests to see each end a little
  // sooner: then often is about four looks across their spread (each end seen within a quarter
  // of it), eight where the tier bounds the makespan (LearnPace::Eager: its every late end
  // delays the rest; fewer where its own requests fill the budget, see spreadLookGap()), and
  // the plain pace where the budget binds and the tier has slack.
  const Duration spread = range.high - range.low;
  const Duration gap = spread <= 2 * fine ? fine : spreadLookGap(r, spread, fine, interval);
  return at < r.created + range.high + estimate / 2 ? gap : interval;
}

Duration LookPlanner::spreadLookGap(const TaskRecord& r, Duration spread, Duration fine,
                                    Duration interval) const {
  switch (learnPace(r.id->first, clampTier(r.tier))) {
  case LearnPace::Eager: {
    // Each look that finds the task running costs the tier its price (lookPrice: up to a token
    // interval, the more its own requests fill the budget), and each end is seen half a gap
    // late on average: looks g apart across a spread cost spread / 2g prices and g / 2 of
    // lateness, least at g = sqrt(spread * price). Where the tier's own requests fill the
    // budget (a light tier whose every slot turnover needs a look and a create), eight looks
    // across the spread would leave its creates waiting for tokens; where they do not, eight.
    const Duration price = lookPrice(r.id->first, clampTier(r.tier));
    const Duration balanced = fromSeconds(std::sqrt(toSeconds(spread) * toSeconds(price)));
    return std::clamp(std::max(spread / 8, balanced), fine, std::max(fine, interval / 2));
  }
  case LearnPace::Sparse:
    return interval;
  case LearnPace::Plain:
    break;
  }
  return std::clamp(spread / 4, fine, interval);
}

Duration LookPlanner::replyTtl(const TaskRecord& r) const {
  if (r.reply && r.reply->status == 404) {
    return cfg_.not_found_ttl;
  }
  if (r.reply_terminal) {
    return std::max(minPollInterval(r.tier), cfg_.terminal_ttl);
  }
  return refreshAfter(r, r.reply_at);
}

bool LookPlanner::replyFresh(const TaskRecord& r, MonotonicTime now) const {
  if (!r.reply) {
    return false;
  }
  const Duration age = std::max(Duration::zero(), Duration(now - r.reply_at));
  return age < replyTtl(r);
}

MonotonicTime LookPlanner::likelyEnd(const TaskRecord& r) const {
  // One finished task of the tier is enough here (typical() waits for two). Before any,
  // nothing is likely: every look may find the end. The shortest recent duration, not the
  // estimate: a task that runs no longer than the shortest of late is not seen ended late.
  const std::optional<DurationEstimator::Range> range = durations_.range(r.tier);
  return range ? r.created + range->low : r.created;
}

MonotonicTime LookPlanner::nextLookAt(const TaskRecord& r, MonotonicTime now) const {
  if (r.in_flight) {
    return now;
  }
  const MonotonicTime last = std::max(r.last_upstream_poll, r.reply ? r.reply_at : MonotonicTime{});
  Duration after = refreshAfter(r, last);
  if (!durations_.first(r.tier) &&
      learnPace(r.id->first, clampTier(r.tier)) == LearnPace::Eager) {
    // The tier bounds the makespan and no task of it has ended yet: every moment its first end
    // goes unseen is lost to all its later waves, so look twice as often, and then every
    // 1/20 of the task's age (the end is then seen within 5 % of its duration) for long tasks.
    // (Four times as often measured no better: at 4 req/s those looks took every refill, and
    // the create the end let go waited for a token.)
    const Duration interval = minPollInterval(r.tier);
    const Duration age = last > r.created ? last - r.created : Duration::zero();
    after = std::min(after, std::max(interval / 2, std::min(age / 20, interval)));
  }
  const MonotonicTime at = std::max(last + after, likelyEnd(r));
  if (!durations_.first(r.tier) && spare_window_) {
    // Nothing says when it ends yet, so a look a quarter of a gap sooner sees nearly as much.
    // Just before the reset of a gateway window with a request to spare, it takes a request
    // that window would lose at its reset rather than one of the next window, which the end it
    // looks for may need all of (its look and the creates it lets go). Otherwise looks paced
    // from one that waited for a reset keep falling just after resets.
    if (const std::optional<MonotonicTime> by = spare_window_(r.id->first);
        by && *by > last && *by < at && at - *by <= after / 4) {
      return *by;
    }
  }
  return at;
}

// ---- reconcile ------------------------------------------------------------------------------

std::vector<const TaskRecord*> LookPlanner::dueForReconcile(MonotonicTime now) const {
  std::vector<const TaskRecord*> due;
  if (!cfg_.reconcile) {
    return due;
  }
  for (const auto& [id, r] : registry_.records()) {
    if (r.holdsSlot() && !r.in_flight && r.lastActivity() + cfg_.reconcile_interval <= now) {
      due.push_back(&r);
    }
  }
  std::sort(due.begin(), due.end(), [](const TaskRecord* a, const TaskRecord* b) {
    const MonotonicTime ta = a->lastActivity();
    const MonotonicTime tb = b->lastActivity();
    return ta != tb ? ta < tb : *a->id < *b->id;
  });
  return due;
}

std::optional<MonotonicTime> LookPlanner::nextReconcileAt() const {
  if (!cfg_.reconcile) {
    return std::nullopt;
  }
  std::optional<MonotonicTime> next;
  for (const auto& [id, r] : registry_.records()) {
    if (r.holdsSlot() && !r.in_flight) {
      const MonotonicTime at = r.lastActivity() + cfg_.reconcile_interval;
      if (!next || at < *next) {
        next = at;
      }
    }
  }
  return next;
}

// ---- gate pressure --------------------------------------------------------------------------

std::optional<MonotonicTime> LookPlanner::oldestUnlearned(const std::string& key,
                                                          size_t tier) const {
  if (durations_.first(tier)) {
    return std::nullopt;
  }
  std::optional<MonotonicTime> oldest;
  registry_.forEachOfKey(key, [&](const TaskRecord& r) {
    if (r.holdsSlot() && clampTier(r.tier) == tier && (!oldest || r.created < *oldest)) {
      oldest = r.created;
    }
  });
  return oldest;
}

bool LookPlanner::gatePressureCandidate(const TaskRecord& r, size_t tier,
                                        std::optional<MonotonicTime> oldest) const {
  // With no duration known yet, only the oldest: while it runs, younger ones likely do too.
  return r.holdsSlot() && clampTier(r.tier) == tier && (!oldest || r.created <= *oldest);
}

std::vector<const TaskRecord*> LookPlanner::dueForGatePressure(const std::string& key,
                                                               size_t tier,
                                                               MonotonicTime now) const {
  const size_t t = clampTier(tier);
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, t);
  std::vector<const TaskRecord*> due;
  registry_.forEachOfKey(key, [&](const TaskRecord& r) {
    // Not before its last fetch goes stale, nor before its likely end (most likely still
    // running: a poll would only say so).
    if (gatePressureCandidate(r, t, oldest) && !r.in_flight && nextLookAt(r, now) <= now) {
      due.push_back(&r);
    }
  });
  std::sort(due.begin(), due.end(), [](const TaskRecord* a, const TaskRecord* b) {
    return a->created != b->created ? a->created < b->created : *a->id < *b->id;
  });
  return due;
}

std::optional<MonotonicTime> LookPlanner::nextGatePressureAt(const std::string& key, size_t tier,
                                                             MonotonicTime now) const {
  const size_t t = clampTier(tier);
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, t);
  std::optional<MonotonicTime> next;
  registry_.forEachOfKey(key, [&](const TaskRecord& r) {
    if (!gatePressureCandidate(r, t, oldest)) {
      return;
    }
    const MonotonicTime at = nextLookAt(r, now);
    if (!next || at < *next) {
      next = at;
    }
  });
  return next;
}

LookPlan LookPlanner::gatePressurePlan(const std::string& key, size_t tier,
                                       MonotonicTime now) const {
  const size_t t = clampTier(tier);
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, t);
  LookPlan plan;
  size_t younger = 0;  // while no task of the tier has ended: those behind the oldest
  registry_.forEachOfKey(key, [&](const TaskRecord& r) {
    if (!gatePressureCandidate(r, t, oldest)) {
      younger += gatePressureCandidate(r, t, std::nullopt) ? 1 : 0;
      return;
    }
    if (r.in_flight && likelyEnd(r) <= now) {
      ++plan.in_flight;
    } else {
      // A fetch in flight before the likely end is a client's poll that waits (for a spare
      // token, or with the creates from the likely end): its look is still to come.
      plan.looks.push_back(r.in_flight ? likelyEnd(r) : nextLookAt(r, now));
    }
  });
  std::sort(plan.looks.begin(), plan.looks.end());
  const std::optional<MonotonicTime> first = plan.first(now);
  if (younger != 0 && first && learnPace(key, t) == LearnPace::Eager) {
    // When the oldest is seen ended, the tier's first duration is known and the tasks started
    // with it are looked at at once (and likely let their creates go too): plan them with it.
    plan.looks.insert(plan.looks.begin(), younger, *first);
  }
  return plan;
}

// ---- held polls and likely ends -------------------------------------------------------------

std::optional<MonotonicTime> LookPlanner::nextHeldLookAt(const TaskRecord& r,
                                                         MonotonicTime now) const {
  if (!r.tracked || r.terminal || r.in_flight || !durations_.first(r.tier)) {
    return std::nullopt;
  }
  return nextLookAt(r, now);
}

std::optional<MonotonicTime> LookPlanner::holdPollUntil(const TaskRecord& r, MonotonicTime now,
                                                        Duration within) const {
  if (!r.tracked || r.terminal || !durations_.first(r.tier)) {
    return std::nullopt;
  }
  const MonotonicTime end = likelyEnd(r);
  if (now >= end || end - now > within) {
    return std::nullopt;
  }
  return end + 2 * durations_.endPollInterval(r.tier);
}

std::optional<MonotonicTime> LookPlanner::likelyRunningUntil(const TaskRecord& r,
                                                             MonotonicTime now) const {
  if (!r.tracked || r.terminal) {
    return std::nullopt;
  }
  // A wrong guess only changes the order in which fetches are admitted, never what a client is
  // told.
  if (behindUnlearnedOldest(r)) {
    // No duration known yet: while an older task of its tier runs, this one likely does too.
    return now + minPollInterval(r.tier);
  }
  const MonotonicTime end = likelyEnd(r);
  return now < end ? std::optional<MonotonicTime>(end) : std::nullopt;
}

bool LookPlanner::behindUnlearnedOldest(const TaskRecord& r) const {
  if (!r.holdsSlot() || durations_.first(r.tier)) {
    return false;
  }
  const std::optional<MonotonicTime> oldest = oldestUnlearned(r.id->first, clampTier(r.tier));
  return oldest && r.created > *oldest;
}

}  // namespace hiapi::core
