#include "hiapi/core/task_tracker.h"

#include <algorithm>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/task_json.h"

namespace hiapi::core {
namespace {

char lowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

std::string lowerCopy(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), lowerAscii);
  return out;
}

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
  tiers_ = tiers.empty() ? defaultTierConfigs() : std::move(tiers);
  if (tiers_.empty()) {  // defaultTierConfigs() is never empty; stay safe anyway
    tiers_.push_back(TierConfig{});
    tiers_.back().name = "default";
  }
  durations_.setTiers(tiers_);
}

void TaskTracker::reconfigure(const TasksConfig& cfg, std::vector<TierConfig> tiers) {
  std::vector<std::string> old_names;
  old_names.reserve(tiers_.size());
  for (const TierConfig& t : tiers_) {
    old_names.push_back(t.name);
  }
  setConfig(cfg);
  setTiers(std::move(tiers));
  for (auto& [id, r] : registry_.records()) {
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

bool TaskTracker::isTerminal(std::string_view status) const {
  if (status.empty()) {
    return false;
  }
  return std::any_of(terminal_.begin(), terminal_.end(),
                     [&](const std::string& t) { return iequals(t, status); });
}

// ---- records --------------------------------------------------------------------------------

TaskRecord& TaskTracker::findOrCreate(const std::string& key, const std::string& task_id,
                                      MonotonicTime now) {
  // Unknown tasks: the fallback tier.
  return registry_.findOrCreate(key, task_id, tiers_.size() - 1, now);
}

void TaskTracker::erase(TaskRecord& r) {
  cache_.drop(r);
  registry_.erase(r);
}

TrackedTaskInfo TaskTracker::info(const TaskRecord& r) const {
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
  const TaskRecord* r = registry_.find(key, task_id);
  if (r == nullptr) {
    return std::nullopt;
  }
  return info(*r);
}

bool TaskTracker::hasRecords(const std::string& key) const { return registry_.hasRecords(key); }

// ---- task life ------------------------------------------------------------------------------

std::optional<SlotRelease> TaskTracker::track(const std::string& key, const std::string& task_id,
                                              size_t tier, std::optional<SlotId> slot,
                                              const std::string& model, MonotonicTime created,
                                              MonotonicTime now) {
  TaskRecord& r = findOrCreate(key, task_id, now);
  registry_.touch(r);
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

std::optional<SlotRelease> TaskTracker::applyStatus(TaskRecord& r, std::string_view status,
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
    cache_.drop(r);  // the cached reply says otherwise: the next poll fetches the news
  }
  if (!isTerminal(status)) {
    r.last_running_seen = std::max(r.last_running_seen, now);
    return std::nullopt;
  }
  r.terminal = true;
  r.terminal_at = now;
  if (r.tracked && now > r.created) {
    const size_t t = clampTier(r.tier);
    durations_.learn(t, r.created, r.last_running_seen, now,
                     [&] { return planner().learnPace(r.id->first, t); }, planner().priorOf(r));
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
  TaskRecord* r = registry_.find(key, task_id);
  if (r == nullptr || status.empty()) {
    return std::nullopt;
  }
  registry_.touch(*r);
  return applyStatus(*r, status, now);
}

bool TaskTracker::onSlotExpired(const std::string& key, SlotId slot) {
  const bool forgot = registry_.forgetSlot(key, slot);
  counters_.slots_expired += forgot ? 1 : 0;
  return forgot;
}

size_t TaskTracker::onSlotExpired(SlotId slot) {
  const size_t forgot = registry_.forgetSlot(slot);
  counters_.slots_expired += forgot;
  return forgot;
}

// ---- polls ----------------------------------------------------------------------------------

PollDecision TaskTracker::beginPoll(const std::string& key, const std::string& task_id,
                                    uint64_t waiter, MonotonicTime now) {
  TaskRecord& r = findOrCreate(key, task_id, now);
  registry_.touch(r);
  r.last_client_poll = std::max(r.last_client_poll, now);
  const PollDecision out = cache_.begin(r, waiter, planner().replyFresh(r, now), now);
  switch (out.action) {
    case PollAction::Hit:
      ++counters_.hits;
      break;
    case PollAction::Join:
      ++counters_.coalesced;
      break;
    case PollAction::Fetch:
      ++counters_.misses;
      break;
  }
  return out;
}

TaskTracker::PollCompletion TaskTracker::completePoll(const std::string& key,
                                                      const std::string& task_id,
                                                      const CachedReply& reply, MonotonicTime now) {
  TaskRecord& r = findOrCreate(key, task_id, now);
  registry_.touch(r);
  PollCompletion out;
  out.waiters = PollCache::finish(r);
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
  const bool terminal = ok && isTerminal(status);
  cache_.store(r, reply, now, std::move(status), terminal, cfg_.cache_max_bytes);
  enforceBounds();
  return out;
}

std::vector<uint64_t> TaskTracker::abandonPoll(const std::string& key, const std::string& task_id) {
  TaskRecord* r = registry_.find(key, task_id);
  return r == nullptr ? std::vector<uint64_t>() : PollCache::finish(*r);
}

bool TaskTracker::cancelWaiter(const std::string& key, const std::string& task_id,
                               uint64_t waiter) {
  TaskRecord* r = registry_.find(key, task_id);
  return r != nullptr && PollCache::cancel(*r, waiter);
}

// ---- the proxy's own looks ------------------------------------------------------------------

std::vector<TrackedTaskInfo> TaskTracker::startFetches(const std::vector<const TaskRecord*>& due,
                                                       size_t max, MonotonicTime now) {
  std::vector<TrackedTaskInfo> out;
  out.reserve(std::min(due.size(), max));
  for (size_t i = 0; i < due.size() && i < max; ++i) {
    TaskRecord& r = registry_.mutableRecord(*due[i]);
    out.push_back(info(r));
    r.in_flight = true;
    r.last_upstream_poll = std::max(r.last_upstream_poll, now);
  }
  return out;
}

std::vector<TrackedTaskInfo> TaskTracker::dueForReconcile(MonotonicTime now, size_t max) {
  if (max == 0) {
    return {};
  }
  std::vector<TrackedTaskInfo> out = startFetches(planner().dueForReconcile(now), max, now);
  counters_.reconciles += out.size();
  return out;
}

std::vector<TrackedTaskInfo> TaskTracker::dueForGatePressure(const std::string& key, size_t tier,
                                                             MonotonicTime now, size_t max) {
  return startFetches(planner().dueForGatePressure(key, tier, now), max, now);
}

std::optional<MonotonicTime> TaskTracker::nextGatePressureAt(const std::string& key, size_t tier,
                                                             MonotonicTime now) const {
  return planner().nextGatePressureAt(key, tier, now);
}

LookPlan TaskTracker::gatePressurePlan(const std::string& key, size_t tier,
                                       MonotonicTime now) const {
  return planner().gatePressurePlan(key, tier, now);
}

std::optional<MonotonicTime> TaskTracker::nextReconcileAt() const {
  return planner().nextReconcileAt();
}

std::optional<MonotonicTime> TaskTracker::nextHeldLookAt(const std::string& key,
                                                         const std::string& task_id,
                                                         MonotonicTime now) const {
  const TaskRecord* r = registry_.find(key, task_id);
  return r == nullptr ? std::nullopt : planner().nextHeldLookAt(*r, now);
}

std::optional<TrackedTaskInfo> TaskTracker::startHeldLook(const std::string& key,
                                                          const std::string& task_id,
                                                          MonotonicTime now) {
  const std::optional<MonotonicTime> at = nextHeldLookAt(key, task_id, now);
  if (!at || *at > now) {
    return std::nullopt;
  }
  return startFetches({registry_.find(key, task_id)}, 1, now).front();
}

std::optional<MonotonicTime> TaskTracker::holdPollUntil(const std::string& key,
                                                        const std::string& task_id,
                                                        MonotonicTime now,
                                                        Duration within) const {
  const TaskRecord* r = registry_.find(key, task_id);
  return r == nullptr ? std::nullopt : planner().holdPollUntil(*r, now, within);
}

// ---- durations ------------------------------------------------------------------------------

std::optional<Duration> TaskTracker::typicalDuration(size_t tier) const {
  return durations_.typical(clampTier(tier));
}

std::optional<DurationEstimator::Range> TaskTracker::durationRange(size_t tier) const {
  return durations_.range(clampTier(tier));
}

std::vector<NamedDuration> TaskTracker::knownDurations() const {
  std::vector<NamedDuration> out;
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if (const DurationEstimator::Known k = durations_.known(t); k.samples != 0) {
      out.push_back(NamedDuration{tiers_[t].name, k});
    }
  }
  return out;
}

bool TaskTracker::adoptDurations(const std::vector<NamedDuration>& others) {
  std::vector<DurationEstimator::Known> best(tiers_.size());
  for (const NamedDuration& o : others) {
    const size_t t = tierIndex(o.tier);
    if (tiers_[t].name == o.tier && o.known.samples > best[t].samples) {
      best[t] = o.known;
    }
  }
  bool changed = false;
  for (size_t t = 0; t < best.size(); ++t) {
    changed = durations_.adopt(t, best[t]) || changed;
  }
  return changed;
}

Duration TaskTracker::endPollInterval(size_t tier) const {
  return durations_.endPollInterval(clampTier(tier));
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
  for (const auto& [id, r] : registry_.records()) {
    std::optional<MonotonicTime>& o = oldest[clampTier(r.tier)];
    if (r.holdsSlot() && (!o || r.created < *o)) {
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

std::optional<size_t> TaskTracker::slotTier(const std::string& key,
                                            const std::string& task_id) const {
  const TaskRecord* r = registry_.find(key, task_id);
  if (r == nullptr || !r->holdsSlot()) {
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
  const TaskRecord* r = registry_.find(key, task_id);
  return r == nullptr ? std::nullopt : planner().likelyRunningUntil(*r, now);
}

bool TaskTracker::behindUnlearnedOldest(const std::string& key,
                                        const std::string& task_id) const {
  const TaskRecord* r = registry_.find(key, task_id);
  return r != nullptr && planner().behindUnlearnedOldest(*r);
}

// ---- bounds, expiry, stats ------------------------------------------------------------------

bool TaskTracker::forgettable(const TaskRecord& r, MonotonicTime now) const {
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
  return now - r.lastActivity() >= cfg_.terminal_ttl;
}

void TaskTracker::expire(MonotonicTime now) {
  const LookPlanner plan = planner();
  auto& records = registry_.records();
  for (auto it = records.begin(); it != records.end();) {
    TaskRecord& r = it->second;
    ++it;  // r may be erased below
    if (r.reply && !plan.replyFresh(r, now)) {
      cache_.drop(r);
    }
    if (forgettable(r, now)) {
      erase(r);
    }
  }
  enforceBounds();
}

void TaskTracker::enforceBounds() {
  counters_.evictions += cache_.enforceBounds(registry_, cfg_.cache_max_entries,
                                              cfg_.cache_max_bytes);
}

TaskTracker::Stats TaskTracker::stats() const {
  Stats s = counters_;
  s.tracked = 0;
  s.holding_slots = 0;
  s.in_flight = 0;
  for (const auto& [id, r] : registry_.records()) {
    s.tracked += r.tracked ? 1 : 0;
    s.holding_slots += r.slot ? 1 : 0;
    s.in_flight += r.in_flight ? 1 : 0;
  }
  s.records = registry_.size();
  s.cache_entries = cache_.entries();
  s.cache_bytes = cache_.bytes();
  return s;
}

std::vector<TrackedTaskInfo> TaskTracker::running() const {
  std::vector<TrackedTaskInfo> out;
  for (const TaskRecord* r : registry_.slotHolders()) {
    out.push_back(info(*r));
  }
  return out;
}

// ---- persistence ----------------------------------------------------------------------------

std::string TaskTracker::serialize(MonotonicTime now, int64_t wall_now_unix_ms) const {
  std::vector<TrackedTaskInfo> tasks = running();
  // Cannot happen (a terminal status releases the slot); stay safe.
  tasks.erase(std::remove_if(tasks.begin(), tasks.end(),
                             [this](const TrackedTaskInfo& t) { return isTerminal(t.status); }),
              tasks.end());
  return serializeTaskState(tasks, now, wall_now_unix_ms);
}

std::optional<std::vector<TaskTracker::RestoredTask>> TaskTracker::parseState(
    std::string_view text, std::string* error, std::optional<int64_t> wall_now_unix_ms) {
  return parseTaskState(text, error, wall_now_unix_ms);
}

}  // namespace hiapi::core
