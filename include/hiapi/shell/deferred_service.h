#pragma once
// Deferred creates, the shell: decides when a waiting create is deferred, keeps the journal on
// disk (appended and fsync'd before the client hears "queued"), submits deferred creates through
// admission as the proxy's own requests, answers polls, lists and cancels of proxy task ids, and
// resumes what the journal holds after a restart. The book and the formats are core::deferred.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/deferred.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/timers.h"

namespace hiapi::shell {

class DeferredShare;
class Limiter;
class Metrics;
class RedisStore;
class TaskService;

/// Thread-safety: loop thread only.
class DeferredService final : public DeferHook {
public:
  /// @param timers its timers and clock. @param random jitter of resubmissions.
  DeferredService(Timers& timers, core::Random& random, core::ConfigSharedPtr cfg,
                  ProxyServer& proxy, Limiter& limiter, TaskService& tasks, Logger& log,
                  Metrics* metrics);
  ~DeferredService() override;
  DeferredService(const DeferredService&) = delete;
  DeferredService& operator=(const DeferredService&) = delete;

  /// Opens the journal, replays it, resubmits the creates still queued and re-occupies the slots
  /// of the tasks they became. A journal that cannot be opened leaves deferring off (retried).
  /// @param error set when the daemon must not start: the journal is not ours to read or
  ///        overwrite (written by a newer version, or not a journal).
  /// @return false in that case.
  bool start(std::string* error);
  void reconfigure(core::ConfigSharedPtr cfg);
  /// Keeps the deferred creates of configured keys in the shared store too, so that any
  /// instance answers for them and submits them (see deferred_share.h). @p store must outlive
  /// this service's use of it (the daemon destroys this service first).
  void shareThrough(RedisStore& store);
  /// A task of @p key was seen ended (TaskService::on_task_ended).
  void taskEnded(const std::string& key, const std::string& task_id);

  /// @return whether creates may be deferred now (a journal is configured and writable).
  bool storeReady() const { return fd_ >= 0 && store_ok_; }
  /// @return the journal's path ("" when deferring is off).
  const std::string& journalPath() const { return path_; }
  const core::DeferredBook& book() const { return book_; }
  /// @return the estimated start (Unix s) of queued record @p r at @p position.
  std::optional<int64_t> estimatedStart(const core::DeferredRecord& r, size_t position) const;
  /// Updates the deferred gauges (called before a scrape).
  void refreshGauges();

  // DeferHook
  bool intercept(RequestCtx& ctx) override;
  void waiting(RequestCtx& ctx) override;
  void submitted(RequestCtx& ctx, const UpstreamResponse& resp) override;
  void rejected(RequestCtx& ctx, core::ProxyError e) override;
  std::optional<std::string> rewrite(const RequestCtx& ctx, std::string_view body) override;

private:
  /// The periodic sweep: re-arms itself every kSweep, then sweep().
  void onSweep();
  void deferDue();
  void sweep();
  void armDue();
  /// Appends @p lines to the journal and fsyncs. On failure the journal is cut back to what it
  /// held, deferring pauses (retried with backoff) and false is returned.
  bool append(const std::string& lines);
  /// Opens (creating) and reads the journal at path_. @return false when it cannot be used.
  bool openJournal(std::string* fatal);
  /// Rewrites the journal as the book is now (tmp file, fsync, rename, fsync of the directory).
  bool compact();
  void storeFailed(const std::string& what, int err);
  void submit(const core::DeferredRecord& r);
  void resubmitLater(const std::string& id);
  void fail(const std::string& id, int status, std::string code, std::string message);
  /// @return the Authorization value to submit @p r with ("" when its key is gone).
  std::string authFor(const core::DeferredRecord& r) const;
  std::optional<size_t> tierIndex(const std::string& name) const;
  bool handleCancel(RequestCtx& ctx);
  bool ownedBy(const core::DeferredRecord& r, const RequestCtx& ctx) const;
  /// The record a waiting client create @p ctx is deferred as (new id, headers to resend).
  core::DeferredRecord recordFor(const RequestCtx& ctx, int64_t now_ms);
  /// Tries the journal again once its backoff is over (after a failed open or write).
  void retryStore(core::MonotonicTime now);
  int64_t wallMs() const;
  /// Cancels queued @p id held here. @return false when it is on its way to HiAPI already.
  bool cancelHeld(const std::string& id);
  /// Answers a cancel of @p r that is no longer queued (200 if cancelled, else 409).
  void replyNotQueued(RequestCtx& ctx, const core::DeferredRecord& r);

  // deferred_sharing.cc: the records in the shared store
  bool shared(const core::DeferredRecord& r) const { return share_ != nullptr && r.auth.empty(); }
  /// Writes record @p id as it is now to the store (at once, or at the next sweep).
  void share(const std::string& id);
  /// Each sweep: writes what is not written, and per configured key renews the records held
  /// here, hears cancels asked elsewhere and takes queued records whose holder is gone.
  void syncShared();
  /// Record @p remote, queued here, left the queue at another instance: take its outcome.
  void adoptEnded(const core::DeferredRecord& remote);
  /// Another live instance holds queued @p id: leave it to that instance.
  void handOver(const std::string& id);
  /// A queued record whose holder is gone is held here now (under key name @p key).
  void takeOver(core::DeferredRecord r, const std::string& key);
  /// A poll of a proxy task id this instance does not hold. @return true when answered or
  /// taken to be answered once the store replies; false when there is no store to ask.
  bool lookUpShared(RequestCtx& ctx);
  /// A cancel of a proxy task id this instance does not hold. @return as lookUpShared.
  bool cancelShared(RequestCtx& ctx, const std::string& id);
  /// Cancels asked of the instance that holds a task: answered once it has decided.
  void checkCancelWaits();

  Timers& timers_;
  core::ConfigSharedPtr cfg_;
  ProxyServer& proxy_;
  Limiter& limiter_;
  TaskService& tasks_;
  Logger& log_;
  Metrics* metrics_;
  const core::Clock& clock_;
  core::Random& random_;
  std::unique_ptr<Timer> due_timer_;
  std::unique_ptr<Timer> sweep_;

  core::DeferredBook book_;
  std::string path_;
  int fd_ = -1;
  bool store_ok_ = false;
  core::MonotonicTime store_retry_at_{};
  core::Duration store_backoff_{};
  uint64_t journal_size_ = 0;   ///< bytes known to be complete lines
  size_t journal_lines_ = 0;    ///< lines since the last compaction

  /// Client creates waiting in admission, by when they are deferred if still waiting.
  std::multimap<core::MonotonicTime, uint64_t> due_;
  /// Deferred ids being submitted: the request id of their submission.
  std::unordered_map<std::string, uint64_t> inflight_;
  /// Deferred ids waiting to be submitted again (after a 429, 5xx, network error), and when.
  std::map<std::string, core::MonotonicTime> retry_at_;
  std::unordered_map<std::string, int> attempts_;

  std::unique_ptr<DeferredShare> share_;
  std::set<std::string> unshared_;  ///< ids whose state the store does not have yet
  std::set<std::string> sharing_;   ///< ids being written
  size_t syncs_ = 0;                ///< sync round trips in flight
  /// Records the store gave for polls taken to ask it, by request id, until they are served.
  std::unordered_map<uint64_t, core::DeferredRecord> found_;
  struct CancelWait {
    std::string key_id;
    std::string id;
    core::MonotonicTime until;
  };
  /// Cancels asked of the instance that holds the task, by request id.
  std::map<uint64_t, CancelWait> cancel_waits_;
};

}  // namespace hiapi::shell
