#include "hiapi/core/duration_estimator.h"
#include "hiapi/core/model_prior.h"

#include <gtest/gtest.h>

namespace hiapi::core {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);

TierConfig tier(const std::string& name, Duration min_poll, Duration expected = Duration::zero()) {
  TierConfig t;
  t.name = name;
  t.min_poll_interval = min_poll;
  t.expected_duration = expected;
  return t;
}

LearnPace plain() { return LearnPace::Plain; }

TEST(DurationEstimator, NothingIsKnownBeforeAnEnd) {
  DurationEstimator d;
  d.setTiers({tier("heavy", seconds(5))});
  EXPECT_FALSE(d.first(0));
  EXPECT_FALSE(d.typical(0));
  EXPECT_EQ(d.endPollInterval(0), seconds(5));
  EXPECT_FALSE(d.first(7));  // clamped to the last tier
}

TEST(DurationEstimator, TheFirstEndGivesTheBracketsMiddleOrItsUpperEndWhereTheBudgetBinds) {
  DurationEstimator d;
  d.setTiers({tier("heavy", seconds(5)), tier("light", seconds(2))});
  // Seen running at 50 s, ended by 60 s: the middle.
  d.learn(0, kT0, kT0 + seconds(50), kT0 + seconds(60), plain);
  EXPECT_EQ(d.first(0), seconds(55));
  EXPECT_FALSE(d.typical(0));  // two ends make it typical
  EXPECT_EQ(d.endPollInterval(0), milliseconds(2750));  // 1/20 of it, under min_poll_interval
  int asked = 0;
  d.learn(1, kT0, kT0 + seconds(50), kT0 + seconds(60), [&] {
    ++asked;
    return LearnPace::Sparse;
  });
  EXPECT_EQ(d.first(1), seconds(60));
  // The pace is asked for the first end only.
  d.learn(1, kT0, kT0 + seconds(59), kT0 + seconds(60), [&] {
    ++asked;
    return LearnPace::Sparse;
  });
  EXPECT_EQ(asked, 1);
  EXPECT_TRUE(d.typical(1));
}

// Where the budget binds, the look after the last one that found a task running may wait for a
// token well past where the sparse pace put it: the first estimate is then where that look was
// due, not where it came.
TEST(DurationEstimator, ASparseFirstEstimateIsNoLaterThanThePacedLookAfterTheLowerEnd) {
  DurationEstimator d;
  d.setTiers({tier("heavy", seconds(1)), tier("light", seconds(2))});
  const auto sparse = [] { return LearnPace::Sparse; };
  // Seen running at 4.5 s, next look due at 4.5 + 2.25 s, but it came at 16 s.
  d.learn(0, kT0, kT0 + milliseconds(4'500), kT0 + seconds(16), sparse);
  EXPECT_EQ(d.first(0), milliseconds(6'750));
  // Young tasks are looked at min_poll_interval apart: seen running at 1 s, ended by 5 s.
  d.learn(1, kT0, kT0 + seconds(1), kT0 + seconds(5), sparse);
  EXPECT_EQ(d.first(1), seconds(3));
  // The pace's gap is at most a quarter of the task's prior: an image (8 s) seen running at
  // 40 s was due again at 42 s, not at 60 s.
  DurationEstimator images;
  images.setTiers({tier("light", seconds(1))});
  images.learn(0, kT0, kT0 + seconds(40), kT0 + seconds(70), sparse, modelPrior("gpt-image-2"));
  EXPECT_EQ(images.first(0), seconds(42));
}

TEST(DurationEstimator, NarrowBracketsAreAveragedIn) {
  DurationEstimator d;
  d.setTiers({tier("light", seconds(2), seconds(10))});
  EXPECT_EQ(d.typical(0), seconds(10));  // expected_duration counts as two ends
  EXPECT_EQ(d.endPollInterval(0), milliseconds(500));
  // Ended in (19.9 s, 20 s]: 0.7 * 10 s + 0.3 * 20 s.
  d.learn(0, kT0, kT0 + milliseconds(19'900), kT0 + seconds(20), plain);
  EXPECT_NEAR(std::chrono::duration<double>(*d.typical(0)).count(), 13.0, 1e-6);
}

TEST(DurationEstimator, AnEndSeenByTheFirstLookProbesLowerByDoublingSteps) {
  DurationEstimator d;
  d.setTiers({tier("light", seconds(2), seconds(20))});
  Duration last = *d.typical(0);
  Duration step_before{};
  for (int wave = 0; wave < 3; ++wave) {
    // Each wave starts far from the last (not the same wave) and is seen ended right at the
    // estimate by a look after a wide gap.
    const MonotonicTime created = kT0 + std::chrono::minutes(10 * wave);
    d.learn(0, created, created + seconds(1), created + last, plain);
    const Duration step = last - *d.typical(0);
    EXPECT_GT(step, step_before);
    step_before = step;
    last = *d.typical(0);
  }
}

// One estimate cannot say how far apart run times lie; the range says what the recent brackets
// show that no single duration could have given, so that looks can start at the shortest.
TEST(DurationEstimator, TheRangeSpansOnlyWhatTheBracketsSurelyShow) {
  DurationEstimator d;
  d.setTiers({tier("light", seconds(2))});
  EXPECT_FALSE(d.range(0));
  const auto end = [&d](int i, Duration running, Duration ended) {
    const MonotonicTime created = kT0 + std::chrono::minutes(10 * i);
    d.learn(0, created, created + running, created + ended, plain);
  };
  // Brackets that overlap, (9.9 s, 10 s] and (9.8 s, 10.6 s]: one duration explains both.
  end(0, milliseconds(9'900), seconds(10));
  end(1, milliseconds(9'800), milliseconds(10'600));
  ASSERT_TRUE(d.range(0));
  EXPECT_EQ(d.range(0)->low, seconds(10));
  EXPECT_LT(d.range(0)->high - d.range(0)->low, d.endPollInterval(0));
  // A task seen running at 19 s: the range reaches it, and still starts at 10 s (the estimate,
  // pulled up by it, would hide the next short task's end).
  end(2, seconds(19), seconds(20));
  EXPECT_GT(*d.first(0), seconds(12));
  EXPECT_EQ(d.range(0)->low, seconds(10));
  EXPECT_EQ(d.range(0)->high, seconds(19));
  // An end seen late by a coarse look, (5 s, 30 s], widens nothing.
  end(3, seconds(5), seconds(30));
  EXPECT_EQ(d.range(0)->low, seconds(10));
  EXPECT_EQ(d.range(0)->high, seconds(19));
  // Only the last kRecent ends count: after that many alike, the range is theirs again.
  for (size_t i = 0; i < DurationEstimator::kRecent; ++i) {
    end(4 + static_cast<int>(i), milliseconds(11'900), seconds(12));
  }
  EXPECT_GE(d.range(0)->low, milliseconds(11'900));
  EXPECT_LT(d.range(0)->high, seconds(19));
}

TEST(DurationEstimator, EstimatesFollowTheirTierByName) {
  DurationEstimator d;
  d.setTiers({tier("heavy", seconds(5)), tier("light", seconds(2))});
  d.learn(1, kT0, kT0 + seconds(8), kT0 + seconds(12), plain);
  d.setTiers({tier("light", seconds(2)), tier("heavy", seconds(5), seconds(90))});
  EXPECT_EQ(d.first(0), seconds(10));
  EXPECT_EQ(d.typical(1), seconds(90));
  d.setTiers({tier("other", seconds(2))});
  EXPECT_FALSE(d.first(0));
}

// Instances sharing a key through the store: one that has not learned a tier takes the estimate
// of another that has seen more of its ends (up to "typical"), and keeps its own once learned.
TEST(DurationEstimator, AnotherInstancesEstimateIsTakenOnlyUntilTheTierIsLearnedHere) {
  DurationEstimator d;
  d.setTiers({tier("heavy", seconds(5)), tier("light", seconds(2), seconds(10))});
  EXPECT_EQ(d.known(0).samples, 0u);
  EXPECT_EQ(d.known(1).samples, 2u) << "expected_duration counts as two ends";
  EXPECT_EQ(d.known(1).estimate, seconds(10));
  EXPECT_EQ(d.known(0).source, DurationSource::None);
  EXPECT_EQ(d.known(1).source, DurationSource::Configured);

  EXPECT_FALSE(d.adopt(0, {seconds(40), 0})) << "nothing known there";
  EXPECT_TRUE(d.adopt(0, {seconds(40), 1}));
  EXPECT_EQ(d.first(0), seconds(40));
  EXPECT_FALSE(d.typical(0)) << "one end seen elsewhere: not typical yet";
  EXPECT_FALSE(d.adopt(0, {seconds(30), 1})) << "no more ends seen than taken already";
  EXPECT_TRUE(d.adopt(0, {seconds(36), 7}));
  EXPECT_EQ(d.typical(0), seconds(36));
  EXPECT_EQ(d.known(0).samples, 2u) << "counted as two, as an expected_duration";
  EXPECT_EQ(d.known(0).source, DurationSource::Shared);
  EXPECT_FALSE(d.adopt(0, {seconds(20), 50})) << "learned here: its own looks refine it";
  EXPECT_FALSE(d.adopt(1, {seconds(20), 50})) << "nor is an expected_duration replaced";
  EXPECT_EQ(d.typical(1), seconds(10));

  // An end seen here after an adopted estimate refines it as its own would.
  DurationEstimator e;
  e.setTiers({tier("heavy", seconds(5))});
  ASSERT_TRUE(e.adopt(0, {seconds(40), 1}));
  e.learn(0, kT0, kT0 + seconds(39), kT0 + seconds(40), plain);
  EXPECT_EQ(e.known(0).samples, 2u);
  EXPECT_EQ(e.known(0).source, DurationSource::Learned);
  EXPECT_STREQ(durationSourceName(e.known(0).source), "learned");
  EXPECT_TRUE(e.typical(0));
}

}  // namespace
}  // namespace hiapi::core
