#pragma once
// Deferred creates kept in the shared store (store.kind: redis), so that any instance can answer
// for them and submit them. A sidecar's journal lives and dies with its pod: a create deferred
// there must not depend on that pod to reach HiAPI, nor its proxy id on that pod to be polled.
//
// Each record of a configured key is written to Redis as its journal lines (core::journalRecord)
// with the instance holding it. Queued records sit in a per-key sorted set. An instance holding
// queued records renews them from its journal, picks up the queued records of instances whose
// heartbeat has lapsed, and hears cancels other instances were asked for. What HiAPI answered a
// submission (a task, a refusal) always wins; a cancel or an expiry only ends a record still
// queued. A record submitted twice (two instances each thought it theirs, around an outage)
// reaches HiAPI with the same Idempotency-Key and body, so HiAPI makes one task.
//
// Layout, under store.key_prefix and the key's Redis name K (an HMAC of the API key):
//   d:K:<id>  hash: t (journal lines), s (state name), o (holding instance), c (cancel asked),
//             e (ms when another instance ended it); lapses max_age + keep after acceptance
//             (keep after leaving the queue)
//   dq:K      sorted set of queued ids by acceptance time
// Records of passthrough keys are not written: submitting them needs the client's key, which
// the proxy keeps in no shared place.

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/deferred.h"

namespace hiapi::shell {

class RedisStore;

/// Thread-safety: loop thread only. Callbacks never run after the DeferredShare is destroyed.
class DeferredShare {
public:
  explicit DeferredShare(RedisStore& store);
  DeferredShare(const DeferredShare&) = delete;
  DeferredShare& operator=(const DeferredShare&) = delete;

  /// @return whether the store can be asked now.
  bool usable() const;
  /// @return the Redis name of the key @p authorization carries.
  std::string keyId(std::string_view authorization) const;

  enum class Written {
    Mine,       ///< written; this instance holds it
    Elsewhere,  ///< queued and held by another live instance: not written
    Ended,      ///< it left the queue elsewhere (the record says how): not written
    Failed,     ///< no usable answer: write it again later
  };
  /// Writes @p r as it is now, held by this instance. A queued record is written only if no
  /// other live instance holds it and it has not left the queue; a record that left it only if
  /// what it says outranks what the store has (see above). @p life: how long it is kept.
  void write(const std::string& key_id, const core::DeferredRecord& r, core::Duration life,
             std::function<void(Written, std::optional<core::DeferredRecord>)> done);

  /// Reads record @p id of key @p key_id. @p done: (answered, the record if the store has it).
  void lookup(const std::string& key_id, const std::string& id,
              std::function<void(bool, std::optional<core::DeferredRecord>)> done);

  struct Sync {
    std::vector<std::string> missing;    ///< held here, not in the store: write them again
    std::vector<std::string> lost;       ///< held here, but another live instance holds them
    std::vector<std::string> cancel;     ///< held here; a client asked another instance to cancel
    std::vector<core::DeferredRecord> ended;  ///< held here, but they left the queue elsewhere
    std::vector<core::DeferredRecord> taken;  ///< queued, their holder gone: now held here
  };
  /// One round trip for key @p key_id: reports on @p held (ids this instance holds queued) and
  /// takes up to @p take queued records whose holder's heartbeat has lapsed.
  /// @p done: (answered, what to do).
  void sync(const std::string& key_id, const std::vector<std::string>& held, size_t take,
            std::function<void(bool, Sync)> done);

  enum class Cancel {
    Cancelled,  ///< it was queued and no live instance held it: cancelled in the store
    Asked,      ///< a live instance holds it: asked to cancel (look it up for the outcome)
    Ended,      ///< it had already left the queue (the record says how)
    Missing,    ///< the store has no such record
    Failed,     ///< no usable answer
  };
  /// Cancels record @p id of key @p key_id if it is still queued; a record cancelled here is
  /// kept for @p keep.
  void cancel(const std::string& key_id, const std::string& id, core::Duration keep,
              std::function<void(Cancel, std::optional<core::DeferredRecord>)> done);

private:
  std::string recordKey(const std::string& key_id, const std::string& id) const;
  std::string queueKey(const std::string& key_id) const;

  RedisStore& store_;
  /// Callbacks hold a weak reference: a reply after destruction does nothing.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
};

}  // namespace hiapi::shell
