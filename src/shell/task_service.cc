#include "hiapi/shell/task_service.h"

#include <algorithm>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <unistd.h>

#include "hiapi/core/http_rules.h"
#include "hiapi/core/task_json.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/state_file.h"

namespace hiapi::shell {
namespace {

// Expiry, tier durations, reconcile and gate-pressure polls, state saves run this often.
constexpr core::Duration kTick = std::chrono::milliseconds(100);

int64_t wallMs(const core::Clock& c) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(c.wallNow().time_since_epoch())
      .count();
}

}  // namespace

TaskService::TaskService(Timers& timers, core::ConfigSharedPtr cfg, Limiter& limiter,
                         ProxyServer& proxy, Logger& log, Metrics* metrics)
    : timers_(timers), clock_(timers.clock()), cfg_(std::move(cfg)), limiter_(limiter),
      proxy_(proxy), log_(log), metrics_(metrics),
      tracker_(std::make_unique<core::TaskTracker>(cfg_->tasks, cfg_->limits.tiers)) {
  tick_ = timers_.make([this] { onTick(); });
  tick_->armAt(clock_.now() + kTick);
  look_ = timers_.make([this] { reconcile(); });
  last_save_ = clock_.now();
  tracker_->setLearnPace([this](const std::string& key, size_t tier) {
    return limiter_.learnPace(key, tier);
  });
  tracker_->setLookPrice([this](const std::string& key, size_t tier) {
    return limiter_.lookPrice(key, tier);
  });
  tracker_->setSpareWindow(
      [this](const std::string& key) { return limiter_.spareWindowSendBy(key); });
}

TaskService::~TaskService() = default;

void TaskService::reconfigure(core::ConfigSharedPtr cfg) {
  cfg_ = std::move(cfg);
  tracker_->reconfigure(cfg_->tasks, cfg_->limits.tiers);
}

core::Duration TaskService::leaseOf(size_t tier) const {
  const auto& tiers = cfg_->limits.tiers;
  if (tiers.empty()) {
    return std::chrono::minutes(5);
  }
  return tiers[std::min(tier, tiers.size() - 1)].lease;
}

void TaskService::unholdIndex(const RequestCtx& ctx) {
  auto it = held_.find({ctx.key_name, ctx.route.task_id});
  if (it == held_.end()) {
    return;
  }
  auto& ids = it->second.ids;
  ids.erase(std::remove(ids.begin(), ids.end(), ctx.id), ids.end());
  if (ids.empty()) {
    held_.erase(it);
  }
}

void TaskService::release(const std::optional<core::SlotRelease>& r) {
  if (!r) {
    return;
  }
  // Polls held for this task's end are answered now (from the terminal detail just cached).
  if (auto it = held_.find({r->key, r->task_id}); it != held_.end()) {
    const std::vector<uint64_t> ids = std::move(it->second.ids);
    held_.erase(it);
    for (uint64_t id : ids) {
      proxy_.serveHeldNow(id);
    }
  }
  limiter_.releaseSlot(r->key, r->slot, r->reason);
  dirty_ = true;
  if (!behind_oldest_.empty()) {
    rejudgeBehindOldest(clock_.now());  // this end may be its tier's first
  }
  if (metrics_ != nullptr && r->reason == core::ReleaseReason::TaskFinished) {
    const auto& tiers = cfg_->limits.tiers;
    const std::string tier = tiers.empty() ? "default" : tiers[std::min(r->tier, tiers.size() - 1)].name;
    const std::string outcome = core::iequals(r->status, "success") || core::iequals(r->status, "succeeded") ||
                                        core::iequals(r->status, "completed")
                                    ? "success"
                                : core::iequals(r->status, "fail") || core::iequals(r->status, "failed") ||
                                        core::iequals(r->status, "error")
                                    ? "fail"
                                    : "other";
    metrics_->taskOutcome(r->key, tier, outcome);
  }
  log_.debug("task slot released", {{"key", r->key}, {"task", r->task_id}, {"status", r->status}});
  if (on_task_ended && r->reason == core::ReleaseReason::TaskFinished) {
    on_task_ended(r->key, r->task_id);
  }
}

ClientPollDecision TaskService::beginClientPoll(RequestCtx& ctx) {
  using Action = ClientPollDecision::Action;
  auth_by_key_[ctx.key_name] = ctx.authorization;
  const auto now = clock_.now();
  if (ctx.poll_held) {
    unholdIndex(ctx);
  } else if (cfg_->tasks.hold_near_end > core::Duration::zero()) {
    // Its task likely ends very soon: answer when it is seen ended (by the proxy's look at the
    // likely end, or any other poll), or at the latest a little after that end with what a look
    // then finds, rather than now with a running detail (from the cache, or fetched for a
    // token): a client polling every few seconds would see the end up to a poll interval late.
    if (auto until = tracker_->holdPollUntil(ctx.key_name, ctx.route.task_id, now,
                                             cfg_->tasks.hold_near_end);
        until && *until < ctx.deadline) {
      ctx.outcome = "held";
      Held& h = held_[{ctx.key_name, ctx.route.task_id}];
      h.ids.push_back(ctx.id);
      h.until = std::max(h.until, *until);
      if (h.ids.size() == 1) {
        // Its look may be due before the next tick: plan it. (The look's answer comes from the
        // network, so after the server has held this poll.)
        reconcile();
      }
      return ClientPollDecision{Action::Hold, nullptr, {}, *until - now};
    }
  }
  core::PollDecision d = tracker_->beginPoll(ctx.key_name, ctx.route.task_id, ctx.id, now);
  switch (d.action) {
  case core::PollAction::Hit:
    ctx.outcome = "cache_hit";
    return ClientPollDecision{Action::Hit, std::move(d.reply), d.age, {}};
  case core::PollAction::Join:
    ctx.poll_joined = true;
    return ClientPollDecision{Action::Join, nullptr, {}, {}};
  case core::PollAction::Fetch:
    asFetcher(ctx, now);
    break;
  }
  return ClientPollDecision{};
}

void TaskService::asFetcher(RequestCtx& ctx, core::MonotonicTime now) {
  ctx.poll_fetcher = true;
  ctx.poll_joined = false;
  ctx.poll_early_until = tracker_->likelyRunningUntil(ctx.key_name, ctx.route.task_id, now);
  if (ctx.poll_held && !ctx.poll_early_until) {
    // Held until its task's likely end, it fetches like a poll of a likely-running task: for a
    // spare token, or at once when it may free a slot creates wait for. Polls held to their
    // ends must not take the tokens of a flood's creates, which would then time out.
    ctx.poll_early_until = now;
  }
  // A poll that may find the task ended frees its slot: when creates wait for that tier's
  // full gate, it goes with them (see core::RequestInfo::unblocks).
  ctx.unblocks = tracker_->slotTier(ctx.key_name, ctx.route.task_id);
  if (ctx.unblocks && ctx.poll_early_until && !ctx.poll_held &&
      tracker_->behindUnlearnedOldest(ctx.key_name, ctx.route.task_id)) {
    // An older task of its tier still runs and nothing says how long they take: its "likely
    // end" is only a guess a poll interval ahead. Once the oldest is seen ended its likely end
    // is known, and tasks started with the oldest have likely ended too: it is judged again
    // then (rejudgeBehindOldest), not a poll interval later. Where the budget binds a look
    // that finds it running costs a create its token: there it waits for a spare token until
    // then.
    const bool sparse = limiter_.learnPace(ctx.key_name, *ctx.unblocks) == core::LearnPace::Sparse;
    if (sparse) {
      ctx.unblocks.reset();
    }
    behind_oldest_[{ctx.key_name, ctx.route.task_id}] = BehindOldest{ctx.id, sparse};
  }
}

void TaskService::rejudgeBehindOldest(core::MonotonicTime now) {
  std::vector<uint64_t> go;  // requeued after the walk: that may dispatch, and end tasks
  for (auto it = behind_oldest_.begin(); it != behind_oldest_.end();) {
    const auto& [key, task] = it->first;
    const RequestCtx* ctx = proxy_.find(it->second.id);
    if (ctx == nullptr || !limiter_.isWaiting(*ctx)) {
      it = behind_oldest_.erase(it);  // answered, gone or sent (it found a spare token)
      continue;
    }
    // Judged again when the oldest was seen ended, or when the budget no longer binds for one
    // that waits for a spare token. Not when the budget comes to bind: the pace may swing to
    // and fro while the oldest runs, and each new judgement would restart its wait.
    if (const std::optional<size_t> tier = tracker_->slotTier(key, task);
        tier && tracker_->behindUnlearnedOldest(key, task) &&
        (!it->second.sparse || limiter_.learnPace(key, *tier) == core::LearnPace::Sparse)) {
      ++it;
      continue;
    }
    go.push_back(it->second.id);
    it = behind_oldest_.erase(it);
  }
  for (uint64_t id : go) {
    if (RequestCtx* ctx = proxy_.find(id); ctx != nullptr && limiter_.isWaiting(*ctx)) {
      asFetcher(*ctx, now);
      limiter_.requeue(*ctx);
    }
  }
}

void TaskService::answerWaiters(const std::vector<uint64_t>& waiters, uint64_t except,
                                const UpstreamResponse& resp, std::string_view cache) {
  for (uint64_t id : waiters) {
    if (id != except) {
      if (RequestCtx* c = proxy_.find(id)) {
        c->outcome = "coalesced";
      }
      proxy_.replyWith(id, resp, cache);
    }
  }
}

void TaskService::fetchDone(RequestCtx& ctx, const UpstreamResponse& resp) {
  const auto now = clock_.now();
  if (resp.error != UpstreamError::None) {
    answerWaiters(tracker_->abandonPoll(ctx.key_name, ctx.route.task_id), ctx.id, resp,
                  "coalesced");
    return;
  }
  core::CachedReply cr;
  cr.status = resp.status;
  for (const Header& h : resp.headers) {
    cr.headers.emplace_back(h.name, h.value);
  }
  cr.body = resp.body;
  core::TaskTracker::PollCompletion c =
      tracker_->completePoll(ctx.key_name, ctx.route.task_id, cr, now);
  release(c.release);
  answerWaiters(c.waiters, ctx.id, resp, "coalesced");
}

void TaskService::fetchRejected(RequestCtx& ctx, core::ProxyError e, int retry_after_s) {
  if (ctx.internal) {
    // The proxy's own look was turned away (a look for held polls not sent by its time, a full
    // queue): that is no answer for the client polls that joined it; they fetch themselves.
    refetch(tracker_->abandonPoll(ctx.key_name, ctx.route.task_id), clock_.now());
    return;
  }
  for (uint64_t id : tracker_->abandonPoll(ctx.key_name, ctx.route.task_id)) {
    if (id != ctx.id) {
      proxy_.replyErrorTo(id, e, {}, retry_after_s);
    }
  }
}

void TaskService::pollerGone(RequestCtx& ctx, bool fetch_continues) {
  tracker_->cancelWaiter(ctx.key_name, ctx.route.task_id, ctx.id);
  if (!ctx.poll_fetcher || fetch_continues) {
    return;
  }
  // The fetch is never sent: the first remaining waiter fetches instead, the rest join it.
  refetch(tracker_->abandonPoll(ctx.key_name, ctx.route.task_id), clock_.now());
}

void TaskService::refetch(const std::vector<uint64_t>& waiters, core::MonotonicTime now) {
  for (uint64_t id : waiters) {
    RequestCtx* w = proxy_.find(id);
    if (w == nullptr || w->client_gone) {
      continue;
    }
    core::PollDecision d = tracker_->beginPoll(w->key_name, w->route.task_id, id, now);
    if (d.action == core::PollAction::Fetch) {
      asFetcher(*w, now);  // as if it had come now: its priority and lane follow the task
      proxy_.admitById(id);
    } else if (d.action == core::PollAction::Hit) {
      proxy_.replyCached(id, *d.reply, d.age);
    }
  }
}

void TaskService::observe(RequestCtx& ctx, const UpstreamResponse& resp) {
  if (!ctx.authorization.empty()) {
    auth_by_key_[ctx.key_name] = ctx.authorization;
  }
  if (resp.error != UpstreamError::None || resp.status < 200 || resp.status >= 300) {
    return;
  }
  if (ctx.route.kind == core::RouteKind::List && tracker_->hasRecords(ctx.key_name)) {
    const auto now = clock_.now();
    for (const core::TaskStatusView& t : core::parseTaskList(resp.body)) {
      release(tracker_->onStatus(ctx.key_name, t.task_id, t.status, now));
    }
  }
}

void TaskService::onCreated(const RequestCtx& ctx, const std::string& task_id) {
  if (!ctx.authorization.empty()) {
    auth_by_key_[ctx.key_name] = ctx.authorization;
  }
  release(tracker_->onCreated(ctx.key_name, task_id, ctx.tier.value_or(0), ctx.slot.id(), ctx.model,
                              clock_.now()));
  dirty_ = true;
}

void TaskService::adopt(const std::string& key, size_t tier, const std::string& task_id,
                        const std::string& model, core::Duration age) {
  if (tracker_->slotTier(key, task_id)) {
    return;  // the state file had it
  }
  const core::Duration lease = leaseOf(tier);
  if (age >= lease) {
    return;
  }
  const auto now = clock_.now();
  const uint64_t slot = limiter_.restoreSlot(key, tier, lease - age);
  release(tracker_->onRestored(key, task_id, tier, slot, model, now - age));
  dirty_ = true;
}

void TaskService::onLeaseExpired(const std::string& key, uint64_t slot) {
  if (tracker_->onSlotExpired(key, slot)) {
    dirty_ = true;
  }
}

void TaskService::onTick() {
  // Every kTick on the clock, however long a tick takes, as a periodic timer would.
  tick_->armAt(clock_.now() + kTick);
  tick();
}

void TaskService::tick() {
  const auto now = clock_.now();
  tracker_->expire(now);
  // Which tier is the bottleneck depends on how long its tasks run.
  limiter_.setTierDurations(tracker_->tierDurations(now));
  reconcile();
  if (!cfg_->tasks.state_file.empty() && dirty_ &&
      now - last_save_ >= cfg_->tasks.state_save_interval && save_backoff_.due(now)) {
    save();
  }
}

void TaskService::adoptDurations(const std::vector<core::NamedDuration>& others) {
  if (tracker_->adoptDurations(others)) {
    limiter_.setTierDurations(tracker_->tierDurations(clock_.now()));
  }
}

const std::string* TaskService::authFor(const std::string& key) {
  auto it = auth_by_key_.find(key);
  if (it == auth_by_key_.end() || it->second.empty()) {
    // A configured key: its credentials are in the config (inject mode, or a passthrough key
    // given a name).
    for (const core::KeyConfig& k : cfg_->keys) {
      if (k.name == key && !k.key.empty()) {
        it = auth_by_key_.insert_or_assign(key, "Bearer " + k.key.reveal()).first;
      }
    }
  }
  return it == auth_by_key_.end() || it->second.empty() ? nullptr : &it->second;
}

void TaskService::pollItself(const core::TrackedTaskInfo& t, Look why,
                             std::optional<core::MonotonicTime> held_until) {
  const std::string* auth = authFor(t.key);
  if (auth == nullptr) {
    // Passthrough key not seen since a restart: no credentials to poll with yet.
    tracker_->abandonPoll(t.key, t.task_id);
    return;
  }
  switch (why) {
  case Look::Reconcile:
    log_.debug("reconcile poll", {{"key", t.key}, {"task", t.task_id}});
    proxy_.internalPoll(t.key, *auth, t.task_id, std::nullopt);
    break;
  case Look::Gate:
    log_.debug("gate poll", {{"key", t.key}, {"task", t.task_id}});
    proxy_.internalPoll(t.key, *auth, t.task_id, t.tier);
    break;
  case Look::Held:
    // Like a held poll's own fetch: for a spare token, or with its tier's creates should the
    // tier's gate fill up while it waits (its answer may free the slot they wait for).
    log_.debug("held poll look", {{"key", t.key}, {"task", t.task_id}});
    proxy_.internalPoll(t.key, *auth, t.task_id, tracker_->slotTier(t.key, t.task_id),
                        held_until, /*spare_token=*/true);
    break;
  }
}

void TaskService::reconcile() {
  const auto now = clock_.now();
  rejudgeBehindOldest(now);
  if (!cfg_->tasks.reconcile) {
    return;
  }
  // While draining, only the looks that free slots for requests still waiting go on (gate
  // pressure, held polls): they are what lets queued creates be answered before the drain ends.
  if (!proxy_.draining()) {
    for (const core::TrackedTaskInfo& t : tracker_->dueForReconcile(now, 16)) {
      pollItself(t, Look::Reconcile);
    }
  }
  // Creates wait for a full tier gate: find out promptly which of its tasks have ended, rather
  // than at the pace of their clients' polls (or never, for callback users).
  // A look planned between two ticks gets its own timer: at a wave change of the makespan's
  // tier, every millisecond the end goes unseen is lost.
  std::optional<core::MonotonicTime> next_look;
  const std::vector<std::pair<std::string, size_t>> blocked = limiter_.blockedTiers();
  for (const auto& [key, tier] : blocked) {
    for (const core::TrackedTaskInfo& t : tracker_->dueForGatePressure(key, tier, now, 4)) {
      pollItself(t, Look::Gate);
    }
    core::LookPlan plan = tracker_->gatePressurePlan(key, tier, now);
    const std::optional<core::MonotonicTime> at = plan.first(now);
    limiter_.setLookPlan(key, tier, std::move(plan));
    if (at && *at > now && (!next_look || *at < *next_look)) {
      next_look = at;
    }
  }
  // Polls held for a task's end: look at the likely end and around it, so the end is answered
  // when it happens, not when the hold runs out (nobody else looks when no create waits: the
  // last tasks of a batch). For a spare token (or with the tier's creates, should its gate
  // fill meanwhile): where the budget binds, the held polls' own fetches at the end of the hold
  // are the looks. A task of a blocked tier is gate pressure's to look at, with its tier's
  // creates and at its pace; a hold that has run out has its polls fetching already.
  for (const auto& [id, h] : held_) {
    const std::optional<size_t> tier = tracker_->slotTier(id.first, id.second);
    if (now >= h.until ||
        (tier && std::find(blocked.begin(), blocked.end(), std::make_pair(id.first, *tier)) !=
                     blocked.end())) {
      continue;
    }
    if (auto t = tracker_->startHeldLook(id.first, id.second, now)) {
      pollItself(*t, Look::Held, h.until);
    }
    const std::optional<core::MonotonicTime> at =
        tracker_->nextHeldLookAt(id.first, id.second, now);
    if (at && *at > now && *at < h.until && (!next_look || *at < *next_look)) {
      next_look = at;
    }
  }
  if (next_look && *next_look - now < kTick) {
    look_->armAt(std::max(*next_look, now + std::chrono::microseconds(1)));
  }
}

bool TaskService::save() {
  const std::string& path = cfg_->tasks.state_file;
  if (path.empty()) {
    return true;
  }
  const std::string text = tracker_->serialize(clock_.now(), wallMs(clock_));
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  bool ok = fd >= 0;
  if (ok) {
    size_t off = 0;
    while (ok && off < text.size()) {
      const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
      ok = n > 0;
      off += n > 0 ? static_cast<size_t>(n) : 0;
    }
    ok = ::fsync(fd) == 0 && ok;
    ok = ::close(fd) == 0 && ok;
  }
  if (ok) {
    ok = std::rename(tmp.c_str(), path.c_str()) == 0;
  }
  if (!ok) {
    const int err = errno;
    if (save_backoff_.failed(clock_.now())) {
      log_.warn("cannot write the task state file",
                {{"path", path},
                 {"error", std::strerror(err)},
                 {"failures", save_backoff_.failures()},
                 {"retry_in_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                     save_backoff_.delay()).count()}});
    }
    return false;
  }
  if (const uint64_t failures = save_backoff_.succeeded(); failures > 0) {
    log_.info("task state file written again", {{"path", path}, {"failures", failures}});
  }
  last_save_ = clock_.now();
  dirty_ = false;
  return true;
}

void TaskService::restore() {
  const std::string& path = cfg_->tasks.state_file;
  if (path.empty()) {
    return;
  }
  std::string text, error;
  switch (readRegularFile(path, text, error)) {
  case ReadFileResult::Ok:
    break;
  case ReadFileResult::Missing:
    log_.info("no task state file: starting empty", {{"path", path}});
    return;
  case ReadFileResult::NotRegular:
  case ReadFileResult::Error:
    log_.warn("cannot read the task state file: starting empty", {{"path", path}, {"error", error}});
    return;
  }
  auto tasks = core::TaskTracker::parseState(text, &error, wallMs(clock_));
  if (!tasks) {
    log_.warn("ignoring a corrupt task state file", {{"path", path}, {"error", error}});
    return;
  }
  const auto now = clock_.now();
  size_t restored = 0;
  for (const auto& t : *tasks) {
    const size_t tier = tracker_->tierIndex(t.tier);
    const core::Duration lease = leaseOf(tier);
    if (t.age >= lease) {
      continue;  // its lease would have run out by now
    }
    const uint64_t slot = limiter_.restoreSlot(t.key, tier, lease - t.age);
    release(tracker_->onRestored(t.key, t.task_id, tier, slot, t.model, now - t.age));
    ++restored;
  }
  log_.info("task state restored", {{"path", path}, {"tasks", restored}});
}

}  // namespace hiapi::shell
