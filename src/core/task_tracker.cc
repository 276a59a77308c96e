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
  duration_estimate_.clear();  // tiers may have moved: learn their durations again
  duration_samples_.clear();
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
    // The task ended between the last running status and now: take the middle.
    const MonotonicTime end =
        r.last_running_seen > r.created ? r.last_running_seen + (now - r.last_running_seen) / 2 : now;
    const Duration d = end - r.created;
    const size_t t = clampTier(r.tier);
    if (duration_samples_.size() < tiers_.size()) {
      duration_samples_.resize(tiers_.size(), 0);
      duration_estimate_.resize(tiers_.size(), Duration::zero());
    }
    duration_estimate_[t] = duration_samples_[t] == 0
                                ? d
                                : std::chrono::duration_cast<Duration>(duration_estimate_[t] * 0.8 + d * 0.2);
    ++duration_samples_[t];
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
  if (t >= duration_samples_.size() || duration_samples_[t] < 2) {
    return std::nullopt;
  }
  return duration_estimate_[t];
}

bool TaskTracker::likelyRunning(const std::string& key, const std::string& task_id,
                                MonotonicTime now) const {
  const Record* r = lookup(key, task_id);
  if (r == nullptr || !r->tracked || r->terminal) {
    return false;
  }
  // One finished task of the tier is enough here: a wrong guess only changes the order in which
  // fetches are admitted, never what a client is told.
  const size_t t = clampTier(r->tier);
  if (t >= duration_samples_.size() || duration_samples_[t] == 0) {
    return false;
  }
  return now < r->created + duration_estimate_[t];
}

Duration TaskTracker::replyTtl(const Record& r) const {
  if (r.reply && r.reply->status == 404) {
    return cfg_.not_found_ttl;
  }
  const Duration interval = minPollInterval(r.tier);
  if (r.reply_terminal) {
    return std::max(interval, cfg_.terminal_ttl);
  }
  // A running task polled long before it is likely to end: keep serving the cached detail until
  // shortly before then (at most max_hold), so polls mid-task spend no budget.
  if (r.tracked && cfg_.max_hold > Duration::zero()) {
    if (auto typical = typicalDuration(r.tier)) {
      const MonotonicTime likely_end =
          r.created + *typical;
      if (likely_end > r.reply_at) {
        const Duration hold = std::min<Duration>(likely_end - r.reply_at, cfg_.max_hold);
        return std::max(interval, hold);
      }
    }
  }
  return interval;
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
  const Duration interval = minPollInterval(t);
  const std::optional<Duration> typical = typicalDuration(t);
  std::vector<Record*> due;
  for (auto it = records_.lower_bound(RecordKey{key, std::string()});
       it != records_.end() && it->first.first == key; ++it) {
    Record& r = it->second;
    if (!r.slot || r.terminal || r.in_flight || clampTier(r.tier) != t) {
      continue;
    }
    const MonotonicTime last = std::max(r.last_upstream_poll, r.reply ? r.reply_at : MonotonicTime{});
    if (last + interval > now) {
      continue;
    }
    if (typical && now < r.created + *typical) {
      continue;  // most likely still running: a poll would only say so
    }
    due.push_back(&r);
  }
  std::sort(due.begin(), due.end(), [](const Record* a, const Record* b) {
    return a->created != b->created ? a->created < b->created : *a->id < *b->id;
  });
  return startFetches(due, max, now);
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
