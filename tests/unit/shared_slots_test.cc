// SharedSlots against real KeySchedulers in simulated time, with a model of the store's lease
// sets (lease -> expiry in the store's time, acquire checks the ceiling).

#include "hiapi/core/shared_slots.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

namespace hiapi::core {
namespace {

using namespace std::chrono_literals;
constexpr size_t kHeavy = 0;

/// One tier's lease set in the store (members are "instance/lease").
class StoreLeases {
public:
  size_t acquire(int instance, const std::vector<SharedSlots::LeaseId>& asked, uint32_t ceiling,
                 Duration life, MonotonicTime t) {
    expire(t);
    size_t granted = 0;
    for (SharedSlots::LeaseId id : asked) {
      if (leases_.size() >= ceiling) {
        break;
      }
      leases_[{instance, id}] = t + life;
      ++granted;
    }
    return granted;
  }
  void release(int instance, const std::vector<SharedSlots::LeaseId>& ids) {
    for (auto id : ids) {
      leases_.erase({instance, id});
    }
  }
  void renew(int instance, const std::vector<SharedSlots::LeaseId>& ids, Duration life,
             MonotonicTime t) {
    for (auto id : ids) {
      leases_[{instance, id}] = t + life;
    }
  }
  void expire(MonotonicTime t) {
    for (auto it = leases_.begin(); it != leases_.end();) {
      it = it->second <= t ? leases_.erase(it) : std::next(it);
    }
  }
  size_t size() const { return leases_.size(); }

private:
  std::map<std::pair<int, SharedSlots::LeaseId>, MonotonicTime> leases_;
};

LimitsConfig heavyTwo() {
  LimitsConfig l;
  l.rate.per_second = 100;
  l.burst = 100;
  l.tiers = defaultTiers();
  l.tiers[kHeavy].max_running = 2;
  l.phase_margin = Duration::zero();
  return l;
}

QueueConfig queue() {
  QueueConfig q;
  q.create_gather = Duration::zero();
  return q;
}

RequestInfo create(uint64_t id, MonotonicTime now) {
  RequestInfo r;
  r.id = id;
  r.route = RouteKind::Create;
  r.priority = Priority::Create;
  r.client = "c";
  r.tier = kHeavy;
  r.deadline = now + 1h;
  return r;
}

/// One proxy instance: its scheduler, its SharedSlots, the creates it admitted.
struct Instance {
  Instance(int id_, MonotonicTime now, SeededRandom& random)
      : id(id_), sched(heavyTwo(), queue(), now, random), slots(1, false) {}
  int id;
  KeyScheduler sched;
  SharedSlots slots;
  std::vector<SlotId> running;  ///< slots of admitted creates

  /// Dispatches and syncs until nothing changes, answering the store at once.
  void pump(StoreLeases& store, MonotonicTime now) {
    for (int round = 0; round < 5; ++round) {
      // As the shell does: placeholders first, then the dispatch admits into held slots only.
      std::vector<SharedSlots::Request> out;
      const bool changed = slots.sync(sched, now, out);
      for (const SharedSlots::Request& r : out) {
        if (r.kind == SharedSlots::Request::Acquire) {
          const size_t n = store.acquire(id, r.leases, r.ceiling, 6s, now);
          slots.onAcquired(r.tier, r.leases, n, 100ms, now);
        } else {
          store.release(id, r.leases);
        }
      }
      for (const Admitted& a : sched.dispatch(now).admitted) {
        running.push_back(*a.slot);
      }
      if (!changed && out.empty()) {
        return;
      }
    }
  }
  void finishOne(MonotonicTime now) {
    ASSERT_FALSE(running.empty());
    sched.releaseSlot(running.front(), ReleaseReason::TaskFinished, now);
    running.erase(running.begin());
  }
};

TEST(SharedSlotsTest, TwoInstancesNeverRunMoreThanTheCeilingTogether) {
  ManualClock clock;
  SeededRandom random(1);
  StoreLeases store;
  Instance a(1, clock.now(), random);
  Instance b(2, clock.now(), random);
  for (uint64_t i = 1; i <= 3; ++i) {
    ASSERT_EQ(a.sched.submit(create(i, clock.now()), clock.now()), SubmitResult::Queued);
    ASSERT_EQ(b.sched.submit(create(100 + i, clock.now()), clock.now()), SubmitResult::Queued);
  }
  size_t done = 0;
  for (int step = 0; step < 200 && done < 6; ++step) {
    a.pump(store, clock.now());
    b.pump(store, clock.now());
    ASSERT_LE(a.running.size() + b.running.size(), 2u) << "step " << step;
    ASSERT_LE(store.size(), 2u);
    clock.advance(150ms);
    for (Instance* in : {&a, &b}) {
      if (!in->running.empty() && step % 3 == 2) {
        in->finishOne(clock.now());
        ++done;
      }
    }
  }
  EXPECT_EQ(done, 6u) << "every create ran: freed leases went to whoever waited";
  a.pump(store, clock.now());
  b.pump(store, clock.now());
  EXPECT_EQ(store.size(), 0u) << "leases nobody needs are given back";
  EXPECT_EQ(a.slots.heldCount(kHeavy) + b.slots.heldCount(kHeavy), 0u);
}

TEST(SharedSlotsTest, AKilledInstancesLeasesExpireAndTheOthersUseThem) {
  ManualClock clock;
  SeededRandom random(1);
  StoreLeases store;
  auto a = std::make_unique<Instance>(1, clock.now(), random);
  Instance b(2, clock.now(), random);
  for (uint64_t i = 1; i <= 2; ++i) {
    ASSERT_EQ(a->sched.submit(create(i, clock.now()), clock.now()), SubmitResult::Queued);
  }
  a->pump(store, clock.now());
  ASSERT_EQ(a->running.size(), 2u);
  a.reset();  // kill -9: never releases, never renews
  ASSERT_EQ(b.sched.submit(create(50, clock.now()), clock.now()), SubmitResult::Queued);
  b.pump(store, clock.now());
  EXPECT_TRUE(b.running.empty()) << "the ceiling is held by the dead instance's leases";
  EXPECT_FALSE(b.slots.wantsLeases(clock.now())) << "the store said when to ask again";
  EXPECT_TRUE(b.slots.wantsLeases(clock.now() + 100ms)) << "then the shell must dispatch";
  for (int step = 0; step < 100 && b.running.empty(); ++step) {
    clock.advance(200ms);
    b.pump(store, clock.now());
  }
  EXPECT_EQ(b.running.size(), 1u) << "the leases expired after their lifetime";
}

TEST(SharedSlotsTest, OutageUsesTheLocalShareAndReconcilesOnReturn) {
  ManualClock clock;
  SeededRandom random(1);
  StoreLeases store;
  Instance a(1, clock.now(), random);
  a.slots.setInstances(3);
  a.slots.onStoreDown();
  for (uint64_t i = 1; i <= 3; ++i) {
    ASSERT_EQ(a.sched.submit(create(i, clock.now()), clock.now()), SubmitResult::Queued);
  }
  a.pump(store, clock.now());
  EXPECT_EQ(a.running.size(), 1u) << "ceiling 2 over 3 instances: one slot, never zero";
  a.slots.onStoreUp();
  EXPECT_TRUE(a.slots.needsReconcile());
  a.pump(store, clock.now());
  EXPECT_EQ(a.slots.heldCount(kHeavy), 1u) << "the running task holds a lease again";
  for (const auto& [tier, ids] : a.slots.held()) {
    store.renew(1, ids, 6s, clock.now());
  }
  a.slots.reconciled();
  a.pump(store, clock.now());
  EXPECT_EQ(a.running.size(), 2u) << "then the second slot is acquired as usual";
  EXPECT_EQ(store.size(), 2u);
}

}  // namespace
}  // namespace hiapi::core
