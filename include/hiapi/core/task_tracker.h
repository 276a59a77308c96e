#pragma once
// TaskTracker: each task's life after its create, plus the poll cache in front of upstream.
//
// Records are keyed by (key, task_id), where `key` is the key's NAME (or, in passthrough mode, a
// label that identifies the credential, such as Secret::fingerprint()) — never the secret. One
// key is never served another key's record or cached reply: HiAPI answers 404 for another
// account's task, and so must the proxy.
//
// Slots. A task created through the proxy (onCreated) or known from the state file (onRestored)
// holds its tier's slot until a terminal status is seen — in a poll reply, a list reply, a
// callback, or the proxy's own reconcile poll — and then onStatus / completePoll return its
// SlotRelease exactly once. The scheduler's lease ends slots of tasks that never report back:
// the shell then calls onSlotExpired, and no release is returned for it later.
//
// Poll coalescing. beginPoll answers Hit (a fresh cached reply), Join (a fetch is in flight: the
// waiter is recorded) or Fetch (the caller fetches upstream; the waiter is recorded). The fetch
// ends with completePoll (a reply) or abandonPoll (none), which return the waiters to answer.
// Freshness: a 2xx reply is fresh for its tier's min_poll_interval (unknown tasks: the last
// tier's), a 2xx reply with a terminal status for terminal_ttl, a 404 for not_found_ttl. Once
// the tier's typical duration is learned, a tracked task's running detail is held until its
// likely end (at most max_hold); once one task of the tier has ended, it is fresh only
// endPollInterval() around its likely end. Other
// statuses are never cached. A status change seen elsewhere (list, callback) drops a cached
// reply that says otherwise, so the next poll fetches it.
//
// Bounds. expire() drops stale replies, forgets terminal tasks terminal_ttl after they ended,
// and enforces cache_max_entries (all records) and cache_max_bytes (cached replies) by LRU. A
// record with waiters or a fetch in flight is never evicted; a record that holds a slot is never
// forgotten (only its cached reply may be dropped), so the bounds can be exceeded by them alone.
//
// The tracker composes its parts, each testable alone: TaskRegistry (the records), PollCache
// (cached replies, coalescing, bounds), DurationEstimator (learned durations), LookPlanner (when
// to look upstream: reconcile, gate pressure, held polls) and the state codec (persistence).
//
// Time is an argument everywhere; the tracker never reads a clock.
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/concurrency_gate.h"
#include "hiapi/core/config.h"
#include "hiapi/core/duration_estimator.h"
#include "hiapi/core/look_planner.h"
#include "hiapi/core/poll_cache.h"
#include "hiapi/core/task_registry.h"
#include "hiapi/core/task_state_codec.h"

namespace hiapi::core {

/// A tracked task's slot to give back (KeyScheduler::releaseSlot(slot, reason, now) of `key`).
struct SlotRelease {
  std::string key;
  std::string task_id;
  size_t tier = 0;
  SlotId slot = 0;
  std::string status;  ///< the terminal status seen (empty for a duplicate create)
  /// TaskFinished for a task that ended; NotCreated for the superfluous slot of a duplicate
  /// create (an idempotent replay of a task that is already tracked).
  ReleaseReason reason = ReleaseReason::TaskFinished;
};

/// See the file comment. Thread-safety: not thread-safe.
class TaskTracker {
public:
  /// @param cfg TTLs, bounds, reconcile, and the terminal set = terminal_statuses ∪
  ///        tolerated_terminal (compared case-insensitively)
  /// @param tiers the limits' tiers, for names and min_poll_interval; empty = defaultTierConfigs()
  /// Thread-safety: not thread-safe.
  TaskTracker(const TasksConfig& cfg, std::vector<TierConfig> tiers);
  // Records point at each other's map and list nodes: movable (nodes move along), not copyable.
  TaskTracker(const TaskTracker&) = delete;
  TaskTracker& operator=(const TaskTracker&) = delete;
  TaskTracker(TaskTracker&&) = default;
  TaskTracker& operator=(TaskTracker&&) = default;

  /// Hot reload: new settings and tiers, keeping every record. Records follow their tier by name;
  /// a record whose tier is gone moves to the last tier. Bounds apply at the next expire().
  /// @param cfg the new task settings
  /// @param tiers the new tiers; empty = defaultTierConfigs()
  /// Thread-safety: not thread-safe.
  void reconfigure(const TasksConfig& cfg, std::vector<TierConfig> tiers);

  /// Sets how the pace of looks at a tier not yet learned is decided (see LearnPace); the
  /// daemon asks its key schedulers. Without one: LearnPace::Plain.
  /// Thread-safety: not thread-safe.
  void setLearnPace(LearnPaceFn fn) { learn_pace_ = std::move(fn); }
  /// Sets what a look that finds a task running costs its tier (see LookPriceFn); the daemon
  /// asks its key schedulers. Without one: nothing but its token.
  /// Thread-safety: not thread-safe.
  void setLookPrice(LookPriceFn fn) { look_price_ = std::move(fn); }
  /// Sets how a key's gateway window with requests to spare is asked for (see SpareWindowFn);
  /// the daemon asks its key schedulers. Without one: never.
  /// Thread-safety: not thread-safe.
  void setSpareWindow(SpareWindowFn fn) { spare_window_ = std::move(fn); }

  /// @param status a task status as seen on the wire
  /// @return whether it is in the terminal set (case-insensitive).
  /// Thread-safety: const; safe while no other call runs.
  bool isTerminal(std::string_view status) const;

  /// After a 2xx create: tracks the task, holding @p slot of @p tier.
  /// @param key the key's name (never the secret)
  /// @param task_id the id from the create reply
  /// @param tier its tier index (clamped to the last)
  /// @param slot the slot it holds; nullopt when it holds none
  /// @param model the model of the create body
  /// @param now the current time
  /// @return a slot the caller must give back at once: the new @p slot when the task is already
  ///         tracked holding a slot or already terminal (an idempotent replay), with reason
  ///         NotCreated; nullopt normally.
  /// Thread-safety: not thread-safe.
  std::optional<SlotRelease> onCreated(const std::string& key, const std::string& task_id,
                                       size_t tier, std::optional<SlotId> slot,
                                       const std::string& model, MonotonicTime now);

  /// @return whether any task of @p key has a record (a list's statuses can update nothing
  ///         otherwise, so the caller need not parse it).
  bool hasRecords(const std::string& key) const;

  /// A status seen for (key, task) in a detail, list or callback.
  /// A terminal status is final: later statuses do not change it.
  /// @param key the key's name
  /// @param task_id the task
  /// @param status the status as seen (empty is ignored)
  /// @param now the current time
  /// @return the task's slot to release when this status is the first terminal one seen while it
  ///         held a slot (exactly once; later calls return nullopt). Unknown (key, task) pairs
  ///         create no record: tasks not created through the proxy appear only in the poll
  ///         cache, when polled, and never hold a slot.
  /// Thread-safety: not thread-safe.
  std::optional<SlotRelease> onStatus(const std::string& key, const std::string& task_id,
                                      std::string_view status, MonotonicTime now);

  /// The scheduler of @p key ended @p slot's lease: forgets the slot (no release is returned for
  /// it later). The task stays known (polls, cache) without a slot.
  /// @param key the key's name (slot ids are unique only within a key's scheduler)
  /// @param slot the expired slot
  /// @return whether a task held it.
  /// Thread-safety: not thread-safe.
  bool onSlotExpired(const std::string& key, SlotId slot);

  /// As onSlotExpired(key, slot) for the one task of any key that holds @p slot. Slot ids repeat
  /// across keys, so when more than one key holds this id nothing is forgotten (prefer the
  /// two-argument form).
  /// @param slot the expired slot
  /// @return how many tasks forgot it (0 or 1).
  /// Thread-safety: not thread-safe.
  size_t onSlotExpired(SlotId slot);

  // ---- poll coalescing and cache, keyed by (key, task_id) -------------------------------------

  /// A client poll of GET /v1/tasks/{task_id} arrived.
  /// @param key the key's name the poll is made with
  /// @param task_id the task id of the path (decoded)
  /// @param waiter the shell's request id (unique among this record's waiters)
  /// @param now the current time
  /// @return Hit with the reply and its age when a fresh reply is cached; else Join when a fetch
  ///         is in flight (the waiter is recorded); else Fetch: the fetch is recorded as in
  ///         flight and the waiter too.
  /// Thread-safety: not thread-safe.
  PollDecision beginPoll(const std::string& key, const std::string& task_id, uint64_t waiter,
                         MonotonicTime now);

  /// What completePoll decided.
  struct PollCompletion {
    std::vector<uint64_t> waiters;       ///< all recorded waiters, in arrival order
    std::optional<SlotRelease> release;  ///< the slot to release when the reply was terminal
  };

  /// The upstream fetch for (key, task_id) finished with a reply.
  /// A 2xx reply is cached (and its detail's status applied as by onStatus); a 404 is cached for
  /// not_found_ttl; any other status is not cached. The in-flight mark is cleared.
  /// @param key the key's name
  /// @param task_id the task
  /// @param reply the upstream reply (status, end-to-end headers, body)
  /// @param now the current time
  /// @return every waiter recorded (the fetcher — answered "miss" — and the joiners —
  ///         "coalesced"), and the release if the status turned terminal.
  /// Thread-safety: not thread-safe.
  PollCompletion completePoll(const std::string& key, const std::string& task_id,
                              const CachedReply& reply, MonotonicTime now);

  /// The fetch failed without a reply, or was never sent (its client went away while queued).
  /// Clears the in-flight mark and every waiter.
  /// @param key the key's name
  /// @param task_id the task
  /// @return all waiters still recorded, in arrival order. The shell answers them with the
  ///         error, or calls beginPoll again for each in order: the first gets Fetch, the others
  ///         Join (a gone fetcher should be removed with cancelWaiter first).
  /// Thread-safety: not thread-safe.
  std::vector<uint64_t> abandonPoll(const std::string& key, const std::string& task_id);

  /// A waiter's client went away: it will not be returned by completePoll / abandonPoll. The
  /// fetch, if any, stays in flight.
  /// @param key the key's name
  /// @param task_id the task
  /// @param waiter the shell's request id
  /// @return whether it was recorded.
  /// Thread-safety: not thread-safe.
  bool cancelWaiter(const std::string& key, const std::string& task_id, uint64_t waiter);

  // ---- reconcile ------------------------------------------------------------------------------

  /// Tasks that hold a slot, are not terminal, have no fetch in flight, and had neither a client
  /// poll nor an upstream poll (or status) for reconcile_interval; longest idle first. Each is
  /// marked in flight (client polls join it); finish it with completePoll / abandonPoll.
  /// @param now the current time
  /// @param max at most this many
  /// @return the tasks to poll at the lowest priority; empty when reconcile is off.
  /// Thread-safety: not thread-safe.
  std::vector<TrackedTaskInfo> dueForReconcile(MonotonicTime now, size_t max = 16);

  /// Tasks of @p key's tier @p tier worth polling now because creates wait for that tier's full
  /// gate: they hold a slot, are not terminal, have no fetch in flight, were last fetched long
  /// enough ago (min_poll_interval; endPollInterval() around the likely end), and are not
  /// likelyRunning(); oldest first; before any of the tier's tasks has ended, only its oldest,
  /// at the tier's LearnPace. Each is marked in flight like dueForReconcile's (client polls
  /// join it); finish it with completePoll / abandonPoll.
  /// @param key the key's name
  /// @param tier the tier whose gate is full
  /// @param now the current time
  /// @param max at most this many
  /// Thread-safety: not thread-safe.
  std::vector<TrackedTaskInfo> dueForGatePressure(const std::string& key, size_t tier,
                                                  MonotonicTime now, size_t max = 4);
  /// @return when dueForGatePressure(@p key, @p tier) will next have a task to poll: the
  ///         earliest, over the tier's tasks holding a slot, of the time its last fetch stops
  ///         being fresh or its likely end, whichever is later; @p now while one has a fetch
  ///         in flight (its answer may free the slot at any moment); nullopt if none holds a
  ///         slot. The key scheduler keeps tokens in reserve for that moment.
  /// Thread-safety: const.
  std::optional<MonotonicTime> nextGatePressureAt(const std::string& key, size_t tier,
                                                  MonotonicTime now) const;
  /// @return every look gate pressure will make at @p key's tier @p tier as things stand: for
  ///         each candidate (as dueForGatePressure's, in flight or not), its next look time
  ///         (as nextGatePressureAt's), soonest first; fetches in flight are counted apart
  ///         (one in flight before the likely end counts as a look at the likely end: it is a
  ///         client's poll waiting for then). At LearnPace::Eager, before any task of the
  ///         tier has ended, the tasks younger than the oldest count as looks with the
  ///         oldest's: once it is seen ended they are looked at at once.
  ///         The key scheduler plans its token reserve with it (KeyScheduler::setLookPlan).
  /// Thread-safety: const.
  LookPlan gatePressurePlan(const std::string& key, size_t tier, MonotonicTime now) const;

  /// A client poll of (key, task_id) is held for its task's end (holdPollUntil): the proxy
  /// looks itself at the likely end and then every endPollInterval(), so the end is seen when it
  /// happens rather than when the hold runs out.
  /// @return when that look is due (may be in the past): as for gate pressure, the time its last
  ///         fetch stops being fresh or its likely end, whichever is later; nullopt when the task
  ///         is not tracked, is terminal, has no duration estimate yet or has a fetch in flight.
  /// Thread-safety: const.
  std::optional<MonotonicTime> nextHeldLookAt(const std::string& key, const std::string& task_id,
                                              MonotonicTime now) const;
  /// When nextHeldLookAt(@p key, @p task_id, @p now) is due: marks the fetch in flight (client
  /// polls join it) and returns the task; finish it with completePoll / abandonPoll.
  /// Thread-safety: not thread-safe.
  std::optional<TrackedTaskInfo> startHeldLook(const std::string& key, const std::string& task_id,
                                               MonotonicTime now);

  /// @return when dueForReconcile could next return something (may be in the past); nullopt
  ///         when reconcile is off or no task could become due without another event.
  /// Thread-safety: const.
  std::optional<MonotonicTime> nextReconcileAt() const;

  // ---- bounds, expiry, stats ------------------------------------------------------------------

  /// Drops replies past their TTL and forgotten records (see the file comment), then enforces
  /// the LRU bounds. Call every second or so.
  /// @param now the current time
  /// Thread-safety: not thread-safe.
  void expire(MonotonicTime now);

  struct Stats {
    size_t tracked = 0;        ///< records of tasks created through the proxy (or restored)
    size_t holding_slots = 0;  ///< of which hold a slot
    size_t cache_entries = 0;  ///< records with a cached reply
    uint64_t cache_bytes = 0;  ///< bytes of cached replies (body + headers + overhead)
    uint64_t hits = 0, coalesced = 0, misses = 0, evictions = 0, released = 0;
    size_t records = 0;          ///< all records (tracked and poll-only)
    size_t in_flight = 0;        ///< records with a fetch in flight
    uint64_t slots_expired = 0;  ///< slots forgotten through onSlotExpired
    uint64_t reconciles = 0;     ///< tasks handed out by dueForReconcile
  };
  /// @return counts and counters (counters are monotonic). Thread-safety: const.
  Stats stats() const;

  /// @return tasks that hold a slot, oldest first (for /status). Thread-safety: const.
  std::vector<TrackedTaskInfo> running() const;

  /// @return the record of (key, task_id), if any. Thread-safety: const.
  std::optional<TrackedTaskInfo> find(const std::string& key, const std::string& task_id) const;

  // ---- persistence (the shell writes/reads the file; this produces/consumes the text) ---------

  /// @param now the current time (ages are relative to it)
  /// @param wall_now_unix_ms the wall clock, in Unix ms, written as saved_at_unix_ms
  /// @return `{"version":1,"saved_at_unix_ms":...,"tasks":[{"key":"prod","task_id":"..",
  ///         "tier":"heavy","model":"..","age_ms":12345},...]}` listing the non-terminal tasks
  ///         that hold a slot (key names only, never a secret).
  /// Thread-safety: const.
  std::string serialize(MonotonicTime now, int64_t wall_now_unix_ms) const;

  using RestoredTask = core::RestoredTask;

  /// Parses a state file. Strict: any malformed task rejects the whole file.
  /// @param text the file's content
  /// @param error set to a message (with the JSON offset or the field path) on failure; may be
  ///        nullptr
  /// @param wall_now_unix_ms when given, the downtime since saved_at_unix_ms (when positive) is
  ///        added to every age
  /// @return the tasks to restore; nullopt for non-JSON, an unknown version or wrong types.
  ///         Never throws. The shell re-occupies a slot per task (KeyScheduler::restoreSlot) and
  ///         then calls onRestored.
  /// Thread-safety: pure.
  static std::optional<std::vector<RestoredTask>> parseState(
      std::string_view text, std::string* error,
      std::optional<int64_t> wall_now_unix_ms = std::nullopt);

  /// Tracks a task read from the state file, holding @p slot. Like onCreated otherwise.
  /// @param key the key's name
  /// @param task_id the task
  /// @param tier its tier index (clamped to the last)
  /// @param slot the slot restoreSlot gave it
  /// @param model its model
  /// @param created when it was created (now - age)
  /// @return as onCreated (a slot to give back at once when the task is already tracked).
  /// Thread-safety: not thread-safe.
  std::optional<SlotRelease> onRestored(const std::string& key, const std::string& task_id,
                                        size_t tier, SlotId slot, const std::string& model,
                                        MonotonicTime created);

  /// @return the index of the tier named @p name, or the last tier when none is.
  /// Thread-safety: const.
  size_t tierIndex(std::string_view name) const;

  /// @return the learned typical duration of tier @p tier's tasks, once enough (2) tasks were
  ///         seen from creation to their end; nullopt before. Each end is known to lie between
  ///         the last running status and the first terminal one: a narrow bracket's upper end
  ///         is averaged in (EWMA: looks land just after ends rather than just before), a wide
  ///         bracket only moves the estimate inside it, and an end seen by the first poll aimed
  ///         at the estimate nudges it lower, by steps that double while that repeats (so an
  ///         estimate that is too long comes down in a few tasks). A tier's expected_duration,
  ///         when set, is the starting estimate (as if two tasks had been seen). Estimates follow
  ///         their tier by name across reconfigure().
  /// Thread-safety: const.
  std::optional<Duration> typicalDuration(size_t tier) const;
  /// @return how far apart tier @p tier's recent durations surely lay
  ///         (DurationEstimator::range()), once one task of it was seen to end; nullopt before.
  /// Thread-safety: const.
  std::optional<DurationEstimator::Range> durationRange(size_t tier) const;
  /// When the likely end of (key, task_id) lies in (@p now, @p now + @p within] (a tracked
  /// task, not seen terminal, whose tier has a duration estimate: one ended task is enough), a
  /// client poll arriving now may wait for it (tasks.hold_near_end).
  /// @return until when it waits at most: that end plus two endPollInterval()s, since the
  ///         estimate probes lower and may sit up to about that far before the true end (a
  ///         look there would answer "running", and the client would see the end a poll
  ///         interval late); nullopt when it should not wait. Thread-safety: const.
  std::optional<MonotonicTime> holdPollUntil(const std::string& key, const std::string& task_id,
                                             MonotonicTime now, Duration within) const;
  /// @return what this instance knows of each tier's duration (tiers with nothing known left
  ///         out). Thread-safety: const.
  std::vector<NamedDuration> knownDurations() const;
  /// Other instances' estimates, any number per tier: for each tier named, the one that has
  /// seen the most ends is offered to DurationEstimator::adopt(); names of no tier here are
  /// ignored. @return whether an estimate changed.
  bool adoptDurations(const std::vector<NamedDuration>& others);
  /// @return per tier: typicalDuration() (learned), or, before that is known, how long the
  ///         tier's oldest task still holding a slot (any key) has run at @p now (a lower bound
  ///         on its duration), or nullopt. One pass over the tasks, and only while some tier's
  ///         typicalDuration() is unknown. Thread-safety: const.
  std::vector<std::optional<TierDuration>> tierDurations(MonotonicTime now) const;

  /// @return the gap between polls of a task of tier @p tier around its likely end: 1/20 of the
  ///         estimated duration (one finished task is enough), at least 100 ms and at most
  ///         min_poll_interval; min_poll_interval while no task of the tier has finished. A
  ///         task's running detail fetched from shortly before until half a typical duration
  ///         after its likely end is fresh only this long, and gate-pressure polls come this
  ///         often, so the end is seen within about this much.
  /// Thread-safety: const.
  Duration endPollInterval(size_t tier) const;

  /// @return whether (key, task_id) is a tracked task that, by its tier's learned duration (one
  ///         finished task is enough here), is most likely still running at @p now; false while
  ///         no task of its tier has finished. Polling such a task upstream is unlikely to tell
  ///         anything new: its fetch may wait behind creates.
  /// Thread-safety: const.
  bool likelyRunning(const std::string& key, const std::string& task_id, MonotonicTime now) const;
  /// @return the tier of the concurrency slot (key, task_id) holds, if it holds one (a poll that
  ///         finds it ended frees that slot). Thread-safety: const.
  std::optional<size_t> slotTier(const std::string& key, const std::string& task_id) const;
  /// @return whether (key, task_id) holds a slot of a tier none of whose tasks has been seen
  ///         ended while an older task of the tier still runs: nothing says when it ends
  ///         before that one does, and while that one runs it likely runs too.
  /// Thread-safety: const.
  bool behindUnlearnedOldest(const std::string& key, const std::string& task_id) const;
  /// @return when the task likely ends, if likelyRunning() at @p now; else nullopt.
  /// Thread-safety: const.
  std::optional<MonotonicTime> likelyRunningUntil(const std::string& key,
                                                  const std::string& task_id,
                                                  MonotonicTime now) const;

private:
  LookPlanner planner() const {
    return LookPlanner(registry_, durations_, tiers_, cfg_, learn_pace_, look_price_,
                       spare_window_);
  }
  std::optional<SlotRelease> track(const std::string& key, const std::string& task_id, size_t tier,
                                   std::optional<SlotId> slot, const std::string& model,
                                   MonotonicTime created, MonotonicTime now);
  std::optional<SlotRelease> applyStatus(TaskRecord& r, std::string_view status,
                                         MonotonicTime now);
  TaskRecord& findOrCreate(const std::string& key, const std::string& task_id, MonotonicTime now);
  void erase(TaskRecord& r);
  bool forgettable(const TaskRecord& r, MonotonicTime now) const;
  void enforceBounds();
  size_t clampTier(size_t tier) const { return std::min(tier, tiers_.size() - 1); }
  TrackedTaskInfo info(const TaskRecord& r) const;
  /// Marks the first @p max of @p due in flight (the proxy's own fetches: client polls join
  /// them). @return them.
  std::vector<TrackedTaskInfo> startFetches(const std::vector<const TaskRecord*>& due,
                                            size_t max, MonotonicTime now);
  void setTiers(std::vector<TierConfig> tiers);
  void setConfig(const TasksConfig& cfg);

  TasksConfig cfg_;
  std::vector<TierConfig> tiers_;
  LearnPaceFn learn_pace_;  ///< unset: LearnPace::Plain
  LookPriceFn look_price_;  ///< unset: zero
  SpareWindowFn spare_window_;  ///< unset: never
  std::vector<std::string> terminal_;  ///< lower-cased
  TaskRegistry registry_;
  PollCache cache_;
  DurationEstimator durations_;
  Stats counters_;  ///< only the monotonic counters are used
};

}  // namespace hiapi::core
