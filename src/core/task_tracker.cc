#include "hiapi/core/task_tracker.h"

#include "hiapi/core/http_rules.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>

#include "hiapi/core/task_json.h"

namespace hiapi::core {
namespace {

/// The shortest gap between polls of a task around its likely end (see endPollInterval).
constexpr Duration kMinEndPollInterval = std::chrono::milliseconds(100);

char lowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lowerCopy(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), lowerAscii);
  return out;
}

/// Bytes a cached reply is charged for: its body and headers plus bookkeeping.
uint64_t replyCost(const CachedReply& reply) {
  constexpr uint64_t kReplyOverhead = 128;
  constexpr uint64_t kHeaderOverhead = 32;
  uint64_t bytes = kReplyOverhead + reply.body.size();
  for (const auto& [name, value] : reply.headers) {
    bytes += kHeaderOverhead + name.size() + value.size();
  }
  return bytes;
}

/// Ages in the state file are capped here (as parseDuration caps durations): no overflow.
constexpr int64_t kMaxAgeMs = int64_t{100000} * 3600 * 1000;

}  // namespace

// ---- configuration ------------------------------------------------------------------------------

TaskTracker::TaskTracker(const TasksConfig& cfg, std::vector<TierConfig> tiers) {
  setConfig(cfg);
  setTiers(std::move(tiers));
}

void TaskTracker::setConfig(const TasksConfig& cfg) {
  cfg_ = cfg;
  terminal_.clear();
  for (const auto* list : {&cfg.terminal_statuses, &cfg.tolerated_terminal}) {
    for (const std::string& s : *list) {
      if (!s.empty()) {
        terminal_.push_back(lowerCopy(s));
      }
    }
  }
}

void TaskTracker::setTiers(std::vector<TierConfig> tiers) {
  std::vector<std::string> old_names;
  for (const TierConfig& t : tiers_) {
    old_names.push_back(t.name);
  }
  const std::vector<Learned> old_learned = std::move(learned_);
  tiers_ = tiers.empty() ? defaultTierConfigs() : std::move(tiers);
  if (tiers_.empty()) {  // defaultTierConfigs() is never empty; stay safe anyway
    tiers_.push_back(TierConfig{});
    tiers_.back().name = "default";
  }
  // What was learned follows its tier by name (tiers may have moved in a reload): the estimate
  // and what steers the next probe (the wave that last moved it, the floor). A tier without
  // it starts from its expected_duration, as if two tasks had been seen.
  learned_.assign(tiers_.size(), Learned{});
  for (size_t i = 0; i < tiers_.size(); ++i) {
    for (size_t j = 0; j < old_names.size() && j < old_learned.size(); ++j) {
      if (old_names[j] == tiers_[i].name && old_learned[j].samples != 0) {
        learned_[i] = old_learned[j];
      }
    }
    if (learned_[i].samples == 0 && tiers_[i].expected_duration > Duration::zero()) {
      learned_[i].estimate = tiers_[i].expected_duration;
      learned_[i].samples = 2;
    }
  }
}

void TaskTracker::reconfigure(const TasksConfig& cfg, std::vector<TierConfig> tiers) {
  std::vector<std::string> old_names;
  old_names.reserve(tiers_.size());
  for (const TierConfig& t : tiers_) {
    old_names.push_back(t.name);
  }
  setConfig(cfg);
  setTiers(std::move(tiers));
  for (auto& [id, r] : records_) {
    r.tier = tierIndex(old_names.at(std::min(r.tier, old_names.size() - 1)));
  }
}

size_t TaskTracker::tierIndex(std::string_view name) const {
  for (size_t i = 0; i < tiers_.size(); ++i) {
    if (tiers_[i].name == name) {
      return i;
    }
  }
  return tiers_.size() - 1;
}

size_t TaskTracker::clampTier(size_t tier) const { return std::min(tier, tiers_.size() - 1); }

Duration TaskTracker::minPollInterval(size_t tier) const {
  return tiers_[clampTier(tier)].min_poll_interval;
}

bool TaskTracker::isTerminal(std::string_view status) const {
  if (status.empty()) {
    return false;
  }
  return std::any_of(terminal_.begin(), terminal_.end(),
                     [&](const std::string& t) { return iequals(t, status); });
}

// ---- records --------------------------------------------------------------------------------

TaskTracker::Record* TaskTracker::lookup(const std::string& key, const std::string& task_id) {
  auto it = records_.find(RecordKey{key, task_id});
  return it == records_.end() ? nullptr : &it->second;
}

const TaskTracker::Record* TaskTracker::lookup(const std::string& key,
                                               const std::string& task_id) const {
  auto it = records_.find(RecordKey{key, task_id});
  return it == records_.end() ? nullptr : &it->second;
}

TaskTracker::Record& TaskTracker::findOrCreate(const std::string& key, const std::string& task_id,
                                               MonotonicTime now) {
  auto [it, inserted] = records_.try_emplace(RecordKey{key, task_id});
  Record& r = it->second;
  if (inserted) {
    r.id = &it->first;
    r.tier = tiers_.size() - 1;  // unknown tasks: the fallback tier
    r.created = now;
    r.last_upstream_poll = now;
    r.last_client_poll = now;
    r.lru = lru_.insert(lru_.end(), &r);
  }
  return r;
}

void TaskTracker::touch(Record& r) { lru_.splice(lru_.end(), lru_, r.lru); }

void TaskTracker::dropReply(Record& r) {
  if (r.reply) {
    cache_bytes_ -= r.reply_bytes;
    --cache_entries_;
  }
  r.reply.reset();
  r.reply_bytes = 0;
  r.reply_status.clear();
  r.reply_terminal = false;
}

void TaskTracker::erase(Record& r) {
  dropReply(r);
  lru_.erase(r.lru);
  auto it = records_.find(*r.id);  // look up before erasing: r.id points into the node
  records_.erase(it);
}

MonotonicTime TaskTracker::lastActivity(const Record& r) const {
  return std::max(r.last_client_poll, r.last_upstream_poll);
}

TrackedTaskInfo TaskTracker::info(const Record& r) const {
  TrackedTaskInfo out;
  out.key = r.id->first;
  out.task_id = r.id->second;
  out.tier = clampTier(r.tier);
  out.tier_name = tiers_[out.tier].name;
  out.model = r.model;
  out.status = r.status;
  out.slot = r.slot;
  out.created = r.created;
  out.last_upstream_poll = r.last_upstream_poll;
  out.last_client_poll = r.last_client_poll;
  return out;
}

std::optional<TrackedTaskInfo> TaskTracker::find(const std::string& key,
                                                 const std::string& task_id) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr) {
    return std::nullopt;
  }
  return info(*r);
}

// ---- task life ------------------------------------------------------------------------------

std::optional<SlotRelease> TaskTracker::track(const std::string& key, const std::string& task_id,
                                              size_t tier, std::optional<SlotId> slot,
                                              const std::string& model, MonotonicTime created,
                                              MonotonicTime now) {
  Record& r = findOrCreate(key, task_id, now);
  touch(r);
  std::optional<SlotRelease> give_back;
  const bool keeps_other_slot = r.slot.has_value() || r.terminal;
  if (keeps_other_slot) {
    // An idempotent replay of a task already tracked: the new slot is superfluous.
    if (slot && r.slot != slot) {
      give_back = SlotRelease{.key = key,
                              .task_id = task_id,
                              .tier = clampTier(tier),
                              .slot = *slot,
                              .status = std::string(),
                              .reason = ReleaseReason::NotCreated};
    }
    if (!r.tracked) {
      r.tracked = true;
      r.tier = clampTier(tier);
    }
  } else {
    if (!r.tracked) {
      r.created = created;
    }
    r.tracked = true;
    r.tier = clampTier(tier);
    r.slot = slot;
  }
  if (!model.empty()) {
    r.model = model;
  }
  enforceBounds();
  return give_back;
}

std::optional<SlotRelease> TaskTracker::onCreated(const std::string& key,
                                                  const std::string& task_id, size_t tier,
                                                  std::optional<SlotId> slot,
                                                  const std::string& model, MonotonicTime now) {
  return track(key, task_id, tier, slot, model, now, now);
}

std::optional<SlotRelease> TaskTracker::onRestored(const std::string& key,
                                                   const std::string& task_id, size_t tier,
                                                   SlotId slot, const std::string& model,
                                                   MonotonicTime created) {
  return track(key, task_id, tier, slot, model, created, created);
}

std::optional<SlotRelease> TaskTracker::applyStatus(Record& r, std::string_view status,
                                                    MonotonicTime now) {
  if (status.empty()) {
    return std::nullopt;
  }
  r.last_upstream_poll = std::max(r.last_upstream_poll, now);
  if (r.terminal) {
    return std::nullopt;  // final: a late or stale status changes nothing
  }
  r.status.assign(status.data(), status.size());
  if (r.reply && !iequals(r.reply_status, status)) {
    dropReply(r);  // the cached reply says otherwise: the next poll fetches the news
  }
  if (!isTerminal(status)) {
    r.last_running_seen = std::max(r.last_running_seen, now);
    return std::nullopt;
  }
  r.terminal = true;
  r.terminal_at = now;
  if (r.tracked && now > r.created) {
    learnDuration(r, now);
  }
  if (!r.slot) {
    return std::nullopt;
  }
  SlotRelease rel{.key = r.id->first,
                  .task_id = r.id->second,
                  .tier = clampTier(r.tier),
                  .slot = *r.slot,
                  .status = r.status,
                  .reason = ReleaseReason::TaskFinished};
  r.slot.reset();
  ++counters_.released;
  return rel;
}

std::optional<SlotRelease> TaskTracker::onStatus(const std::string& key, const std::string& task_id,
                                                 std::string_view status, MonotonicTime now) {
  Record* r = lookup(key, task_id);
  if (r == nullptr || status.empty()) {
    return std::nullopt;
  }
  touch(*r);
  return applyStatus(*r, status, now);
}

bool TaskTracker::hasRecords(const std::string& key) const {
  auto it = records_.lower_bound(RecordKey{key, std::string()});
  return it != records_.end() && it->first.first == key;
}

bool TaskTracker::onSlotExpired(const std::string& key, SlotId slot) {
  for (auto it = records_.lower_bound(RecordKey{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    if (it->second.slot == slot) {
      it->second.slot.reset();
      ++counters_.slots_expired;
      return true;
    }
  }
  return false;
}

size_t TaskTracker::onSlotExpired(SlotId slot) {
  Record* holder = nullptr;
  size_t holders = 0;
  for (auto& [id, r] : records_) {
    if (r.slot == slot) {
      holder = &r;
      ++holders;
    }
  }
  if (holders != 1) {
    return 0;  // none, or ambiguous across keys
  }
  holder->slot.reset();
  ++counters_.slots_expired;
  return 1;
}

// ---- polls ----------------------------------------------------------------------------------

std::optional<Duration> TaskTracker::typicalDuration(size_t tier) const {
  const size_t t = clampTier(tier);
  if (t >= learned_.size() || learned_[t].samples < 2) {
    return std::nullopt;
  }
  return learned_[t].estimate;
}

std::vector<std::optional<TierDuration>> TaskTracker::tierDurations(MonotonicTime now) const {
  std::vector<std::optional<TierDuration>> out(tiers_.size());
  bool unknown = false;
  for (size_t t = 0; t < out.size(); ++t) {
    if (const std::optional<Duration> d = typicalDuration(t)) {
      out[t] = TierDuration{*d, true};
    }
    unknown = unknown || !out[t];
  }
  if (!unknown) {
    return out;
  }
  std::vector<std::optional<MonotonicTime>> oldest(tiers_.size());
  for (const auto& [id, r] : records_) {
    std::optional<MonotonicTime>& o = oldest[clampTier(r.tier)];
    if (r.slot && !r.terminal && (!o || r.created < *o)) {
      o = r.created;
    }
  }
  for (size_t t = 0; t < out.size(); ++t) {
    if (!out[t] && oldest[t] && *oldest[t] <= now) {
      out[t] = TierDuration{now - *oldest[t], false};
    }
  }
  return out;
}

std::optional<Duration> TaskTracker::firstEstimate(size_t tier) const {
  const size_t t = clampTier(tier);
  if (t >= learned_.size() || learned_[t].samples == 0) {
    return std::nullopt;
  }
  return learned_[t].estimate;
}

Duration TaskTracker::endPollInterval(size_t tier) const {
  const Duration interval = minPollInterval(tier);
  const std::optional<Duration> estimate = firstEstimate(tier);
  if (!estimate) {
    return interval;
  }
  return std::clamp<Duration>(*estimate / 20, std::min<Duration>(kMinEndPollInterval, interval),
                              interval);
}

void TaskTracker::learnDuration(const Record& r, MonotonicTime now) {
  // The task ended in (a, b]: after the last running status seen, by the first terminal one.
  const MonotonicTime a = std::max(r.last_running_seen, r.created);
  const Duration upper = now - r.created;
  const Duration lower = a - r.created;
  const size_t t = clampTier(r.tier);
  Learned& l = learned_[t];  // setTiers() keeps one per tier
  Duration& e = l.estimate;
  const Duration mid = lower > Duration::zero() ? lower + (upper - lower) / 2 : upper;
  if (l.samples == 0) {
    // Its middle; but where the budget binds (LearnPace::Sparse: its looks bracket the end
    // widely) the upper end, so that the next tasks are looked at after their ends rather than
    // before: there a look too early costs a create its token, one too late only lateness the
    // tier has slack for (and probing lower below brings a long estimate down).
    e = learnPace(r.id->first, t) == LearnPace::Sparse ? upper : mid;
  } else {
    // A narrow bracket (polls close together around the end) is a measurement: average it in.
    // A wide one only bounds the duration: move the estimate into it, and when the end was seen
    // by the first poll aimed at the estimate, probe a little lower next time, so that an
    // estimate that is too long does not stay so (one that is too short corrects itself: the
    // next end is bracketed narrowly by the end polls).
    const Duration fine = endPollInterval(t);
    uint32_t& hits = l.hits;
    // Tasks started together end together: the first of a wave's ends moves the estimate, the
    // others (seen by looks aimed at the same estimate) say no more than it did, and counting
    // them all would move it twice as far within one wave.
    const MonotonicTime probed_at = l.probed;
    const Duration apart = r.created > probed_at ? r.created - probed_at : probed_at - r.created;
    const bool same_wave = probed_at != MonotonicTime{} && apart < e / 2;
    if (upper - lower <= std::max<Duration>(2 * fine, e / 10)) {
      // Aim at the bracket's upper end: a look just after the end costs a little lateness, a
      // look just before it costs a wasted request and another end-poll interval.
      if (same_wave) {
        e = std::max(e, lower + fine / 16);
      } else {
        e = std::chrono::duration_cast<Duration>(e * 0.7 + upper * 0.3);
        l.probed = r.created;
      }
      hits = 0;
      Duration& floor = l.floor;
      floor = same_wave ? std::max(floor, lower) : lower;  // seen running this close to its end
    } else if (e <= lower) {
      e = mid;  // it ran longer than that
    } else if (upper - e <= fine + fine / 2 && !same_wave) {
      // Seen ended by the first look aimed at it (or before it): it may have ended long before.
      // Probe lower, by steps that double while looks keep landing after the end (an estimate
      // that is far too long comes down in a few waves, one that is right barely moves). Once
      // per wave (doubled within one, the next wave's looks came a tenth of a second early).
      const Duration step = (fine / 8) * (1 << std::min<uint32_t>(hits, 4));
      const Duration probed = std::min(e, upper) - step;
      // Not below the age a recent task was seen running at, near its end (a narrow bracket's
      // lower end): a look there would most likely find this one running too and cost a
      // request and an end-poll interval. The floor sinks by a quarter of each probe it stops,
      // so that durations that do shorten are still followed (the steps double meanwhile).
      Duration& floor = l.floor;
      const Duration stop = std::min(e, floor + fine / 8);
      if (floor > Duration::zero() && probed < stop) {
        e = stop;
        floor -= step / 4;
      } else {
        e = probed;
      }
      ++hits;
      l.probed = r.created;
    }
  }
  ++l.samples;
}

MonotonicTime TaskTracker::likelyEnd(const Record& r) const {
  // One finished task of the tier is enough here (typicalDuration() waits for two). Before any,
  // nothing is likely: every look may find the end.
  const std::optional<Duration> estimate = firstEstimate(r.tier);
  return estimate ? r.created + *estimate : r.created;
}

std::optional<size_t> TaskTracker::slotTier(const std::string& key,
                                            const std::string& task_id) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr || !r->slot || r->terminal) {
    return std::nullopt;
  }
  return clampTier(r->tier);
}

bool TaskTracker::likelyRunning(const std::string& key, const std::string& task_id,
                                MonotonicTime now) const {
  return likelyRunningUntil(key, task_id, now).has_value();
}

std::optional<MonotonicTime> TaskTracker::likelyRunningUntil(const std::string& key,
                                                             const std::string& task_id,
                                                             MonotonicTime now) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr || !r->tracked || r->terminal) {
    return std::nullopt;
  }
  // A wrong guess only changes the order in which fetches are admitted, never what a client is
  // told.
  if (behindUnlearnedOldest(key, task_id)) {
    // No duration known yet: while an older task of its tier runs, this one likely does too.
    return now + minPollInterval(r->tier);
  }
  const MonotonicTime end = likelyEnd(*r);
  return now < end ? std::optional<MonotonicTime>(end) : std::nullopt;
}

bool TaskTracker::behindUnlearnedOldest(const std::string& key,
                                        const std::string& task_id) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr || !r->slot || r->terminal || firstEstimate(r->tier)) {
    return false;
  }
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, clampTier(r->tier));
  return oldest && r->created > *oldest;
}

bool TaskTracker::gatePressureCandidate(const Record& r, size_t tier,
                                        std::optional<MonotonicTime> oldest) const {
  // With no duration known yet, only the oldest: while it runs, younger ones likely do too.
  return r.slot && !r.terminal && clampTier(r.tier) == tier && (!oldest || r.created <= *oldest);
}

LearnPace TaskTracker::learnPace(const std::string& key, size_t tier) const {
  return learn_pace_ ? learn_pace_(key, tier) : LearnPace::Plain;
}

MonotonicTime TaskTracker::nextLookAt(const Record& r, MonotonicTime now) const {
  if (r.in_flight) {
    return now;
  }
  const MonotonicTime last = std::max(r.last_upstream_poll, r.reply ? r.reply_at : MonotonicTime{});
  Duration after = refreshAfter(r, last);
  if (!firstEstimate(r.tier) && learnPace(r.id->first, clampTier(r.tier)) == LearnPace::Eager) {
    // The tier bounds the makespan and no task of it has ended yet: every moment its first end
    // goes unseen is lost to all its later waves, so look twice as often, and then every
    // 1/20 of the task's age (the end is then seen within 5 % of its duration) for long tasks.
    // (Four times as often measured no better: at 4 req/s those looks took every refill, and
    // the create the end let go waited for a token.)
    const Duration interval = minPollInterval(r.tier);
    const Duration age = last > r.created ? last - r.created : Duration::zero();
    after = std::min(after, std::max(interval / 2, std::min(age / 20, interval)));
  }
  return std::max(last + after, likelyEnd(r));
}

std::optional<MonotonicTime> TaskTracker::nextHeldLookAt(const std::string& key,
                                                         const std::string& task_id,
                                                         MonotonicTime now) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr || !r->tracked || r->terminal || r->in_flight || !firstEstimate(r->tier)) {
    return std::nullopt;
  }
  return nextLookAt(*r, now);
}

std::optional<TrackedTaskInfo> TaskTracker::startHeldLook(const std::string& key,
                                                          const std::string& task_id,
                                                          MonotonicTime now) {
  const std::optional<MonotonicTime> at = nextHeldLookAt(key, task_id, now);
  if (!at || *at > now) {
    return std::nullopt;
  }
  std::vector<Record*> due{lookup(key, task_id)};
  return startFetches(due, 1, now).front();
}

std::optional<MonotonicTime> TaskTracker::holdPollUntil(const std::string& key,
                                                        const std::string& task_id,
                                                        MonotonicTime now,
                                                        Duration within) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr || !r->tracked || r->terminal || !firstEstimate(r->tier)) {
    return std::nullopt;
  }
  const MonotonicTime end = likelyEnd(*r);
  if (now >= end || end - now > within) {
    return std::nullopt;
  }
  return end + 2 * endPollInterval(r->tier);
}

Duration TaskTracker::refreshAfter(const Record& r, MonotonicTime at) const {
  const Duration interval = minPollInterval(r.tier);
  if (!r.tracked) {
    return interval;
  }
  // One finished task is enough to look right at the likely end and often around it (a wrong
  // guess costs a few polls of one task); holding a running detail long before it waits for the
  // typical duration (two), since a wrong guess there would hide an end.
  const std::optional<Duration> estimate = firstEstimate(r.tier);
  if (!estimate) {
    // Nothing says when it ends. Where a look that finds it running costs a create its token
    // and the tier has slack (LearnPace::Sparse), back off with its age: at most half of it.
    if (at > r.created && learnPace(r.id->first, clampTier(r.tier)) == LearnPace::Sparse) {
      return std::max(interval, Duration((at - r.created) / 2));
    }
    return interval;
  }
  const Duration fine = endPollInterval(r.tier);
  const MonotonicTime likely_end = r.created + *estimate;
  if (at < likely_end) {
    // Long before the likely end: hold the running detail until then (at most max_hold), so
    // polls mid-task spend no budget. Shortly before it: look again right at it.
    const Duration to_end = likely_end - at;
    if (to_end <= interval) {
      return std::max(fine, to_end);
    }
    return cfg_.max_hold > Duration::zero() && typicalDuration(r.tier)
               ? std::max(interval, std::min(to_end, cfg_.max_hold))
               : interval;
  }
  // Past the likely end: look often for a while (the end is near), then at the plain pace
  // (this task is a long one).
  return at < likely_end + *estimate / 2 ? fine : interval;
}

Duration TaskTracker::replyTtl(const Record& r) const {
  if (r.reply && r.reply->status == 404) {
    return cfg_.not_found_ttl;
  }
  if (r.reply_terminal) {
    return std::max(minPollInterval(r.tier), cfg_.terminal_ttl);
  }
  return refreshAfter(r, r.reply_at);
}

bool TaskTracker::replyFresh(const Record& r, MonotonicTime now) const {
  if (!r.reply) {
    return false;
  }
  const Duration age = std::max(Duration::zero(), Duration(now - r.reply_at));
  return age < replyTtl(r);
}

PollDecision TaskTracker::beginPoll(const std::string& key, const std::string& task_id,
                                    uint64_t waiter, MonotonicTime now) {
  Record& r = findOrCreate(key, task_id, now);
  touch(r);
  r.last_client_poll = std::max(r.last_client_poll, now);
  PollDecision out;
  if (replyFresh(r, now)) {
    ++counters_.hits;
    out.action = PollAction::Hit;
    out.reply = r.reply;
    out.age = std::max(Duration::zero(), Duration(now - r.reply_at));
    return out;
  }
  if (std::find(r.waiters.begin(), r.waiters.end(), waiter) == r.waiters.end()) {
    r.waiters.push_back(waiter);
  }
  if (r.in_flight) {
    ++counters_.coalesced;
    out.action = PollAction::Join;
    return out;
  }
  ++counters_.misses;
  r.in_flight = true;
  r.last_upstream_poll = std::max(r.last_upstream_poll, now);
  out.action = PollAction::Fetch;
  return out;
}

TaskTracker::PollCompletion TaskTracker::completePoll(const std::string& key,
                                                      const std::string& task_id,
                                                      const CachedReply& reply, MonotonicTime now) {
  Record& r = findOrCreate(key, task_id, now);
  touch(r);
  PollCompletion out;
  out.waiters = std::move(r.waiters);
  r.waiters.clear();
  r.in_flight = false;
  r.last_upstream_poll = std::max(r.last_upstream_poll, now);

  const bool ok = reply.status >= 200 && reply.status <= 299;
  if (!ok && reply.status != 404) {
    return out;  // not cached; a stale reply, if any, expires on its own
  }
  std::string status;
  if (ok) {
    if (auto view = parseTaskDetail(reply.body)) {
      status = std::move(view->status);
    }
    out.release = applyStatus(r, status, now);
  }
  dropReply(r);
  const uint64_t bytes = replyCost(reply);
  if (bytes <= cfg_.cache_max_bytes) {
    r.reply = std::make_shared<const CachedReply>(reply);
    r.reply_at = now;
    r.reply_bytes = bytes;
    r.reply_terminal = ok && isTerminal(status);
    r.reply_status = std::move(status);
    cache_bytes_ += bytes;
    ++cache_entries_;
  }
  enforceBounds();
  return out;
}

std::vector<uint64_t> TaskTracker::abandonPoll(const std::string& key, const std::string& task_id) {
  Record* r = lookup(key, task_id);
  if (r == nullptr) {
    return {};
  }
  std::vector<uint64_t> waiters = std::move(r->waiters);
  r->waiters.clear();
  r->in_flight = false;
  return waiters;
}

bool TaskTracker::cancelWaiter(const std::string& key, const std::string& task_id,
                               uint64_t waiter) {
  Record* r = lookup(key, task_id);
  if (r == nullptr) {
    return false;
  }
  auto it = std::find(r->waiters.begin(), r->waiters.end(), waiter);
  if (it == r->waiters.end()) {
    return false;
  }
  r->waiters.erase(it);
  return true;
}

// ---- reconcile ------------------------------------------------------------------------------

std::vector<TrackedTaskInfo> TaskTracker::startFetches(std::vector<Record*>& due, size_t max,
                                                       MonotonicTime now) {
  // The proxy's own fetch: marked in flight so that client polls join it.
  if (due.size() > max) {
    due.resize(max);
  }
  std::vector<TrackedTaskInfo> out;
  out.reserve(due.size());
  for (Record* r : due) {
    out.push_back(info(*r));
    r->in_flight = true;
    r->last_upstream_poll = std::max(r->last_upstream_poll, now);
  }
  return out;
}

std::vector<TrackedTaskInfo> TaskTracker::dueForReconcile(MonotonicTime now, size_t max) {
  std::vector<TrackedTaskInfo> out;
  if (!cfg_.reconcile || max == 0) {
    return out;
  }
  std::vector<Record*> due;
  for (auto& [id, r] : records_) {
    if (r.slot && !r.terminal && !r.in_flight && lastActivity(r) + cfg_.reconcile_interval <= now) {
      due.push_back(&r);
    }
  }
  std::sort(due.begin(), due.end(), [this](const Record* a, const Record* b) {
    const MonotonicTime ta = lastActivity(*a);
    const MonotonicTime tb = lastActivity(*b);
    return ta != tb ? ta < tb : *a->id < *b->id;
  });
  out = startFetches(due, max, now);
  counters_.reconciles += out.size();
  return out;
}

std::vector<TrackedTaskInfo> TaskTracker::dueForGatePressure(const std::string& key, size_t tier,
                                                             MonotonicTime now, size_t max) {
  const size_t t = clampTier(tier);
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, t);
  std::vector<Record*> due;
  for (auto it = records_.lower_bound(RecordKey{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    Record& r = it->second;
    // Not before its last fetch goes stale, nor before its likely end (most likely still
    // running: a poll would only say so).
    if (gatePressureCandidate(r, t, oldest) && !r.in_flight && nextLookAt(r, now) <= now) {
      due.push_back(&r);
    }
  }
  std::sort(due.begin(), due.end(), [](const Record* a, const Record* b) {
    return a->created != b->created ? a->created < b->created : *a->id < *b->id;
  });
  return startFetches(due, max, now);
}

std::optional<MonotonicTime> TaskTracker::oldestUnlearned(const std::string& key,
                                                          size_t tier) const {
  if (firstEstimate(tier)) {
    return std::nullopt;
  }
  std::optional<MonotonicTime> oldest;
  for (auto it = records_.lower_bound(RecordKey{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    const Record& r = it->second;
    if (r.slot && !r.terminal && clampTier(r.tier) == tier && (!oldest || r.created < *oldest)) {
      oldest = r.created;
    }
  }
  return oldest;
}

std::optional<MonotonicTime> TaskTracker::nextGatePressureAt(const std::string& key, size_t tier,
                                                             MonotonicTime now) const {
  const size_t t = clampTier(tier);
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, t);
  std::optional<MonotonicTime> next;
  for (auto it = records_.lower_bound(RecordKey{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    const Record& r = it->second;
    if (!gatePressureCandidate(r, t, oldest)) {
      continue;
    }
    const MonotonicTime at = nextLookAt(r, now);
    if (!next || at < *next) {
      next = at;
    }
  }
  return next;
}

LookPlan TaskTracker::gatePressurePlan(const std::string& key, size_t tier,
                                       MonotonicTime now) const {
  const size_t t = clampTier(tier);
  const std::optional<MonotonicTime> oldest = oldestUnlearned(key, t);
  LookPlan plan;
  size_t younger = 0;  // while no task of the tier has ended: those behind the oldest
  for (auto it = records_.lower_bound(RecordKey{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    const Record& r = it->second;
    if (!gatePressureCandidate(r, t, oldest)) {
      younger += gatePressureCandidate(r, t, std::nullopt) ? 1 : 0;
      continue;
    }
    if (r.in_flight && likelyEnd(r) <= now) {
      ++plan.in_flight;
    } else {
      // A fetch in flight before the likely end is a client's poll that waits (for a spare
      // token, or with the creates from the likely end): its look is still to come.
      plan.looks.push_back(r.in_flight ? likelyEnd(r) : nextLookAt(r, now));
    }
  }
  std::sort(plan.looks.begin(), plan.looks.end());
  const std::optional<MonotonicTime> first = plan.first(now);
  if (younger != 0 && first && learnPace(key, t) == LearnPace::Eager) {
    // When the oldest is seen ended, the tier's first duration is known and the tasks started
    // with it are looked at at once (and likely let their creates go too): plan them with it.
    plan.looks.insert(plan.looks.begin(), younger, *first);
  }
  return plan;
}

std::optional<MonotonicTime> TaskTracker::nextReconcileAt() const {
  if (!cfg_.reconcile) {
    return std::nullopt;
  }
  std::optional<MonotonicTime> next;
  for (const auto& [id, r] : records_) {
    if (r.slot && !r.terminal && !r.in_flight) {
      const MonotonicTime at = lastActivity(r) + cfg_.reconcile_interval;
      if (!next || at < *next) {
        next = at;
      }
    }
  }
  return next;
}

// ---- bounds, expiry, stats ------------------------------------------------------------------

bool TaskTracker::forgettable(const Record& r, MonotonicTime now) const {
  if (r.in_flight || !r.waiters.empty() || r.slot || r.reply) {
    return false;
  }
  if (r.terminal) {
    return now - r.terminal_at >= cfg_.terminal_ttl;
  }
  if (!r.tracked) {
    return true;  // a poll-only record without a reply holds nothing worth keeping
  }
  // Created here but its slot is gone (lease): kept while anyone still asks about it.
  return now - lastActivity(r) >= cfg_.terminal_ttl;
}

void TaskTracker::expire(MonotonicTime now) {
  for (auto it = records_.begin(); it != records_.end();) {
    Record& r = it->second;
    ++it;  // r may be erased below
    if (r.reply && !replyFresh(r, now)) {
      dropReply(r);
    }
    if (forgettable(r, now)) {
      erase(r);
    }
  }
  enforceBounds();
}

void TaskTracker::enforceBounds() {
  auto over = [this] {
    return records_.size() > cfg_.cache_max_entries || cache_bytes_ > cfg_.cache_max_bytes;
  };
  for (auto it = lru_.begin(); it != lru_.end() && over();) {
    Record& r = **it;
    ++it;  // r may be erased below
    if (r.in_flight || !r.waiters.empty()) {
      continue;  // someone waits on it
    }
    if (r.slot) {
      // The slot record must survive; only its reply may go, and only for the byte bound.
      if (r.reply && cache_bytes_ > cfg_.cache_max_bytes) {
        dropReply(r);
        ++counters_.evictions;
      }
      continue;
    }
    erase(r);
    ++counters_.evictions;
  }
}

TaskTracker::Stats TaskTracker::stats() const {
  Stats s = counters_;
  s.tracked = 0;
  s.holding_slots = 0;
  s.in_flight = 0;
  for (const auto& [id, r] : records_) {
    s.tracked += r.tracked ? 1 : 0;
    s.holding_slots += r.slot ? 1 : 0;
    s.in_flight += r.in_flight ? 1 : 0;
  }
  s.records = records_.size();
  s.cache_entries = cache_entries_;
  s.cache_bytes = cache_bytes_;
  return s;
}

std::vector<TrackedTaskInfo> TaskTracker::running() const {
  std::vector<const Record*> holders;
  for (const auto& [id, r] : records_) {
    if (r.slot) {
      holders.push_back(&r);
    }
  }
  std::sort(holders.begin(), holders.end(), [](const Record* a, const Record* b) {
    return std::tie(a->created, *a->id) < std::tie(b->created, *b->id);
  });
  std::vector<TrackedTaskInfo> out;
  out.reserve(holders.size());
  for (const Record* r : holders) {
    out.push_back(info(*r));
  }
  return out;
}

// ---- persistence ----------------------------------------------------------------------------

std::string TaskTracker::serialize(MonotonicTime now, int64_t wall_now_unix_ms) const {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("version");
  w.Int(1);
  w.Key("saved_at_unix_ms");
  w.Int64(wall_now_unix_ms);
  w.Key("tasks");
  w.StartArray();
  for (const TrackedTaskInfo& t : running()) {
    if (isTerminal(t.status)) {
      continue;  // cannot happen (a terminal status releases the slot); stay safe
    }
    const int64_t age_ms = std::clamp<int64_t>(
        std::chrono::duration_cast<milliseconds>(now - t.created).count(), 0, kMaxAgeMs);
    w.StartObject();
    w.Key("key");
    w.String(t.key.data(), static_cast<rapidjson::SizeType>(t.key.size()));
    w.Key("task_id");
    w.String(t.task_id.data(), static_cast<rapidjson::SizeType>(t.task_id.size()));
    w.Key("tier");
    w.String(t.tier_name.data(), static_cast<rapidjson::SizeType>(t.tier_name.size()));
    w.Key("model");
    w.String(t.model.data(), static_cast<rapidjson::SizeType>(t.model.size()));
    w.Key("age_ms");
    w.Int64(age_ms);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::optional<std::vector<TaskTracker::RestoredTask>> TaskTracker::parseState(
    std::string_view text, std::string* error, std::optional<int64_t> wall_now_unix_ms) {
  auto fail = [error](std::string message) -> std::optional<std::vector<RestoredTask>> {
    if (error != nullptr) {
      *error = std::move(message);
    }
    return std::nullopt;
  };
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
  if (doc.HasParseError()) {
    return fail(std::string("not JSON: ") + rapidjson::GetParseError_En(doc.GetParseError()) +
                " at offset " + std::to_string(doc.GetErrorOffset()));
  }
  if (!doc.IsObject()) {
    return fail("expected a JSON object");
  }
  auto version = doc.FindMember("version");
  if (version == doc.MemberEnd() || !version->value.IsInt64()) {
    return fail("version: expected an integer");
  }
  if (version->value.GetInt64() != 1) {
    return fail("version: unsupported version " + std::to_string(version->value.GetInt64()) +
                " (expected 1)");
  }
  std::optional<int64_t> saved_at;
  if (auto it = doc.FindMember("saved_at_unix_ms"); it != doc.MemberEnd()) {
    if (!it->value.IsInt64()) {
      return fail("saved_at_unix_ms: expected an integer");
    }
    saved_at = it->value.GetInt64();
  }
  int64_t downtime_ms = 0;
  if (saved_at && wall_now_unix_ms && *wall_now_unix_ms > *saved_at) {
    // Both are bounded int64s; clamp the difference before subtracting can overflow.
    downtime_ms =
        (*saved_at < 0 && *wall_now_unix_ms > std::numeric_limits<int64_t>::max() + *saved_at)
            ? kMaxAgeMs
            : std::min(*wall_now_unix_ms - *saved_at, kMaxAgeMs);
  }
  auto tasks = doc.FindMember("tasks");
  if (tasks == doc.MemberEnd() || !tasks->value.IsArray()) {
    return fail("tasks: expected an array");
  }
  std::vector<RestoredTask> out;
  size_t index = 0;
  for (const auto& item : tasks->value.GetArray()) {
    const std::string where = "tasks[" + std::to_string(index++) + "]";
    if (!item.IsObject()) {
      return fail(where + ": expected an object");
    }
    auto str = [&](const char* name, bool required, bool non_empty,
                   std::string* dst) -> std::optional<std::string> {
      auto it = item.FindMember(name);
      if (it == item.MemberEnd()) {
        if (required) {
          return where + "." + name + ": missing";
        }
        return std::nullopt;
      }
      if (!it->value.IsString() || (non_empty && it->value.GetStringLength() == 0)) {
        return where + "." + name +
               (non_empty ? ": expected a non-empty string" : ": expected a string");
      }
      dst->assign(it->value.GetString(), it->value.GetStringLength());
      return std::nullopt;
    };
    RestoredTask t;
    if (auto e = str("key", true, true, &t.key)) {
      return fail(*e);
    }
    if (auto e = str("task_id", true, true, &t.task_id)) {
      return fail(*e);
    }
    if (t.task_id.size() > kMaxTaskIdBytes) {
      return fail(where + ".task_id: too long");
    }
    if (auto e = str("tier", true, false, &t.tier)) {
      return fail(*e);
    }
    if (auto e = str("model", false, false, &t.model)) {
      return fail(*e);
    }
    auto age = item.FindMember("age_ms");
    if (age == item.MemberEnd() || !age->value.IsInt64() || age->value.GetInt64() < 0) {
      return fail(where + ".age_ms: expected a non-negative integer");
    }
    const int64_t age_ms =
        std::min(std::min(age->value.GetInt64(), kMaxAgeMs) + downtime_ms, kMaxAgeMs);
    t.age = milliseconds(age_ms);
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace hiapi::core
