#include "hiapi/core/shared_slots.h"

#include <algorithm>

#include "hiapi/core/shared_budget.h"

namespace hiapi::core {

bool SharedSlots::sync(KeyScheduler& sched, MonotonicTime now, std::vector<Request>& out) {
  const size_t n = sched.tiers().size();
  if (tiers_.size() != n) {
    // A reload changed the tiers: placeholders of tiers that went are gone with their gates.
    tiers_.resize(n);
  }
  bool changed = false;
  for (size_t t = 0; t < n; ++t) {
    syncTier(sched, t, now, out, changed);
  }
  return changed;
}

void SharedSlots::syncTier(KeyScheduler& sched, size_t t, MonotonicTime now,
                           std::vector<Request>& out, bool& changed) {
  Tier& tier = tiers_[t];
  const ConcurrencyGate& gate = sched.gate(t);
  const uint32_t ceiling = std::max<uint32_t>(1, gate.ceiling());
  const size_t running = gate.running() - std::min<size_t>(gate.running(),
                                                           tier.placeholders.size());
  const size_t waiting = sched.waitingCreates(t);
  tier.wanting = false;
  if (!degraded_ && !reconcile_) {
    // Tasks of this instance running without a lease (admitted on the local share during an
    // outage) take one as soon as the store is back: reconcile() writes them.
    const size_t spare = tier.held.size() > running ? tier.held.size() - running : 0;
    if (spare > 0 && waiting == 0) {
      Request r{Request::Release, t, {}, 0};
      for (size_t i = 0; i < spare; ++i) {
        r.leases.push_back(tier.held.back());
        tier.held.pop_back();
      }
      out.push_back(std::move(r));
    } else if (waiting > spare && tier.held.size() < ceiling) {
      tier.wanting = true;
      if (!tier.acquiring && now >= tier.next_try) {
        Request r{Request::Acquire, t, {}, ceiling};
        const size_t want = std::min<size_t>(waiting - spare, ceiling - tier.held.size());
        for (size_t i = 0; i < want; ++i) {
          r.leases.push_back(next_lease_++);
        }
        tier.acquiring = true;
        out.push_back(std::move(r));
      }
    }
  }
  if (!degraded_ && reconcile_) {
    // Leases of running tasks are written again by the caller (held()); until then, running
    // tasks count as held so that nothing more is admitted.
    while (tier.held.size() < running) {
      tier.held.push_back(next_lease_++);
    }
  }
  const size_t allowance = degraded_ ? LocalShare::slots(ceiling, instances_) : tier.held.size();
  const size_t want_placeholders = ceiling > allowance ? ceiling - allowance : 0;
  while (tier.placeholders.size() > want_placeholders) {
    sched.releaseSlot(tier.placeholders.back(), ReleaseReason::NotCreated, now);
    tier.placeholders.pop_back();
    changed = true;
  }
  const MonotonicTime expiry = now + kPlaceholderLease;
  while (tier.placeholders.size() < want_placeholders) {
    tier.placeholders.push_back(sched.restoreSlot(t, expiry));
    tier.placeholder_expiry = expiry;
    changed = true;
  }
  if (!tier.placeholders.empty() && tier.placeholder_expiry - now < kPlaceholderLease / 2) {
    for (SlotId id : tier.placeholders) {
      sched.extendLease(id, expiry);
    }
    tier.placeholder_expiry = expiry;
  }
}

void SharedSlots::onAcquired(size_t tier, const std::vector<LeaseId>& asked, size_t granted,
                             Duration retry_in, MonotonicTime now) {
  if (tier >= tiers_.size()) {
    return;
  }
  Tier& t = tiers_[tier];
  t.acquiring = false;
  if (degraded_) {
    return;  // a late answer: the leases expire in the store, nobody renews them
  }
  granted = std::min(granted, asked.size());
  t.held.insert(t.held.end(), asked.begin(), asked.begin() + static_cast<long>(granted));
  if (granted < asked.size()) {
    t.next_try = now + std::max(retry_in, Duration(std::chrono::milliseconds(10)));
  }
}

bool SharedSlots::wantsLeases(MonotonicTime now) const {
  return std::any_of(tiers_.begin(), tiers_.end(), [&](const Tier& t) {
    return t.wanting && !t.acquiring && now >= t.next_try;
  });
}

void SharedSlots::onAcquireFailed(size_t tier) {
  if (tier < tiers_.size()) {
    tiers_[tier].acquiring = false;
  }
}

void SharedSlots::onStoreDown() {
  degraded_ = true;
  for (Tier& t : tiers_) {
    t.acquiring = false;
  }
}

void SharedSlots::onStoreUp() {
  if (!degraded_) {
    return;
  }
  degraded_ = false;
  reconcile_ = true;
}

std::vector<std::pair<size_t, std::vector<SharedSlots::LeaseId>>> SharedSlots::held() const {
  std::vector<std::pair<size_t, std::vector<LeaseId>>> out;
  for (size_t t = 0; t < tiers_.size(); ++t) {
    if (!tiers_[t].held.empty()) {
      out.emplace_back(t, tiers_[t].held);
    }
  }
  return out;
}

}  // namespace hiapi::core
