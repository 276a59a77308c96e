#pragma once
// TaskRegistry: the records of the tasks the proxy knows, keyed by (key's name, task_id), in
// least-recently-used order. It knows which record holds which concurrency slot; what a record's
// fields mean for polls, freshness and looks is decided by PollCache and LookPlanner.
//
// A record is never served to another key: HiAPI answers 404 for another account's task, and so
// must the proxy. Records point at their map and list nodes, which move along with the registry.
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <algorithm>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/concurrency_gate.h"

namespace hiapi::core {

/// A cached upstream reply to a poll.
struct CachedReply {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;  ///< end-to-end headers as received
  std::string body;
};
using CachedReplyPtr = std::shared_ptr<const CachedReply>;

/// One record, for /status, reconcile and tests.
struct TrackedTaskInfo {
  std::string key;
  std::string task_id;
  size_t tier = 0;
  std::string tier_name;
  std::string model;
  std::string status;  ///< last status seen (empty until one is)
  std::optional<SlotId> slot;
  MonotonicTime created{};
  MonotonicTime last_upstream_poll{};  ///< last fetch started, or last status seen from upstream
  MonotonicTime last_client_poll{};
};

/// (key's name, task_id).
using TaskRecordId = std::pair<std::string, std::string>;

/// What the proxy knows of one task.
struct TaskRecord {
  const TaskRecordId* id = nullptr;  ///< the map node's key (stable)
  bool tracked = false;              ///< created / restored through the proxy
  size_t tier = 0;
  std::string model;
  std::string status;
  bool terminal = false;
  MonotonicTime terminal_at{};
  std::optional<SlotId> slot;
  MonotonicTime created{};
  MonotonicTime last_upstream_poll{};
  MonotonicTime last_client_poll{};
  MonotonicTime last_running_seen{};  ///< last non-terminal status seen (duration learning)
  // Poll cache (see PollCache).
  CachedReplyPtr reply;
  MonotonicTime reply_at{};
  std::string reply_status;  ///< the status in the cached 2xx detail, if any
  bool reply_terminal = false;
  uint64_t reply_bytes = 0;
  bool in_flight = false;
  std::vector<uint64_t> waiters;
  std::list<TaskRecord*>::iterator lru;

  /// @return the later of the last client poll and the last upstream look.
  MonotonicTime lastActivity() const { return std::max(last_client_poll, last_upstream_poll); }
  /// @return whether it holds a slot and has not been seen ended.
  bool holdsSlot() const { return slot.has_value() && !terminal; }
};

/// See the file comment. Thread-safety: not thread-safe.
class TaskRegistry {
public:
  using Map = std::map<TaskRecordId, TaskRecord>;
  using LruList = std::list<TaskRecord*>;

  TaskRegistry() = default;
  TaskRegistry(const TaskRegistry&) = delete;
  TaskRegistry& operator=(const TaskRegistry&) = delete;
  TaskRegistry(TaskRegistry&&) = default;
  TaskRegistry& operator=(TaskRegistry&&) = default;

  /// @return the record of (key, task_id), or nullptr.
  TaskRecord* find(const std::string& key, const std::string& task_id);
  const TaskRecord* find(const std::string& key, const std::string& task_id) const;

  /// @return the record of (key, task_id), made (untracked, of @p tier, created and last polled
  ///         @p now, most recently used) when there is none.
  TaskRecord& findOrCreate(const std::string& key, const std::string& task_id, size_t tier,
                           MonotonicTime now);

  /// Marks @p r the most recently used.
  void touch(TaskRecord& r) { lru_.splice(lru_.end(), lru_, r.lru); }

  /// Forgets @p r (the caller has dropped its cached reply first, see PollCache::drop).
  void erase(TaskRecord& r);

  /// Write access to a record found through a const view (LookPlanner's answers): the registry
  /// owns every record.
  TaskRecord& mutableRecord(const TaskRecord& r) { return const_cast<TaskRecord&>(r); }

  /// @return whether any task of @p key has a record.
  bool hasRecords(const std::string& key) const;

  /// Calls @p f(record) for every record of @p key, in task_id order.
  template <class F>
  void forEachOfKey(const std::string& key, F&& f) const {
    for (auto it = records_.lower_bound(TaskRecordId{key, std::string()});
         it != records_.end() && it->first.first == key; ++it) {
      f(it->second);
    }
  }

  /// Forgets @p slot of @p key's task holding it. @return whether one held it.
  bool forgetSlot(const std::string& key, SlotId slot);
  /// Forgets @p slot of the one task of any key holding it; nothing when more than one key's
  /// task holds that id (slot ids are unique only per key). @return 0 or 1.
  size_t forgetSlot(SlotId slot);

  /// @return the records holding a slot, oldest first (ties by id).
  std::vector<const TaskRecord*> slotHolders() const;

  Map& records() { return records_; }
  const Map& records() const { return records_; }
  /// Least recently used first.
  const LruList& lru() const { return lru_; }
  size_t size() const { return records_.size(); }

private:
  Map records_;
  LruList lru_;
};

}  // namespace hiapi::core
