#pragma once
// ConcurrencyGate: one tier's tasks running at once, against its ceiling.
//
// A slot is an id with a lease expiry. It is taken before a create is sent (acquire), kept by the
// created task until a terminal status is seen (release) or the lease runs out (expireLeases), and
// given back at once when the create fails or is never sent (release with NotCreated).
//
// Effective ceiling: a concurrency 429 on a create lowers it to
//   max(1, min(effective - 1, running tasks other than the rejected create)),
// i.e. to what upstream evidently allows, and always by at least one. It recovers by one each time
// a task of the tier finishes (release with TaskFinished) and by one per `recovery_interval` since
// the last lowering/step, never above the configured ceiling.

#include <algorithm>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "hiapi/core/clock.h"

namespace hiapi::core {

/// A slot's id: unique within its gate (and, inside a KeyScheduler, within the key).
using SlotId = uint64_t;

/// How long a tier's tasks run, as far as is known: learned from finished tasks, or, before
/// any has finished, a lower bound (its oldest task still running has run this long).
/// Task tracking measures it; the key scheduler ranks bottleneck tiers by it.
struct TierDuration {
  Duration value{0};
  bool learned = false;
  bool operator==(const TierDuration& o) const { return value == o.value && learned == o.learned; }
  bool operator!=(const TierDuration& o) const { return !(*this == o); }
};

/// How often the proxy looks at the tasks of a tier none of whose tasks it has yet seen end
/// (before then nothing says when they will: a look may find the end, or only "running").
enum class LearnPace {
  Plain,  ///< every min_poll_interval
  /// The tier bounds the makespan (KeyScheduler::tierBinds): every moment its first end goes
  /// unseen is lost to all its later waves: twice per min_poll_interval (then every 1/20 of the
  /// task's age, once that is longer).
  Eager,
  /// The request budget bounds it (KeyScheduler::budgetBinds) and the tier has slack: a look
  /// that finds the task running costs some create its token, a late end costs nothing: the
  /// next look half the task's age after the last (at least min_poll_interval), so the end is
  /// seen at most half its duration late, and a task of the tier younger than its oldest is
  /// not looked at before the oldest is seen ended.
  Sparse,
};

/// Where the budget binds (LearnPace::Sparse) and no task of a tier has been seen ended: after a
/// look that finds a task running at @p age, the next one is due this much later (half the age,
/// at least @p min_poll_interval), so the end is seen at most half its duration late; but never
/// more than a quarter of the task's @p prior (modelPrior) later, so that a video of minutes is
/// not seen ended a minute late: the client waiting for it would be, whatever the tier's slack.
inline Duration sparseLookGap(Duration age, Duration min_poll_interval, Duration prior) {
  return std::max(min_poll_interval, std::min(age / 2, prior / 4));
}

/// The proxy's planned looks at a tier's running tasks (TaskTracker::gatePressurePlan): each
/// costs a token, and each that finds its task ended lets a waiting create go (another token).
struct LookPlan {
  std::vector<MonotonicTime> looks;  ///< when each next look is due, soonest first
  size_t in_flight = 0;              ///< looks sent and not answered yet
  /// @return when the next look's answer may come: @p now while one is in flight, else the
  ///         soonest planned look; nullopt when none is planned.
  std::optional<MonotonicTime> first(MonotonicTime now) const {
    if (in_flight != 0) {
      return now;
    }
    return looks.empty() ? std::nullopt : std::optional<MonotonicTime>(looks.front());
  }
  bool operator==(const LookPlan& o) const {
    return looks == o.looks && in_flight == o.in_flight;
  }
};

/// Why a slot is given back.
enum class ReleaseReason {
  TaskFinished,  ///< the task reached a terminal status: counts toward ceiling recovery
  NotCreated,    ///< the create failed, was rejected, or was never sent
};

/// Thread-safety: not thread-safe (single event-loop thread).
class ConcurrencyGate {
public:
  /// @param ceiling configured max running (0 is treated as 1)
  /// @param lease how long a slot lives without a terminal status
  /// @param recovery_interval time after which a lowered effective ceiling rises by one
  /// @param now the current time
  ConcurrencyGate(uint32_t ceiling, Duration lease, Duration recovery_interval, MonotonicTime now);

  /// @return whether acquire(now) would succeed (running < effective ceiling).
  bool canAcquire(MonotonicTime now) const;

  /// Takes a slot leased until now + lease.
  /// @return its id, or nullopt when the gate is full.
  std::optional<SlotId> acquire(MonotonicTime now);

  /// As acquire() with a caller-chosen id (unique across the caller's gates).
  /// @return false when full or @p id is already held.
  bool acquireWithId(SlotId id, MonotonicTime now);

  /// Gives a slot back. Exactly once: a second release (or an unknown or expired id) is a no-op.
  /// @return true when the slot was held and is now free.
  bool release(SlotId id, ReleaseReason reason = ReleaseReason::TaskFinished);

  /// Frees every slot whose lease ended at or before @p now.
  /// @param expired when given, the freed ids are appended to it
  /// @return how many were freed (for the leases-expired metric).
  size_t expireLeases(MonotonicTime now, std::vector<SlotId>* expired = nullptr);

  /// Moves a held slot's lease expiry to @p new_expiry. @return false when not held.
  bool extendLease(SlotId id, MonotonicTime new_expiry);

  /// Re-occupies a slot for a task known from a state file, even above the ceiling (the task is
  /// running upstream whatever we think). @return the new id.
  SlotId restore(MonotonicTime lease_expiry);
  /// As restore() with a caller-chosen id. @return false when @p id is already held.
  bool restoreWithId(SlotId id, MonotonicTime lease_expiry);

  /// Upstream answered a create with a concurrency 429: lowers the effective ceiling.
  /// @param failed_slot the rejected create's slot, when still held (not counted as running)
  void onConcurrencyLimited(MonotonicTime now, std::optional<SlotId> failed_slot = std::nullopt);

  /// Applies a new configured ceiling / lease / recovery interval, keeping held slots.
  void reconfigure(uint32_t ceiling, Duration lease, Duration recovery_interval, MonotonicTime now);

  /// @return slots held now.
  uint32_t running() const { return static_cast<uint32_t>(leases_.size()); }
  /// @return the configured ceiling.
  uint32_t ceiling() const { return ceiling_; }
  /// @return the effective ceiling at @p now (1..ceiling).
  uint32_t effectiveCeiling(MonotonicTime now) const;
  /// @return the lease length.
  Duration lease() const { return lease_; }
  /// @return whether @p id is held.
  bool holds(SlotId id) const { return leases_.count(id) != 0; }
  /// @return the lease expiry of @p id, if held.
  std::optional<MonotonicTime> leaseExpiry(SlotId id) const;
  /// @return the earliest lease expiry, if any slot is held.
  std::optional<MonotonicTime> nextLeaseExpiry() const;
  /// @return when the effective ceiling next rises by time, if it is lowered.
  std::optional<MonotonicTime> nextRecoveryAt(MonotonicTime now) const;
  /// @return all held slots with their lease expiries, earliest first.
  std::vector<std::pair<SlotId, MonotonicTime>> leases() const;
  /// @return leases that ran out so far.
  uint64_t expiredTotal() const { return expired_total_; }
  /// @return times the effective ceiling was lowered.
  uint64_t loweredTotal() const { return lowered_total_; }

private:
  void normalize(MonotonicTime now);

  uint32_t ceiling_;
  Duration lease_;
  Duration recovery_interval_;
  uint32_t effective_;                 ///< lowered ceiling as of effective_since_
  MonotonicTime effective_since_;      ///< start of the current time-recovery interval
  std::map<SlotId, MonotonicTime> leases_;
  std::set<std::pair<MonotonicTime, SlotId>> by_expiry_;
  SlotId next_id_ = 1;
  uint64_t expired_total_ = 0;
  uint64_t lowered_total_ = 0;
};

/// Whoever can free a key's slot for a GatePermit: the limiter, which owns the key's scheduler.
class SlotReleaser {
public:
  /// Frees @p slot of @p key (NotCreated: no task holds it). Called from GatePermit, possibly
  /// from a destructor in the middle of another object's work: an implementation must not call
  /// back into its callers from here (it may schedule work for later).
  virtual void releaseHeld(const std::string& key, SlotId slot) = 0;

protected:
  ~SlotReleaser() = default;
};

/// A create's tier slot while the request holds it: between admission and the upstream's answer,
/// and across the retries of that create. Move-only; a permit dropped while it still holds its
/// slot frees it, so a slot is freed exactly once whichever way its request ends. A permit gives
/// its slot up with detach() when someone else now owns it: the task tracker (the create
/// succeeded: the task holds it until a terminal status), or the scheduler (the waiting request
/// expired or was cancelled, and the scheduler freed the slot itself).
/// Thread-safety: not thread-safe. The releaser must outlive the permit.
class GatePermit {
public:
  GatePermit() = default;
  GatePermit(SlotReleaser& owner, std::string key, SlotId id)
      : owner_(&owner), key_(std::move(key)), id_(id) {}
  GatePermit(GatePermit&& o) noexcept
      : owner_(std::exchange(o.owner_, nullptr)), key_(std::move(o.key_)), id_(o.id_) {}
  GatePermit& operator=(GatePermit&& o) noexcept {
    if (this != &o) {
      release();
      owner_ = std::exchange(o.owner_, nullptr);
      key_ = std::move(o.key_);
      id_ = o.id_;
    }
    return *this;
  }
  GatePermit(const GatePermit&) = delete;
  GatePermit& operator=(const GatePermit&) = delete;
  ~GatePermit() { release(); }

  /// @return whether this permit still holds a slot.
  explicit operator bool() const { return owner_ != nullptr; }
  /// @return the slot while held, else nothing.
  std::optional<SlotId> id() const {
    return owner_ != nullptr ? std::optional<SlotId>(id_) : std::nullopt;
  }
  /// Frees the slot now (NotCreated). @return whether this call freed it.
  bool release() {
    if (owner_ == nullptr) {
      return false;
    }
    std::exchange(owner_, nullptr)->releaseHeld(key_, id_);
    return true;
  }
  /// Gives the slot up without freeing it: its new owner frees it. @return the id.
  SlotId detach() {
    owner_ = nullptr;
    return id_;
  }

private:
  SlotReleaser* owner_ = nullptr;
  std::string key_;
  SlotId id_ = 0;
};

}  // namespace hiapi::core
