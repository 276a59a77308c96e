#pragma once
// Deferred creates: a create that cannot get its tier's slot within a short wait is answered at
// once with a proxy task id ("hp-tk-…"), kept durably, and submitted to HiAPI when a slot frees.
// Heavy tasks run for minutes while clients give up after 60 s: holding such a create on its
// connection would only turn HiAPI's 429 into the proxy's own.
//
// This is the pure part: the book of deferred tasks, the journal's line format (so that a crash
// at any point leaves a file the next start reads back), and the JSON the proxy answers and
// rewrites for deferred ids. No I/O, no clock: callers pass wall time in Unix milliseconds.
//
// Thread-safety: not thread-safe; the daemon uses it from its loop thread only.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "hiapi/core/clock.h"

namespace hiapi::core {

/// Prefix of every proxy task id: "hp-tk-" then 26 Crockford base32 characters (a ULID: 48 bits
/// of Unix milliseconds, 80 random bits). HiAPI's ids start with "tk-hiapi-": they never collide.
inline constexpr std::string_view kDeferredIdPrefix = "hp-tk-";

/// @return a new proxy task id for @p wall_ms.
std::string makeDeferredId(int64_t wall_ms, Random& random);
/// @return whether @p id has the shape of a proxy task id (prefix, 26 base32 characters).
bool isDeferredId(std::string_view id);
/// @return whether @p id starts like a proxy task id (its polls are the proxy's to answer, even
///         when malformed: HiAPI never issued it).
inline bool looksDeferred(std::string_view id) {
  return id.substr(0, kDeferredIdPrefix.size()) == kDeferredIdPrefix;
}

enum class DeferredState {
  Queued,     ///< accepted, waiting for a slot (or on its way to HiAPI)
  Submitted,  ///< HiAPI created the task: task_id is its id
  Failed,     ///< HiAPI refused the create for good (a 4xx other than 409/429)
  Cancelled,  ///< the client cancelled it while queued
  Expired,    ///< still queued after deferred.max_age
};
std::string_view deferredStateName(DeferredState s);

/// One deferred create, as accepted and as it went on.
struct DeferredRecord {
  std::string id;      ///< "hp-tk-…"
  std::string key;     ///< key name (config name or passthrough label); never the key
  /// The Authorization value to submit with, only for keys the configuration does not hold
  /// (passthrough): the journal is the one place it is written (a 0600 file).
  std::string auth;
  std::string client;  ///< fairness class
  std::string tier;    ///< tier name
  std::string model;
  std::string target;  ///< request target, e.g. "/v1/tasks"
  std::vector<std::pair<std::string, std::string>> headers;  ///< end-to-end, with Idempotency-Key
  std::string body;    ///< the client's bytes, untouched
  int64_t accepted_ms = 0;  ///< wall clock, Unix ms
  uint64_t seq = 0;         ///< acceptance order (assigned by the book)

  DeferredState state = DeferredState::Queued;
  std::string task_id;      ///< HiAPI's id once Submitted
  int64_t ended_ms = 0;     ///< when it left Queued
  bool task_ended = false;  ///< a terminal status of task_id was seen
  int fail_status = 0;      ///< HiAPI's HTTP status for Failed
  std::string fail_code;    ///< HiAPI's error code (or the proxy's, for Expired/Cancelled)
  std::string fail_message;
};

/// The deferred tasks the proxy holds, by id. Bounded by the caller (deferred.max_total).
class DeferredBook {
public:
  /// Adds @p r (state Queued) and gives it the next sequence number. @return false when the id
  /// is already there.
  bool add(DeferredRecord r);
  const DeferredRecord* find(std::string_view id) const;
  /// @return the record whose HiAPI task is (@p key, @p task_id), or nullptr.
  const DeferredRecord* byTask(std::string_view key, std::string_view task_id) const;

  bool markSubmitted(std::string_view id, std::string task_id, int64_t at_ms);
  bool markFailed(std::string_view id, int status, std::string code, std::string message,
                  int64_t at_ms);
  bool markCancelled(std::string_view id, int64_t at_ms);
  bool markExpired(std::string_view id, int64_t at_ms);
  bool markTaskEnded(std::string_view id);
  bool forget(std::string_view id);

  size_t size() const { return records_.size(); }
  size_t queued() const { return queued_total_; }
  size_t queuedFor(std::string_view key) const;
  /// @return the 1-based place of queued @p id among the queued tasks of its key and tier, in
  ///         acceptance order; nullopt when it is not queued.
  std::optional<size_t> position(std::string_view id) const;
  /// @return every record, in acceptance order.
  std::vector<const DeferredRecord*> all() const;

  /// What time has made due: queued records older than @p max_age (to expire) and records that
  /// left the queue longer than @p keep ago (to forget).
  struct Due {
    std::vector<std::string> expire;
    std::vector<std::string> forget;
  };
  Due due(int64_t now_ms, Duration max_age, Duration keep) const;

private:
  DeferredRecord* get(std::string_view id);
  void leaveQueue(DeferredRecord& r, DeferredState to, int64_t at_ms);

  std::map<std::string, DeferredRecord, std::less<>> records_;
  std::map<std::string, std::string, std::less<>> by_task_;  ///< key + '\n' + task id → id
  std::unordered_map<std::string, size_t> queued_by_key_;
  size_t queued_total_ = 0;
  uint64_t next_seq_ = 1;
};

// ---- journal ---------------------------------------------------------------------------------
// One JSON object per line. The first line names the format version; then an "accept" line holds
// a whole record and later lines ("submitted", "failed", "cancelled", "expired", "ended",
// "forget") change it. A line is only trusted once it ends in '\n': a torn last line (a crash in
// the middle of a write, never acknowledged) is ignored.

inline constexpr int kJournalVersion = 1;

std::string journalHeader();
std::string journalAccept(const DeferredRecord& r);
std::string journalSubmitted(std::string_view id, std::string_view task_id, int64_t at_ms);
std::string journalFailed(std::string_view id, int status, std::string_view code,
                          std::string_view message, int64_t at_ms);
std::string journalCancelled(std::string_view id, int64_t at_ms);
std::string journalExpired(std::string_view id, int64_t at_ms);
std::string journalEnded(std::string_view id);
std::string journalForget(std::string_view id);
/// The lines that rebuild @p r as it is: its accept line and the lines of its state. They are
/// also a record's text in the shared store (deferred creates kept in Redis).
std::string journalRecord(const DeferredRecord& r);
/// Reads back what journalRecord() wrote. @return nullopt unless it is exactly one readable
/// record.
std::optional<DeferredRecord> parseRecord(std::string_view lines);
/// The lines that rebuild @p book as it is (compaction): header, then each record's accept line
/// and the line of its state.
std::string journalSnapshot(const DeferredBook& book);

struct JournalLoad {
  bool ok = true;
  std::string error;       ///< why not ok (a newer version, no header)
  int version = 0;
  size_t lines = 0;        ///< complete lines read
  size_t skipped = 0;      ///< complete lines that could not be read (logged, not fatal)
  bool torn_tail = false;  ///< the file ended inside a line
};
/// Replays @p text into @p book (which should be empty). An empty text is an empty journal.
/// A header of a newer version is an error: the file is not ours to read or overwrite.
JournalLoad loadJournal(std::string_view text, DeferredBook& book);

// ---- what clients see ----------------------------------------------------------------------

/// The create reply for a deferred create: HiAPI's shape plus `status: "queued"`.
std::string renderDeferredCreate(std::string_view id);
/// A task detail for a record that HiAPI does not hold (queued, failed, cancelled, expired):
/// HiAPI's shape (`taskId`, `model`, `status`, `created`, `completed`, `error`), plus a
/// `deferred` object with `state`, `position` and `estimatedStart` (Unix s) when known.
std::string renderDeferredDetail(const DeferredRecord& r, std::optional<size_t> position,
                                 std::optional<int64_t> estimated_start_s);
/// The cancel reply: `{"code":200,...,"data":{"taskId":…,"status":"cancelled"}}`.
std::string renderDeferredCancelled(std::string_view id);
/// Rewrites HiAPI's detail of a deferred task for the client: `taskId` becomes @p client_id,
/// `upstreamTaskId` holds HiAPI's. @return nullopt when the body is not a detail.
std::optional<std::string> rewriteDetail(std::string_view body, std::string_view client_id);
/// Rewrites a list reply: ids of deferred tasks become their proxy ids (with `upstreamTaskId`),
/// and @p extra (records HiAPI does not hold, newest first) go in front.
/// @param alias HiAPI id → proxy id. @return nullopt when the body is not a list.
std::optional<std::string> rewriteList(
    std::string_view body, const std::map<std::string, std::string, std::less<>>& alias,
    const std::vector<const DeferredRecord*>& extra);

}  // namespace hiapi::core
