// SharedBudget and the local-share arithmetic, in simulated time. A small model of the Redis
// script's bucket (in the store's own time, as `TIME` gives it) stands in for Redis.

#include "hiapi/core/shared_budget.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

namespace hiapi::core {
namespace {

using namespace std::chrono_literals;

/// The bucket the Lua script keeps in Redis, on the store's clock.
class StoreBucket {
public:
  StoreBucket(double rate, double burst) : rate_(rate), burst_(burst), tokens_(burst) {}
  struct Reply {
    double granted;
    Duration retry_in;
  };
  Reply reserve(double want, double give_back, std::optional<Duration> pause, MonotonicTime t,
                double margin = 0) {
    if (t > ts_) {
      tokens_ = std::min(burst_, tokens_ + toSeconds(t - ts_) * rate_);
      ts_ = t;
    }
    tokens_ = std::min(burst_, tokens_ + give_back);
    if (pause) {
      ts_ = std::max(ts_, t + *pause);
      tokens_ = 0;
    }
    double granted = 0;
    if (t >= ts_ && want > 0) {
      granted = tokens_ + 1e-6 >= want + margin ? want : tokens_ >= 1 + margin ? tokens_ - margin : 0;
      tokens_ = std::max(0.0, tokens_ - granted);
    }
    Duration retry{0};
    if (granted < want) {
      retry = (ts_ > t ? ts_ - t : Duration::zero()) +
              fromSeconds(std::max(0.0, std::min(want, 1.0) + margin - tokens_) / rate_);
    }
    return {granted, retry};
  }

private:
  double rate_;
  double burst_;
  double tokens_;
  MonotonicTime ts_{};
};

TEST(LocalShareTest, SplitsRateAndBurstAndKeepsOneOfEach) {
  const LocalShare s = LocalShare::of(10.0, 6.0, 3);
  EXPECT_DOUBLE_EQ(s.rate, 10.0 / 3);
  EXPECT_DOUBLE_EQ(s.burst, 2.0);
  EXPECT_DOUBLE_EQ(LocalShare::of(10.0, 2.0, 5).burst, 1.0);
  EXPECT_DOUBLE_EQ(LocalShare::of(10.0, 2.0, 0).rate, 10.0);  // floored at one instance
  EXPECT_EQ(LocalShare::slots(5, 2), 2u);
  EXPECT_EQ(LocalShare::slots(2, 3), 1u);
  EXPECT_EQ(LocalShare::slots(4, 0), 4u);
}

TEST(ReservationSizeTest, BoundedByWaitingWindowAndBurst) {
  EXPECT_DOUBLE_EQ(reservationSize(100, 50, 250ms, 1), 1);
  EXPECT_DOUBLE_EQ(reservationSize(100, 50, 250ms, 10), 10);
  EXPECT_DOUBLE_EQ(reservationSize(100, 50, 250ms, 1000), 25);  // rate × window
  EXPECT_DOUBLE_EQ(reservationSize(100, 5, 250ms, 1000), 5);     // the burst
  EXPECT_DOUBLE_EQ(reservationSize(1, 5, 250ms, 1000), 1);       // at least one
  EXPECT_DOUBLE_EQ(reservationSize(100, 50, 0ms, 1000), 1);      // no window: one at a time
}

TEST(SharedBudgetTest, SpendsOnlyWhatTheStoreGranted) {
  ManualClock clock;
  SharedBudget b(10, 5, 250ms, clock.now());
  EXPECT_FALSE(b.tryAcquire(1, clock.now()));
  EXPECT_EQ(b.timeUntilAvailable(1, clock.now()), SharedBudget::kReplyBackstop);
  const std::optional<double> ask = b.reservationToSend(clock.now(), 3);
  ASSERT_TRUE(ask);
  EXPECT_DOUBLE_EQ(*ask, 2);  // 3 waiting, at most 10/s × 250 ms
  EXPECT_FALSE(b.reservationToSend(clock.now(), 3)) << "one in flight at a time";
  b.onReserved(2, 100ms, clock.now());
  EXPECT_TRUE(b.tryAcquire(1, clock.now()));
  EXPECT_TRUE(b.tryAcquire(1, clock.now()));
  EXPECT_FALSE(b.tryAcquire(1, clock.now()));
  EXPECT_EQ(b.timeUntilAvailable(1, clock.now()), 100ms) << "the store said when";
  EXPECT_FALSE(b.reservationToSend(clock.now() + 50ms, 1));
  EXPECT_TRUE(b.reservationToSend(clock.now() + 100ms, 1));
}

TEST(SharedBudgetTest, ThePhaseMarginIsKeptInTheStoreNotHeldHere) {
  ManualClock clock;
  SharedBudget b(4, 4, 250ms, clock.now());
  b.setPhaseMargin(10ms);
  EXPECT_DOUBLE_EQ(b.marginTokens(), 0.04);
  const std::optional<double> ask = b.reservationToSend(clock.now(), 1);
  ASSERT_TRUE(ask);
  EXPECT_DOUBLE_EQ(*ask, 1) << "whole tokens: the store granted them with the margin behind";
  b.onReserved(1, 0ms, clock.now());
  EXPECT_DOUBLE_EQ(b.available(clock.now()), 1.04) << "what the scheduler asks for is there";
  EXPECT_EQ(b.timeUntilAvailable(1.04, clock.now()), std::optional<Duration>(Duration::zero()));
  EXPECT_TRUE(b.tryAcquire(1, clock.now()));
  EXPECT_DOUBLE_EQ(b.held(), 0);
  SharedBudget one(4, 1, 250ms, clock.now());
  one.setPhaseMargin(10ms);
  EXPECT_DOUBLE_EQ(one.marginTokens(), 0) << "a burst of one leaves no room for a margin";
}

TEST(SharedBudgetTest, WhatTheLastWindowSpentSizesTheNextReservation) {
  ManualClock clock;
  SharedBudget b(1000, 1000, 100ms, clock.now());
  ASSERT_TRUE(b.reservationToSend(clock.now(), 1));
  b.onReserved(1.25, 0ms, clock.now());
  // Requests arrive one by one and go at once: 40 within one window, never a queue.
  for (int i = 0; i < 40; ++i) {
    std::optional<double> ask = b.reservationToSend(clock.now(), 1);
    if (ask) {
      b.onReserved(*ask, 0ms, clock.now());
    }
    ASSERT_TRUE(b.tryAcquire(1, clock.now()));
    clock.advance(2ms);
  }
  clock.advance(30ms);  // the window ends
  b.tryAcquire(b.held(), clock.now());
  const std::optional<double> ask = b.reservationToSend(clock.now(), 1);
  ASSERT_TRUE(ask);
  EXPECT_GE(*ask, 40) << "a window's demand in one round trip, not one token per request";
  EXPECT_LE(*ask, 100) << "at most rate x reserve_window";
}

TEST(SharedBudgetTest, UnspentTokensGoBackWhenNothingWaits) {
  ManualClock clock;
  SharedBudget b(100, 50, 250ms, clock.now());
  ASSERT_TRUE(b.reservationToSend(clock.now(), 40));
  b.onReserved(25, 0ms, clock.now());
  EXPECT_TRUE(b.tryAcquire(1, clock.now()));
  EXPECT_DOUBLE_EQ(b.surplusToReturn(clock.now(), 0), 0) << "just granted: kept a window";
  clock.advance(300ms);
  EXPECT_DOUBLE_EQ(b.surplusToReturn(clock.now(), 3), 0) << "still wanted";
  EXPECT_DOUBLE_EQ(b.surplusToReturn(clock.now(), 0), 24);
  EXPECT_DOUBLE_EQ(b.held(), 0);
  b.refund(1, clock.now());  // a cancelled request's token is held again, then returned
  EXPECT_DOUBLE_EQ(b.surplusToReturn(clock.now(), 0), 1);
}

// The store keeps room in its bucket for the tokens each instance holds (the gateway has not
// seen them spent): it is told with every call, and again when spending made its figure stale
// (once a window) or before it expires.
TEST(SharedBudgetTest, TheStoreHearsWhatIsHeldWhenItsFigureGoesStaleOrOld) {
  ManualClock clock;
  SharedBudget b(10, 5, 250ms, clock.now());
  const Duration life = 6s;
  EXPECT_FALSE(b.heldReportDue(clock.now(), life)) << "nothing held, nothing told";
  ASSERT_TRUE(b.reservationToSend(clock.now(), 2));
  b.onHeldSent(b.held(), clock.now());
  EXPECT_FALSE(b.heldReportDue(clock.now(), life)) << "a reply is awaited";
  b.onReserved(2, 0ms, clock.now());
  EXPECT_FALSE(b.heldReportDue(clock.now() + 1s, life)) << "the store added its grant: current";
  clock.advance(1s);
  ASSERT_TRUE(b.tryAcquire(1, clock.now()));
  const std::optional<double> due = b.heldReportDue(clock.now(), life);
  ASSERT_TRUE(due) << "the store still counts the spent token as held";
  EXPECT_DOUBLE_EQ(*due, 1);
  b.onHeldSent(*due, clock.now());
  ASSERT_TRUE(b.tryAcquire(1, clock.now()));
  EXPECT_FALSE(b.heldReportDue(clock.now() + 100ms, life)) << "at most once a window";
  EXPECT_EQ(b.heldReportDue(clock.now() + 250ms, life), std::optional<double>(0));
  b.onHeldSent(0, clock.now() + 250ms);
  EXPECT_FALSE(b.heldReportDue(clock.now() + 10s, life)) << "nothing held: the figure may lapse";
  b.refund(1, clock.now());
  b.onHeldSent(1, clock.now());
  EXPECT_FALSE(b.heldReportDue(clock.now() + 2s, life));
  EXPECT_EQ(b.heldReportDue(clock.now() + 3s, life), std::optional<double>(1))
      << "still held at half the figure's life: told again before it lapses";
}

TEST(SharedBudgetTest, APauseIsSharedOnceAndHonoured) {
  ManualClock clock;
  SharedBudget b(10, 5, 250ms, clock.now());
  ASSERT_TRUE(b.reservationToSend(clock.now(), 1));
  b.onReserved(2, 0ms, clock.now());
  EXPECT_DOUBLE_EQ(b.available(clock.now()), 2);
  b.pauseUntil(clock.now() + 3s);
  EXPECT_LT(b.available(clock.now()), 0);
  EXPECT_FALSE(b.tryAcquire(1, clock.now()));
  EXPECT_EQ(b.pauseToShare(clock.now()), std::optional<Duration>(3s));
  EXPECT_FALSE(b.pauseToShare(clock.now())) << "once";
  EXPECT_FALSE(b.reservationToSend(clock.now(), 1)) << "no asking while paused";
  clock.advance(3s);
  EXPECT_TRUE(b.reservationToSend(clock.now(), 1));
}

TEST(SharedBudgetTest, AnotherInstancesPauseStopsThisOne) {
  ManualClock clock;
  SharedBudget b(10, 5, 250ms, clock.now());
  b.onSharedPause(clock.now() + 2s);
  EXPECT_FALSE(b.tryAcquire(1, clock.now()));
  EXPECT_EQ(b.timeUntilAvailable(1, clock.now()), std::optional<Duration>(2s));
  EXPECT_FALSE(b.pauseToShare(clock.now())) << "not shared back";
}

TEST(SharedBudgetTest, APauseInThePastTrimsTheBalance) {
  ManualClock clock;
  SharedBudget b(10, 10, 1s, clock.now());
  ASSERT_TRUE(b.reservationToSend(clock.now(), 9));
  b.onReserved(10, 0ms, clock.now());
  ASSERT_DOUBLE_EQ(b.available(clock.now()), 10);
  b.pauseUntil(clock.now() - 300ms);  // leave 3 tokens, as KeyScheduler does for a window
  EXPECT_NEAR(b.available(clock.now()), 3, 1e-9);
  EXPECT_FALSE(b.pauseToShare(clock.now()));
}

TEST(SharedBudgetTest, OutageUsesTheLocalShareNeverUnlimited) {
  ManualClock clock;
  SharedBudget b(12, 6, 250ms, clock.now(), 3);
  ASSERT_TRUE(b.reservationToSend(clock.now(), 1));
  b.onStoreDown(clock.now());
  EXPECT_TRUE(b.degraded());
  EXPECT_FALSE(b.reservationToSend(clock.now(), 10));
  b.onReserved(6, 0ms, clock.now());  // a reply that arrives after the outage began: ignored
  // Over 10 s the share is 12/3 = 4 per second, its burst 2 (starting empty).
  size_t taken = 0;
  for (int ms = 0; ms < 10'000; ++ms) {
    while (b.tryAcquire(1, clock.now())) {
      ++taken;
    }
    clock.advance(1ms);
  }
  EXPECT_GE(taken, 39u);
  EXPECT_LE(taken, 40u);
  const std::optional<Duration> wait = b.timeUntilAvailable(5, clock.now());
  ASSERT_TRUE(wait) << "more than the share's burst still has an answer";
  b.setInstances(1, clock.now());
  EXPECT_DOUBLE_EQ(b.available(clock.now() + 10s), 6) << "alone: the whole burst";
  b.onStoreUp(clock.now());
  EXPECT_FALSE(b.degraded());
  EXPECT_TRUE(b.reservationToSend(clock.now(), 1));
}

/// Back from an outage one instance must not run at the shared rate while the others are still
/// on their local shares: it keeps to its own share too until told every instance is back (or
/// its settling time is over), and a bucket the store lost is created empty meanwhile.
TEST(SharedBudgetTest, BackFromAnOutageItSettlesOnItsLocalShareToo) {
  ManualClock clock;
  SharedBudget b(10, 4, 250ms, clock.now(), 2);
  b.onStoreDown(clock.now());
  clock.advance(1s);
  b.onStoreUp(clock.now(), 5s);
  EXPECT_FALSE(b.degraded());
  EXPECT_TRUE(b.settling(clock.now()));
  EXPECT_EQ(b.missingBucketTokens(clock.now()), 0) << "its tokens were just spent locally";
  // The store grants whatever is asked, every millisecond for 2 s, with 10 waiting.
  const auto spendFor2s = [&] {
    size_t n = 0;
    for (int ms = 0; ms < 2000; ++ms) {
      if (std::optional<double> ask = b.reservationToSend(clock.now(), 10)) {
        b.onReserved(*ask, 0ms, clock.now());
      }
      while (b.tryAcquire(1, clock.now())) {
        ++n;
      }
      clock.advance(1ms);
    }
    return n;
  };
  // The local share (5/s, burst 2) still bounds spending.
  size_t taken = spendFor2s();
  EXPECT_GE(taken, 10u);
  EXPECT_LE(taken, 12u) << "2 s at 5/s with a burst of 2 at most";
  while (b.tryAcquire(1, clock.now())) {
    ++taken;
  }
  EXPECT_GT(b.timeUntilAvailable(1, clock.now()).value_or(0ms), 0ms)
      << "the wait is the local share's, not the store's";
  EXPECT_LE(b.available(clock.now()), 1.0);
  b.endSettling();
  EXPECT_FALSE(b.settling(clock.now()));
  EXPECT_EQ(b.missingBucketTokens(clock.now()), 4);
  EXPECT_GT(spendFor2s(), 100u) << "the store alone decides again";
}

TEST(SharedBudgetTest, SettlingEndsByItselfAndARefundReachesBothBuckets) {
  ManualClock clock;
  SharedBudget b(10, 4, 250ms, clock.now(), 2);
  b.onStoreDown(clock.now());
  clock.advance(2s);  // the local share is full: burst 2
  b.onStoreUp(clock.now(), 3s);
  b.onReserved(4, 0ms, clock.now());
  ASSERT_TRUE(b.tryAcquire(1, clock.now()));
  ASSERT_TRUE(b.tryAcquire(1, clock.now()));
  EXPECT_FALSE(b.tryAcquire(1, clock.now())) << "two held still, but the share is spent";
  b.refund(1, clock.now());
  EXPECT_TRUE(b.tryAcquire(1, clock.now())) << "a refunded token is back in both";
  clock.advance(3s);
  EXPECT_FALSE(b.settling(clock.now()));
  EXPECT_TRUE(b.tryAcquire(1, clock.now())) << "after settling what is held is spendable";
  b.onStoreDown(clock.now());
  b.onStoreUp(clock.now());
  EXPECT_FALSE(b.settling(clock.now())) << "no settling asked for";
}

/// Three instances whose clocks are 2 s apart, each with a deep queue, against one store
/// bucket: the store's time alone decides, so together they stay inside rate + burst in every
/// second, and use the budget (no instance starves or strands tokens).
TEST(SharedBudgetTest, SkewedClocksShareOneBudget) {
  constexpr double kRate = 20;
  constexpr double kBurst = 5;
  ManualClock store_clock;
  StoreBucket store(kRate, kBurst);
  const std::vector<Duration> skew = {-2s, 0s, 2s};
  std::vector<std::unique_ptr<SharedBudget>> instances;
  for (Duration s : skew) {
    instances.push_back(
        std::make_unique<SharedBudget>(kRate, kBurst, 250ms, store_clock.now() + s));
    instances.back()->setPhaseMargin(10ms);
  }
  std::map<int64_t, int> per_second;
  int total = 0;
  constexpr int kSeconds = 20;
  for (int ms = 0; ms < kSeconds * 1000; ++ms) {
    const MonotonicTime t = store_clock.now();
    for (size_t i = 0; i < instances.size(); ++i) {
      SharedBudget& b = *instances[i];
      const MonotonicTime local = t + skew[i];
      if (std::optional<double> ask = b.reservationToSend(local, 50)) {
        const StoreBucket::Reply r =
            store.reserve(*ask, 0, b.pauseToShare(local), t, b.marginTokens());
        b.onReserved(r.granted, r.retry_in, local);
      }
      while (b.tryAcquire(1, local)) {
        ++per_second[ms / 1000];
        ++total;
      }
    }
    store_clock.advance(1ms);
  }
  int busiest = 0;
  for (const auto& [s, n] : per_second) {
    busiest = std::max(busiest, n);
  }
  EXPECT_LE(busiest, kRate + kBurst);
  EXPECT_LE(total, kRate * kSeconds + kBurst);
  EXPECT_GE(total, kRate * kSeconds * 0.95) << "the budget is used, not stranded";
}

}  // namespace
}  // namespace hiapi::core
