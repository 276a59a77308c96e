#pragma once
// Tasks, not requests: the shell around core::TaskTracker. It answers polls from the cache or
// joins them to a fetch in flight, frees tier slots when a terminal status passes by, polls idle
// tasks itself (reconcile), and keeps running tasks in a state file across restarts.

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>


#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/save_backoff.h"
#include "hiapi/core/task_tracker.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/timers.h"

namespace hiapi::shell {

class Limiter;
class Metrics;

/// Thread-safety: loop thread only.
class TaskService final : public PollHook {
public:
  /// @param timers its timers and its clock.
  TaskService(Timers& timers, core::ConfigSharedPtr cfg, Limiter& limiter, ProxyServer& proxy,
              Logger& log, Metrics* metrics = nullptr);
  ~TaskService() override;
  TaskService(const TaskService&) = delete;
  TaskService& operator=(const TaskService&) = delete;

  /// Reads the state file (if configured) and re-occupies the slots of tasks still running.
  void restore();
  /// Writes the state file now (atomically). @return false on an I/O error (logged).
  bool save();
  void reconfigure(core::ConfigSharedPtr cfg);

  // PollHook
  ClientPollDecision beginClientPoll(RequestCtx& ctx) override;
  void fetchDone(RequestCtx& ctx, const UpstreamResponse& resp) override;
  void fetchRejected(RequestCtx& ctx, core::ProxyError e, int retry_after_s) override;
  void pollerGone(RequestCtx& ctx, bool fetch_continues) override;
  void observe(RequestCtx& ctx, const UpstreamResponse& resp) override;

  /// A create succeeded (called by the limiter): the task now holds the create's slot.
  void onCreated(const RequestCtx& ctx, const std::string& task_id);
  /// A slot's lease ran out in the scheduler of @p key.
  void onLeaseExpired(const std::string& key, uint64_t slot);

  /// Re-occupies a slot for task @p task_id of @p key (tier @p tier, running for @p age) that the
  /// proxy knows to exist from elsewhere (a deferred create's journal), unless it is tracked.
  void adopt(const std::string& key, size_t tier, const std::string& task_id,
             const std::string& model, core::Duration age);

  /// Hook: a task was seen ended (its slot freed), by key name and HiAPI task id.
  std::function<void(const std::string& key, const std::string& task_id)> on_task_ended;

  const core::TaskTracker& tracker() const { return *tracker_; }
  /// Other instances' learned tier durations, from the shared store: taken as the tracker
  /// decides (core::TaskTracker::adoptDurations()), and the limiter told at once.
  void adoptDurations(const std::vector<core::NamedDuration>& others);

private:
  /// The periodic tick: re-arms itself every kTick, then tick().
  void onTick();
  void tick();
  void reconcile();
  void release(const std::optional<core::SlotRelease>& r);
  /// Forgets @p ctx in held_ (it is being served).
  void unholdIndex(const RequestCtx& ctx);
  /// @p ctx fetches its task (beginPoll said Fetch): sets how it waits for admission (a likely
  /// running task's poll waits for a spare token; one that may free a full gate's slot goes
  /// with that tier's creates from the task's likely end).
  void asFetcher(RequestCtx& ctx, core::MonotonicTime now);
  void answerWaiters(const std::vector<uint64_t>& waiters, uint64_t except,
                     const UpstreamResponse& resp, std::string_view cache);
  core::Duration leaseOf(size_t tier) const;
  /// @return the Authorization value to poll @p key's tasks with, or nullptr.
  const std::string* authFor(const std::string& key);
  /// Why the proxy polls a task itself.
  enum class Look {
    Reconcile,  ///< nobody polled it for a while: the lowest priority
    Gate,       ///< creates wait for its tier's full gate: with them
    Held,       ///< client polls are held for its end: for a spare token, until @p held_until
  };
  /// The proxy's own poll of @p t (marked in flight by the tracker), or, without credentials
  /// for its key, gives the fetch up.
  /// @param held_until Look::Held: not sent after this (the held polls fetch then)
  void pollItself(const core::TrackedTaskInfo& t, Look why,
                  std::optional<core::MonotonicTime> held_until = std::nullopt);
  /// A fetch of (@p key, @p task_id) was given up without a reply, for reasons of its own (its
  /// client left, or the proxy's own look was dropped): the first of @p waiters still open
  /// fetches instead, the others join it (or are answered from the cache).
  void refetch(const std::vector<uint64_t>& waiters, core::MonotonicTime now);
  /// The fetches in behind_oldest_ whose task may now be looked at (its tier's first end was
  /// seen), or that wait for a spare token while the budget no longer binds, wait from now on
  /// as asFetcher() says then.
  void rejudgeBehindOldest(core::MonotonicTime now);

  Timers& timers_;
  const core::Clock& clock_;
  core::ConfigSharedPtr cfg_;
  Limiter& limiter_;
  ProxyServer& proxy_;
  Logger& log_;
  Metrics* metrics_;
  std::unique_ptr<core::TaskTracker> tracker_;
  std::unique_ptr<Timer> tick_;
  std::unique_ptr<Timer> look_;  ///< a gate-pressure look planned between two ticks
  core::MonotonicTime last_save_{};
  bool dirty_ = false;
  core::SaveBackoff save_backoff_;  ///< a failing save is tried again later and later
  /// The Authorization value last seen per key name (memory only: never logged or saved), so
  /// that reconcile polls can be made in passthrough mode.
  std::unordered_map<std::string, std::string> auth_by_key_;
  /// Client polls held until their task's likely end, by (key name, task id): answered as soon
  /// as the task is seen ended (release()), else when their timer fires (at `until`, the
  /// latest of them). Meanwhile the proxy looks itself (reconcile()).
  struct Held {
    std::vector<uint64_t> ids;
    core::MonotonicTime until{};
  };
  std::map<std::pair<std::string, std::string>, Held> held_;
  /// Client polls fetching a task of a tier not learned yet, behind its oldest task
  /// (TaskTracker::behindUnlearnedOldest), by (key name, task id): their request id, and
  /// whether the budget bound when they were queued (core::LearnPace::Sparse: then they wait
  /// for a spare token). rejudgeBehindOldest() lets them go as usual.
  struct BehindOldest {
    uint64_t id = 0;
    bool sparse = false;
  };
  std::map<std::pair<std::string, std::string>, BehindOldest> behind_oldest_;
};

}  // namespace hiapi::shell
