#include "hiapi/core/key_scheduler.h"
#include "hiapi/core/shared_budget.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <vector>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);
const auto kWall = std::chrono::system_clock::time_point{} + std::chrono::seconds(1'800'000'000);
constexpr size_t kHeavy = 0;
constexpr size_t kLight = 1;

LimitsConfig limits(double rate = 1.0, double burst = 5) {
  LimitsConfig l;
  l.rate.per_second = rate;
  l.burst = burst;
  l.tiers = defaultTiers();
  // Most tests look at token times exactly; the margin has its own tests.
  l.phase_margin = Duration::zero();
  return l;
}

QueueConfig queueConfig(uint32_t max_size = 10000) {
  QueueConfig q;
  q.max_size = max_size;
  q.create_gather = Duration::zero();  // most tests look at one instant; gathering has its own
  return q;
}

RequestInfo req(uint64_t id, RouteKind route, std::string client = "shared",
                std::optional<size_t> tier = std::nullopt,
                MonotonicTime deadline = kStart + std::chrono::hours(10)) {
  RequestInfo r;
  r.id = id;
  r.route = route;
  r.priority = route == RouteKind::Create ? Priority::Create
               : route == RouteKind::Poll ? Priority::Poll
                                          : Priority::Other;
  r.client = std::move(client);
  r.tier = tier;
  r.deadline = deadline;
  return r;
}

std::vector<uint64_t> ids(const Dispatch& d) {
  std::vector<uint64_t> out;
  for (const Admitted& a : d.admitted) {
    out.push_back(a.id);
  }
  return out;
}

/// A rate 429 to a poll, without counters.
UpstreamOutcome rate429() {
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Poll;
  o.cause = Limit429Cause::Rate;
  o.wall_now = kWall;
  return o;
}

/// A poll's 200 with the gateway's X-RateLimit-Remaining, and -Reset (seconds from now) and
/// -Limit when given.
UpstreamOutcome countersAnswer(double remaining, std::optional<double> reset = std::nullopt,
                               std::optional<double> limit = std::nullopt) {
  UpstreamOutcome o;
  o.status = 200;
  o.route = RouteKind::Poll;
  o.wall_now = kWall;
  o.ratelimit.remaining = remaining;
  o.ratelimit.reset = reset;
  o.ratelimit.limit = limit;
  return o;
}

/// Sends poll @p id through @p s at @p at (a spare token lets it go at once). @return its
/// admission's seq, for an answer to name.
uint64_t sendPoll(KeyScheduler& s, uint64_t id, MonotonicTime at) {
  s.submit(req(id, RouteKind::Poll), at);
  const Dispatch d = s.dispatch(at);
  EXPECT_EQ(ids(d), std::vector<uint64_t>{id});
  return d.admitted.at(0).seq;
}

/// A bucket gateway at 4/s answered at kStart: Remaining 0, its next token 0.25 s off. At @p t,
/// long past that reset, polls 1-3 wait, and the key, assuming one request per token interval
/// until an answer tells more, sends the first. @return that dispatch.
Dispatch onTheAssumedStep(KeyScheduler& s, MonotonicTime t) {
  s.onUpstreamOutcome(countersAnswer(0, 0.25, 4), kStart);
  for (uint64_t i = 1; i <= 3; ++i) {
    s.submit(req(i, RouteKind::Poll), t);
  }
  Dispatch d = s.dispatch(t);
  EXPECT_EQ(ids(d), std::vector<uint64_t>{1});
  return d;
}

class KeySchedulerTest : public ::testing::Test {
protected:
  SeededRandom random_{42};
};

TEST_F(KeySchedulerTest, TierForUsesMatcher) {
  KeyScheduler s(limits(), queueConfig(), kStart, random_);
  EXPECT_EQ(s.tierFor("veo-3.1/fast", std::nullopt), kHeavy);
  EXPECT_EQ(s.tierFor("gpt-image-2", std::string_view("pro")), kHeavy);
  EXPECT_EQ(s.tierFor("gpt-image-2", std::nullopt), kLight);
}

TEST_F(KeySchedulerTest, DispatchIntoAReusedResultReplacesWhatItHeld) {
  KeyScheduler s(limits(2.0, 3), queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 4; ++i) {
    ASSERT_EQ(s.submit(req(i, RouteKind::Poll), kStart), SubmitResult::Queued);
  }
  Dispatch d;
  d.admitted.push_back(Admitted{99, std::nullopt, 0, RouteKind::Poll, {}});
  d.expired.push_back(98);
  d.expired_slots.push_back(97);
  d.wake_at = kStart - std::chrono::seconds(5);
  s.dispatch(kStart, d);
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{1, 2, 3}));  // the burst; nothing left from before
  EXPECT_TRUE(d.expired.empty());
  EXPECT_TRUE(d.expired_slots.empty());
  ASSERT_TRUE(d.wake_at);
  EXPECT_GT(*d.wake_at, kStart);
  // Nothing can go yet: a second call into the same result leaves it with nothing to send.
  s.dispatch(kStart, d);
  EXPECT_TRUE(d.admitted.empty());
  s.dispatch(kStart + milliseconds(500), d);
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{4}));
}

TEST_F(KeySchedulerTest, BurstThenOnePerTokenInterval) {
  KeyScheduler s(limits(2.0, 3), queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 6; ++i) {
    ASSERT_EQ(s.submit(req(i, RouteKind::Poll), kStart), SubmitResult::Queued);
  }
  Dispatch d = s.dispatch(kStart);
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{1, 2, 3}));
  ASSERT_TRUE(d.wake_at);
  EXPECT_GT(*d.wake_at, kStart + milliseconds(499));
  EXPECT_LT(*d.wake_at, kStart + milliseconds(501));
  // Waking early admits nothing and asks again for the same time (no busy loop).
  Dispatch early = s.dispatch(kStart + milliseconds(200));
  EXPECT_TRUE(early.admitted.empty());
  EXPECT_GT(*early.wake_at, kStart + milliseconds(200));
  d = s.dispatch(*d.wake_at);
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{4}));
  EXPECT_EQ(s.snapshot(kStart).counters.throttled_rate, 3u);
}

TEST_F(KeySchedulerTest, CreateTakesSlotAndToken) {
  KeyScheduler s(limits(), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 1u);
  ASSERT_TRUE(d.admitted[0].slot);
  EXPECT_EQ(d.admitted[0].tier, kHeavy);
  EXPECT_EQ(s.gate(kHeavy).running(), 1u);
  EXPECT_NEAR(s.budget().available(kStart), 4.0, 1e-6);
  EXPECT_TRUE(s.releaseSlot(*d.admitted[0].slot, ReleaseReason::TaskFinished, kStart));
  EXPECT_FALSE(s.releaseSlot(*d.admitted[0].slot, ReleaseReason::TaskFinished, kStart));
  EXPECT_EQ(s.gate(kHeavy).running(), 0u);
}

TEST_F(KeySchedulerTest, FullHeavyGateBlocksNeitherPollsNorLightCreates) {
  KeyScheduler s(limits(1.0, 10), queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 4; ++i) {
    s.submit(req(i, RouteKind::Create, "a", kHeavy), kStart);  // only 2 fit
  }
  s.submit(req(10, RouteKind::Poll, "b"), kStart);
  s.submit(req(11, RouteKind::Create, "a", kLight), kStart);
  Dispatch d = s.dispatch(kStart);
  // The heavy tier is the bottleneck (4 creates, 2 free slots): its creates take the slots
  // first; then the heavy lane is closed without blocking b's poll or a's light create.
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{1, 2, 10, 11}));
  EXPECT_EQ(s.gate(kHeavy).running(), 2u);
  // Blocked creates consumed no token: reserve both or neither.
  EXPECT_NEAR(s.budget().available(kStart), 6.0, 1e-6);
  // Nothing changes by itself until the first heavy lease ends (or a deadline).
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, kStart + std::chrono::minutes(20));
  EXPECT_EQ(s.snapshot(kStart).tiers[kHeavy].queued, 2u);
  // A finished task frees a slot: the next heavy create goes.
  ASSERT_TRUE(d.admitted[0].slot);
  s.releaseSlot(*d.admitted[0].slot, ReleaseReason::TaskFinished, kStart + seconds(1));
  d = s.dispatch(kStart + seconds(1));
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{3}));
  // Lease expiry frees the other.
  d = s.dispatch(kStart + std::chrono::minutes(20));
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{4}));
  EXPECT_EQ(d.expired_slots.size(), 2u);  // the heavy one, and the light one (5 min lease)
  EXPECT_EQ(s.counters().leases_expired, 2u);
}

// Two full tiers with waiting creates, one token: it goes to the tier with the most work left.
// Heavy: 6 waiting over 2 slots (3 waves); light: 10 waiting over 5 slots (2 waves). With equal
// (unknown) durations that is heavy; also when only lower bounds are known (light tasks started
// first, so their lower bound is the larger: it says nothing about which tier runs longer); once
// light tasks are known to run ten times longer, light.
TEST_F(KeySchedulerTest, BottleneckWithMostWorkLeftTakesTheFreedToken) {
  enum Known { Nothing, LowerBounds, Learned };
  for (const Known known : {Nothing, LowerBounds, Learned}) {
    const bool light_runs_longer = known == Learned;
    SCOPED_TRACE(known == Learned       ? "light 10 s, heavy 1 s"
                 : known == LowerBounds ? "light ran 3 s so far, heavy 0.5 s"
                                        : "durations unknown");
    LimitsConfig l = limits(1.0, 7);
    l.tiers[kHeavy].max_running = 2;
    l.tiers[kLight].max_running = 5;
    KeyScheduler s(l, queueConfig(), kStart, random_);
    if (known == LowerBounds) {
      s.setTierDuration(kHeavy, TierDuration{milliseconds(500), false});
      s.setTierDuration(kLight, TierDuration{seconds(3), false});
    }
    if (light_runs_longer) {
      s.setTierDuration(kHeavy, TierDuration{seconds(1), true});
      s.setTierDuration(kLight, TierDuration{seconds(10), true});
    }
    std::vector<SlotId> heavy_slots;
    std::vector<SlotId> light_slots;
    for (uint64_t i = 1; i <= 7; ++i) {
      s.submit(req(i, RouteKind::Create, "a", i <= 2 ? kHeavy : kLight), kStart);
    }
    for (const Admitted& a : s.dispatch(kStart).admitted) {
      (a.tier == kHeavy ? heavy_slots : light_slots).push_back(*a.slot);
    }
    ASSERT_EQ(heavy_slots.size(), 2u);
    ASSERT_EQ(light_slots.size(), 5u);
    // Light creates arrive first, so FIFO (or one client's order) alone would pick light.
    for (uint64_t i = 0; i < 10; ++i) {
      s.submit(req(100 + i, RouteKind::Create, "a", kLight), kStart);
    }
    for (uint64_t i = 0; i < 6; ++i) {
      s.submit(req(200 + i, RouteKind::Create, "a", kHeavy), kStart);
    }
    const MonotonicTime later = kStart + milliseconds(1000);
    s.releaseSlot(heavy_slots[0], ReleaseReason::TaskFinished, later);
    s.releaseSlot(light_slots[0], ReleaseReason::TaskFinished, later);
    const Dispatch d = s.dispatch(later);  // one token has come back
    ASSERT_EQ(d.admitted.size(), 1u);
    EXPECT_EQ(d.admitted[0].id, light_runs_longer ? 100u : 200u);
    EXPECT_EQ(s.blockedTiers(later), (std::vector<size_t>{light_runs_longer ? kLight : kHeavy}));
  }
}

// The heavy gate is full with creates waiting (the bottleneck); light creates wait too. A poll
// that may free a heavy slot goes before the light creates, a plain poll after them.
TEST_F(KeySchedulerTest, APollThatMayFreeABottleneckSlotGoesWithItsTiersCreates) {
  LimitsConfig l = limits(1.0, 7);
  l.tiers[kHeavy].max_running = 2;
  l.tiers[kLight].max_running = 5;
  KeyScheduler s(l, queueConfig(), kStart, random_);
  s.setTierDuration(kHeavy, TierDuration{seconds(5), true});
  s.setTierDuration(kLight, TierDuration{seconds(2), true});
  std::vector<SlotId> light_slots;
  for (uint64_t i = 1; i <= 7; ++i) {
    s.submit(req(i, RouteKind::Create, "a", i <= 2 ? kHeavy : kLight), kStart);
  }
  for (const Admitted& a : s.dispatch(kStart).admitted) {
    if (a.tier == kLight) {
      light_slots.push_back(*a.slot);
    }
  }
  ASSERT_EQ(light_slots.size(), 5u);
  for (uint64_t i = 0; i < 4; ++i) {
    s.submit(req(200 + i, RouteKind::Create, "a", kHeavy), kStart);  // 2 waves of 5 s
    s.submit(req(100 + i, RouteKind::Create, "b", kLight), kStart);  // 1 wave of 2 s
  }
  s.releaseSlot(light_slots[0], ReleaseReason::TaskFinished, kStart);
  s.releaseSlot(light_slots[1], ReleaseReason::TaskFinished, kStart);
  s.submit(req(300, RouteKind::Poll, "c"), kStart);  // some other task
  RequestInfo unblock = req(301, RouteKind::Poll, "d");
  unblock.unblocks = kHeavy;
  s.submit(unblock, kStart);
  EXPECT_EQ(s.blockedTiers(kStart), (std::vector<size_t>{kHeavy}));
  std::vector<uint64_t> order;
  for (int sec = 1; sec <= 3; ++sec) {
    for (uint64_t id : ids(s.dispatch(kStart + seconds(sec)))) {
      order.push_back(id);
    }
  }
  // The heavy-freeing poll first; then the light creates of the freed slots (light is scarce
  // too: 4 waiting for 2 free); the plain poll after them.
  EXPECT_EQ(order, (std::vector<uint64_t>{301, 100, 101}));
}

TEST_F(KeySchedulerTest, FairnessNewClientWithinOneTokenInterval) {
  LimitsConfig l = limits(1.0, 1);
  l.tiers[kLight].max_running = 100000;
  KeyScheduler s(l, queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 1000; ++i) {
    s.submit(req(i, RouteKind::Create, "A", kLight), kStart);
  }
  MonotonicTime now = kStart;
  Dispatch d = s.dispatch(now);
  std::vector<uint64_t> order = ids(d);
  // Run A alone for a while.
  while (now < kStart + seconds(20)) {
    now = *d.wake_at;
    d = s.dispatch(now);
    for (uint64_t id : ids(d)) order.push_back(id);
  }
  const MonotonicTime b_at = now + milliseconds(300);
  s.submit(req(9999, RouteKind::Create, "B", kLight), b_at);
  now = b_at;
  std::optional<MonotonicTime> b_admitted;
  for (int guard = 0; guard < 10 && !b_admitted; ++guard) {
    d = s.dispatch(now);
    for (uint64_t id : ids(d)) {
      if (id == 9999) b_admitted = now;
      order.push_back(id);
    }
    now = *d.wake_at;
  }
  ASSERT_TRUE(b_admitted);
  EXPECT_LE(*b_admitted - b_at, seconds(1) + milliseconds(1));  // ~one token interval
  // FIFO within A.
  std::vector<uint64_t> a_only;
  for (uint64_t id : order) {
    if (id != 9999) a_only.push_back(id);
  }
  EXPECT_TRUE(std::is_sorted(a_only.begin(), a_only.end()));
}

TEST_F(KeySchedulerTest, PrioritiesRetryPollCreateOther) {
  KeyScheduler s(limits(1.0, 1), queueConfig(), kStart, random_);
  ASSERT_TRUE(s.budget().available(kStart) >= 1);
  s.dispatch(kStart);
  RequestInfo other = req(1, RouteKind::Other);
  RequestInfo create = req(2, RouteKind::Create, "c", kLight);
  RequestInfo poll = req(3, RouteKind::Poll);
  RequestInfo retry = req(4, RouteKind::Poll);
  retry.priority = Priority::Retry;
  RequestInfo background = req(5, RouteKind::List);
  background.priority = Priority::Background;
  for (const auto& r : {background, other, create, poll, retry}) {
    s.submit(r, kStart);
  }
  std::vector<uint64_t> order;
  MonotonicTime now = kStart;
  while (order.size() < 5) {
    Dispatch d = s.dispatch(now);
    for (uint64_t id : ids(d)) order.push_back(id);
    if (d.wake_at) now = *d.wake_at;
  }
  EXPECT_EQ(order, (std::vector<uint64_t>{4, 3, 2, 1, 5}));
}

TEST_F(KeySchedulerTest, QueueFullRejects) {
  KeyScheduler s(limits(), queueConfig(2), kStart, random_);
  // Nothing waits: the first poll takes its token at once and holds no queue place.
  EXPECT_EQ(s.submit(req(1, RouteKind::Poll), kStart), SubmitResult::Queued);
  EXPECT_EQ(s.submit(req(1, RouteKind::Poll), kStart), SubmitResult::DuplicateId);
  EXPECT_EQ(s.submit(req(2, RouteKind::Poll), kStart), SubmitResult::Queued);
  EXPECT_EQ(s.submit(req(3, RouteKind::Poll), kStart), SubmitResult::Queued);
  EXPECT_EQ(s.submit(req(4, RouteKind::Poll), kStart), SubmitResult::QueueFull);
  EXPECT_EQ(s.counters().queue_full, 1u);
  EXPECT_GE(s.retryAfterSeconds(kStart), 1u);
}

TEST_F(KeySchedulerTest, WithNothingWaitingARequestSkipsTheQueueButIsReportedByDispatch) {
  KeyScheduler s(limits(2.0, 2), queueConfig(), kStart, random_);
  ASSERT_EQ(s.submit(req(1, RouteKind::Poll, "a"), kStart), SubmitResult::Queued);
  EXPECT_EQ(s.queueDepth(), 0u) << "admitted at once";
  // Only one goes that way before dispatch() reports it: the next ones queue and are ordered.
  ASSERT_EQ(s.submit(req(2, RouteKind::Poll, "a"), kStart), SubmitResult::Queued);
  ASSERT_EQ(s.submit(req(3, RouteKind::Poll, "b"), kStart), SubmitResult::Queued);
  EXPECT_EQ(s.queueDepth(), 2u);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 2u) << "a burst of 2: the first one's token was taken at submit";
  EXPECT_EQ(d.admitted[0].id, 1u);
  EXPECT_EQ(d.admitted[1].id, 2u);
  // A client that leaves before dispatch() gets its token back.
  KeyScheduler t(limits(1.0, 1), queueConfig(), kStart, random_);
  ASSERT_EQ(t.submit(req(7, RouteKind::Poll), kStart), SubmitResult::Queued);
  EXPECT_TRUE(t.cancel(7, kStart));
  ASSERT_EQ(t.submit(req(8, RouteKind::Poll), kStart), SubmitResult::Queued);
  d = t.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 1u);
  EXPECT_EQ(d.admitted[0].id, 8u);
  // Creates always go through the queue (their tier's gate decides).
  KeyScheduler c(limits(), queueConfig(), kStart, random_);
  ASSERT_EQ(c.submit(req(9, RouteKind::Create, "a", kHeavy), kStart), SubmitResult::Queued);
  EXPECT_EQ(c.queueDepth(), 1u);
}

TEST_F(KeySchedulerTest, DeadlineExpiresAndReturnsHeldSlot) {
  KeyScheduler s(limits(1.0, 1), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 1u);
  const SlotId slot = *d.admitted[0].slot;
  // Upstream 503: the shell retries; the retry keeps its slot and waits for a token.
  RequestInfo retry = req(1, RouteKind::Create, "a", kHeavy, kStart + milliseconds(500));
  retry.priority = Priority::Retry;
  retry.held_slot = slot;
  ASSERT_EQ(s.submit(retry, kStart), SubmitResult::Queued);
  d = s.dispatch(kStart);
  EXPECT_TRUE(d.admitted.empty());
  EXPECT_EQ(*d.wake_at, kStart + milliseconds(500));  // deadline before the next token
  d = s.dispatch(kStart + milliseconds(500));
  EXPECT_EQ(d.expired, std::vector<uint64_t>{1});
  EXPECT_EQ(s.gate(kHeavy).running(), 0u);  // slot returned
  EXPECT_EQ(s.counters().queue_timeout, 1u);
  EXPECT_FALSE(d.wake_at);  // nothing waits
}

TEST_F(KeySchedulerTest, RetryWithHeldSlotNeedsOnlyAToken) {
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  s.submit(req(2, RouteKind::Create, "a", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 2u);
  RequestInfo retry = req(1, RouteKind::Create, "a", kHeavy);
  retry.priority = Priority::Retry;
  retry.held_slot = d.admitted[0].slot;
  s.submit(retry, kStart);
  d = s.dispatch(kStart);  // heavy gate is full, yet the retry goes
  ASSERT_EQ(d.admitted.size(), 1u);
  EXPECT_EQ(d.admitted[0].slot, retry.held_slot);
  EXPECT_EQ(s.gate(kHeavy).running(), 2u);
}

TEST_F(KeySchedulerTest, CancelDropsAndReturnsReservations) {
  KeyScheduler s(limits(1.0, 1), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  RequestInfo retry = req(1, RouteKind::Create, "a", kHeavy);
  retry.priority = Priority::Retry;
  retry.held_slot = d.admitted[0].slot;
  s.submit(retry, kStart);
  s.submit(req(2, RouteKind::Poll), kStart);
  EXPECT_TRUE(s.cancel(1, kStart));
  EXPECT_FALSE(s.cancel(1, kStart));
  EXPECT_EQ(s.gate(kHeavy).running(), 0u);
  EXPECT_TRUE(s.cancel(2, kStart));
  d = s.dispatch(kStart + seconds(5));
  EXPECT_TRUE(d.admitted.empty());  // a request whose client has gone is never sent
  EXPECT_EQ(s.counters().cancelled, 2u);
  // unadmit: admitted but never sent → token and slot come back.
  s.submit(req(3, RouteKind::Create, "a", kLight), kStart + seconds(5));
  d = s.dispatch(kStart + seconds(5));
  ASSERT_EQ(d.admitted.size(), 1u);
  EXPECT_NEAR(s.budget().available(kStart + seconds(5)), 0.0, 1e-6);
  s.unadmit(d.admitted[0], kStart + seconds(5));
  EXPECT_NEAR(s.budget().available(kStart + seconds(5)), 1.0, 1e-6);
  EXPECT_EQ(s.gate(kLight).running(), 0u);
}

TEST_F(KeySchedulerTest, Rate429CoolsDownWholeKeyCapped) {
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Poll;  // unknown cause on a poll = rate
  o.retry_after = "561635";
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart);
  Snapshot snap = s.snapshot(kStart);
  EXPECT_EQ(snap.cooldown_remaining, seconds(60));
  EXPECT_DOUBLE_EQ(snap.effective_rate, 1.0);  // a lone 429 is a phase error: no cut
  EXPECT_EQ(snap.counters.rate_resyncs, 1u);
  EXPECT_EQ(snap.counters.upstream_429_rate, 1u);
  s.submit(req(1, RouteKind::Poll), kStart);
  s.submit(req(2, RouteKind::Poll), kStart);
  EXPECT_EQ(s.counters().throttled_cooldown, 2u);
  Dispatch d = s.dispatch(kStart + seconds(1));
  EXPECT_TRUE(d.admitted.empty());
  EXPECT_EQ(*d.wake_at, kStart + seconds(60));
  d = s.dispatch(kStart + seconds(60));
  EXPECT_EQ(ids(d), std::vector<uint64_t>{1});  // one token at the end, not a burst
  EXPECT_GE(s.retryAfterSeconds(kStart + seconds(10)), 50u);
}

TEST_F(KeySchedulerTest, Rate429WithoutRetryAfterBacksOff) {
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Create;
  o.cause = Limit429Cause::Rate;
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart);
  EXPECT_LE(s.snapshot(kStart).cooldown_remaining, seconds(1));
  EXPECT_EQ(s.gate(kLight).effectiveCeiling(kStart), 5u);
}

TEST_F(KeySchedulerTest, Concurrency429LowersTierCeilingAndRecovers) {
  LimitsConfig l = limits(10.0, 10);
  KeyScheduler s(l, queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 4; ++i) {
    s.submit(req(i, RouteKind::Create, "a", kLight), kStart);
  }
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 4u);
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Create;
  o.tier = kLight;
  o.slot = d.admitted[3].slot;  // unknown cause, other tasks running → concurrency
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart);
  s.releaseSlot(*d.admitted[3].slot, ReleaseReason::NotCreated, kStart);
  Snapshot snap = s.snapshot(kStart);
  EXPECT_EQ(snap.tiers[kLight].effective_ceiling, 3u);
  EXPECT_EQ(snap.cooldown_remaining, Duration::zero());
  EXPECT_EQ(snap.counters.upstream_429_concurrency, 1u);
  s.submit(req(5, RouteKind::Create, "a", kLight), kStart);
  d = s.dispatch(kStart);
  EXPECT_TRUE(d.admitted.empty());
  // wake_at includes the time-based recovery step.
  EXPECT_EQ(*d.wake_at, kStart + l.recovery_time);
  s.releaseSlot(1, ReleaseReason::TaskFinished, kStart + seconds(1));  // slot ids start at 1
  EXPECT_EQ(s.gate(kLight).effectiveCeiling(kStart + seconds(1)), 4u);
  d = s.dispatch(kStart + seconds(1));
  EXPECT_EQ(ids(d), std::vector<uint64_t>{5});
}

TEST_F(KeySchedulerTest, Unknown429OnLoneCreateIsRate) {
  KeyScheduler s(limits(), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Create;
  o.tier = kHeavy;
  o.slot = d.admitted[0].slot;
  o.retry_after = "3";
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart);
  EXPECT_EQ(s.counters().upstream_429_rate, 1u);
  EXPECT_EQ(s.snapshot(kStart).cooldown_remaining, seconds(3));
}

TEST_F(KeySchedulerTest, Classify429Codes) {
  EXPECT_EQ(classify429Code("RATE_LIMIT_EXCEEDED"), Limit429Cause::Rate);
  EXPECT_EQ(classify429Code("rate_limit_exceeded"), Limit429Cause::Rate);
  EXPECT_EQ(classify429Code("CONCURRENCY_LIMIT_EXCEEDED"), Limit429Cause::Concurrency);
  EXPECT_EQ(classify429Code("too_many_concurrent_tasks"), Limit429Cause::Concurrency);
  EXPECT_EQ(classify429Code("TOO_MANY_REQUESTS"), Limit429Cause::Unknown);
}

TEST_F(KeySchedulerTest, RateLimitRemainingZeroClosesTheWindowUntilReset) {
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  UpstreamOutcome o;
  o.status = 200;
  o.route = RouteKind::Poll;
  o.ratelimit.remaining = 0;
  o.ratelimit.reset = 1'800'000'004.0;  // epoch: 4 s from now
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart);
  EXPECT_EQ(s.snapshot(kStart).cooldown_remaining, Duration::zero());  // not a 429: no cool-down
  EXPECT_DOUBLE_EQ(s.snapshot(kStart).effective_rate, 1.0);
  EXPECT_EQ(s.snapshot(kStart).advertised_remaining, 0.0);
  s.submit(req(1, RouteKind::Poll), kStart);
  Dispatch d = s.dispatch(kStart);
  EXPECT_TRUE(d.admitted.empty());
  EXPECT_EQ(*d.wake_at, kStart + seconds(4));
  EXPECT_EQ(s.dispatch(kStart + seconds(4)).admitted.size(), 1u);
}

TEST_F(KeySchedulerTest, WindowAllowanceCountsWhatWasSentAfterTheAnswer) {
  // The bucket would allow 5 at once; the gateway's window allows what it says remains, net of
  // the requests admitted after the one it answers, until its reset.
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 3; ++i) {
    s.submit(req(i, RouteKind::Poll), kStart);
  }
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 3u);
  EXPECT_EQ(d.admitted[0].seq, 1u);
  EXPECT_EQ(d.admitted[2].seq, 3u);
  UpstreamOutcome o;
  o.status = 200;
  o.route = RouteKind::Poll;
  o.seq = d.admitted[0].seq;  // the first one's answer: 3 remained after it
  o.ratelimit.limit = 10;
  o.ratelimit.remaining = 3;
  o.ratelimit.reset = 10;  // seconds from now
  o.wall_now = kWall;
  const MonotonicTime t = kStart + milliseconds(50);
  s.onUpstreamOutcome(o, t);
  for (uint64_t i = 4; i <= 6; ++i) {
    s.submit(req(i, RouteKind::Poll), t);
  }
  d = s.dispatch(t);
  EXPECT_EQ(ids(d), std::vector<uint64_t>{4});  // 3 - 2 sent after = 1
  EXPECT_EQ(*d.wake_at, kStart + milliseconds(10'050));
  // At the reset one more goes (a sliding window or a bucket frees only one); how many the
  // reset freed, the gateway's next answer tells.
  d = s.dispatch(kStart + milliseconds(10'050));
  EXPECT_EQ(ids(d), std::vector<uint64_t>{5});
  EXPECT_EQ(*d.wake_at, kStart + milliseconds(11'050));  // else one per token interval
  o.seq = d.admitted[0].seq;
  o.ratelimit.remaining = 9;  // a fixed window: all of its limit again
  s.onUpstreamOutcome(o, kStart + milliseconds(10'060));
  d = s.dispatch(kStart + milliseconds(10'060));
  EXPECT_EQ(ids(d), std::vector<uint64_t>{6});
  EXPECT_EQ(s.snapshot(t).advertised_limit, 10.0);
}

TEST_F(KeySchedulerTest, AfterAResetWithoutNewsOnePerTokenIntervalThenTheBucketAlone) {
  KeyScheduler s(limits(2.0, 4), queueConfig(), kStart, random_);
  s.onUpstreamOutcome(countersAnswer(0, 1), kStart);
  for (uint64_t i = 1; i <= 8; ++i) {
    s.submit(req(i, RouteKind::Poll), kStart);
  }
  std::vector<MonotonicTime> sent;
  MonotonicTime now = kStart;
  for (int step = 0; step < 50 && sent.size() < 8; ++step) {
    Dispatch d = s.dispatch(now);
    sent.insert(sent.end(), d.admitted.size(), now);
    if (sent.size() == 8) {
      break;
    }
    ASSERT_TRUE(d.wake_at);
    now = *d.wake_at;
  }
  ASSERT_EQ(sent.size(), 8u);
  EXPECT_EQ(sent[0], kStart + seconds(1));
  EXPECT_EQ(sent[1], kStart + milliseconds(1500));  // one per token interval (0.5 s)
  EXPECT_EQ(sent[2], kStart + seconds(2));
  EXPECT_EQ(sent[4], kStart + seconds(3));
  // No counters for burst / rate + one interval (2.5 s) after the reset: the bucket alone, with
  // what it saved meanwhile.
  EXPECT_EQ(sent[5], kStart + milliseconds(3500));
  EXPECT_EQ(sent[6], kStart + milliseconds(3500));
  EXPECT_LE(sent[7], kStart + seconds(4) + milliseconds(1));
}

TEST_F(KeySchedulerTest, AnAnswerAfterTheResetReplacesTheAssumedStep) {
  // A bucket gateway: Remaining 0, its next whole token in 0.25 s. Long after that reset the key
  // sends one request on the assumed one-per-interval step; its answer says 2 more remain, and
  // they go at once, not when the assumed step ends.
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  const MonotonicTime t = kStart + milliseconds(800);
  Dispatch d = onTheAssumedStep(s, t);
  ASSERT_EQ(ids(d), std::vector<uint64_t>{1});
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, kStart + milliseconds(1000));  // the assumed step
  UpstreamOutcome o = countersAnswer(2, 0.19, 4);
  o.seq = d.admitted[0].seq;
  const MonotonicTime answered = t + milliseconds(10);
  s.onUpstreamOutcome(o, answered);
  d = s.dispatch(answered);
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{2, 3}));
}

TEST_F(KeySchedulerTest, RemainingKeepsTheBucketInPhase) {
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Poll), kStart);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 1u);
  EXPECT_NEAR(s.budget().available(kStart), 4.0, 1e-9);
  UpstreamOutcome o;
  o.status = 200;
  o.route = RouteKind::Poll;
  o.seq = d.admitted[0].seq;
  o.wall_now = kWall;
  // The gateway holds fewer than the bucket (another client of the key, or a drift): the bucket
  // drops back to what the gateway surely has.
  o.ratelimit.remaining = 1;
  s.onUpstreamOutcome(o, kStart);
  EXPECT_NEAR(s.budget().available(kStart), 1.0, 1e-9);
  // A Remaining that only floors a fraction away from the bucket changes nothing: in phase.
  KeyScheduler p(limits(1.0, 5), queueConfig(), kStart, random_);
  p.submit(req(1, RouteKind::Poll), kStart);
  d = p.dispatch(kStart);
  const MonotonicTime t = kStart + milliseconds(600);  // bucket at 4.6, gateway says 4
  o.seq = d.admitted[0].seq;
  o.ratelimit.remaining = 4;
  p.onUpstreamOutcome(o, t);
  EXPECT_NEAR(p.budget().available(t), 4.6, 1e-9);
}

TEST_F(KeySchedulerTest, ABucketThatDropsBackKeepsThePartOfTheNextTokenResetTells) {
  // The gateway holds 1 whole token and 0.8 of the next (its Reset: the next token in 0.05 s at
  // 4/s) while the key's bucket holds 3: it drops back to 1.8, so its next token but one comes
  // at the gateway's reset, not a whole token interval after this answer.
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  UpstreamOutcome o = countersAnswer(1, 0.05, 4);
  o.seq = sendPoll(s, 1, kStart);
  s.onUpstreamOutcome(o, kStart);
  EXPECT_NEAR(s.budget().available(kStart), 1.8, 1e-9);
  for (uint64_t i = 2; i <= 3; ++i) {
    s.submit(req(i, RouteKind::Poll), kStart);
  }
  const Dispatch d = s.dispatch(kStart);
  EXPECT_EQ(ids(d), std::vector<uint64_t>{2});
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, kStart + milliseconds(50));
  EXPECT_EQ(ids(s.dispatch(*d.wake_at)), std::vector<uint64_t>{3});
}

TEST_F(KeySchedulerTest, AWindowsResetIsReadFromTheAnsweredSend) {
  // A window gateway 100 ms away: the request sent at kStart was counted on arrival, the last
  // of the window, which resets 1 s after that. Its answer comes back at +100 ms. The next
  // request leaves at the reset of the send's clock (+1 s) and arrives as the window opens; read
  // from the answer's arrival it would wait until +1.1 s, a round trip late at every reset.
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  UpstreamOutcome o = countersAnswer(0, 1.0, 4);
  o.seq = sendPoll(s, 1, kStart);
  o.sent_at = kStart;
  const MonotonicTime answered = kStart + milliseconds(100);
  s.onUpstreamOutcome(o, answered);
  s.submit(req(2, RouteKind::Poll), answered);
  Dispatch d = s.dispatch(answered);
  EXPECT_TRUE(d.admitted.empty());
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, kStart + seconds(1));
  EXPECT_EQ(ids(s.dispatch(*d.wake_at)), std::vector<uint64_t>{2});
  // Without the send's time the answer's arrival is all there is: the reset a round trip later.
  KeyScheduler u(limits(4.0, 4), queueConfig(), kStart, random_);
  o.seq = sendPoll(u, 1, kStart);
  o.sent_at.reset();
  u.onUpstreamOutcome(o, answered);
  u.submit(req(2, RouteKind::Poll), answered);
  d = u.dispatch(answered);
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, answered + seconds(1));
}

// A Reset further off than a bucket's next token could be shows a gateway that counts in
// windows; what its window leaves unused is lost at the reset, so while it has one or more to
// spare, the key offers the moment by which a request still counts in it.
TEST_F(KeySchedulerTest, AWindowWithRequestsToSpareIsOfferedUntilItsReset) {
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  EXPECT_FALSE(s.spareWindowSendBy(kStart));
  // A bucket's answer: its next token 0.2 s off (less than 1.5 token intervals at 4/s).
  UpstreamOutcome o = countersAnswer(2, 0.2, 4);
  o.seq = sendPoll(s, 1, kStart);
  o.sent_at = kStart;
  s.onUpstreamOutcome(o, kStart);
  EXPECT_FALSE(s.spareWindowSendBy(kStart));
  // A window's: three left for 0.8 s.
  const MonotonicTime t = kStart + seconds(1);
  o = countersAnswer(3, 0.8, 4);
  o.seq = sendPoll(s, 2, t);
  o.sent_at = t;
  s.onUpstreamOutcome(o, t);
  EXPECT_EQ(s.spareWindowSendBy(t), t + milliseconds(800));
  EXPECT_EQ(s.spareWindowSendBy(t + milliseconds(799)), t + milliseconds(800));
  EXPECT_FALSE(s.spareWindowSendBy(t + milliseconds(800)));  // reset: the step past it is assumed
  // One left is still one to spare; none left, nothing.
  o = countersAnswer(1, 0.7, 4);
  o.seq = sendPoll(s, 3, t + milliseconds(100));
  o.sent_at = t + milliseconds(100);
  s.onUpstreamOutcome(o, t + milliseconds(100));
  EXPECT_EQ(s.spareWindowSendBy(t + milliseconds(100)), t + milliseconds(800));
  o = countersAnswer(0, 0.6, 4);
  o.seq = sendPoll(s, 4, t + milliseconds(200));
  o.sent_at = t + milliseconds(200);
  s.onUpstreamOutcome(o, t + milliseconds(200));
  EXPECT_FALSE(s.spareWindowSendBy(t + milliseconds(200)));
  // With a phase margin (10 ms: 0.04 token here), a reset less two margins: a send then reaches
  // the gateway before it with a margin's arrival jitter.
  LimitsConfig with_margin = limits(4.0, 4);
  with_margin.phase_margin = milliseconds(10);
  KeyScheduler m(with_margin, queueConfig(), kStart, random_);
  o = countersAnswer(3, 0.8, 4);
  o.seq = sendPoll(m, 1, kStart);
  o.sent_at = kStart;
  m.onUpstreamOutcome(o, kStart);
  EXPECT_EQ(m.spareWindowSendBy(kStart), kStart + milliseconds(780));
}

TEST_F(KeySchedulerTest, AnEpochResetIsReadFromTheAnswersArrival) {
  // Reset as a Unix time is a moment of the wall clock, read when the answer came: 1 s after
  // it, whenever the request left.
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  UpstreamOutcome o = countersAnswer(0, 1'800'000'001.0, 4);  // kWall + 1 s
  o.seq = sendPoll(s, 1, kStart);
  o.sent_at = kStart;
  const MonotonicTime answered = kStart + milliseconds(100);
  s.onUpstreamOutcome(o, answered);
  s.submit(req(2, RouteKind::Poll), answered);
  const Dispatch d = s.dispatch(answered);
  EXPECT_TRUE(d.admitted.empty());
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, answered + seconds(1));
}

TEST_F(KeySchedulerTest, AResetPassedOnTheWayBackFreedOneMore) {
  // Past a reset the key assumes one request per token interval. A request sent on that step
  // comes back 100 ms later: 1 token remained after it, the next came 50 ms after the send.
  // That reset has passed and freed one more: two go at once (the bucket holds 1 + 0.8 of the
  // next + 0.4 refilled since the send), not one on the assumed step; then one per interval.
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  const MonotonicTime t = kStart + milliseconds(800);
  Dispatch d = onTheAssumedStep(s, t);
  ASSERT_EQ(ids(d), std::vector<uint64_t>{1});
  UpstreamOutcome o = countersAnswer(1, 0.05, 4);
  o.seq = d.admitted[0].seq;
  o.sent_at = t;
  const MonotonicTime answered = t + milliseconds(100);
  s.onUpstreamOutcome(o, answered);
  EXPECT_NEAR(s.budget().available(answered), 2.2, 1e-9);
  for (uint64_t i = 4; i <= 6; ++i) {
    s.submit(req(i, RouteKind::Poll), answered);
  }
  d = s.dispatch(answered);
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{2, 3}));
  // A sliding window frees the rest one by one, as far as anything says: one on the step after
  // the reset's (+50 ms + 250 ms), then one per step even where the bucket holds two (+800 ms).
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, t + milliseconds(300));
  EXPECT_EQ(ids(s.dispatch(t + milliseconds(300))), std::vector<uint64_t>{4});
  const MonotonicTime later = t + milliseconds(800);
  EXPECT_NEAR(s.budget().available(later), 2.0, 1e-9);
  EXPECT_EQ(ids(s.dispatch(later)), std::vector<uint64_t>{5});
}

TEST_F(KeySchedulerTest, ABucketThatDropsBackKeepsTheRefillSinceTheAnsweredSend) {
  // A bucket gateway 100 ms away at 4/s: after the request sent at kStart it held 1 token and
  // nothing of the next (Reset 0.25 s). Another request left at +50 ms. At the answer (+200 ms)
  // the gateway has refilled 0.8 token since the first send and counted the second: 0.8 left,
  // where the key's bucket holds 2.8. It drops back to 0.8, not to 0 (the refill of the round
  // trip lost at every answer), so its next token comes at +250 ms, the gateway's reset.
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  UpstreamOutcome o = countersAnswer(1, 0.25, 4);
  o.seq = sendPoll(s, 1, kStart);
  o.sent_at = kStart;
  s.submit(req(2, RouteKind::Poll), kStart + milliseconds(50));
  ASSERT_EQ(ids(s.dispatch(kStart + milliseconds(50))), std::vector<uint64_t>{2});
  const MonotonicTime answered = kStart + milliseconds(200);
  s.onUpstreamOutcome(o, answered);
  EXPECT_NEAR(s.budget().available(answered), 0.8, 1e-9);
  s.submit(req(3, RouteKind::Poll), answered);
  const Dispatch d = s.dispatch(answered);
  EXPECT_TRUE(d.admitted.empty());
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(*d.wake_at, kStart + milliseconds(250));
  // The refill counted is at most what fills the gateway: 2 s after the send, with 3 sends since,
  // it holds at least its burst less those 3, and so does the key's bucket: in phase, it stays.
  KeyScheduler f(limits(4.0, 4), queueConfig(), kStart, random_);
  o.seq = sendPoll(f, 1, kStart);
  const MonotonicTime later = kStart + seconds(2);
  for (uint64_t i = 2; i <= 4; ++i) {
    f.submit(req(i, RouteKind::Poll), later);
  }
  ASSERT_EQ(f.dispatch(later).admitted.size(), 3u);  // the key's bucket: 4 - 3 = 1
  o.ratelimit.remaining = 0;
  f.onUpstreamOutcome(o, later);
  EXPECT_NEAR(f.budget().available(later), 1.0, 1e-9);  // min(0 + 8, 4) - 3: in phase
}

TEST_F(KeySchedulerTest, LoneRate429PausesAndKeepsTheRateRepeatsCut) {
  LimitsConfig l = limits(4.0, 4);
  l.repeat_window = seconds(10);
  KeyScheduler s(l, queueConfig(), kStart, random_);
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Poll;
  o.cause = Limit429Cause::Rate;
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart);
  // No Retry-After: a resync of one token interval; the bucket holds one token at its end.
  EXPECT_EQ(s.snapshot(kStart).cooldown_remaining, milliseconds(250));
  EXPECT_DOUBLE_EQ(s.snapshot(kStart).effective_rate, 4.0);
  EXPECT_NEAR(s.budget().available(kStart + milliseconds(250)), 1.0, 1e-9);
  // Another 6 s later: 429s repeat, the budget is smaller than configured.
  s.onUpstreamOutcome(o, kStart + seconds(6));
  EXPECT_DOUBLE_EQ(s.snapshot(kStart + seconds(6)).effective_rate, 2.0);
  EXPECT_EQ(s.counters().rate_resyncs, 1u);
  EXPECT_EQ(s.counters().rate_decreases, 1u);
}

TEST_F(KeySchedulerTest, LowerAdvertisedLimitIsAdoptedAndItsFirst429Cuts) {
  KeyScheduler s(limits(1.0, 5), queueConfig(), kStart, random_);
  UpstreamOutcome o;
  o.status = 200;
  o.route = RouteKind::Poll;
  o.wall_now = kWall;
  o.ratelimit.limit = 2;
  s.onUpstreamOutcome(o, kStart);
  EXPECT_DOUBLE_EQ(s.budget().burst(), 2.0);
  o.status = 429;
  o.cause = Limit429Cause::Rate;
  o.retry_after = "1";
  s.onUpstreamOutcome(o, kStart + seconds(1));
  EXPECT_DOUBLE_EQ(s.snapshot(kStart + seconds(1)).effective_rate, 0.5);
  EXPECT_EQ(s.counters().rate_decreases, 1u);
  // A higher limit later gives the configured burst back (never more).
  o.status = 200;
  o.retry_after.reset();
  o.ratelimit.limit = 50;
  s.onUpstreamOutcome(o, kStart + seconds(3));
  EXPECT_DOUBLE_EQ(s.budget().burst(), 5.0);
}

/// Drives a saturated key for @p seconds of simulated time and replays its sends into a gateway
/// bucket with the same rate and burst, each arriving after a seeded uniform [0, jitter) delay.
/// @return {sent, gateway refusals}.
/// Keeps @p s saturated with polls (200 queued, one more for each admitted) from @p from until
/// @p end, dispatching whenever it asks to be woken. @return the admission times.
std::vector<MonotonicTime> saturatedSends(KeyScheduler& s, uint64_t& next_id, MonotonicTime from,
                                          MonotonicTime end) {
  for (int i = 0; i < 200; ++i) {
    s.submit(req(next_id++, RouteKind::Poll), from);
  }
  std::vector<MonotonicTime> sent;
  MonotonicTime now = from;
  for (int step = 0; step < 100'000 && now < end; ++step) {
    Dispatch d = s.dispatch(now);
    for (size_t i = 0; i < d.admitted.size(); ++i) {
      sent.push_back(now);
      s.submit(req(next_id++, RouteKind::Poll), now);
    }
    if (!d.wake_at) {
      break;
    }
    now = *d.wake_at;
  }
  return sent;
}

std::pair<int, int> saturatedAgainstGateway(Duration margin, Duration jitter, int seconds_run) {
  LimitsConfig l = limits(4.0, 4);
  l.phase_margin = margin;
  SeededRandom random(7);
  KeyScheduler s(l, queueConfig(), kStart, random);
  uint64_t next_id = 1;
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> delay(0.0, toSeconds(jitter));
  std::vector<MonotonicTime> arrivals;
  for (MonotonicTime sent : saturatedSends(s, next_id, kStart, kStart + seconds(seconds_run))) {
    arrivals.push_back(sent + fromSeconds(delay(rng)));
  }
  std::sort(arrivals.begin(), arrivals.end());
  TokenBucket gateway(4.0, 4, kStart);
  int refused = 0;
  for (MonotonicTime a : arrivals) {
    refused += gateway.consume(1.0, a) ? 0 : 1;
  }
  return {static_cast<int>(arrivals.size()), refused};
}

TEST_F(KeySchedulerTest, PhaseMarginKeepsJitteredArrivalsBehindTheGatewaysTokens) {
  // Without a margin, 10 ms of arrival jitter lands requests just before the gateway's token.
  const auto [sent_bare, refused_bare] = saturatedAgainstGateway(Duration::zero(), milliseconds(10), 60);
  EXPECT_GT(refused_bare, 0);
  const auto [sent, refused] = saturatedAgainstGateway(milliseconds(10), milliseconds(10), 60);
  EXPECT_EQ(refused, 0);
  // Its cost: the margin once per saturated stretch, not per token.
  EXPECT_GE(sent, 4 * 60 + 4 - 1);
  EXPECT_LE(sent, 4 * 60 + 4);
  EXPECT_GE(sent_bare, sent);
}

/// The most of @p times (sorted) in any window (t - w, t].
size_t busiestWindow(const std::vector<MonotonicTime>& times, Duration w) {
  size_t most = 0;
  for (size_t i = 0, j = 0; i < times.size(); ++i) {
    while (times[j] + w <= times[i]) {
      ++j;
    }
    most = std::max(most, i - j + 1);
  }
  return most;
}

// A bucket of 4 at 4/s that spends at its rate still holds tokens, so within one second it may
// send up to 7; a gateway counting windows of a second lets 4 through. Without the gateway's
// counters only a 429 tells: from then the key keeps to 4 in any second, at the same long-run
// rate, until the gateway sends counters.
TEST_F(KeySchedulerTest, ARate429WithoutCountersMakesTheKeyKeepToAWindow) {
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  uint64_t id = 1;
  const std::vector<MonotonicTime> bucket = saturatedSends(s, id, kStart, kStart + seconds(3));
  EXPECT_GT(busiestWindow(bucket, seconds(1)), 4u);
  EXPECT_FALSE(s.snapshot(kStart).window_guard);

  const UpstreamOutcome o = rate429();
  const MonotonicTime at = kStart + seconds(10);
  s.onUpstreamOutcome(o, at);
  EXPECT_TRUE(s.snapshot(at).window_guard);
  EXPECT_EQ(s.counters().rate_guards, 1u);
  const std::vector<MonotonicTime> guarded = saturatedSends(s, id, at, at + seconds(6));
  EXPECT_EQ(busiestWindow(guarded, seconds(1)), 4u);
  EXPECT_GE(guarded.size(), 4u * 5);  // the rate is kept: 4 per second
  s.onUpstreamOutcome(o, at + seconds(7));  // a second one cuts the rate, as before
  EXPECT_EQ(s.counters().rate_guards, 1u);

  s.onUpstreamOutcome(countersAnswer(3), at + seconds(8));
  EXPECT_FALSE(s.snapshot(at + seconds(8)).window_guard);
  // A gateway that sends counters is followed by them: its 429 does not arm the guard.
  s.onUpstreamOutcome(o, at + seconds(9));
  EXPECT_FALSE(s.snapshot(at + seconds(9)).window_guard);
}

// With pace_without_counters: window, a gateway that has sent no counters is taken for the
// strictest shape with the configured rate and burst: 4 in any second at 4/s, from the first
// request on, so a window gateway never has to answer 429 to show what it is. Counters end it.
TEST_F(KeySchedulerTest, WithoutCountersTheKeyKeepsToAWindowFromTheStart) {
  LimitsConfig l = limits(4.0, 4);
  l.pace_without_counters = UncountedPacing::Window;
  KeyScheduler s(l, queueConfig(), kStart, random_);
  EXPECT_TRUE(s.snapshot(kStart).window_guard);
  uint64_t id = 1;
  const std::vector<MonotonicTime> sent = saturatedSends(s, id, kStart, kStart + seconds(6));
  EXPECT_EQ(busiestWindow(sent, seconds(1)), 4u);
  EXPECT_GE(sent.size(), 4u * 6);  // the long-run rate is the bucket's
  EXPECT_EQ(s.counters().rate_guards, 0u);  // no 429 was needed

  const MonotonicTime at = kStart + seconds(20);
  s.onUpstreamOutcome(countersAnswer(4), at);
  EXPECT_FALSE(s.snapshot(at).window_guard);
  const std::vector<MonotonicTime> counted = saturatedSends(s, id, at, at + seconds(3));
  EXPECT_GT(busiestWindow(counted, seconds(1)), 4u);  // the bucket's refill, as the gateway said
}

// The gateway's window holds the sends before its 429 too. A full bucket sends 4 at once and a
// fifth a token later, which a window of 4 per second refuses: after the pause the guard still
// counts the first 4 and the fifth, so nothing goes until they leave the window (a guard that
// started empty would send again within the same second, and get a second 429).
TEST_F(KeySchedulerTest, TheGuardCountsTheSendsBeforeThe429) {
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  uint64_t id = 1;
  const std::vector<MonotonicTime> sent =
      saturatedSends(s, id, kStart, kStart + milliseconds(300));
  ASSERT_EQ(sent.size(), 5u);
  const UpstreamOutcome o = rate429();
  const MonotonicTime at = sent.back() + milliseconds(1);
  s.onUpstreamOutcome(o, at);
  const std::vector<MonotonicTime> after = saturatedSends(s, id, at, at + seconds(3));
  ASSERT_FALSE(after.empty());
  EXPECT_GE(after.front(), kStart + seconds(1));
}

TEST_F(KeySchedulerTest, BucketPacingWithoutCountersIsChosenAndUndoneByAReload) {
  LimitsConfig l = limits(4.0, 4);
  KeyScheduler s(l, queueConfig(), kStart, random_);
  EXPECT_FALSE(s.snapshot(kStart).window_guard);
  l.pace_without_counters = UncountedPacing::Window;
  s.reconfigure(l, kStart);
  EXPECT_TRUE(s.snapshot(kStart).window_guard);
  l.pace_without_counters = UncountedPacing::Bucket;
  s.reconfigure(l, kStart);
  EXPECT_FALSE(s.snapshot(kStart).window_guard);

  // A window the gateway showed by a 429 stays guarded whatever the setting...
  const UpstreamOutcome o = rate429();
  s.onUpstreamOutcome(o, kStart + seconds(1));
  s.reconfigure(l, kStart + seconds(2));
  EXPECT_TRUE(s.snapshot(kStart + seconds(2)).window_guard);
  // ...until its counters arrive; then no setting brings the guard back.
  s.onUpstreamOutcome(countersAnswer(3), kStart + seconds(3));
  l.pace_without_counters = UncountedPacing::Window;
  s.reconfigure(l, kStart + seconds(4));
  EXPECT_FALSE(s.snapshot(kStart + seconds(4)).window_guard);
}

// A Limit alone says nothing of where the gateway's window stands: a 429 still arms the guard.
TEST_F(KeySchedulerTest, ALimitWithoutRemainingLeavesTheGuardToA429) {
  KeyScheduler s(limits(4.0, 4), queueConfig(), kStart, random_);
  UpstreamOutcome limit_only;
  limit_only.status = 200;
  limit_only.route = RouteKind::Poll;
  limit_only.wall_now = kWall;
  limit_only.ratelimit.limit = 4;
  s.onUpstreamOutcome(limit_only, kStart);
  const UpstreamOutcome o = rate429();
  s.onUpstreamOutcome(o, kStart + seconds(1));
  EXPECT_TRUE(s.snapshot(kStart + seconds(1)).window_guard);
  EXPECT_EQ(s.counters().rate_guards, 1u);
}

TEST_F(KeySchedulerTest, PhaseMarginNeverBlocksABurstOfOne) {
  LimitsConfig l = limits(1.0, 1);
  l.phase_margin = milliseconds(100);
  KeyScheduler s(l, queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Poll), kStart);
  s.submit(req(2, RouteKind::Poll), kStart);
  Dispatch d = s.dispatch(kStart);
  EXPECT_EQ(ids(d), std::vector<uint64_t>{1});
  ASSERT_TRUE(d.wake_at);
  EXPECT_EQ(ids(s.dispatch(*d.wake_at)), std::vector<uint64_t>{2});
}

TEST_F(KeySchedulerTest, ReconfigureKeepsTiersByName) {
  KeyScheduler s(limits(1.0, 10), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  s.submit(req(2, RouteKind::Create, "a", kLight), kStart);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(d.admitted.size(), 2u);
  s.submit(req(3, RouteKind::Create, "a", kLight), kStart);  // will wait: light ceiling → 1

  LimitsConfig l = limits(2.0, 4);
  TierConfig video{"video", {"veo-*"}, {}, 1, std::chrono::minutes(10), seconds(2)};
  l.tiers = {video, l.tiers[kLight]};  // heavy removed, video added, light kept (now index 1)
  l.tiers[1].max_running = 1;
  s.reconfigure(l, kStart);
  Snapshot snap = s.snapshot(kStart);
  ASSERT_EQ(snap.tiers.size(), 2u);
  EXPECT_EQ(snap.tiers[0].name, "video");
  EXPECT_EQ(snap.tiers[0].running, 0u);
  EXPECT_EQ(snap.tiers[1].name, "light");
  EXPECT_EQ(snap.tiers[1].running, 1u);  // kept
  EXPECT_EQ(snap.tiers[1].ceiling, 1u);
  EXPECT_EQ(snap.tiers[1].queued, 1u);
  EXPECT_DOUBLE_EQ(snap.configured_rate, 2.0);
  EXPECT_DOUBLE_EQ(snap.burst, 4.0);
  EXPECT_FALSE(s.releaseSlot(*d.admitted[0].slot, ReleaseReason::TaskFinished, kStart));
  EXPECT_TRUE(s.releaseSlot(*d.admitted[1].slot, ReleaseReason::TaskFinished, kStart));
  EXPECT_EQ(ids(s.dispatch(kStart)), std::vector<uint64_t>{3});
}

TEST_F(KeySchedulerTest, RestoreSlotOccupiesGate) {
  KeyScheduler s(limits(), queueConfig(), kStart, random_);
  SlotId a = s.restoreSlot(kHeavy, kStart + seconds(30));
  SlotId b = s.restoreSlot(kHeavy, kStart + seconds(60));
  EXPECT_NE(a, b);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  EXPECT_TRUE(d.admitted.empty());
  EXPECT_EQ(*d.wake_at, kStart + seconds(30));
  EXPECT_TRUE(s.extendLease(a, kStart + seconds(90)));
  d = s.dispatch(kStart);
  EXPECT_EQ(*d.wake_at, kStart + seconds(60));
  d = s.dispatch(kStart + seconds(60));
  EXPECT_EQ(ids(d), std::vector<uint64_t>{1});
}

TEST_F(KeySchedulerTest, EstimatedWaitGrowsWithQueue) {
  KeyScheduler s(limits(1.0, 1), queueConfig(), kStart, random_);
  s.dispatch(kStart);
  for (uint64_t i = 1; i <= 10; ++i) {
    s.submit(req(i, RouteKind::Poll), kStart);
  }
  // 1 token there, 11 ahead including the newcomer → ~10 s.
  EXPECT_NEAR(toSeconds(s.estimatedWait(kStart)), 10.0, 1e-6);
  EXPECT_EQ(s.retryAfterSeconds(kStart), 10u);
}

TEST_F(KeySchedulerTest, ClockGoingBackwardsAdmitsNothingExtra) {
  KeyScheduler s(limits(1.0, 2), queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 5; ++i) {
    s.submit(req(i, RouteKind::Poll), kStart + seconds(10));
  }
  EXPECT_EQ(s.dispatch(kStart + seconds(10)).admitted.size(), 2u);
  // An earlier timestamp (another callback's stale `now`) sees fewer tokens, not more.
  EXPECT_TRUE(s.dispatch(kStart + seconds(5)).admitted.empty());
  EXPECT_TRUE(s.dispatch(kStart).admitted.empty());
  EXPECT_EQ(s.dispatch(kStart + seconds(11)).admitted.size(), 1u);
  // A jump far ahead gives at most a burst.
  EXPECT_EQ(s.dispatch(kStart + std::chrono::hours(2)).admitted.size(), 2u);
}

// ---- End to end in simulated time ------------------------------------------------------------------

struct SimParams {
  double rate;
  double burst;
  uint64_t seed;
  int step_ms;
};

class KeySchedulerSim : public ::testing::TestWithParam<SimParams> {};

TEST_P(KeySchedulerSim, MixedWorkloadNeverExceedsLimitsAndLosesNothing) {
  const SimParams p = GetParam();
  SeededRandom random(p.seed);
  std::mt19937_64 rng(p.seed);
  LimitsConfig l = limits(p.rate, p.burst);
  l.tiers[kHeavy].lease = std::chrono::minutes(2);
  l.tiers[kLight].lease = std::chrono::minutes(1);
  QueueConfig qc = queueConfig(400);
  KeyScheduler s(l, qc, kStart, random);

  enum class State { Queued, Admitted, Expired, Cancelled, Rejected };
  std::map<uint64_t, State> state;
  std::map<uint64_t, RequestInfo> infos;
  struct Task {
    MonotonicTime ends;
    SlotId slot;
    size_t tier;
  };
  std::vector<Task> tasks;
  std::deque<MonotonicTime> admit_times;  // for the sliding-window bound
  uint64_t admitted = 0, next_id = 1;
  std::optional<MonotonicTime> wake;
  uint64_t dispatch_calls = 0;
  const char* clients[] = {"svc-a", "svc-b", "svc-c", "shared"};
  const MonotonicTime end_submit = kStart + std::chrono::minutes(10);
  const MonotonicTime end = end_submit + std::chrono::minutes(10);

  for (MonotonicTime now = kStart; now <= end; now += milliseconds(p.step_ms)) {
    bool event = false;
    // Arrivals: bursts from svc-a, a trickle from the others.
    if (now < end_submit && rng() % 1000 < static_cast<uint64_t>(p.rate * p.step_ms * 1.5)) {
      const int kind = static_cast<int>(rng() % 10);
      RequestInfo r;
      r.id = next_id++;
      r.client = clients[rng() % 4];
      r.deadline = now + seconds(static_cast<int64_t>(5 + rng() % 40));
      if (kind < 4) {
        r.route = RouteKind::Create;
        r.priority = Priority::Create;
        r.tier = rng() % 3 == 0 ? kHeavy : kLight;
      } else if (kind < 8) {
        r.route = RouteKind::Poll;
        r.priority = Priority::Poll;
      } else {
        r.route = RouteKind::List;
        r.priority = kind == 9 ? Priority::Background : Priority::Other;
      }
      const SubmitResult res = s.submit(r, now);
      state[r.id] = res == SubmitResult::Queued ? State::Queued : State::Rejected;
      infos[r.id] = r;
      event = true;
    }
    // Disconnects.
    if (rng() % 500 == 0 && !state.empty()) {
      auto it = state.lower_bound(rng() % next_id);
      if (it != state.end() && it->second == State::Queued) {
        ASSERT_TRUE(s.cancel(it->first, now));
        it->second = State::Cancelled;
        event = true;
      }
    }
    // Tasks ending (or creates failing right away).
    for (auto it = tasks.begin(); it != tasks.end();) {
      if (it->ends <= now) {
        s.releaseSlot(it->slot, ReleaseReason::TaskFinished, now);
        it = tasks.erase(it);
        event = true;
      } else {
        ++it;
      }
    }
    if (event || (wake && now >= *wake)) {
      Dispatch d = s.dispatch(now);
      ++dispatch_calls;
      if (d.wake_at) {
        ASSERT_GT(*d.wake_at, now);
      }
      wake = d.wake_at;
      for (uint64_t id : d.expired) {
        ASSERT_EQ(state[id], State::Queued);
        state[id] = State::Expired;
        ASSERT_GE(now, infos[id].deadline);
      }
      for (const Admitted& a : d.admitted) {
        ASSERT_EQ(state[a.id], State::Queued) << a.id;
        ASSERT_LT(now, infos[a.id].deadline + milliseconds(p.step_ms));
        state[a.id] = State::Admitted;
        ++admitted;
        admit_times.push_back(now);
        if (infos[a.id].route == RouteKind::Create) {
          ASSERT_TRUE(a.slot);
          if (rng() % 10 == 0) {
            s.releaseSlot(*a.slot, ReleaseReason::NotCreated, now);  // create failed
          } else {
            tasks.push_back(
                Task{now + seconds(static_cast<int64_t>(5 + rng() % 90)), *a.slot, a.tier});
          }
        } else {
          ASSERT_FALSE(a.slot);
        }
      }
    }
    // Bounds: total and over any 60 s window.
    const double t = toSeconds(now - kStart);
    ASSERT_LE(static_cast<double>(admitted), p.rate * t + p.burst + 1e-6);
    while (!admit_times.empty() && admit_times.front() <= now - seconds(60)) {
      admit_times.pop_front();
    }
    ASSERT_LE(static_cast<double>(admit_times.size()), p.rate * 60 + p.burst + 1e-6);
    for (size_t tier : {kHeavy, kLight}) {
      ASSERT_LE(s.gate(tier).running(), l.tiers[tier].max_running);
    }
  }
  // Nothing lost: every request ended one way or another.
  size_t counts[5] = {};
  for (const auto& [id, st] : state) {
    ++counts[static_cast<int>(st)];
  }
  EXPECT_EQ(counts[static_cast<int>(State::Queued)], 0u);
  EXPECT_EQ(s.queueDepth(), 0u);
  EXPECT_GT(counts[static_cast<int>(State::Admitted)], 100u);
  const SchedulerCounters& c = s.counters();
  EXPECT_EQ(c.admitted, counts[static_cast<int>(State::Admitted)]);
  EXPECT_EQ(c.queue_timeout, counts[static_cast<int>(State::Expired)]);
  EXPECT_EQ(c.cancelled, counts[static_cast<int>(State::Cancelled)]);
  EXPECT_EQ(c.queue_full, counts[static_cast<int>(State::Rejected)]);
  // No busy loop: dispatch runs about once per event or token, not per step.
  EXPECT_LT(dispatch_calls, next_id * 4 + 1000);
  // The budget was actually used (work-conserving): near rate * submit time while overloaded.
  EXPECT_GT(static_cast<double>(admitted), 0.8 * p.rate * 600);
}

INSTANTIATE_TEST_SUITE_P(Rows, KeySchedulerSim,
                         ::testing::Values(SimParams{1.0, 5, 1, 5}, SimParams{1.0, 1, 2, 10},
                                           SimParams{2.0, 10, 3, 2}, SimParams{0.5, 3, 4, 7},
                                           SimParams{5.0, 5, 5, 1}));

// 429s from upstream in the loop: the key never sends during a cool-down.
TEST(KeySchedulerCooldownSim, NothingAdmittedDuringCooldown) {
  SeededRandom random(9);
  std::mt19937_64 rng(9);
  KeyScheduler s(limits(2.0, 4), queueConfig(), kStart, random);
  uint64_t next_id = 1, admitted = 0;
  std::optional<MonotonicTime> wake;
  for (MonotonicTime now = kStart; now < kStart + std::chrono::minutes(12);
       now += milliseconds(3)) {
    bool event = false;
    if (rng() % 100 == 0) {
      s.submit(req(next_id++, RouteKind::Poll, "c", std::nullopt, now + seconds(30)), now);
      event = true;
    }
    if (event || (wake && now >= *wake)) {
      Dispatch d = s.dispatch(now);
      wake = d.wake_at;
      for (const Admitted& a : d.admitted) {
        (void)a;
        ASSERT_EQ(s.snapshot(now).cooldown_remaining, Duration::zero());
        ++admitted;
        UpstreamOutcome o;
        o.route = RouteKind::Poll;
        o.wall_now = kWall;
        o.status = rng() % 20 == 0 ? 429 : 200;
        if (o.status == 429 && rng() % 2) {
          o.retry_after = std::to_string(rng() % 10);
        }
        s.onUpstreamOutcome(o, now);
      }
    }
    ASSERT_LE(s.snapshot(now).cooldown_remaining, seconds(60));
  }
  EXPECT_GT(admitted, 100u);
  EXPECT_GT(s.counters().upstream_429_rate, 0u);
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST_F(KeySchedulerTest, AFreedSlotOfABottleneckTierGoesBeforeOtherRequests) {
  KeyScheduler s(limits(1.0, 2), queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  s.submit(req(2, RouteKind::Create, "a", kHeavy), kStart);
  s.submit(req(3, RouteKind::Create, "c", kHeavy), kStart);
  Dispatch d = s.dispatch(kStart);
  ASSERT_EQ(ids(d), (std::vector<uint64_t>{1, 3})) << "fair across a and c";
  const SlotId first = *d.admitted[0].slot;
  // The bucket is empty; other clients' polls and light creates queue up.
  for (uint64_t i = 10; i < 14; ++i) {
    s.submit(req(i, RouteKind::Poll, "b"), kStart);
  }
  s.submit(req(20, RouteKind::Create, "d", kLight), kStart);
  EXPECT_TRUE(s.dispatch(kStart).admitted.empty());
  // A heavy task ends: with the next token, a's second heavy create takes the slot, not b's
  // polls or d's light create that waited as long.
  s.releaseSlot(first, ReleaseReason::TaskFinished, kStart);
  d = s.dispatch(kStart + seconds(1));
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{2}));
  // Then the others share the tokens as before.
  d = s.dispatch(kStart + seconds(3));
  EXPECT_EQ(ids(d), (std::vector<uint64_t>{10, 20}));
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST_F(KeySchedulerTest, BackgroundWorkWaitsForSpareTokensOnlyUpToThreeQuartersOfTheDeadline) {
  // An early poll (background) behind a steady stream of another service's requests: admitted
  // once it has waited three quarters of the 40 s deadline; from its own background_until (its
  // task likely ends then) only when it may free a slot of a full gate that creates wait for.
  struct Case {
    std::optional<int> until;
    bool unblocks_full_gate;
    int admitted_at;
  };
  for (const Case c : {Case{std::nullopt, false, 30}, Case{3, false, 30}, Case{3, true, 3},
                       Case{35, true, 30}}) {
    SCOPED_TRACE(testing::Message() << "until " << c.until.value_or(-1) << " s, unblocks "
                                    << c.unblocks_full_gate);
    QueueConfig q = queueConfig();
    q.deadline = seconds(40);
    LimitsConfig l = limits(1.0, 1);
    l.tiers[kHeavy].max_running = 1;
    KeyScheduler s(l, q, kStart, random_);
    // The heavy gate: one running, one waiting.
    s.submit(req(50, RouteKind::Create, "h", kHeavy, kStart + seconds(40)), kStart);
    s.submit(req(51, RouteKind::Create, "h", kHeavy, kStart + seconds(40)), kStart);
    std::vector<uint64_t> order = ids(s.dispatch(kStart));
    RequestInfo early = req(1, RouteKind::Poll, "svc", std::nullopt, kStart + seconds(40));
    early.priority = Priority::Background;
    if (c.until) {
      early.background_until = kStart + seconds(*c.until);
    }
    if (c.unblocks_full_gate) {
      early.unblocks = kHeavy;
    }
    s.submit(early, kStart);
    uint64_t next = 100;
    std::optional<int> admitted_at;
    for (int sec = 1; sec <= 39 && !admitted_at; ++sec) {
      const MonotonicTime now = kStart + seconds(sec);
      s.submit(req(next++, RouteKind::List, "busy", std::nullopt, now + seconds(40)), now);
      for (uint64_t id : ids(s.dispatch(now))) {
        order.push_back(id);
      }
      if (std::find(order.begin(), order.end(), 1u) != order.end()) {
        admitted_at = sec;
      }
    }
    ASSERT_TRUE(admitted_at) << "the background poll was never admitted";
    EXPECT_EQ(*admitted_at, c.admitted_at);
    EXPECT_EQ(order.front(), 50u) << "the first heavy create took the first token";
  }
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// A scheduler at @p rate with a burst of 3 whose heavy gate (2, tasks of @p heavy_duration) is
// full with its first two creates (ids 1 and 2, in @p first), and four more heavy creates
// (200..203) waiting.
std::unique_ptr<KeyScheduler> heavyGateFull(double rate, Duration heavy_duration, Random& random,
                                            Dispatch* first) {
  LimitsConfig l = limits(rate, 3);
  l.tiers[kHeavy].max_running = 2;
  auto s = std::make_unique<KeyScheduler>(l, queueConfig(), kStart, random);
  s->setTierDuration(kHeavy, TierDuration{heavy_duration, true});
  s->submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  s->submit(req(2, RouteKind::Create, "a", kHeavy), kStart);
  *first = s->dispatch(kStart);
  EXPECT_EQ(ids(*first), (std::vector<uint64_t>{1, 2}));
  for (uint64_t i = 0; i < 4; ++i) {
    s->submit(req(200 + i, RouteKind::Create, "a", kHeavy), kStart);
  }
  return s;
}

// The heavy gate is full with creates waiting (the bottleneck) and the proxy plans to look at
// one of its tasks at +10 s. Another service's polls spend every token as it comes. From 2 s
// before the look (reserve 2 = min(2, burst 3 - 1), at 1 token/s) they take a token only while
// more than 2 are left: the look and the create it lets go then need no wait. A background poll
// of a heavy task does not dig into the reserve either.
TEST_F(KeySchedulerTest, TokensAreKeptForABottlenecksPlannedLook) {
  for (const bool planned : {false, true}) {
    SCOPED_TRACE(planned ? "look planned at +10 s" : "no look planned");
    Dispatch first;
    const auto sched = heavyGateFull(1.0, seconds(10), random_, &first);
    KeyScheduler& s = *sched;
    RequestInfo early = req(150, RouteKind::Poll, "e");
    early.priority = Priority::Background;
    early.unblocks = kHeavy;
    s.submit(early, kStart + seconds(7));
    for (uint64_t i = 0; i < 30; ++i) {
      s.submit(req(300 + i, RouteKind::Poll, "b"), kStart);
    }
    const MonotonicTime look = kStart + seconds(10);
    if (planned) {
      s.setLookPlan(kHeavy, LookPlan{{look}, 0});
    }
    std::vector<MonotonicTime> poll_times;
    for (MonotonicTime t = kStart; t < look; t += milliseconds(100)) {
      for (const Admitted& a : s.dispatch(t).admitted) {
        EXPECT_NE(a.id, 150u) << "background: no spare token";
        poll_times.push_back(t);
      }
    }
    // The look: the proxy's poll, then the slot it frees goes to the next heavy create.
    RequestInfo gate_poll = req(100, RouteKind::Poll, "hiapi-proxy-gate");
    gate_poll.unblocks = kHeavy;
    s.submit(gate_poll, look);
    Dispatch d = s.dispatch(look);
    ASSERT_FALSE(d.admitted.empty());
    std::vector<uint64_t> at_look = ids(d);
    s.releaseSlot(*first.admitted[0].slot, ReleaseReason::TaskFinished, look);
    for (uint64_t id : ids(s.dispatch(look))) {
      at_look.push_back(id);
    }
    if (planned) {
      // b's polls at 0 (the bucket's last token) and 1..8 s: the token of 8 s may go, since
      // two more come by the look; none from 9 s on.
      EXPECT_EQ(poll_times.size(), 9u);
      EXPECT_EQ(poll_times.back(), look - seconds(2));
      // Both at once (and, the gate no longer full, the reserve is over: one of b's polls).
      ASSERT_GE(at_look.size(), 2u);
      EXPECT_EQ(std::vector<uint64_t>(at_look.begin(), at_look.begin() + 2),
                (std::vector<uint64_t>{100, 200}));
    } else {
      EXPECT_EQ(poll_times.size(), 10u);  // one per token
      EXPECT_EQ(at_look, (std::vector<uint64_t>{100})) << "the create waits for the next token";
    }
  }
}

// A budget shared through a store holds only the tokens it asks the store for. While the heavy
// gate is the bottleneck and tokens are kept for its look at +10 s, another service's poll goes
// only with more than the reserve left, so the scheduler asks for the reserve on top of what
// waits: the poll goes at once, as it would from a local bucket holding those tokens (asked for
// one token only, it would wait until its deadline), and the look still finds its token.
TEST_F(KeySchedulerTest, ASharedBudgetIsAskedForTheReserveOnTopOfWhatWaits) {
  LimitsConfig l = limits(1.0, 3);
  l.tiers[kHeavy].max_running = 2;
  auto owned = std::make_unique<SharedBudget>(1.0, 3, seconds(1), kStart, 1);
  SharedBudget& budget = *owned;
  budget.onStoreUp(kStart);
  KeyScheduler s(l, queueConfig(), kStart, random_, std::move(owned));
  TokenBucket store(1.0, 3, kStart);  // the key's bucket in the store
  // One pump of the key, its store replies arriving at once: each reservation gets what the
  // store's bucket has, and the reply pumps again.
  const auto pump = [&](MonotonicTime t) {
    while (const std::optional<double> want = budget.reservationToSend(t, s.tokensWanted(t))) {
      double granted = 0;
      while (granted + 1 <= *want && store.consume(1, t)) {
        granted += 1;
      }
      budget.onReserved(granted, granted < *want ? milliseconds(100) : Duration::zero(), t);
    }
    return ids(s.dispatch(t));
  };
  s.setTierDuration(kHeavy, TierDuration{seconds(10), true});
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  s.submit(req(2, RouteKind::Create, "a", kHeavy), kStart);
  ASSERT_EQ(pump(kStart), (std::vector<uint64_t>{1, 2}));
  for (uint64_t i = 0; i < 4; ++i) {
    s.submit(req(200 + i, RouteKind::Create, "a", kHeavy), kStart);
  }
  const MonotonicTime look = kStart + seconds(10);
  s.setLookPlan(kHeavy, LookPlan{{look}, 0});
  EXPECT_EQ(s.tokensWanted(kStart), 0u) << "creates at a full gate need no token yet";

  const MonotonicTime poll_at = kStart + milliseconds(9200);
  std::optional<MonotonicTime> polled;
  for (MonotonicTime t = kStart; t < look; t += milliseconds(100)) {
    if (t == poll_at) {
      s.submit(req(300, RouteKind::Poll, "b"), t);
      EXPECT_GE(s.tokensWanted(t), 3u) << "the poll's token and the reserve of 1.2";
    }
    for (uint64_t id : pump(t)) {
      EXPECT_EQ(id, 300u);
      polled = t;
    }
  }
  ASSERT_TRUE(polled) << "the poll waited past the look";
  EXPECT_EQ(*polled, poll_at);

  RequestInfo gate_poll = req(100, RouteKind::Poll, "hiapi-proxy-gate");
  gate_poll.unblocks = kHeavy;
  s.submit(gate_poll, look);
  EXPECT_EQ(pump(look), (std::vector<uint64_t>{100})) << "the look, at once";
}

// A shared budget's held tokens are sums of grants: 0.7 + 0.2 + 0.1 is 0.9999999999999999.
// That is one token: the request goes. (Were it not, the budget, holding what it asked for,
// would never ask the store again, and the request would wait until its deadline.)
TEST_F(KeySchedulerTest, ATokenShortOnlyByRoundingIsAToken) {
  LimitsConfig l = limits(10.0, 5);
  l.phase_margin = milliseconds(10);
  auto owned = std::make_unique<SharedBudget>(10.0, 5, seconds(1), kStart, 1);
  SharedBudget& budget = *owned;
  budget.setPhaseMargin(l.phase_margin);
  budget.onStoreUp(kStart);
  KeyScheduler s(l, queueConfig(), kStart, random_, std::move(owned));
  s.submit(req(1, RouteKind::Poll), kStart);
  for (const double part : {0.7, 0.2, 0.1}) {
    ASSERT_TRUE(budget.reservationToSend(kStart, s.tokensWanted(kStart)));
    budget.onReserved(part, milliseconds(0), kStart);
  }
  ASSERT_LT(budget.held(), 1.0) << "the rounding this test is about";
  EXPECT_FALSE(budget.reservationToSend(kStart, s.tokensWanted(kStart))) << "it holds a token";
  EXPECT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{1}));
}

// The budget binds when what waits and runs needs more time on it than the bucket's burst and
// than any tier's waves; a tier not learned yet counts with its lower bound and the half of it
// by which the sparse pace may see its first end late. With nothing waiting, neither binds.
TEST_F(KeySchedulerTest, TheBudgetBindsWhenItsTimeOutlastsEveryTiersWork) {
  Dispatch first;
  const auto sched = heavyGateFull(1.0, seconds(5), random_, &first);
  KeyScheduler& s = *sched;
  // 4 heavy creates wait (2 waves of 5 s = 10 s), 2 run: 10 tokens, 10 s at 1 token/s.
  EXPECT_TRUE(s.tierBinds(kHeavy, kStart)) << "10 s of waves >= 10 s of tokens";
  EXPECT_FALSE(s.budgetBinds(kStart));
  EXPECT_EQ(s.learnPace(kHeavy, kStart), LearnPace::Eager);
  for (uint64_t i = 0; i < 10; ++i) {
    s.submit(req(400 + i, RouteKind::Create, "b", kLight), kStart);  // +20 tokens: 30 s
  }
  EXPECT_FALSE(s.tierBinds(kHeavy, kStart));
  EXPECT_TRUE(s.budgetBinds(kStart));
  EXPECT_EQ(s.learnPace(kHeavy, kStart), LearnPace::Sparse);
  // Not learned yet, its oldest task 8 s old: 16 s of waves, up to 4 s late: 20 s < 30 s.
  s.setTierDuration(kHeavy, TierDuration{seconds(8), false});
  EXPECT_TRUE(s.budgetBinds(kStart));
  // 12 s old: 24 s of waves, up to 6 s late: the budget's 30 s may not be the longest.
  s.setTierDuration(kHeavy, TierDuration{seconds(12), false});
  EXPECT_FALSE(s.budgetBinds(kStart));
  EXPECT_FALSE(s.tierBinds(kHeavy, kStart)) << "nor does the tier, by its lower bound";
  EXPECT_EQ(s.learnPace(kHeavy, kStart), LearnPace::Plain);

  KeyScheduler idle(limits(1.0, 3), queueConfig(), kStart, random_);
  idle.submit(req(1, RouteKind::Poll), kStart);
  EXPECT_FALSE(idle.budgetBinds(kStart)) << "one token needed: the bucket holds it";
}

// Two heavy tasks end a token interval apart: the two looks and the two creates they let go
// need four tokens within one refill, one more than the reserve of a single look. When the
// heavy tier bounds the makespan, the bucket is kept full for them (burst 3), and everything
// goes on time; the other service's polls still get every other token.
TEST_F(KeySchedulerTest, LooksCloseTogetherGetTheirTokensOnTimeWhenTheTierBinds) {
  Dispatch first;
  const auto sched = heavyGateFull(4.0, seconds(5), random_, &first);
  KeyScheduler& s = *sched;
  for (uint64_t i = 0; i < 30; ++i) {
    s.submit(req(300 + i, RouteKind::Poll, "b"), kStart);
  }
  const MonotonicTime look1 = kStart + seconds(5);
  const MonotonicTime look2 = look1 + milliseconds(250);
  s.setLookPlan(kHeavy, LookPlan{{look1, look2}, 0});
  size_t b_polls = 0;
  const auto run_until = [&](MonotonicTime end, MonotonicTime from) {
    for (MonotonicTime t = from; t < end; t += milliseconds(10)) {
      for (const Admitted& a : s.dispatch(t).admitted) {
        EXPECT_GE(a.id, 300u) << "only b's polls between the looks";
        ++b_polls;
      }
    }
  };
  const auto look_and_create = [&](MonotonicTime at, uint64_t poll_id, SlotId slot,
                                    LookPlan after) {
    SCOPED_TRACE(poll_id == 100 ? "first look" : "second look");
    RequestInfo gate_poll = req(poll_id, RouteKind::Poll, "hiapi-proxy-gate");
    gate_poll.unblocks = kHeavy;
    s.submit(gate_poll, at);
    EXPECT_EQ(ids(s.dispatch(at)), (std::vector<uint64_t>{poll_id})) << "the look, at once";
    s.releaseSlot(slot, ReleaseReason::TaskFinished, at);  // it found the task ended
    s.setLookPlan(kHeavy, std::move(after));
    const Dispatch d = s.dispatch(at);
    ASSERT_FALSE(d.admitted.empty()) << "the create it lets go, at once";
    EXPECT_EQ(d.admitted[0].tier, kHeavy);
  };
  run_until(look1, kStart + milliseconds(10));
  look_and_create(look1, 100, *first.admitted[0].slot, LookPlan{{look2}, 0});
  run_until(look2, look1 + milliseconds(10));
  look_and_create(look2, 101, *first.admitted[1].slot, LookPlan{});
  // Tokens by look2: 1 left at the start + 4/s for 5.25 s = 22; the looks and creates took 4.
  EXPECT_EQ(b_polls, 18u);
}

// A burst below 2 keeps no reserve (it would be the whole bucket); a look long past holds none.
TEST_F(KeySchedulerTest, NoReserveForABurstOfOneOrAStaleLook) {
  for (const bool stale : {false, true}) {
    LimitsConfig l = limits(1.0, stale ? 3 : 1);
    l.tiers[kHeavy].max_running = 1;
    KeyScheduler s(l, queueConfig(), kStart, random_);
    s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
    s.submit(req(2, RouteKind::Create, "a", kHeavy), kStart);
    ASSERT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{1}));
    s.setLookPlan(kHeavy, LookPlan{{stale ? kStart - seconds(30) : kStart + seconds(1)}, 0});
    s.submit(req(10, RouteKind::Poll, "b"), kStart);
    EXPECT_EQ(ids(s.dispatch(kStart + seconds(1))), (std::vector<uint64_t>{10}));
  }
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// A background poll promoted after three quarters of its time waits with the creates, in
// arrival order within its client: a flood's older creates (due first) still go before it.
TEST_F(KeySchedulerTest, APromotedBackgroundPollWaitsBehindItsClientsOlderCreates) {
  KeyScheduler s(limits(0.05, 1), queueConfig(), kStart, random_);  // a token every 20 s
  for (uint64_t i = 1; i <= 3; ++i) {
    s.submit(req(i, RouteKind::Create, "flood", kLight), kStart);
  }
  RequestInfo poll = req(10, RouteKind::Poll, "flood", std::nullopt, kStart + seconds(50));
  poll.priority = Priority::Background;
  s.submit(poll, kStart + seconds(1));
  EXPECT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{1}));
  EXPECT_EQ(ids(s.dispatch(kStart + seconds(20))), (std::vector<uint64_t>{2}));
  EXPECT_EQ(ids(s.dispatch(kStart + seconds(40))), (std::vector<uint64_t>{3}))
      << "the poll, promoted at about 35 s, comes after the older create";
}

// Creates that arrive a millisecond apart (one service's light ones first) are ordered by the
// scheduler, not by the race: the heavy tier is the bottleneck, so its creates take the first
// tokens. Without gathering, the light creates that came first would spend the burst.
TEST_F(KeySchedulerTest, CreatesArrivingTogetherAreGatheredAndOrderedByTheScheduler) {
  for (const bool gather : {true, false}) {
    SCOPED_TRACE(gather ? "gathering" : "create_gather: 0");
    LimitsConfig l = limits(4.0, 3);
    l.tiers[kHeavy].max_running = 2;
    l.tiers[kLight].max_running = 5;
    QueueConfig q = queueConfig();
    q.create_gather = gather ? milliseconds(10) : Duration::zero();
    KeyScheduler s(l, q, kStart, random_);
    for (uint64_t i = 1; i <= 3; ++i) {
      s.submit(req(i, RouteKind::Create, "svc-0", kLight), kStart);
    }
    Dispatch first = s.dispatch(kStart);
    const MonotonicTime t1 = kStart + milliseconds(1);
    for (uint64_t i = 0; i < 6; ++i) {
      s.submit(req(10 + i, RouteKind::Create, "svc-2", kHeavy), t1);
    }
    Dispatch second = s.dispatch(t1);
    if (!gather) {
      EXPECT_EQ(ids(first), (std::vector<uint64_t>{1, 2, 3}));
      EXPECT_TRUE(second.admitted.empty());
      continue;
    }
    EXPECT_TRUE(first.admitted.empty());
    ASSERT_TRUE(first.wake_at);
    EXPECT_EQ(*first.wake_at, kStart + milliseconds(2)) << "a fifth of create_gather of quiet";
    EXPECT_TRUE(second.admitted.empty());
    ASSERT_TRUE(second.wake_at);
    EXPECT_EQ(*second.wake_at, t1 + milliseconds(2));
    // A poll is not gathered.
    s.submit(req(50, RouteKind::Poll, "svc-1"), t1);
    EXPECT_EQ(ids(s.dispatch(t1)), (std::vector<uint64_t>{50}));
    const Dispatch d = s.dispatch(*second.wake_at);
    EXPECT_EQ(ids(d), (std::vector<uint64_t>{10, 11})) << "heavy first; the poll took a token";
    EXPECT_EQ(s.gate(kHeavy).running(), 2u);
  }
}

TEST_F(KeySchedulerTest, AtAColdStartAVideoTiersCreatesGoBeforeMoreWavesOfImages) {
  // Nothing learned yet: 15 image creates (3 waves of 5) and 4 video creates (2 waves of 2).
  // By waves alone the images would go first; counted at their class priors (8 s, 60 s) the
  // videos' chain is the long one, and its creates take the first tokens.
  LimitsConfig l = limits(4.0, 2);
  l.tiers[kHeavy].max_running = 2;
  l.tiers[kHeavy].models = {"seedance-*"};
  l.tiers[kLight].max_running = 5;
  KeyScheduler s(l, queueConfig(), kStart, random_);
  for (uint64_t i = 1; i <= 15; ++i) {
    s.submit(req(i, RouteKind::Create, "svc-0", kLight), kStart);
  }
  for (uint64_t i = 0; i < 4; ++i) {
    s.submit(req(100 + i, RouteKind::Create, "svc-1", kHeavy), kStart);
  }
  EXPECT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{100, 101}));
  EXPECT_EQ(s.gate(kHeavy).running(), 2u);
  // What a tier was seen taking outweighs a prior: images learned at 100 s are the long chain.
  KeyScheduler learned(l, queueConfig(), kStart, random_);
  learned.setTierDuration(kLight, TierDuration{seconds(100), true});
  for (uint64_t i = 1; i <= 15; ++i) {
    learned.submit(req(i, RouteKind::Create, "svc-0", kLight), kStart);
  }
  for (uint64_t i = 0; i < 4; ++i) {
    learned.submit(req(100 + i, RouteKind::Create, "svc-1", kHeavy), kStart);
  }
  EXPECT_EQ(ids(learned.dispatch(kStart)), (std::vector<uint64_t>{1, 2}));
}

// Creates that keep arriving are gathered for at most create_gather after the first.
TEST_F(KeySchedulerTest, GatheringEndsAtCreateGatherWhileCreatesKeepArriving) {
  QueueConfig q = queueConfig();
  q.create_gather = milliseconds(10);
  LimitsConfig l = limits(100.0, 100);
  l.tiers[kLight].max_running = 100;
  KeyScheduler s(l, q, kStart, random_);
  std::vector<uint64_t> admitted_at_ms;
  for (uint64_t ms = 0; ms <= 21; ++ms) {
    const MonotonicTime now = kStart + milliseconds(ms);
    s.submit(req(100 + ms, RouteKind::Create, "a", kLight), now);
    for (const Admitted& a : s.dispatch(now).admitted) {
      (void)a;
      admitted_at_ms.push_back(ms);
    }
  }
  ASSERT_FALSE(admitted_at_ms.empty());
  EXPECT_EQ(admitted_at_ms.front(), 10u) << "the first gather ends 10 ms after its first create";
  EXPECT_EQ(std::count(admitted_at_ms.begin(), admitted_at_ms.end(), 10u), 11)
      << "everything gathered so far goes together";
  EXPECT_EQ(std::count(admitted_at_ms.begin(), admitted_at_ms.end(), 21u), 11)
      << "the next gather began at 11 ms";
  EXPECT_EQ(admitted_at_ms.size(), 22u);
}

// A client's poll of a task that likely still runs waits for a spare token. Queued while its
// tier's gate still had a slot free, it must go with the tier's creates from its task's likely
// end once the gate is full with creates waiting (judged at each dispatch, not at submit): its
// answer frees the slot they wait for, and nobody else looks while it is the task's fetch.
// With a shared store, a create another instance holds waiting for the key's heavy slots makes
// this instance's full heavy gate a bottleneck too: the poll that may free one of its slots goes
// ahead of an older ordinary poll, as it would for a create waiting here.
TEST_F(KeySchedulerTest, AnotherInstancesWaitingCreateMakesAFullGateABottleneck) {
  const auto order = [&](size_t remote_waiting) {
    LimitsConfig l = limits(1.0, 2);
    l.tiers[kHeavy].max_running = 2;
    KeyScheduler s(l, queueConfig(), kStart, random_);
    s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
    s.submit(req(2, RouteKind::Create, "a", kHeavy), kStart);
    EXPECT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{1, 2}));
    s.setRemoteWaiting(kHeavy, remote_waiting);
    s.submit(req(300, RouteKind::Poll, "c"), kStart + milliseconds(1));  // some other task
    RequestInfo unblock = req(301, RouteKind::Poll, "d");
    unblock.unblocks = kHeavy;
    s.submit(unblock, kStart + milliseconds(2));
    std::vector<uint64_t> out;
    for (int sec = 1; sec <= 2; ++sec) {
      for (uint64_t id : ids(s.dispatch(kStart + seconds(sec)))) {
        out.push_back(id);
      }
    }
    EXPECT_EQ(s.blockedTiers(kStart + seconds(2)),
              remote_waiting == 0 ? std::vector<size_t>{} : std::vector<size_t>{kHeavy});
    return out;
  };
  EXPECT_EQ(order(0), (std::vector<uint64_t>{300, 301})) << "nobody waits for a heavy slot";
  EXPECT_EQ(order(1), (std::vector<uint64_t>{301, 300}));
}

// Background work takes a spare token only while no other instance's create waits for one: a
// create waiting elsewhere for a tier with a free slot waits for the key's one budget, and in a
// single instance it would go first. One waiting for a full gate does not wait for tokens.
TEST_F(KeySchedulerTest, BackgroundWorkLeavesTokensToCreatesWaitingAtOtherInstances) {
  // The poll's deadline puts its bound (three quarters of its time) at 3.01 s.
  const MonotonicTime bound = kStart + milliseconds(3010);
  const auto admitted_at = [&](bool remote, bool gate_full,
                               Duration heavy_takes) -> std::optional<double> {
    LimitsConfig l = limits(1.0, 2);
    l.tiers[kHeavy].max_running = 1;
    KeyScheduler s(l, queueConfig(), kStart, random_);
    s.setTierDuration(kHeavy, TierDuration{heavy_takes, true});
    if (gate_full) {
      s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
      EXPECT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{1}));
    }
    s.setRemoteWaiting(kHeavy, remote ? 1 : 0);
    RequestInfo poll = req(50, RouteKind::Poll, "b");
    poll.priority = Priority::Background;
    poll.deadline = kStart + milliseconds(4010);
    s.submit(poll, kStart + milliseconds(10));
    for (MonotonicTime t = kStart + milliseconds(10); t < kStart + seconds(5);
         t += milliseconds(100)) {
      const Dispatch d = s.dispatch(t);
      for (const Admitted& a : d.admitted) {
        if (a.id == 50) {
          return toSeconds(t - kStart);
        }
      }
      // Held back with tokens in the bucket, it is woken for at its bound.
      EXPECT_TRUE(d.wake_at && *d.wake_at <= bound) << toSeconds(t - kStart);
    }
    return std::nullopt;
  };
  EXPECT_EQ(admitted_at(false, false, seconds(1)), 0.01) << "nobody else waits";
  EXPECT_EQ(admitted_at(true, true, seconds(1)), 0.01)
      << "they wait for the full gate, not for tokens";
  EXPECT_EQ(admitted_at(true, false, seconds(1)), toSeconds(bound - kStart))
      << "they wait for tokens: it goes only at its bound";
  EXPECT_EQ(admitted_at(true, false, seconds(60)), 0.01)
      << "the tier binds, not the budget: tokens come soon for every create";
}

TEST_F(KeySchedulerTest, ABackgroundPollGoesAtItsTasksLikelyEndOnceItsGateHasFilled) {
  LimitsConfig l = limits(1.0, 1);
  l.tiers[kHeavy].max_running = 2;
  KeyScheduler s(l, queueConfig(), kStart, random_);
  s.submit(req(1, RouteKind::Create, "a", kHeavy), kStart);
  ASSERT_EQ(ids(s.dispatch(kStart)), (std::vector<uint64_t>{1}));
  const MonotonicTime likely_end = kStart + seconds(5);
  RequestInfo poll = req(50, RouteKind::Poll, "a");
  poll.priority = Priority::Background;
  poll.unblocks = kHeavy;
  poll.background_until = likely_end;
  s.submit(poll, kStart + milliseconds(500));  // one heavy slot of two is free
  for (uint64_t i = 0; i < 40; ++i) {
    s.submit(req(300 + i, RouteKind::Poll, "b"), kStart + milliseconds(500));  // no spare token
  }
  for (uint64_t i = 2; i <= 4; ++i) {
    s.submit(req(i, RouteKind::Create, "c", kHeavy), kStart + milliseconds(600));
  }
  std::optional<MonotonicTime> poll_at;
  for (MonotonicTime t = kStart + milliseconds(600); t < kStart + seconds(8);
       t += milliseconds(100)) {
    for (const Admitted& a : s.dispatch(t).admitted) {
      if (a.id == 50) {
        poll_at = t;
      }
    }
  }
  EXPECT_EQ(s.gate(kHeavy).running(), 2u) << "create 2 took the free slot";
  ASSERT_TRUE(poll_at) << "still waiting for a spare token";
  EXPECT_GE(*poll_at, likely_end);
  EXPECT_LE(*poll_at, likely_end + seconds(1)) << "the first token from its likely end";
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// Shadow mode: every request goes at once; the budget and the gates count what runs, and what
// enforcing would have done is counted by reason.
TEST_F(KeySchedulerTest, ShadowSendsAtOnceAndCountsWhatWouldHaveWaited) {
  LimitsConfig l = limits(1.0, 2);
  l.tiers[kHeavy].max_running = 1;
  KeyScheduler s(l, queueConfig(), kStart, random_);
  // Two light polls spend the burst; the third finds no token.
  EXPECT_EQ(s.admitShadow(req(1, RouteKind::Poll), kStart).would_wait, ShadowReason::None);
  EXPECT_EQ(s.admitShadow(req(2, RouteKind::Poll), kStart).would_wait, ShadowReason::None);
  EXPECT_EQ(s.admitShadow(req(3, RouteKind::Poll), kStart).would_wait, ShadowReason::Rate);
  // A second later a token is back: a heavy create takes it and the only heavy slot.
  const ShadowAdmission first = s.admitShadow(req(4, RouteKind::Create, "a", kHeavy), kStart + seconds(1));
  EXPECT_EQ(first.would_wait, ShadowReason::None);
  ASSERT_TRUE(first.slot);
  // The next heavy create would have waited for the gate: it still gets a slot (the task runs
  // upstream), above the ceiling, so that the gate counts what runs.
  const ShadowAdmission second = s.admitShadow(req(5, RouteKind::Create, "a", kHeavy), kStart + seconds(3));
  EXPECT_EQ(second.would_wait, ShadowReason::Concurrency);
  ASSERT_TRUE(second.slot);
  EXPECT_EQ(s.gate(kHeavy).running(), 2u);
  EXPECT_NE(*first.slot, *second.slot);
  EXPECT_GT(second.seq, first.seq);
  // A retry of a create holds its slot already: no second one.
  RequestInfo retry = req(5, RouteKind::Create, "a", kHeavy);
  retry.held_slot = second.slot;
  EXPECT_FALSE(s.admitShadow(retry, kStart + seconds(6)).slot);
  EXPECT_EQ(s.gate(kHeavy).running(), 2u);
  // Slots taken in shadow are released as any other.
  EXPECT_TRUE(s.releaseSlot(*first.slot, ReleaseReason::TaskFinished, kStart + seconds(7)));
  EXPECT_EQ(s.gate(kHeavy).running(), 1u);
  // An upstream 429 with Retry-After cools the key down: what comes next would have waited.
  UpstreamOutcome o;
  o.status = 429;
  o.route = RouteKind::Poll;
  o.retry_after = "10";
  o.wall_now = kWall;
  s.onUpstreamOutcome(o, kStart + seconds(8));
  EXPECT_EQ(s.admitShadow(req(6, RouteKind::Poll), kStart + seconds(9)).would_wait,
            ShadowReason::Cooldown);
  const SchedulerCounters& c = s.counters();
  EXPECT_EQ(c.shadow_rate, 1u);
  EXPECT_EQ(c.shadow_concurrency, 1u);
  EXPECT_EQ(c.shadow_cooldown, 1u);
  EXPECT_EQ(c.throttled_rate + c.throttled_concurrency + c.throttled_cooldown, 0u)
      << "nothing was held back for real";
  EXPECT_EQ(s.queueDepth(), 0u);
  EXPECT_EQ(shadowReasonName(ShadowReason::Concurrency), "concurrency");
}

}  // namespace
}  // namespace hiapi::core
