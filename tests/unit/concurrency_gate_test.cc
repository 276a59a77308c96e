#include "hiapi/core/concurrency_gate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);
constexpr Duration kLease = std::chrono::minutes(5);
constexpr Duration kRecovery = std::chrono::seconds(30);

TEST(ConcurrencyGate, AcquireUpToCeiling) {
  ConcurrencyGate g(2, kLease, kRecovery, kStart);
  auto a = g.acquire(kStart);
  auto b = g.acquire(kStart);
  ASSERT_TRUE(a && b);
  EXPECT_NE(*a, *b);
  EXPECT_FALSE(g.acquire(kStart));
  EXPECT_FALSE(g.canAcquire(kStart));
  EXPECT_EQ(g.running(), 2u);
  EXPECT_TRUE(g.release(*a));
  EXPECT_TRUE(g.canAcquire(kStart));
}

TEST(ConcurrencyGate, ReleaseIsExactlyOnce) {
  ConcurrencyGate g(1, kLease, kRecovery, kStart);
  auto a = g.acquire(kStart);
  EXPECT_TRUE(g.release(*a));
  EXPECT_FALSE(g.release(*a));
  EXPECT_FALSE(g.release(12345));
  EXPECT_EQ(g.running(), 0u);
}

TEST(ConcurrencyGate, LeasesExpireAndAreCounted) {
  ConcurrencyGate g(3, kLease, kRecovery, kStart);
  auto a = g.acquire(kStart);
  auto b = g.acquire(kStart + seconds(10));
  EXPECT_EQ(g.nextLeaseExpiry(), kStart + kLease);
  EXPECT_EQ(g.expireLeases(kStart + kLease - Duration(1)), 0u);
  std::vector<SlotId> ids;
  EXPECT_EQ(g.expireLeases(kStart + kLease, &ids), 1u);
  EXPECT_EQ(ids, std::vector<SlotId>{*a});
  EXPECT_FALSE(g.release(*a));  // already gone
  EXPECT_TRUE(g.extendLease(*b, kStart + std::chrono::hours(1)));
  EXPECT_EQ(g.expireLeases(kStart + std::chrono::minutes(30)), 0u);
  EXPECT_EQ(g.expiredTotal(), 1u);
  EXPECT_FALSE(g.extendLease(*a, kStart));
}

TEST(ConcurrencyGate, RestoreMayExceedCeiling) {
  ConcurrencyGate g(1, kLease, kRecovery, kStart);
  g.acquire(kStart);
  SlotId r = g.restore(kStart + seconds(60));
  EXPECT_EQ(g.running(), 2u);
  EXPECT_FALSE(g.canAcquire(kStart));
  EXPECT_EQ(g.leaseExpiry(r), kStart + seconds(60));
  EXPECT_TRUE(g.release(r));
}

TEST(ConcurrencyGate, ConcurrencyLimitLowersAndTaskFinishRecovers) {
  ConcurrencyGate g(5, kLease, kRecovery, kStart);
  std::vector<SlotId> s;
  for (int i = 0; i < 4; ++i) {
    s.push_back(*g.acquire(kStart));
  }
  // The 4th create was refused: upstream allows 3.
  g.onConcurrencyLimited(kStart, s[3]);
  EXPECT_EQ(g.effectiveCeiling(kStart), 3u);
  EXPECT_TRUE(g.release(s[3], ReleaseReason::NotCreated));
  EXPECT_EQ(g.effectiveCeiling(kStart), 3u);  // a failed create does not recover it
  EXPECT_FALSE(g.canAcquire(kStart));
  EXPECT_TRUE(g.release(s[0], ReleaseReason::TaskFinished));
  EXPECT_EQ(g.effectiveCeiling(kStart), 4u);
  EXPECT_TRUE(g.canAcquire(kStart));
}

TEST(ConcurrencyGate, NeverBelowOneAndRecoversOverTime) {
  ConcurrencyGate g(4, kLease, kRecovery, kStart);
  auto a = g.acquire(kStart);
  g.onConcurrencyLimited(kStart, a);
  EXPECT_EQ(g.effectiveCeiling(kStart), 1u);
  g.onConcurrencyLimited(kStart, a);
  EXPECT_EQ(g.effectiveCeiling(kStart), 1u);
  EXPECT_EQ(g.nextRecoveryAt(kStart), kStart + kRecovery);
  EXPECT_EQ(g.effectiveCeiling(kStart + kRecovery - Duration(1)), 1u);
  EXPECT_EQ(g.effectiveCeiling(kStart + kRecovery), 2u);
  EXPECT_EQ(g.effectiveCeiling(kStart + 2 * kRecovery), 3u);
  EXPECT_EQ(g.nextRecoveryAt(kStart + 2 * kRecovery), kStart + 3 * kRecovery);
  EXPECT_EQ(g.effectiveCeiling(kStart + 10 * kRecovery), 4u);
  EXPECT_FALSE(g.nextRecoveryAt(kStart + 10 * kRecovery));
  // Reverse time does not recover anything.
  EXPECT_EQ(g.effectiveCeiling(kStart - seconds(100)), 1u);
}

TEST(ConcurrencyGate, LowersByAtLeastOne) {
  ConcurrencyGate g(3, kLease, kRecovery, kStart);
  // Nothing else is running as far as we know (another host?): still lower by one.
  g.onConcurrencyLimited(kStart);
  EXPECT_EQ(g.effectiveCeiling(kStart), 1u);
  ConcurrencyGate h(3, kLease, kRecovery, kStart);
  for (int i = 0; i < 3; ++i) {
    h.acquire(kStart);
  }
  h.onConcurrencyLimited(kStart);
  EXPECT_EQ(h.effectiveCeiling(kStart), 2u);
}

TEST(ConcurrencyGate, ReconfigureKeepsSlots) {
  ConcurrencyGate g(5, kLease, kRecovery, kStart);
  for (int i = 0; i < 3; ++i) {
    g.acquire(kStart);
  }
  g.reconfigure(2, kLease, kRecovery, kStart);
  EXPECT_EQ(g.running(), 3u);
  EXPECT_EQ(g.ceiling(), 2u);
  EXPECT_FALSE(g.canAcquire(kStart));
}

// Frees the slots of one gate, recording which key asked.
struct GateReleaser : SlotReleaser {
  explicit GateReleaser(ConcurrencyGate& g) : gate(g) {}
  void releaseHeld(const std::string& key, SlotId slot) override {
    keys.push_back(key);
    freed += gate.release(slot, ReleaseReason::NotCreated) ? 1 : 0;
  }
  ConcurrencyGate& gate;
  std::vector<std::string> keys;
  int freed = 0;
};

TEST(GatePermit, FreesItsSlotExactlyOnceWhenDroppedMovedOrReleased) {
  ConcurrencyGate g(1, kLease, kRecovery, kStart);
  GateReleaser r(g);
  {
    GatePermit p(r, "k1", *g.acquire(kStart));
    EXPECT_FALSE(g.canAcquire(kStart));
    GatePermit q = std::move(p);
    EXPECT_FALSE(p);
    EXPECT_FALSE(p.id());
    ASSERT_TRUE(q.id());
    EXPECT_EQ(r.freed, 0) << "moving a permit frees nothing";
  }
  EXPECT_TRUE(g.canAcquire(kStart)) << "dropped while held: freed";
  EXPECT_EQ(r.freed, 1);
  GatePermit p(r, "k2", *g.acquire(kStart));
  EXPECT_TRUE(p.release());
  EXPECT_FALSE(p.release()) << "already freed";
  p = GatePermit(r, "k3", *g.acquire(kStart));
  p = GatePermit();  // assigning over a held permit frees what it held
  EXPECT_EQ(r.freed, 3);
  EXPECT_EQ(r.keys, (std::vector<std::string>{"k1", "k2", "k3"}));
}

TEST(GatePermit, ADetachedSlotIsItsNewOwnersToFree) {
  ConcurrencyGate g(1, kLease, kRecovery, kStart);
  GateReleaser r(g);
  SlotId id;
  {
    GatePermit p(r, "k", *g.acquire(kStart));
    id = p.detach();
    EXPECT_FALSE(p);
  }
  EXPECT_EQ(r.freed, 0);
  EXPECT_FALSE(g.canAcquire(kStart));
  EXPECT_TRUE(g.release(id, ReleaseReason::TaskFinished));
}

class GateFuzz : public ::testing::TestWithParam<uint64_t> {};

TEST_P(GateFuzz, NeverAboveEffectiveCeiling) {
  std::mt19937_64 rng(GetParam());
  ConcurrencyGate g(3, seconds(20), seconds(5), kStart);
  std::vector<SlotId> held;
  MonotonicTime now = kStart;
  uint64_t acquired = 0, released = 0, expired = 0;
  for (int i = 0; i < 200000; ++i) {
    now += milliseconds(rng() % 10 + 1);
    const int op = static_cast<int>(rng() % 100);
    if (op < 45) {
      const bool can = g.canAcquire(now);
      auto s = g.acquire(now);
      ASSERT_EQ(can, s.has_value());
      if (s) {
        ASSERT_LE(g.running(), g.effectiveCeiling(now));
        held.push_back(*s);
        ++acquired;
      }
    } else if (op < 85 && !held.empty()) {
      const size_t k = rng() % held.size();
      if (g.release(held[k], rng() % 2 ? ReleaseReason::TaskFinished : ReleaseReason::NotCreated)) {
        ++released;
      }
      ASSERT_FALSE(g.release(held[k]));
      held.erase(held.begin() + static_cast<long>(k));
    } else if (op < 97) {
      expired += g.expireLeases(now);
    } else {
      g.onConcurrencyLimited(now, held.empty() ? std::nullopt : std::optional(held.back()));
    }
    ASSERT_LE(g.running(), 3u);
    ASSERT_GE(g.effectiveCeiling(now), 1u);
    ASSERT_LE(g.effectiveCeiling(now), 3u);
    ASSERT_EQ(acquired, released + expired + g.running());
  }
}

INSTANTIATE_TEST_SUITE_P(Seeds, GateFuzz, ::testing::Values(1, 2, 3, 42, 1234));

}  // namespace
}  // namespace hiapi::core
