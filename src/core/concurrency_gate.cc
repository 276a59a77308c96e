#include "hiapi/core/concurrency_gate.h"

#include <algorithm>

namespace hiapi::core {

ConcurrencyGate::ConcurrencyGate(uint32_t ceiling, Duration lease, Duration recovery_interval,
                                 MonotonicTime now)
    : ceiling_(std::max<uint32_t>(ceiling, 1)),
      lease_(lease),
      recovery_interval_(recovery_interval),
      effective_(ceiling_),
      effective_since_(now) {}

uint32_t ConcurrencyGate::effectiveCeiling(MonotonicTime now) const {
  if (effective_ >= ceiling_) {
    return ceiling_;
  }
  uint64_t steps = 0;
  if (recovery_interval_ > Duration::zero() && now > effective_since_) {
    steps = static_cast<uint64_t>((now - effective_since_) / recovery_interval_);
  } else if (recovery_interval_ <= Duration::zero()) {
    return ceiling_;
  }
  return static_cast<uint32_t>(std::min<uint64_t>(ceiling_, effective_ + steps));
}

void ConcurrencyGate::normalize(MonotonicTime now) {
  if (effective_ >= ceiling_) {
    effective_ = ceiling_;
    return;
  }
  const uint32_t current = effectiveCeiling(now);
  if (current != effective_ && recovery_interval_ > Duration::zero()) {
    effective_since_ += recovery_interval_ * (current - effective_);
  }
  effective_ = current;
}

std::optional<MonotonicTime> ConcurrencyGate::nextRecoveryAt(MonotonicTime now) const {
  const uint32_t current = effectiveCeiling(now);
  if (current >= ceiling_ || recovery_interval_ <= Duration::zero()) {
    return std::nullopt;
  }
  const uint64_t steps_done = current - effective_;
  return effective_since_ + recovery_interval_ * static_cast<int64_t>(steps_done + 1);
}

bool ConcurrencyGate::canAcquire(MonotonicTime now) const {
  return leases_.size() < effectiveCeiling(now);
}

std::optional<SlotId> ConcurrencyGate::acquire(MonotonicTime now) {
  while (leases_.count(next_id_) != 0) {
    ++next_id_;
  }
  const SlotId id = next_id_;
  if (!acquireWithId(id, now)) {
    return std::nullopt;
  }
  ++next_id_;
  return id;
}

bool ConcurrencyGate::acquireWithId(SlotId id, MonotonicTime now) {
  if (!canAcquire(now) || leases_.count(id) != 0) {
    return false;
  }
  const MonotonicTime expiry = now + lease_;
  leases_.emplace(id, expiry);
  by_expiry_.emplace(expiry, id);
  return true;
}

bool ConcurrencyGate::release(SlotId id, ReleaseReason reason) {
  auto it = leases_.find(id);
  if (it == leases_.end()) {
    return false;
  }
  by_expiry_.erase({it->second, id});
  leases_.erase(it);
  if (reason == ReleaseReason::TaskFinished && effective_ < ceiling_) {
    ++effective_;  // time-based steps keep counting from effective_since_
  }
  return true;
}

size_t ConcurrencyGate::expireLeases(MonotonicTime now, std::vector<SlotId>* expired) {
  size_t freed = 0;
  while (!by_expiry_.empty() && by_expiry_.begin()->first <= now) {
    if (expired != nullptr) {
      expired->push_back(by_expiry_.begin()->second);
    }
    leases_.erase(by_expiry_.begin()->second);
    by_expiry_.erase(by_expiry_.begin());
    ++freed;
  }
  expired_total_ += freed;
  return freed;
}

bool ConcurrencyGate::extendLease(SlotId id, MonotonicTime new_expiry) {
  auto it = leases_.find(id);
  if (it == leases_.end()) {
    return false;
  }
  by_expiry_.erase({it->second, id});
  it->second = new_expiry;
  by_expiry_.emplace(new_expiry, id);
  return true;
}

SlotId ConcurrencyGate::restore(MonotonicTime lease_expiry) {
  while (leases_.count(next_id_) != 0) {
    ++next_id_;
  }
  const SlotId id = next_id_++;
  restoreWithId(id, lease_expiry);
  return id;
}

bool ConcurrencyGate::restoreWithId(SlotId id, MonotonicTime lease_expiry) {
  if (leases_.count(id) != 0) {
    return false;
  }
  leases_.emplace(id, lease_expiry);
  by_expiry_.emplace(lease_expiry, id);
  return true;
}

void ConcurrencyGate::onConcurrencyLimited(MonotonicTime now, std::optional<SlotId> failed_slot) {
  normalize(now);
  uint32_t others = running();
  if (failed_slot && holds(*failed_slot) && others > 0) {
    --others;
  }
  const uint32_t lowered =
      std::max<uint32_t>(1, std::min<uint32_t>(effective_ > 1 ? effective_ - 1 : 1, others));
  if (lowered < effective_) {
    ++lowered_total_;
  }
  effective_ = std::min(effective_, lowered);
  effective_since_ = now;
}

void ConcurrencyGate::reconfigure(uint32_t ceiling, Duration lease, Duration recovery_interval,
                                  MonotonicTime now) {
  normalize(now);
  ceiling_ = std::max<uint32_t>(ceiling, 1);
  lease_ = lease;
  recovery_interval_ = recovery_interval;
  effective_ = std::min(effective_, ceiling_);
  if (effective_ >= ceiling_) {
    effective_since_ = now;
  }
}

std::optional<MonotonicTime> ConcurrencyGate::leaseExpiry(SlotId id) const {
  auto it = leases_.find(id);
  if (it == leases_.end()) {
    return std::nullopt;
  }
  return it->second;
}

std::optional<MonotonicTime> ConcurrencyGate::nextLeaseExpiry() const {
  if (by_expiry_.empty()) {
    return std::nullopt;
  }
  return by_expiry_.begin()->first;
}

std::vector<std::pair<SlotId, MonotonicTime>> ConcurrencyGate::leases() const {
  std::vector<std::pair<SlotId, MonotonicTime>> out;
  out.reserve(by_expiry_.size());
  for (const auto& [expiry, id] : by_expiry_) {
    out.emplace_back(id, expiry);
  }
  return out;
}

}  // namespace hiapi::core
