#pragma once
// Deferred creates, the shell: decides when a waiting create is deferred, keeps the journal on
// disk (appended and fsync'd before the client hears "queued"), submits deferred creates through
// admission as the proxy's own requests, answers polls, lists and cancels of proxy task ids, and
// resumes what the journal holds after a restart. The book and the formats are core::deferred.

#include <map>
#include <memory>
#include <optional>
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

class Limiter;
class Metrics;
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
};

}  // namespace hiapi::shell
