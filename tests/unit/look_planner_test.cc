#include "hiapi/core/look_planner.h"

#include <gtest/gtest.h>

#include <cmath>

#include <string>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);

/// The planner's inputs, built by hand: records, learned durations, one 5 s tier.
class LookPlannerTest : public ::testing::Test {
protected:
  LookPlannerTest() {
    TierConfig heavy;
    heavy.name = "heavy";
    heavy.min_poll_interval = seconds(5);
    tiers_ = {heavy};
    durations_.setTiers(tiers_);
  }
  LookPlanner planner() const {
    return LookPlanner(reg_, durations_, tiers_, cfg_, pace_, price_, spare_);
  }
  TaskRecord& task(const std::string& key, const std::string& id, MonotonicTime created,
                   std::optional<SlotId> slot) {
    TaskRecord& r = reg_.findOrCreate(key, id, 0, created);
    r.tracked = true;
    r.slot = slot;
    return r;
  }
  void learn(Duration d) {
    durations_.learn(0, kT0, kT0 + d - seconds(1), kT0 + d, [] { return LearnPace::Plain; });
  }
  static std::vector<std::string> ids(const std::vector<const TaskRecord*>& rs) {
    std::vector<std::string> out;
    for (const TaskRecord* r : rs) {
      out.push_back(r->id->second);
    }
    return out;
  }

  TasksConfig cfg_;
  std::vector<TierConfig> tiers_;
  DurationEstimator durations_;
  TaskRegistry reg_;
  LearnPaceFn pace_;
  LookPriceFn price_;
  SpareWindowFn spare_;
};

TEST_F(LookPlannerTest, ReconcileTakesIdleSlotHoldersLongestIdleFirst) {
  cfg_.reconcile = true;
  cfg_.reconcile_interval = seconds(60);
  task("prod", "young", kT0 + seconds(30), SlotId{1});
  task("prod", "old", kT0, SlotId{2});
  task("prod", "no-slot", kT0, std::nullopt);
  task("prod", "busy", kT0, SlotId{3}).in_flight = true;
  EXPECT_TRUE(planner().dueForReconcile(kT0 + seconds(59)).empty());
  EXPECT_EQ(planner().nextReconcileAt(), kT0 + seconds(60));
  EXPECT_EQ(ids(planner().dueForReconcile(kT0 + seconds(90))),
            (std::vector<std::string>{"old", "young"}));
  cfg_.reconcile = false;
  EXPECT_FALSE(planner().nextReconcileAt());
}

TEST_F(LookPlannerTest, BeforeAnyEndGatePressureLooksOnlyAtTheOldest) {
  task("prod", "a", kT0, SlotId{1});
  task("prod", "b", kT0 + seconds(10), SlotId{2});
  task("batch", "c", kT0 + seconds(10), SlotId{1});
  EXPECT_EQ(ids(planner().dueForGatePressure("prod", 0, kT0 + seconds(20))),
            (std::vector<std::string>{"a"}));
  EXPECT_TRUE(planner().behindUnlearnedOldest(*reg_.find("prod", "b")));
  EXPECT_FALSE(planner().behindUnlearnedOldest(*reg_.find("batch", "c")));  // its key's oldest
  EXPECT_EQ(planner().nextGatePressureAt("prod", 0, kT0), kT0 + seconds(5));
}

TEST_F(LookPlannerTest, OnceADurationIsKnownLooksWaitForTheLikelyEnd) {
  learn(minutes(2));
  TaskRecord& r = task("prod", "a", kT0 + minutes(10), SlotId{1});
  const MonotonicTime end = kT0 + minutes(12) - std::chrono::milliseconds(500);  // mid-bracket
  EXPECT_EQ(planner().likelyEnd(r), end);
  EXPECT_EQ(planner().likelyRunningUntil(r, kT0 + minutes(11)), end);
  EXPECT_FALSE(planner().likelyRunningUntil(r, end));
  EXPECT_EQ(planner().nextLookAt(r, kT0 + minutes(10)), end);
  EXPECT_TRUE(planner().dueForGatePressure("prod", 0, end - seconds(1)).empty());
  EXPECT_EQ(ids(planner().dueForGatePressure("prod", 0, end)), (std::vector<std::string>{"a"}));
  // A client poll arriving shortly before the end may wait for it, a little past it.
  EXPECT_FALSE(planner().holdPollUntil(r, kT0 + minutes(10), seconds(30)));
  EXPECT_EQ(planner().holdPollUntil(r, end - seconds(10), seconds(30)),
            end + 2 * durations_.endPollInterval(0));
  const LookPlan plan = planner().gatePressurePlan("prod", 0, kT0 + minutes(10));
  EXPECT_EQ(plan.looks, (std::vector<MonotonicTime>{end}));
  EXPECT_EQ(plan.in_flight, 0u);
}

// Run times that vary: the estimate lies between the short and the long, and a look held until
// it would see every shorter task's end late. Looks start at the shortest recent duration and
// then come about four times across the spread (eight where the tier bounds the makespan, none
// more often than the plain pace where the budget binds and the tier has slack).
TEST_F(LookPlannerTest, WhereDurationsVaryLooksStartAtTheShortestAndSpanTheSpread) {
  const auto ended = [this](MonotonicTime created, Duration d) {
    durations_.learn(0, created, created + d - seconds(1), created + d,
                     [] { return LearnPace::Plain; });
  };
  ended(kT0, seconds(20));                // (19 s, 20 s]
  ended(kT0 + minutes(10), seconds(36));  // (35 s, 36 s]
  ASSERT_GT(*durations_.first(0), seconds(20));
  const MonotonicTime created = kT0 + minutes(20);
  TaskRecord& r = task("prod", "a", created, SlotId{1});
  EXPECT_EQ(planner().likelyEnd(r), created + seconds(20));
  EXPECT_EQ(planner().nextLookAt(r, created), created + seconds(20));
  const MonotonicTime first = created + seconds(20);
  EXPECT_EQ(planner().refreshAfter(r, first), milliseconds(3'750));  // 15 s of spread / 4
  pace_ = [](const std::string&, size_t) { return LearnPace::Eager; };
  EXPECT_EQ(planner().refreshAfter(r, first), milliseconds(1'875));
  // Where a look that finds the task running costs the tier 0.3 s (its creates wait for the
  // token), fewer: sqrt(15 s * 0.3 s) apart, at most half the interval.
  price_ = [](const std::string&, size_t) { return milliseconds(300); };
  EXPECT_NEAR(toSeconds(planner().refreshAfter(r, first)), std::sqrt(4.5), 1e-6);
  price_ = [](const std::string&, size_t) { return seconds(1); };
  EXPECT_EQ(planner().refreshAfter(r, first), milliseconds(2'500));
  price_ = nullptr;
  pace_ = [](const std::string&, size_t) { return LearnPace::Sparse; };
  EXPECT_EQ(planner().refreshAfter(r, first), seconds(5));
  // Well past the longest, the plain pace.
  pace_ = nullptr;
  EXPECT_EQ(planner().refreshAfter(r, created + minutes(1)), seconds(5));
}

// Before any task of its tier has ended, a look a quarter of a gap sooner sees nearly as much:
// where that is just before the reset of a gateway window with requests to spare, it goes then,
// on a request that window would lose.
TEST_F(LookPlannerTest, ALookBeforeAnyEndMovesIntoAWindowsSpareRequests) {
  TaskRecord& r = task("prod", "a", kT0, SlotId{1});
  r.last_upstream_poll = kT0 + seconds(5);
  const MonotonicTime due = kT0 + seconds(10);  // the plain pace: 5 s after the last look
  ASSERT_EQ(planner().nextLookAt(r, kT0 + seconds(6)), due);
  std::optional<MonotonicTime> by;
  spare_ = [&by](const std::string& key) {
    EXPECT_EQ(key, "prod");
    return by;
  };
  by = due - milliseconds(1'250);  // a quarter of the gap before
  EXPECT_EQ(planner().nextLookAt(r, kT0 + seconds(6)), *by);
  by = due - milliseconds(1'300);  // further: the look would see too little more than the last
  EXPECT_EQ(planner().nextLookAt(r, kT0 + seconds(6)), due);
  by = due;                        // the window is open until it is due anyway
  EXPECT_EQ(planner().nextLookAt(r, kT0 + seconds(6)), due);
  by.reset();
  EXPECT_EQ(planner().nextLookAt(r, kT0 + seconds(6)), due);
  // Once a task of the tier has ended, looks aim at its likely end: they stay there.
  learn(seconds(20));
  by = planner().likelyEnd(r) - milliseconds(500);
  EXPECT_EQ(planner().nextLookAt(r, kT0 + seconds(6)), planner().likelyEnd(r));
}

TEST_F(LookPlannerTest, RepliesStayFreshForTheirKind) {
  cfg_.not_found_ttl = seconds(30);
  cfg_.terminal_ttl = minutes(10);
  TaskRecord& r = task("prod", "a", kT0, SlotId{1});
  auto cached = std::make_shared<CachedReply>();
  r.reply = cached;
  r.reply_at = kT0;
  EXPECT_EQ(planner().replyTtl(r), seconds(5));  // nothing learned: min_poll_interval
  EXPECT_TRUE(planner().replyFresh(r, kT0 + seconds(4)));
  EXPECT_FALSE(planner().replyFresh(r, kT0 + seconds(5)));
  r.reply_terminal = true;
  EXPECT_EQ(planner().replyTtl(r), minutes(10));
  cached->status = 404;
  EXPECT_EQ(planner().replyTtl(r), seconds(30));
}

TEST_F(LookPlannerTest, TheLearnPaceComesFromTheCallback) {
  EXPECT_EQ(planner().learnPace("prod", 0), LearnPace::Plain);
  pace_ = [](const std::string& key, size_t) {
    return key == "prod" ? LearnPace::Sparse : LearnPace::Eager;
  };
  EXPECT_EQ(planner().learnPace("prod", 0), LearnPace::Sparse);
  // Sparse backs off with the task's age (at most half of it), never under min_poll_interval,
  // and never past a quarter of its model's prior (60 s for a video, 8 s for an image).
  TaskRecord& video = task("prod", "a", kT0, SlotId{1});
  video.model = "seedance-2-0";
  EXPECT_EQ(planner().refreshAfter(video, kT0 + seconds(20)), seconds(10));
  EXPECT_EQ(planner().refreshAfter(video, kT0 + minutes(1)), seconds(15));
  EXPECT_EQ(planner().refreshAfter(video, kT0 + minutes(10)), seconds(15));
  EXPECT_EQ(planner().refreshAfter(video, kT0 + seconds(4)), seconds(5));
  TaskRecord& image = task("prod", "b", kT0, SlotId{2});
  image.model = "gpt-image-2";
  EXPECT_EQ(planner().refreshAfter(image, kT0 + minutes(1)), seconds(5));
  tiers_[0].min_poll_interval = seconds(1);
  EXPECT_EQ(planner().refreshAfter(image, kT0 + minutes(1)), seconds(2));
  EXPECT_EQ(planner().refreshAfter(image, kT0 + seconds(3)), milliseconds(1'500));
  // A task restored without its model takes its tier's name's class.
  image.model.clear();
  tiers_[0].name = "video";
  EXPECT_EQ(planner().refreshAfter(image, kT0 + minutes(1)), seconds(15));
}

}  // namespace
}  // namespace hiapi::core
