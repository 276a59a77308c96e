#include "hiapi/core/bottleneck_planner.h"

#include <algorithm>
#include <cmath>

namespace hiapi::core {
namespace {

// How long after a bottleneck's planned look its reserve still holds (the shell updates the
// plan every tick; past this it is stale).
constexpr Duration kLookGrace = std::chrono::seconds(1);

}  // namespace

void BottleneckPlanner::setTierPrior(size_t tier, Duration prior) {
  if (tier >= tier_prior_.size()) {
    tier_prior_.resize(tier + 1);
  }
  tier_prior_[tier] = prior;
}

void BottleneckPlanner::setTierDuration(size_t tier, std::optional<TierDuration> duration) {
  if (tier >= tier_duration_.size()) {
    tier_duration_.resize(tier + 1);
  }
  tier_duration_[tier] = duration;
}

void BottleneckPlanner::setLookPlan(size_t tier, LookPlan plan) {
  if (tier >= tier_looks_.size()) {
    tier_looks_.resize(tier + 1);
  }
  tier_looks_[tier] = std::move(plan);
}

void BottleneckPlanner::setRemoteWaiting(size_t tier, size_t creates) {
  if (tier >= remote_waiting_.size()) {
    if (creates == 0) {
      return;
    }
    remote_waiting_.resize(tier + 1);
  }
  remote_waiting_[tier] = creates;
}

size_t BottleneckPlanner::waiting(const KeyLoad& load, size_t tier) const {
  return load.queue.laneSize(tier) + remoteWaiting(tier);
}

bool BottleneckPlanner::blocked(const KeyLoad& load, size_t tier, MonotonicTime now) const {
  return waiting(load, tier) != 0 &&
         load.gates[tier]->running() >= load.gates[tier]->effectiveCeiling(now);
}

bool BottleneckPlanner::othersWaitForTokens(const KeyLoad& load, MonotonicTime now) const {
  for (size_t t = 0; t < remote_waiting_.size() && t < load.gates.size(); ++t) {
    if (remote_waiting_[t] != 0 &&
        load.gates[t]->running() < load.gates[t]->effectiveCeiling(now)) {
      return budgetBinds(load, now);
    }
  }
  return false;
}

// A tier whose waiting creates outnumber its free slots is a bottleneck: a slot that frees there
// is capacity every service waits for, and it stays idle while its create waits behind polls and
// other tiers' creates for a token. Those creates go first (fair across clients), and so do the
// proxy's polls that may free one of its slots; the tier with the most work left (waves of
// waiting creates times its task duration) before the others: the makespan is that tier's, so
// every token it waits for is lost at the end, while a tier with less work left has slack.
//
// At a cold start no tier's duration is known, and waves alone would rank ten waves of images
// over five of videos: the videos' chain, the makespan's, would start a few tokens late. So the
// creates may be ordered counting an unlearned tier at least at its class prior. Only the
// creates: the prior says which tier's waves are long, not when its first wave ends, and the
// looks at that wave (the unblocking polls, and the reserve, which follow the plain order) would
// spend tokens where the budget binds on ends not due yet; nor do another tier's polls go before
// that tier's own creates.
std::vector<size_t> BottleneckPlanner::bottlenecks(const KeyLoad& load, MonotonicTime now,
                                                   bool creates_by_prior) const {
  const Duration unknown_unit = unknownTierUnit();
  std::vector<std::pair<double, size_t>> ranked;  // (work left, tier)
  std::vector<std::pair<double, size_t>> by_prior;
  for (size_t t = 0; t < load.gates.size(); ++t) {
    const size_t waiting = this->waiting(load, t);
    if (waiting == 0) {
      continue;
    }
    const ConcurrencyGate& g = *load.gates[t];
    const uint32_t ceiling = g.effectiveCeiling(now);
    const size_t free = ceiling > g.running() ? ceiling - g.running() : 0;
    if (waiting < free) {
      continue;
    }
    const double waves = std::ceil(static_cast<double>(waiting) / std::max<uint32_t>(ceiling, 1));
    const std::optional<TierDuration>& d =
        t < tier_duration_.size() ? tier_duration_[t] : std::optional<TierDuration>{};
    const bool learned = d && d->learned;
    const Duration unit = learned ? d->value : unknown_unit;
    ranked.emplace_back(-waves * toSeconds(unit), t);
    if (creates_by_prior) {
      const Duration prior = t < tier_prior_.size() ? tier_prior_[t] : Duration::zero();
      by_prior.emplace_back(-waves * toSeconds(learned ? unit : std::max(unit, prior)), t);
    }
  }
  std::sort(ranked.begin(), ranked.end());
  std::sort(by_prior.begin(), by_prior.end());
  const auto& creates = creates_by_prior ? by_prior : ranked;
  // The plain order, each tier's creates before its unblocking polls; but the creates of a tier
  // the prior ranks higher come before those of every tier it ranks lower.
  std::vector<size_t> out;
  out.reserve(2 * ranked.size());
  std::vector<bool> placed(load.gates.size(), false);
  size_t next = 0;  // in creates
  for (const auto& [work, t] : ranked) {
    for (; next < creates.size() && creates[next].second != t; ++next) {
      if (const size_t ahead = creates[next].second; !placed[ahead]) {
        out.push_back(ahead);
        placed[ahead] = true;
      }
    }
    if (!placed[t]) {
      out.push_back(t);  // its creates, when a slot is free
      placed[t] = true;
    }
    out.push_back(kUnblockLanes + t);  // else the polls that may free one
  }
  return out;
}

// The proxy's look at a blocked bottleneck's likely end, and the create it lets go, each need a
// token: if other work has just spent the bucket, each waits 1/rate, and at every wave change of
// the makespan's tier that is lost twice — and more when several of its tasks end close
// together (two heavy tasks ending a token apart need four tokens within one refill). So the
// bucket keeps what the tier's planned looks need: going back from the last planned look,
// each look needs its own tokens plus whatever the next one needs beyond the refill between
// them; the reserve now is what the first needs beyond the refill until it. Other requests take
// a token only while more than that is left. Only the bottleneck with the most work left (the
// makespan's tier) keeps one: a reserve shared with other tiers would go to whichever tier's
// look came first. Cap: see KeyScheduler::setLookPlan().
BottleneckPlanner::Reserve BottleneckPlanner::reserveFor(const KeyLoad& load,
                                                         MonotonicTime now) const {
  Reserve out;
  const double burst = std::floor(load.budget.burst());
  const double rate = load.budget.rate();
  if (burst < 1.0 || rate <= 0.0) {
    return out;
  }
  const Duration lead = fromSeconds(burst / rate);
  // A look long past is stale (the tier was blocked then): it no longer holds tokens.
  const auto near = [&](const LookPlan& plan) {
    const std::optional<MonotonicTime> first = plan.first(now);
    return first && now + lead >= *first && now <= *first + kLookGrace;
  };
  // Most calls (every dispatch, and submit's shortcut) have no look near: skip the ranking.
  if (std::none_of(tier_looks_.begin(), tier_looks_.end(), near)) {
    return out;
  }
  const std::vector<size_t> ranked = bottlenecks(load, now);
  if (ranked.empty()) {
    return out;
  }
  const size_t t = ranked.front();
  if (t >= tier_looks_.size() || !near(tier_looks_[t]) || !blocked(load, t, now)) {
    return out;
  }
  const double cap = tierBinds(load, t, now) ? burst : std::min(2.0, burst - 1.0);
  if (cap < 1.0) {
    return out;
  }
  const double reserve = reserveForPlan(tier_looks_[t], load.queue.laneSize(t), rate, cap, now);
  if (reserve > 1e-9) {
    out.tokens = reserve;
    out.tier = t;
  }
  return out;
}

double BottleneckPlanner::reserveForPlan(const LookPlan& plan, size_t creates, double rate,
                                         double cap, MonotonicTime now) {
  // Each look costs a token, and the first ones to find an end each let a waiting create go:
  // the looks in flight first (only their creates are still to pay), then the planned ones.
  const auto creates_after = [&](size_t looks_before) {
    return looks_before < creates ? 1.0 : 0.0;
  };
  double need = 0.0;  // tokens needed at looks[i], for it and the looks after it
  for (size_t i = plan.looks.size(); i-- > 0;) {
    if (i + 1 < plan.looks.size()) {
      need = std::max(0.0, need - rate * toSeconds(plan.looks[i + 1] - plan.looks[i]));
    }
    need = std::min(cap, need + 1.0 + creates_after(plan.in_flight + i));
  }
  double reserve = static_cast<double>(std::min(plan.in_flight, creates));
  if (!plan.looks.empty() && plan.looks.front() >= now - kLookGrace) {
    const double until_first = toSeconds(std::max(Duration::zero(), plan.looks.front() - now));
    reserve += std::max(0.0, need - rate * until_first);
  }
  return std::min(cap, reserve);
}

Duration BottleneckPlanner::unknownTierUnit() const {
  Duration unit = std::chrono::seconds(1);
  for (const auto& d : tier_duration_) {
    if (d) {
      unit = std::max(unit, d->value);
    }
  }
  return unit;
}

double BottleneckPlanner::tokensNeeded(const KeyLoad& load) const {
  // The budget is the key's, shared with the other instances: their waiting creates draw on it
  // as this instance's do.
  double tokens = 0.0;
  size_t lanes = 0;
  for (size_t t = 0; t < load.gates.size(); ++t) {
    lanes += load.queue.laneSize(t);
    tokens += 2.0 * static_cast<double>(waiting(load, t)) +
              static_cast<double>(load.gates[t]->running());
  }
  return tokens + static_cast<double>(load.queue.size() - std::min(load.queue.size(), lanes));
}

double BottleneckPlanner::tierWork(const KeyLoad& load, size_t tier, MonotonicTime now) const {
  const ConcurrencyGate& g = *load.gates[tier];
  const double waves = std::ceil(static_cast<double>(waiting(load, tier)) /
                                 std::max<uint32_t>(g.effectiveCeiling(now), 1));
  const std::optional<TierDuration>& d =
      tier < tier_duration_.size() ? tier_duration_[tier] : std::optional<TierDuration>{};
  const Duration unit = d ? d->value : unknownTierUnit();
  return waves * toSeconds(unit);
}

bool BottleneckPlanner::budgetBinds(const KeyLoad& load, MonotonicTime now) const {
  const double rate = load.budget.rate();
  const double tokens = tokensNeeded(load);
  return rate > 0.0 && tokens > load.budget.burst() && budgetBinds(load, tokens / rate, now);
}

bool BottleneckPlanner::budgetBinds(const KeyLoad& load, double budget_seconds,
                                    MonotonicTime now) const {
  for (size_t t = 0; t < load.gates.size(); ++t) {
    // A tier not learned yet counts with its oldest task's age, and the half of it by which the
    // sparse pace may see its first end late: that lateness too must fit in the budget's time.
    double work = tierWork(load, t, now);
    if (t < tier_duration_.size() && tier_duration_[t] && !tier_duration_[t]->learned) {
      work += toSeconds(tier_duration_[t]->value) / 2;
    }
    if (work >= budget_seconds) {
      return false;
    }
  }
  return true;
}

bool BottleneckPlanner::tierBinds(const KeyLoad& load, size_t tier, MonotonicTime now) const {
  const double rate = load.budget.rate();
  return rate > 0.0 && tierWork(load, tier, now) >= tokensNeeded(load) / rate;
}

LearnPace BottleneckPlanner::learnPace(const KeyLoad& load, size_t tier,
                                       MonotonicTime now) const {
  const double rate = load.budget.rate();
  if (rate <= 0.0 || tier >= load.gates.size()) {
    return LearnPace::Plain;
  }
  const double tokens = tokensNeeded(load);
  if (tierWork(load, tier, now) >= tokens / rate) {
    return LearnPace::Eager;  // tierBinds()
  }
  return tokens > load.budget.burst() && budgetBinds(load, tokens / rate, now) ? LearnPace::Sparse
                                                                      : LearnPace::Plain;
}

Duration BottleneckPlanner::lookPrice(const KeyLoad& load, size_t tier, MonotonicTime now) const {
  const double rate = load.budget.rate();
  if (rate <= 0.0 || tier >= load.gates.size()) {
    return Duration::zero();
  }
  const double work = tierWork(load, tier, now);
  if (work <= 0.0) {
    return Duration::zero();  // no create of it waits: a look delays none
  }
  const double own = 2.0 * static_cast<double>(waiting(load, tier)) +
                     static_cast<double>(load.gates[tier]->running());
  return fromSeconds(std::min(1.0, own / (rate * work)) / rate);
}

}  // namespace hiapi::core
