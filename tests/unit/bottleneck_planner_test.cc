#include "hiapi/core/bottleneck_planner.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);
constexpr size_t kHeavy = 0;
constexpr size_t kLight = 1;

/// One key by hand: a heavy tier of 2 slots, a light one of 5, 1 token/s with a burst of 5.
class BottleneckPlannerTest : public ::testing::Test {
protected:
  BottleneckPlannerTest() : queue_(1000, 0), budget_(1.0, 5.0, kT0) {
    gates_.push_back(std::make_unique<ConcurrencyGate>(2, std::chrono::minutes(15), seconds(30),
                                                       kT0));
    gates_.push_back(std::make_unique<ConcurrencyGate>(5, std::chrono::minutes(15), seconds(30),
                                                       kT0));
  }
  KeyLoad load() const { return KeyLoad{queue_, gates_, budget_}; }
  /// Fills @p tier's gate and queues @p waiting creates for it.
  void saturate(size_t tier, size_t waiting) {
    while (gates_[tier]->acquireWithId(next_slot_++, kT0)) {
    }
    for (size_t i = 0; i < waiting; ++i) {
      QueueEntry e;
      e.id = next_id_++;
      e.client = "c";
      e.priority = Priority::Create;
      e.deadline = kT0 + seconds(45);
      e.lane = tier;
      e.enqueued = kT0;
      ASSERT_EQ(queue_.push(e), EnqueueResult::Queued);
    }
  }

  AdmissionQueue queue_;
  std::vector<std::unique_ptr<ConcurrencyGate>> gates_;
  TokenBucket budget_;
  BottleneckPlanner planner_;
  uint64_t next_id_ = 1;
  SlotId next_slot_ = 1;
};

TEST_F(BottleneckPlannerTest, TheTierWithTheMostWorkLeftComesFirst) {
  EXPECT_TRUE(planner_.bottlenecks(load(), kT0).empty());
  saturate(kHeavy, 4);
  EXPECT_TRUE(planner_.blocked(load(), kHeavy, kT0));
  EXPECT_FALSE(planner_.blocked(load(), kLight, kT0));
  EXPECT_EQ(planner_.bottlenecks(load(), kT0),
            (std::vector<size_t>{kHeavy, kUnblockLanes + kHeavy}));
  saturate(kLight, 10);
  // Two waves each: 2 x 60 s of heavy work beat 2 x 10 s of light work...
  planner_.setTierDuration(kHeavy, TierDuration{seconds(60), true});
  planner_.setTierDuration(kLight, TierDuration{seconds(10), true});
  EXPECT_EQ(planner_.bottlenecks(load(), kT0),
            (std::vector<size_t>{kHeavy, kUnblockLanes + kHeavy, kLight, kUnblockLanes + kLight}));
  // ...and lose to 2 x 100 s.
  planner_.setTierDuration(kLight, TierDuration{seconds(100), true});
  EXPECT_EQ(planner_.bottlenecks(load(), kT0).front(), kLight);
}

TEST_F(BottleneckPlannerTest, AtAColdStartThePriorOrdersOnlyTheCreates) {
  // Nothing learned: 3 waves of light work, 2 of heavy. By waves the light tier comes first;
  // counted at their priors (60 s against 8 s) the heavy creates go before the light ones, but
  // the light tier's own creates still go before the polls that may free a light slot, and the
  // unblocking polls keep the order of waves.
  planner_.setTierPrior(kHeavy, seconds(60));
  planner_.setTierPrior(kLight, seconds(8));
  saturate(kHeavy, 4);
  saturate(kLight, 15);
  EXPECT_EQ(planner_.bottlenecks(load(), kT0),
            (std::vector<size_t>{kLight, kUnblockLanes + kLight, kHeavy,
                                 kUnblockLanes + kHeavy}));
  EXPECT_EQ(planner_.bottlenecks(load(), kT0, /*creates_by_prior=*/true),
            (std::vector<size_t>{kHeavy, kLight, kUnblockLanes + kLight,
                                 kUnblockLanes + kHeavy}));
  // Once a tier is learned it counts at what it takes, prior or not.
  planner_.setTierDuration(kLight, TierDuration{seconds(100), true});
  EXPECT_EQ(planner_.bottlenecks(load(), kT0, /*creates_by_prior=*/true),
            (std::vector<size_t>{kLight, kUnblockLanes + kLight, kHeavy,
                                 kUnblockLanes + kHeavy}));
}

TEST_F(BottleneckPlannerTest, TokensAreKeptForAnImminentLookAtTheBlockedBottleneck) {
  saturate(kHeavy, 4);
  EXPECT_EQ(planner_.reserveFor(load(), kT0).tokens, 0.0);  // no look planned
  // A look in half a second, and the create it lets go: two tokens, less the half refilled.
  planner_.setLookPlan(kHeavy, LookPlan{{kT0 + milliseconds(500)}, 0});
  const BottleneckPlanner::Reserve r = planner_.reserveFor(load(), kT0);
  EXPECT_DOUBLE_EQ(r.tokens, 1.5);
  EXPECT_EQ(r.tier, kHeavy);
  // A look far beyond what the bucket can hold for is not near yet; one long past is stale.
  planner_.setLookPlan(kHeavy, LookPlan{{kT0 + seconds(30)}, 0});
  EXPECT_EQ(planner_.reserveFor(load(), kT0).tokens, 0.0);
  planner_.setLookPlan(kHeavy, LookPlan{{kT0 - seconds(5)}, 0});
  EXPECT_EQ(planner_.reserveFor(load(), kT0).tokens, 0.0);
}

TEST_F(BottleneckPlannerTest, TheLearnPaceFollowsWhatBindsTheMakespan) {
  saturate(kHeavy, 4);  // 10 tokens needed: 10 s of budget
  planner_.setTierDuration(kHeavy, TierDuration{seconds(60), true});
  EXPECT_TRUE(planner_.tierBinds(load(), kHeavy, kT0));  // 2 waves x 60 s
  EXPECT_EQ(planner_.learnPace(load(), kHeavy, kT0), LearnPace::Eager);
  EXPECT_FALSE(planner_.budgetBinds(load(), kT0));
  EXPECT_EQ(planner_.learnPace(load(), kLight, kT0), LearnPace::Plain);
  // Only a lower bound of 2 s: 2 waves x 2 s, plus 1 s of lateness, fit in the budget's 10 s.
  planner_.setTierDuration(kHeavy, TierDuration{seconds(2), false});
  EXPECT_FALSE(planner_.tierBinds(load(), kHeavy, kT0));
  EXPECT_TRUE(planner_.budgetBinds(load(), kT0));
  EXPECT_EQ(planner_.learnPace(load(), kHeavy, kT0), LearnPace::Sparse);
}

// A look that finds a task running costs its tier the token interval times the share of the
// budget its own requests take over its work left: a wasted look is then a create of it waiting.
TEST_F(BottleneckPlannerTest, ALooksPriceIsTheShareOfTheBudgetItsTierTakes) {
  EXPECT_EQ(planner_.lookPrice(load(), kLight, kT0), Duration::zero());  // nothing waits
  saturate(kLight, 10);
  planner_.setTierDuration(kLight, TierDuration{seconds(10), true});
  // 25 tokens (a create and a look for each of 10, a look for each of 5 running) over 2 waves
  // of 10 s at 1 token/s: 1.25 of the budget, so all of the 1 s token interval.
  EXPECT_EQ(planner_.lookPrice(load(), kLight, kT0), seconds(1));
  // Over 2 waves of 50 s: a quarter of it.
  planner_.setTierDuration(kLight, TierDuration{seconds(50), true});
  EXPECT_EQ(planner_.lookPrice(load(), kLight, kT0), milliseconds(250));
  EXPECT_EQ(planner_.lookPrice(load(), kHeavy, kT0), Duration::zero());
}

}  // namespace
}  // namespace hiapi::core
