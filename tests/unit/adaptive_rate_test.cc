#include "hiapi/core/adaptive_rate.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);
const auto kWall = std::chrono::system_clock::time_point{} + std::chrono::seconds(1'800'000'000);

/// A rate 429 for a request outside the gateway's budget: cut at once (the decrease mechanics).
constexpr bool kOutsideBudget = false;

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
  const MonotonicTime end = a.onRateLimited(kStart, seconds(5), r, kOutsideBudget);
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
  const MonotonicTime end = a.onRateLimited(kStart, seconds(561635), r, kOutsideBudget);
  EXPECT_EQ(end, kStart + seconds(60));
  EXPECT_EQ(a.cooldownRemaining(kStart), seconds(60));
}

TEST(AdaptiveRate, LinearRecoveryCurve) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(0), r, kOutsideBudget);  // fraction 0.5, climb from kStart over 30 s
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
    a.onRateLimited(t, seconds(0), r, kOutsideBudget);
    EXPECT_NEAR(a.effectiveRate(t), std::max(0.1, before * 0.5), 1e-9) << i;
    t += seconds(2);  // past the 1 s guard; the linear climb adds a little meanwhile
  }
  EXPECT_NEAR(a.effectiveRate(t - seconds(2)), 0.1, 1e-9);  // the floor
  EXPECT_GE(a.decreases(), 4u);
}

TEST(AdaptiveRate, BurstOf429sDecreasesOnce) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(2), r, kOutsideBudget);
  a.onRateLimited(kStart + milliseconds(10), seconds(2), r, kOutsideBudget);
  a.onRateLimited(kStart + milliseconds(500), seconds(2), r, kOutsideBudget);
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
    const MonotonicTime end = a.onRateLimited(t, std::nullopt, r, kOutsideBudget);
    EXPECT_NEAR(toSeconds(end - t), cap * 0.999999, 1e-3);
    t = end + seconds(1);
  }
  a.onSuccess(t);
  EXPECT_EQ(a.consecutive429(), 0u);
  FixedRandom zero(0.0);
  EXPECT_EQ(a.onRateLimited(t, std::nullopt, zero, kOutsideBudget), t);  // full jitter can be zero
}

TEST(AdaptiveRate, LonePhaseErrorPausesWithoutCut) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  // Inside the budget, no other rate 429 before: a phase error. Retry-After is honoured.
  EXPECT_EQ(a.onRateLimited(kStart, seconds(2), r), kStart + seconds(2));
  EXPECT_EQ(a.lastReaction(), AdaptiveRate::Reaction::Resync);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 1.0);
  EXPECT_FALSE(a.fullRecoveryAt());
  EXPECT_EQ(a.decreases(), 0u);
  EXPECT_EQ(a.resyncs(), 1u);
  // Without Retry-After: a resync of one token interval (1 s at 1/s), not a random backoff.
  AdaptiveRate b(limits());
  EXPECT_EQ(b.onRateLimited(kStart, std::nullopt, r), kStart + seconds(1));
  EXPECT_DOUBLE_EQ(b.effectiveRate(kStart + seconds(1)), 1.0);
}

TEST(AdaptiveRate, AnswersToTheSameRoundTripAreOneEvent) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(1), r);
  // Requests sent before the first 429 was seen answer within the guard or the cool-down.
  a.onRateLimited(kStart + milliseconds(20), seconds(1), r);
  a.onRateLimited(kStart + milliseconds(900), seconds(1), r);
  EXPECT_EQ(a.lastReaction(), AdaptiveRate::Reaction::SameEvent);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart + seconds(2)), 1.0);
  EXPECT_EQ(a.resyncs(), 1u);
  EXPECT_EQ(a.decreases(), 0u);
}

TEST(AdaptiveRate, RepeatWithinWindowCuts) {
  LimitsConfig l = limits();
  l.repeat_window = seconds(10);
  AdaptiveRate a(l);
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(1), r);
  EXPECT_EQ(a.lastReaction(), AdaptiveRate::Reaction::Resync);
  // A second event 5 s later: the budget is smaller than configured.
  const MonotonicTime t = kStart + seconds(5);
  a.onRateLimited(t, seconds(1), r);
  EXPECT_EQ(a.lastReaction(), AdaptiveRate::Reaction::Decrease);
  EXPECT_DOUBLE_EQ(a.effectiveRate(t), 0.5);
  EXPECT_EQ(a.decreases(), 1u);
  // An event 11 s after the last is lone again.
  AdaptiveRate b(l);
  b.onRateLimited(kStart, seconds(1), r);
  b.onRateLimited(kStart + seconds(11), seconds(1), r);
  EXPECT_EQ(b.lastReaction(), AdaptiveRate::Reaction::Resync);
  EXPECT_EQ(b.decreases(), 0u);
  EXPECT_EQ(b.resyncs(), 2u);
}

// A request that left before the last 429 came back answers the same excess, however slow its
// answer: it is no repeat, so it cuts nothing.
TEST(AdaptiveRate, A429SentBeforeTheLastIsTheSameEvent) {
  LimitsConfig l = limits();
  l.repeat_window = seconds(10);
  AdaptiveRate a(l);
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(1), r);
  const MonotonicTime t = kStart + seconds(5);
  a.onRateLimited(t, seconds(1), r, /*inside_budget=*/true, /*sent_before_last=*/true);
  EXPECT_EQ(a.lastReaction(), AdaptiveRate::Reaction::SameEvent);
  EXPECT_DOUBLE_EQ(a.effectiveRate(t), 1.0);
  EXPECT_EQ(a.decreases(), 0u);
  // The first 429 of all has nothing before it to be the same as.
  AdaptiveRate b(l);
  b.onRateLimited(kStart, seconds(1), r, true, /*sent_before_last=*/true);
  EXPECT_EQ(b.lastReaction(), AdaptiveRate::Reaction::Resync);
}

TEST(AdaptiveRate, ZeroRepeatWindowCutsEvery429) {
  LimitsConfig l = limits();
  l.repeat_window = Duration::zero();
  AdaptiveRate a(l);
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(1), r);
  EXPECT_EQ(a.lastReaction(), AdaptiveRate::Reaction::Decrease);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 0.5);
}

TEST(AdaptiveRate, PhaseErrorsAtTheGatewaysExactRateKeepThroughput) {
  // Simulated 10 minutes at the configured rate, one phase error every 40 s (further apart than
  // repeat_window): the rate never drops, so the key sends all but the pauses' tokens.
  LimitsConfig l = limits();
  l.rate.per_second = 4.0;
  l.repeat_window = seconds(30);
  AdaptiveRate a(l);
  FixedRandom r(0.5);
  double sent = 0;
  const Duration step = milliseconds(10);
  for (MonotonicTime t = kStart; t < kStart + seconds(600); t += step) {
    if ((t - kStart) % seconds(40) == Duration::zero() && t != kStart) {
      a.onRateLimited(t, std::nullopt, r);
    }
    if (!a.inCooldown(t)) {
      sent += a.effectiveRate(t) * toSeconds(step);
    }
  }
  EXPECT_EQ(a.decreases(), 0u);
  EXPECT_EQ(a.resyncs(), 14u);
  EXPECT_GE(sent, 4.0 * 600 - 14 * 1.0 - 1.0);  // each resync costs one token interval
}

TEST(AdaptiveRate, ResetDelayHelper) {
  EXPECT_EQ(rateLimitResetDelay(2.5, kWall), milliseconds(2500));
  EXPECT_EQ(rateLimitResetDelay(-1, kWall), Duration::zero());
  EXPECT_EQ(rateLimitResetDelay(1'800'000'001.0, kWall), seconds(1));
}

TEST(AdaptiveRate, ReconfigureKeepsFraction) {
  AdaptiveRate a(limits());
  FixedRandom r(0.5);
  a.onRateLimited(kStart, seconds(10), r, kOutsideBudget);
  LimitsConfig l = limits();
  l.rate.per_second = 4.0;
  a.reconfigure(l);
  EXPECT_DOUBLE_EQ(a.effectiveRate(kStart), 2.0);
  EXPECT_TRUE(a.inCooldown(kStart));
}

}  // namespace
}  // namespace hiapi::core
