#include "hiapi/core/adaptive_rate.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);
const auto kWall = std::chrono::system_clock::time_point{} + std::chrono::seconds(1'800'000'000);

/// A Random that returns a fixed value: pins the jitter.
class FixedRandom final : public Random {
public:
  explicit FixedRandom(double v) : v_(v) {}
  double uniform() override { return v_; }

private:
  double v_;
};

LimitsConfig limits() {
  LimitsConfig l;
  l.rate.per_second = 1.0;
  l.decrease_factor = 0.5;
  l.min_rate_fraction = 0.1;
  l.recovery_time = seconds(30);
  l.max_cooldown = seconds(60);
  return l;
}

TEST(AdaptiveRate, StartsAtConfigured) {
  AdaptiveRate a(limits());
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 1.0);
  EXPECT_FALSE(a.inCooldown(kStart));
  EXPECT_FALSE(a.fullRecoveryAt());
}

TEST(AdaptiveRate, RetryAfterSetsCooldownAndHalvesRate) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  const MonotonicTime end = a.onRateLimited(kStart, seconds(5), r);
  EXPECT_EQ(end, kStart + seconds(5));
  EXPECT_TRUE(a.inCooldown(kStart + seconds(4)));
  EXPECT_FALSE(a.inCooldown(kStart + seconds(5)));
  EXPECT_EQ(a.cooldownRemaining(kStart + seconds(2)), seconds(3));
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 0.5);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart + seconds(5)), 0.5);  // climb starts at cooldown end
}

TEST(AdaptiveRate, SillyRetryAfterIsCapped) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  const MonotonicTime end = a.onRateLimited(kStart, seconds(561635), r);
  EXPECT_EQ(end, kStart + seconds(60));
  EXPECT_EQ(a.cooldownRemaining(kStart), seconds(60));
}

TEST(AdaptiveRate, LinearRecoveryCurve) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(0), r);  // fraction 0.5, climb from kStart over 30 s
  struct Row {
    int s;
    double rate;
  };
  for (Row row : {Row{0, 0.5}, Row{6, 0.6}, Row{15, 0.75}, Row{24, 0.9}, Row{30, 1.0},
                  Row{300, 1.0}}) {
    EXPECT_NEAR(a.effectiveRate(kStart + seconds(row.s)), row.rate, 1e-9) << row.s;
  }
  EXPECT_EQ(a.fullRecoveryAt(), kStart + seconds(30));
}

TEST(AdaptiveRate, DecreaseCurveHitsFloor) {
  AdaptiveRate a(limits());
  FixedRandom r(0.0);
  MonotonicTime t = kStart;
  for (int i = 0; i < 6; ++i) {
    const double before = a.effectiveRate(t);
    a.onRateLimited(t, seconds(0), r);
    EXPECT_NEAR(a.effectiveRate(t), std::max(0.1, before * 0.5), 1e-9) << i;
    t += seconds(2);  // past the 1 s guard; the linear climb adds a little meanwhile
  }
  EXPECT_NEAR(a.effectiveRate(t - seconds(2)), 0.1, 1e-9);  // the floor
  EXPECT_GE(a.decreases(), 4u);
}

TEST(AdaptiveRate, BurstOf429sDecreasesOnce) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(2), r);
  a.onRateLimited(kStart + milliseconds(10), seconds(2), r);
  a.onRateLimited(kStart + milliseconds(500), seconds(2), r);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart + seconds(1)), 0.5);
  EXPECT_EQ(a.decreases(), 1u);
  // ... but the cool-down follows the latest answer.
  EXPECT_EQ(a.cooldownUntil(), kStart + milliseconds(2500));
}

TEST(AdaptiveRate, BackoffWithFullJitterWithoutRetryAfter) {
  AdaptiveRate a(limits());
  FixedRandom r(0.999999);
  // k-th consecutive 429: uniform * min(60, 1 * 2^(k-1)).
  const double caps[] = {1, 2, 4, 8, 16, 32, 60, 60};
  MonotonicTime t = kStart;
  for (double cap : caps) {
    const MonotonicTime end = a.onRateLimited(t, std::nullopt, r);
    EXPECT_NEAR(toSeconds(end - t), cap * 0.999999, 1e-3);
    t = end + seconds(1);
  }
  a.onSuccess(t);
  EXPECT_EQ(a.consecutive429(), 0u);
  FixedRandom zero(0.0);
  EXPECT_EQ(a.onRateLimited(t, std::nullopt, zero), t);  // full jitter can be zero
}

TEST(AdaptiveRate, RateLimitHeadersPauseUntilReset) {
  AdaptiveRate a(limits());
  RateLimitHeaders h;
  h.remaining = 0;
  h.reset = 7;  // seconds from now
  EXPECT_EQ(a.onRateLimitHeaders(h, kStart, kWall), kStart + seconds(7));
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 1.0);  // no decrease
  AdaptiveRate b(limits());
  h.reset = 1'800'000'012.0;  // epoch seconds: 12 s after kWall
  EXPECT_EQ(b.onRateLimitHeaders(h, kStart, kWall), kStart + seconds(12));
  AdaptiveRate c(limits());
  h.reset = 1'800'999'999.0;  // far: capped
  EXPECT_EQ(c.onRateLimitHeaders(h, kStart, kWall), kStart + seconds(60));
  h.reset = 1'700'000'000.0;  // in the past: nothing
  AdaptiveRate d(limits());
  EXPECT_FALSE(d.onRateLimitHeaders(h, kStart, kWall));
  h.remaining = 3;
  h.reset = 7;
  EXPECT_FALSE(d.onRateLimitHeaders(h, kStart, kWall));
  h.remaining = 0;
  h.reset.reset();
  EXPECT_FALSE(d.onRateLimitHeaders(h, kStart, kWall));
  EXPECT_FALSE(d.inCooldown(kStart));
}

TEST(AdaptiveRate, ResetDelayHelper) {
  EXPECT_EQ(rateLimitResetDelay(2.5, kWall), milliseconds(2500));
  EXPECT_EQ(rateLimitResetDelay(-1, kWall), Duration::zero());
  EXPECT_EQ(rateLimitResetDelay(1'800'000'001.0, kWall), seconds(1));
}

TEST(AdaptiveRate, ReconfigureKeepsFraction) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(10), r);
  LimitsConfig l = limits();
  l.rate.per_second = 4.0;
  a.reconfigure(l);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 2.0);
  EXPECT_TRUE(a.inCooldown(kStart));
}

}  // namespace
}  // namespace hiapi::core
