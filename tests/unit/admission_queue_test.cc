#include "hiapi/core/admission_queue.h"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <vector>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);

QueueEntry entry(uint64_t id, std::string client, Priority p = Priority::Create,
                 std::optional<size_t> lane = std::nullopt,
                 MonotonicTime deadline = kStart + seconds(45)) {
  QueueEntry e;
  e.id = id;
  e.client = std::move(client);
  e.priority = p;
  e.lane = lane;
  e.deadline = deadline;
  e.enqueued = kStart;
  return e;
}

const AdmissionQueue::LaneOpen kAllOpen = [](std::optional<size_t>) { return true; };

TEST(AdmissionQueue, BoundedSizeAndPerClient) {
  AdmissionQueue q(3, 2);
  EXPECT_EQ(q.push(entry(1, "a")), EnqueueResult::Queued);
  EXPECT_EQ(q.push(entry(2, "a")), EnqueueResult::Queued);
  EXPECT_EQ(q.push(entry(3, "a")), EnqueueResult::ClientFull);
  EXPECT_EQ(q.push(entry(2, "b")), EnqueueResult::DuplicateId);
  EXPECT_EQ(q.push(entry(4, "b")), EnqueueResult::Queued);
  EXPECT_EQ(q.push(entry(5, "c")), EnqueueResult::QueueFull);
  EXPECT_EQ(q.size(), 3u);
}

TEST(AdmissionQueue, StrictPriority) {
  AdmissionQueue q(100);
  q.push(entry(1, "a", Priority::Background));
  q.push(entry(2, "a", Priority::Other));
  q.push(entry(3, "a", Priority::Create));
  q.push(entry(4, "a", Priority::Poll));
  q.push(entry(5, "a", Priority::Retry));
  std::vector<uint64_t> order;
  while (auto e = q.popNext(kAllOpen)) {
    order.push_back(e->id);
  }
  EXPECT_EQ(order, (std::vector<uint64_t>{5, 4, 3, 2, 1}));
}

TEST(AdmissionQueue, FifoWithinAClient) {
  AdmissionQueue q(1000);
  for (uint64_t i = 1; i <= 50; ++i) {
    q.push(entry(i, "a"));
  }
  for (uint64_t i = 1; i <= 50; ++i) {
    EXPECT_EQ(q.popNext(kAllOpen)->id, i);
  }
  EXPECT_TRUE(q.empty());
}

TEST(AdmissionQueue, NewcomerGoesNextDespiteABigBatch) {
  AdmissionQueue q(10000);
  for (uint64_t i = 1; i <= 1000; ++i) {
    q.push(entry(i, "A"));
  }
  // A few of A's are served, then B arrives with one request.
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(q.popNext(kAllOpen)->client, "A");
  }
  q.push(entry(5000, "B"));
  EXPECT_EQ(q.popNext(kAllOpen)->id, 5000u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 11u);
}

TEST(AdmissionQueue, RoundRobinAcrossActiveClients) {
  AdmissionQueue q(1000);
  for (uint64_t i = 0; i < 30; ++i) {
    q.push(entry(100 + i, "A"));
  }
  for (uint64_t i = 0; i < 10; ++i) {
    q.push(entry(200 + i, "B"));
    q.push(entry(300 + i, "C"));
  }
  std::map<std::string, int> served;
  for (int i = 0; i < 30; ++i) {
    ++served[q.popNext(kAllOpen)->client];
  }
  EXPECT_EQ(served["A"], 10);
  EXPECT_EQ(served["B"], 10);
  EXPECT_EQ(served["C"], 10);
}

TEST(AdmissionQueue, ReactivatingClientCannotStarveOthers) {
  AdmissionQueue q(1000);
  for (uint64_t i = 0; i < 100; ++i) {
    q.push(entry(i + 1, "A"));
  }
  // C keeps exactly one request queued, re-submitting right after each of its own admissions.
  uint64_t next_c = 10000;
  q.push(entry(next_c++, "C"));
  int a = 0, c = 0;
  for (int i = 0; i < 40; ++i) {
    auto e = q.popNext(kAllOpen);
    if (e->client == "C") {
      ++c;
      q.push(entry(next_c++, "C"));
    } else {
      ++a;
    }
  }
  EXPECT_GE(a, 19);
  EXPECT_GE(c, 19);
}

TEST(AdmissionQueue, ClosedLaneDoesNotBlockOthers) {
  AdmissionQueue q(100);
  q.push(entry(1, "A", Priority::Create, 0));  // heavy
  q.push(entry(2, "A", Priority::Create, 0));  // heavy
  q.push(entry(3, "A", Priority::Create, 1));  // light, same client, later
  q.push(entry(4, "B", Priority::Poll));
  auto heavy_closed = [](std::optional<size_t> lane) { return lane != std::optional<size_t>(0); };
  // A became active first; its open (light) entry goes, then B's poll: the closed heavy lane
  // holds back neither.
  EXPECT_EQ(q.popNext(heavy_closed)->id, 3u);
  EXPECT_EQ(q.popNext(heavy_closed)->id, 4u);
  EXPECT_FALSE(q.popNext(heavy_closed));
  EXPECT_TRUE(q.hasLane(0));
  EXPECT_FALSE(q.hasEligible(heavy_closed));
  EXPECT_TRUE(q.hasEligible(kAllOpen));
  EXPECT_EQ(q.popNext(kAllOpen)->id, 1u);  // FIFO within the lane
  EXPECT_EQ(q.popNext(kAllOpen)->id, 2u);
}

TEST(AdmissionQueue, RemoveAndExpire) {
  AdmissionQueue q(100);
  q.push(entry(1, "A", Priority::Create, std::nullopt, kStart + seconds(10)));
  q.push(entry(2, "A", Priority::Create, std::nullopt, kStart + seconds(5)));
  q.push(entry(3, "B", Priority::Poll, std::nullopt, kStart + seconds(20)));
  EXPECT_EQ(q.nextDeadline(), kStart + seconds(5));
  EXPECT_TRUE(q.remove(1));
  EXPECT_FALSE(q.remove(1));
  EXPECT_FALSE(q.contains(1));
  EXPECT_TRUE(q.popExpired(kStart + seconds(4)).empty());
  auto expired = q.popExpired(kStart + seconds(20));
  ASSERT_EQ(expired.size(), 2u);
  EXPECT_EQ(expired[0].id, 2u);
  EXPECT_EQ(expired[1].id, 3u);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.clientSize("A"), 0u);
  EXPECT_FALSE(q.nextDeadline());
}

TEST(AdmissionQueue, RemapLanesKeepsFifo) {
  AdmissionQueue q(100);
  q.push(entry(1, "A", Priority::Create, 0));
  q.push(entry(2, "A", Priority::Create, 1));
  q.push(entry(3, "A", Priority::Create, 0));
  q.remapLanes([](const QueueEntry&) { return std::optional<size_t>(0); });
  EXPECT_EQ(q.laneSize(0), 3u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 1u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 2u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 3u);
}

class QueueFuzz : public ::testing::TestWithParam<uint64_t> {};

TEST_P(QueueFuzz, NothingLostAndFifoPerClientLane) {
  std::mt19937_64 rng(GetParam());
  AdmissionQueue q(500, 0);
  std::map<uint64_t, QueueEntry> live;
  std::map<std::pair<std::string, std::pair<int, int>>, uint64_t> last_seq;
  uint64_t next_id = 1;
  MonotonicTime now = kStart;
  size_t pushed = 0, popped = 0, removed = 0, expired = 0, rejected = 0;
  for (int i = 0; i < 50000; ++i) {
    now += milliseconds(rng() % 20);
    const int op = static_cast<int>(rng() % 10);
    if (op < 5) {
      auto e = entry(next_id++, std::string(1, static_cast<char>('a' + rng() % 6)),
                     static_cast<Priority>(rng() % kPriorityCount),
                     rng() % 3 == 0 ? std::nullopt : std::optional<size_t>(rng() % 2),
                     now + milliseconds(rng() % 5000));
      if (q.push(e) == EnqueueResult::Queued) {
        ++pushed;
        live.emplace(e.id, q.find(e.id) ? *q.find(e.id) : e);
      } else {
        ++rejected;
      }
    } else if (op < 8) {
      const bool lane0 = rng() % 2;
      auto e = q.popNext([&](std::optional<size_t> l) { return lane0 || l != std::optional<size_t>(0); });
      if (e) {
        ++popped;
        ASSERT_EQ(live.erase(e->id), 1u);
        auto key = std::make_pair(e->client, std::make_pair(static_cast<int>(e->priority),
                                                            e->lane ? static_cast<int>(*e->lane) : -1));
        ASSERT_LT(last_seq[key], e->seq);
        last_seq[key] = e->seq;
      }
    } else if (op < 9 && !live.empty()) {
      auto it = live.begin();
      std::advance(it, static_cast<long>(rng() % live.size()));
      ASSERT_TRUE(q.remove(it->first));
      live.erase(it);
      ++removed;
    } else {
      for (const auto& e : q.popExpired(now)) {
        ASSERT_LE(e.deadline, now);
        ASSERT_EQ(live.erase(e.id), 1u);
        ++expired;
      }
    }
    ASSERT_EQ(q.size(), live.size());
  }
  EXPECT_EQ(pushed, popped + removed + expired + q.size());
  (void)rejected;
}

INSTANTIATE_TEST_SUITE_P(Seeds, QueueFuzz, ::testing::Values(7, 8, 9, 2024));

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST(AdmissionQueue, AnotherServicesPollsDoNotHoldBackACreateBeyondOneTurn) {
  AdmissionQueue q(1000);
  for (uint64_t i = 1; i <= 100; ++i) {
    q.push(entry(i, "flood", Priority::Poll));
  }
  EXPECT_EQ(q.popNext(kAllOpen)->id, 1u);
  q.push(entry(500, "interactive", Priority::Create, 1));
  // The newcomer goes at the very next admission, ahead of the flood's 99 other polls.
  EXPECT_EQ(q.popNext(kAllOpen)->id, 500u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 2u);
}

TEST(AdmissionQueue, WithinAClientPollsGoBeforeCreatesAndRetriesBeforeAll) {
  AdmissionQueue q(100);
  q.push(entry(1, "svc", Priority::Create, 1));
  q.push(entry(2, "svc", Priority::Other));
  q.push(entry(3, "svc", Priority::Poll));
  q.push(entry(4, "other", Priority::Background));
  q.push(entry(5, "other", Priority::Retry));
  EXPECT_EQ(q.popNext(kAllOpen)->id, 5u);  // retries first, whoever asks
  EXPECT_EQ(q.popNext(kAllOpen)->id, 3u);  // then the client's poll
  EXPECT_EQ(q.popNext(kAllOpen)->id, 1u);  // its create
  EXPECT_EQ(q.popNext(kAllOpen)->id, 2u);  // the rest
  EXPECT_EQ(q.popNext(kAllOpen)->id, 4u);  // background last
  EXPECT_EQ(q.size(Priority::Poll), 0u);
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST(AdmissionQueue, PromoteBackgroundMovesOnlyEntriesWhoseTimeHasComeKeepingTheirPlace) {
  AdmissionQueue q(3, 2);
  QueueEntry old_bg = entry(1, "svc", Priority::Background);
  old_bg.enqueued = kStart;
  old_bg.background_until = kStart + seconds(5);
  QueueEntry new_bg = entry(2, "svc", Priority::Background);
  new_bg.enqueued = kStart - seconds(10);  // older, but background until later
  new_bg.background_until = kStart + seconds(15);
  q.push(old_bg);
  q.push(new_bg);
  q.push(entry(3, "other", Priority::Create, 0));  // the queue is full now
  EXPECT_EQ(q.promoteBackground(kStart + seconds(5), Priority::Poll), 1u);
  EXPECT_EQ(q.size(), 3u);
  EXPECT_EQ(q.size(Priority::Background), 1u);
  EXPECT_EQ(q.find(1)->priority, Priority::Poll);
  EXPECT_EQ(q.find(1)->enqueued, kStart);
  EXPECT_EQ(q.find(1)->deadline, kStart + seconds(45));
  EXPECT_EQ(q.promoteBackground(kStart + seconds(5), Priority::Poll), 0u) << "done already";
  // svc's promoted poll joins the client requests as a newcomer after other's create (fair
  // order); svc's other background entry stays last.
  EXPECT_EQ(q.popNext(kAllOpen)->id, 3u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 1u);
  EXPECT_EQ(q.popNext(kAllOpen)->id, 2u);
  EXPECT_EQ(q.promoteBackground(kStart + seconds(60), Priority::Poll), 0u) << "nothing left";
}

}  // namespace
}  // namespace hiapi::core
