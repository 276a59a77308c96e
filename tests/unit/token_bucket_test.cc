#include "hiapi/core/token_bucket.h"

#include <gtest/gtest.h>

#include <tuple>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);

TEST(TokenBucket, StartsFullAndDrains) {
  TokenBucket b(10, 5, kStart);
  int n = 0;
  while (b.consume(1, kStart)) {
    ++n;
  }
  EXPECT_EQ(n, 5);
  EXPECT_FALSE(b.consume(1, kStart + milliseconds(99)));
  EXPECT_TRUE(b.consume(1, kStart + milliseconds(100)));
}

TEST(TokenBucket, StartsEmptyWhenAsked) {
  TokenBucket b(2, 4, kStart, /*start_full=*/false);
  EXPECT_NEAR(b.balance(kStart), 0.0, 1e-12);
  EXPECT_NEAR(b.balance(kStart + seconds(1)), 2.0, 1e-9);
  EXPECT_NEAR(b.balance(kStart + seconds(100)), 4.0, 1e-9);  // capped at burst
}

TEST(TokenBucket, ReverseTimeChangesNothing) {
  TokenBucket b(1000, 10, kStart, false);
  const MonotonicTime t = kStart + milliseconds(100);
  int n = 0;
  while (b.consume(1, t)) {
    ++n;
  }
  EXPECT_EQ(n, 10);
  const double before = b.balance(t);
  EXPECT_FALSE(b.consume(1, t - milliseconds(1)));
  EXPECT_FALSE(b.consume(1, kStart));
  EXPECT_DOUBLE_EQ(before, b.balance(t));
}

TEST(TokenBucket, ClockJumpForwardIsCappedAtBurst) {
  TokenBucket b(1, 3, kStart);
  EXPECT_TRUE(b.consume(3, kStart));
  const MonotonicTime later = kStart + std::chrono::hours(24 * 365);
  EXPECT_NEAR(b.balance(later), 3.0, 1e-6);
  int n = 0;
  while (b.consume(1, later)) {
    ++n;
  }
  EXPECT_EQ(n, 3);
}

TEST(TokenBucket, BorrowReturnsWaitAndQueuesLaterCallers) {
  TokenBucket b(2, 2, kStart);
  EXPECT_EQ(*b.consumeWithBorrow(2, kStart), Duration::zero());
  auto w1 = b.consumeWithBorrow(1, kStart);
  ASSERT_TRUE(w1);
  EXPECT_NEAR(toSeconds(*w1), 0.5, 1e-5);
  auto w2 = b.consumeWithBorrow(1, kStart);
  EXPECT_NEAR(toSeconds(*w2), 1.0, 1e-5);
  EXPECT_FALSE(b.consumeWithBorrow(3, kStart));  // more than burst: never
  EXPECT_NEAR(b.balance(kStart), -2.0, 1e-9);
}

TEST(TokenBucket, TimeWhenAvailableFindsTheTokenThere) {
  TokenBucket b(3, 1, kStart);
  ASSERT_TRUE(b.consume(1, kStart));
  auto at = b.timeWhenAvailable(1, kStart);
  ASSERT_TRUE(at);
  EXPECT_GT(*at, kStart + milliseconds(333));
  EXPECT_LT(*at, kStart + milliseconds(334));
  EXPECT_TRUE(b.consume(1, *at));
  EXPECT_FALSE(b.timeWhenAvailable(2, kStart));
  EXPECT_EQ(*b.timeUntilAvailable(0.5, kStart + seconds(5)), Duration::zero());
}

TEST(TokenBucket, ReturnTokensCappedAtBurst) {
  TokenBucket b(1, 2, kStart);
  ASSERT_TRUE(b.consume(2, kStart));
  b.returnTokens(1, kStart);
  EXPECT_NEAR(b.balance(kStart), 1.0, 1e-9);
  b.returnTokens(5, kStart);
  EXPECT_NEAR(b.balance(kStart), 2.0, 1e-9);
}

TEST(TokenBucket, SetRateKeepsTokensContinuous) {
  TokenBucket b(1, 10, kStart, false);
  const MonotonicTime t = kStart + seconds(4);
  EXPECT_NEAR(b.balance(t), 4.0, 1e-9);
  b.setRate(0.5, t);
  EXPECT_NEAR(b.balance(t), 4.0, 1e-9);
  EXPECT_NEAR(b.balance(t + seconds(2)), 5.0, 1e-9);
  b.setRate(4, t + seconds(2));
  EXPECT_NEAR(b.balance(t + seconds(2)), 5.0, 1e-9);
  EXPECT_NEAR(b.balance(t + seconds(3)), 9.0, 1e-9);
}

TEST(TokenBucket, SetRateKeepsAPauseEnd) {
  TokenBucket b(1, 5, kStart);
  b.pauseUntil(kStart + seconds(10));
  EXPECT_LT(b.balance(kStart), 0);
  b.setRate(0.25, kStart + seconds(1));
  EXPECT_NEAR(b.balance(kStart + seconds(10)), 0.0, 1e-9);
  EXPECT_NEAR(b.balance(kStart + seconds(14)), 1.0, 1e-9);
}

TEST(TokenBucket, PauseNeverMovesBackwards) {
  TokenBucket b(1, 5, kStart);
  b.pauseUntil(kStart + seconds(10));
  b.pauseUntil(kStart + seconds(3));
  EXPECT_FALSE(b.consume(1, kStart + seconds(10)));
  EXPECT_TRUE(b.consume(1, kStart + seconds(11)));
}

TEST(TokenBucket, SetBurstDropsExcess) {
  TokenBucket b(1, 10, kStart);
  b.setBurst(3, kStart);
  EXPECT_NEAR(b.balance(kStart), 3.0, 1e-9);
  EXPECT_NEAR(b.balance(kStart + seconds(100)), 3.0, 1e-9);
}

TEST(TokenBucket, UsableThroughInterface) {
  RateBudgetPtr b = std::make_unique<TokenBucket>(5, 1, kStart);
  EXPECT_TRUE(b->tryAcquire(1, kStart));
  EXPECT_FALSE(b->tryAcquire(1, kStart));
  EXPECT_NEAR(toSeconds(*b->timeUntilAvailable(1, kStart)), 0.2, 1e-5);
  b->refund(1, kStart);
  EXPECT_TRUE(b->tryAcquire(1, kStart));
  EXPECT_DOUBLE_EQ(b->rate(), 5);
  EXPECT_DOUBLE_EQ(b->burst(), 1);
}

// rate (per s), burst, step (ms)
class TokenBucketBound : public ::testing::TestWithParam<std::tuple<double, double, int>> {};

TEST_P(TokenBucketBound, AdmittedNeverExceedsRateTimesTPlusBurst) {
  const auto [rate, burst, step_ms] = GetParam();
  TokenBucket b(rate, burst, kStart);
  double admitted = 0;
  // 12 simulated minutes.
  for (int64_t ms = 0; ms <= 12 * 60 * 1000; ms += step_ms) {
    const MonotonicTime now = kStart + milliseconds(ms);
    while (b.consume(1, now)) {
      admitted += 1;
    }
    const double t = ms / 1000.0;
    ASSERT_LE(admitted, rate * t + burst + 1e-6) << "at t=" << t;
  }
  const double t = 12 * 60.0;
  // And it is not far below the bound either (the bucket is work-conserving).
  EXPECT_GE(admitted, rate * t + burst - 1 - rate * step_ms / 1000.0);
}

TEST_P(TokenBucketBound, BoundHoldsWithRateChangesAndBackwardSteps) {
  const auto [rate, burst, step_ms] = GetParam();
  TokenBucket b(rate, burst, kStart);
  double admitted = 0;
  double allowance = burst;  // integral of the rate in force + burst
  double current = rate;
  int64_t ms = 0;
  for (int i = 0; ms <= 10 * 60 * 1000; ++i) {
    const int64_t prev = ms;
    ms += step_ms;
    allowance += current * step_ms / 1000.0;
    MonotonicTime now = kStart + milliseconds(ms);
    if (i % 977 == 0) {
      current = rate * (i % 2 == 0 ? 0.5 : 1.0);
      b.setRate(current, now);
    }
    if (i % 131 == 0) {
      // An out-of-order timestamp from the past must not mint tokens.
      const MonotonicTime past = kStart + milliseconds(std::max<int64_t>(0, prev - 500));
      while (b.consume(1, past)) {
        admitted += 1;
      }
    }
    while (b.consume(1, now)) {
      admitted += 1;
    }
    ASSERT_LE(admitted, allowance + 1e-6) << "at ms=" << ms;
  }
}

INSTANTIATE_TEST_SUITE_P(Rows, TokenBucketBound,
                         ::testing::Values(std::make_tuple(1.0, 5.0, 1),
                                           std::make_tuple(1.0, 1.0, 10),
                                           std::make_tuple(0.5, 2.0, 7),
                                           std::make_tuple(10.0, 20.0, 1),
                                           std::make_tuple(60.0 / 60.0, 5.0, 3),
                                           std::make_tuple(100.0, 1.0, 10),
                                           std::make_tuple(3.3, 4.5, 5)));

}  // namespace
}  // namespace hiapi::core
