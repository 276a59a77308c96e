#pragma once
// PollCache: the cached poll replies held in task records, their byte accounting and the LRU
// bounds, and the coalescing of client polls onto one upstream fetch per (key, task_id).
//
// How long a reply stays fresh is LookPlanner's call (replyTtl); this class only stores, ages,
// charges and evicts. A record with waiters or a fetch in flight is never evicted; a record that
// holds a slot is never erased (only its cached reply may be dropped), so the bounds can be
// exceeded by them alone.
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <cstdint>
#include <string>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/task_registry.h"

namespace hiapi::core {

enum class PollAction {
  Hit,    ///< answer from `reply` now (X-HiAPI-Proxy-Cache: hit, Age from `age`)
  Join,   ///< a fetch is in flight: wait for its completePoll / abandonPoll
  Fetch,  ///< fetch upstream now, then completePoll or abandonPoll
};

struct PollDecision {
  PollAction action = PollAction::Fetch;
  CachedReplyPtr reply;  ///< Hit: serve this
  Duration age{};        ///< Hit: how old (for the Age header)
};

/// See the file comment. Thread-safety: not thread-safe.
class PollCache {
public:
  /// @return the bytes @p reply is charged for: its body and headers plus bookkeeping.
  static uint64_t cost(const CachedReply& reply);
  /// @return how old @p r's cached reply is at @p now (never negative).
  static Duration age(const TaskRecord& r, MonotonicTime now);

  /// Caches @p reply in @p r (replacing any), unless it alone costs more than @p max_bytes.
  /// @param status the task status in its 2xx detail (empty otherwise)
  /// @param terminal whether that status is terminal
  void store(TaskRecord& r, const CachedReply& reply, MonotonicTime now, std::string status,
             bool terminal, uint64_t max_bytes);
  /// Drops @p r's cached reply, if any.
  void drop(TaskRecord& r);

  /// A client poll of @p r: Hit when @p fresh (a cached reply), else records @p waiter and
  /// answers Join while a fetch is in flight, or marks one in flight and answers Fetch.
  PollDecision begin(TaskRecord& r, uint64_t waiter, bool fresh, MonotonicTime now);
  /// Ends @p r's fetch. @return its waiters, in arrival order.
  static std::vector<uint64_t> finish(TaskRecord& r);
  /// @return whether @p waiter was recorded on @p r (it is removed).
  static bool cancel(TaskRecord& r, uint64_t waiter);

  /// Evicts least recently used records (or, for one holding a slot, its reply) while
  /// @p registry has more than @p max_records records or the replies more than @p max_bytes.
  /// @return how many were evicted.
  uint64_t enforceBounds(TaskRegistry& registry, size_t max_records, uint64_t max_bytes);

  size_t entries() const { return entries_; }
  uint64_t bytes() const { return bytes_; }

private:
  size_t entries_ = 0;
  uint64_t bytes_ = 0;
};

}  // namespace hiapi::core
