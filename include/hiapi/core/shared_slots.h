#pragma once
// A key's tier slots shared between instances (store.kind: redis): the bookkeeping, with no I/O.
//
// The store keeps, per key and tier, a sorted set of leases (lease name -> expiry in the store's
// time); an acquire is atomic and checks the tier's ceiling. An instance may run as many tasks of
// a tier as it holds leases. It does so without touching the key scheduler's gate logic: the gate
// keeps the configured ceiling, and the slots this instance does not hold are occupied by
// placeholder slots (KeyScheduler::restoreSlot), so the gate admits exactly as many creates as
// this instance holds spare leases. When creates wait at a full gate, one more lease is asked
// for; a lease no task of this instance needs any more (its task ended, nothing waits) is given
// back. Leases are renewed every heartbeat and expire after three in the store, so a killed
// instance's slots come back to the others. While the store cannot be used, the instance's
// allowance is its local share of the ceiling (at least one slot); when the store is back, the
// leases of the tasks still running are written again (reconciled), even above the ceiling,
// since those tasks run whatever the store says.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/key_scheduler.h"

namespace hiapi::core {

/// Thread-safety: not thread-safe (single event loop).
class SharedSlots {
public:
  /// A lease name's number: unique within this instance (the shell prefixes its instance id).
  using LeaseId = uint64_t;
  /// What to send to the store after sync().
  struct Request {
    enum Kind { Acquire, Release } kind;
    size_t tier;
    std::vector<LeaseId> leases;  ///< Acquire: candidates, the store grants a prefix of them
    uint32_t ceiling = 0;         ///< Acquire: the tier's configured ceiling
  };

  explicit SharedSlots(uint32_t instances = 1, bool degraded = true)
      : instances_(instances < 1 ? 1 : instances), degraded_(degraded) {}

  /// Brings @p sched's placeholder slots in line with the leases held (or the local share) and
  /// appends what to ask the store for to @p out. @return whether placeholders changed (then
  /// the caller dispatches the key again).
  bool sync(KeyScheduler& sched, MonotonicTime now, std::vector<Request>& out);

  /// The store granted the first @p granted leases of an Acquire for @p tier; when none, it
  /// says when its earliest lease expires (@p retry_in).
  void onAcquired(size_t tier, const std::vector<LeaseId>& asked, size_t granted,
                  Duration retry_in, MonotonicTime now);
  /// An Acquire got no answer (store down): nothing was granted as far as this instance knows.
  void onAcquireFailed(size_t tier);

  void onStoreDown();
  /// The store is back: every held lease must be written again (reconcile()).
  void onStoreUp();
  void setInstances(uint32_t instances) { instances_ = instances < 1 ? 1 : instances; }

  /// The leases to renew (heartbeat) or, right after the store came back, to write again:
  /// (tier, leases) for each tier holding any.
  std::vector<std::pair<size_t, std::vector<LeaseId>>> held() const;
  /// @return leases held for @p tier.
  size_t heldCount(size_t tier) const { return tier < tiers_.size() ? tiers_[tier].held.size() : 0; }
  /// @return placeholder slots in @p tier's gate.
  size_t placeholders(size_t tier) const {
    return tier < tiers_.size() ? tiers_[tier].placeholders.size() : 0;
  }
  /// @return the placeholder slots' ids in @p tier's gate.
  std::vector<SlotId> placeholderIds(size_t tier) const {
    return tier < tiers_.size() ? tiers_[tier].placeholders : std::vector<SlotId>{};
  }
  /// @return whether a tier's creates wait for a lease that may be asked for again now: the
  ///         caller dispatches the key (sync() sends the ask), since nothing else would.
  bool wantsLeases(MonotonicTime now) const;
  bool degraded() const { return degraded_; }
  /// @return whether held leases still need writing after the store came back (reconcile).
  bool needsReconcile() const { return reconcile_; }
  void reconciled() { reconcile_ = false; }

  /// Placeholders' gate leases reach this far ahead; they are renewed well before.
  static constexpr Duration kPlaceholderLease = std::chrono::hours(24);

private:
  struct Tier {
    std::vector<LeaseId> held;
    std::vector<SlotId> placeholders;
    bool acquiring = false;
    bool wanting = false;  ///< creates wait for more leases than are held (as of the last sync)
    MonotonicTime next_try{};
    MonotonicTime placeholder_expiry{};
  };
  void syncTier(KeyScheduler& sched, size_t t, MonotonicTime now, std::vector<Request>& out,
                bool& changed);

  std::vector<Tier> tiers_;
  uint32_t instances_;
  bool degraded_;
  bool reconcile_ = false;
  LeaseId next_lease_ = 1;
};

}  // namespace hiapi::core
