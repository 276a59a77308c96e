#include "hiapi/core/task_tracker.h"

#include "hiapi/core/task_json.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::Test;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);

std::vector<TierConfig> testTiers() {
  TierConfig heavy;
  heavy.name = "heavy";
  heavy.max_running = 2;
  heavy.min_poll_interval = seconds(5);
  TierConfig light;
  light.name = "light";
  light.max_running = 5;
  light.min_poll_interval = seconds(2);
  return {heavy, light};
}
constexpr size_t kHeavy = 0;
constexpr size_t kLight = 1;

std::string detailBody(const std::string& id, const std::string& status) {
  return R"({"code":200,"message":"success","data":{"taskId":")" + id +
         R"(","model":"seedance-2-0","status":")" + status + R"(","created":1767225600}})";
}

CachedReply detail(const std::string& id, const std::string& status) {
  CachedReply r;
  r.status = 200;
  r.headers = {{"Content-Type", "application/json"}};
  r.body = detailBody(id, status);
  return r;
}

CachedReply errorReply(int status) {
  CachedReply r;
  r.status = status;
  r.body = R"({"code":)" + std::to_string(status) + R"(,"message":"x","data":null})";
  return r;
}

std::string parseStatus(const std::string& body) {
  auto d = parseTaskDetail(body);
  return d ? d->status : std::string();
}

class TaskTrackerTest : public Test {
protected:
  TaskTrackerTest() : tracker_(cfg_, testTiers()) {}
  void rebuild() { tracker_ = TaskTracker(cfg_, testTiers()); }

  TasksConfig cfg_;
  TaskTracker tracker_;
};

// ---- terminal set -------------------------------------------------------------------------

TEST_F(TaskTrackerTest, TerminalSetIsConfiguredAndCaseInsensitive) {
  for (const char* s : {"success", "fail", "SUCCESS", "Fail", "succeeded", "failed", "completed",
                        "error", "cancelled", "timeout", "TimeOut"}) {
    EXPECT_TRUE(tracker_.isTerminal(s)) << s;
  }
  for (const char* s : {"queued", "handling", "archiving", "", "succes", "success "}) {
    EXPECT_FALSE(tracker_.isTerminal(s)) << s;
  }
  cfg_.tolerated_terminal = {"Done"};
  rebuild();
  EXPECT_TRUE(tracker_.isTerminal("done"));
  EXPECT_FALSE(tracker_.isTerminal("cancelled"));
}

// ---- release exactly once ---------------------------------------------------------------

TEST_F(TaskTrackerTest, ReleaseExactlyOnceViaDetailThenList) {
  tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{7}, "seedance-2-0", kT0);
  EXPECT_EQ(tracker_.stats().holding_slots, 1u);

  // The detail reply arrives through a poll.
  ASSERT_EQ(tracker_.beginPoll("prod", "tk-1", 1, kT0 + seconds(30)).action, PollAction::Fetch);
  auto done = tracker_.completePoll("prod", "tk-1", detail("tk-1", "success"), kT0 + seconds(31));
  ASSERT_TRUE(done.release);
  EXPECT_EQ(done.release->key, "prod");
  EXPECT_EQ(done.release->task_id, "tk-1");
  EXPECT_EQ(done.release->tier, kHeavy);
  EXPECT_EQ(done.release->slot, SlotId{7});
  EXPECT_EQ(done.release->status, "success");
  EXPECT_EQ(done.release->reason, ReleaseReason::TaskFinished);

  // Then a list reply says so again, then a callback: nothing more.
  EXPECT_FALSE(tracker_.onStatus("prod", "tk-1", "success", kT0 + seconds(32)));
  EXPECT_FALSE(tracker_.onStatus("prod", "tk-1", "SUCCESS", kT0 + seconds(33)));
  auto again = tracker_.completePoll("prod", "tk-1", detail("tk-1", "success"), kT0 + seconds(40));
  EXPECT_FALSE(again.release);
  EXPECT_EQ(tracker_.stats().released, 1u);
  EXPECT_EQ(tracker_.stats().holding_slots, 0u);
  EXPECT_TRUE(tracker_.running().empty());
}

TEST_F(TaskTrackerTest, HasRecordsIsPerKey) {
  EXPECT_FALSE(tracker_.hasRecords("prod"));
  tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{7}, "seedance-2-0", kT0);
  EXPECT_TRUE(tracker_.hasRecords("prod"));
  EXPECT_FALSE(tracker_.hasRecords("pro")) << "a prefix of a key is another key";
  EXPECT_FALSE(tracker_.hasRecords("staging"));
}

TEST_F(TaskTrackerTest, ReleaseViaListThenDetail) {
  tracker_.onCreated("prod", "tk-1", kLight, SlotId{1}, "flux-2/dev", kT0);
  auto rel = tracker_.onStatus("prod", "tk-1", "fail", kT0 + seconds(9));
  ASSERT_TRUE(rel);
  EXPECT_EQ(rel->slot, SlotId{1});
  EXPECT_EQ(rel->status, "fail");
  tracker_.beginPoll("prod", "tk-1", 1, kT0 + seconds(10));
  EXPECT_FALSE(
      tracker_.completePoll("prod", "tk-1", detail("tk-1", "fail"), kT0 + seconds(10)).release);
}

TEST_F(TaskTrackerTest, ToleratedTerminalStatusesRelease) {
  size_t n = 0;
  for (const char* s : {"succeeded", "failed", "completed", "error", "cancelled", "timeout"}) {
    const std::string id = "tk-" + std::to_string(n);
    tracker_.onCreated("prod", id, kLight, SlotId{++n}, "m", kT0);
    auto rel = tracker_.onStatus("prod", id, s, kT0 + seconds(1));
    ASSERT_TRUE(rel) << s;
    EXPECT_EQ(rel->slot, SlotId{n});
    EXPECT_EQ(rel->status, s);
  }
  EXPECT_EQ(tracker_.stats().released, 6u);
}

TEST_F(TaskTrackerTest, NonTerminalStatusesKeepTheSlot) {
  tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{3}, "m", kT0);
  for (const char* s : {"queued", "handling", "archiving", "HANDLING", "weird-new-status", ""}) {
    EXPECT_FALSE(tracker_.onStatus("prod", "tk-1", s, kT0 + seconds(1))) << s;
  }
  auto running = tracker_.running();
  ASSERT_EQ(running.size(), 1u);
  EXPECT_EQ(running[0].slot, SlotId{3});
  EXPECT_EQ(running[0].status, "weird-new-status");  // the last non-empty one
  EXPECT_EQ(running[0].tier_name, "heavy");
  auto rel = tracker_.onStatus("prod", "tk-1", "success", kT0 + seconds(2));
  ASSERT_TRUE(rel);
  // A stale non-terminal status after the end changes nothing.
  EXPECT_FALSE(tracker_.onStatus("prod", "tk-1", "handling", kT0 + seconds(3)));
  EXPECT_EQ(tracker_.find("prod", "tk-1")->status, "success");
}

TEST_F(TaskTrackerTest, TaskWithoutSlotNeverReleases) {
  tracker_.onCreated("prod", "tk-1", kLight, std::nullopt, "m", kT0);
  EXPECT_FALSE(tracker_.onStatus("prod", "tk-1", "success", kT0 + seconds(1)));
  EXPECT_EQ(tracker_.stats().tracked, 1u);
  EXPECT_EQ(tracker_.stats().holding_slots, 0u);
}

TEST_F(TaskTrackerTest, UnknownTasksCreateNoRecordAndNoRelease) {
  EXPECT_FALSE(tracker_.onStatus("prod", "tk-x", "success", kT0));
  EXPECT_FALSE(tracker_.find("prod", "tk-x"));
  EXPECT_EQ(tracker_.stats().records, 0u);
  // Another key's terminal status does not release this key's task.
  tracker_.onCreated("prod", "tk-1", kLight, SlotId{1}, "m", kT0);
  EXPECT_FALSE(tracker_.onStatus("other", "tk-1", "success", kT0));
  EXPECT_EQ(tracker_.stats().holding_slots, 1u);
}

TEST_F(TaskTrackerTest, LeaseExpiryThenTerminalReleasesNothing) {
  tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{5}, "m", kT0);
  tracker_.onCreated("prod", "tk-2", kHeavy, SlotId{6}, "m", kT0);
  EXPECT_TRUE(tracker_.onSlotExpired("prod", SlotId{5}));
  EXPECT_FALSE(tracker_.onSlotExpired("prod", SlotId{5}));
  EXPECT_FALSE(tracker_.onSlotExpired("prod", SlotId{99}));
  EXPECT_FALSE(tracker_.onStatus("prod", "tk-1", "success", kT0 + minutes(30)));
  ASSERT_TRUE(tracker_.onStatus("prod", "tk-2", "success", kT0 + minutes(30)));
  EXPECT_EQ(tracker_.stats().slots_expired, 1u);
  EXPECT_EQ(tracker_.stats().released, 1u);
}

TEST_F(TaskTrackerTest, SlotIdsRepeatAcrossKeys) {
  tracker_.onCreated("a", "tk-1", kHeavy, SlotId{1}, "m", kT0);
  tracker_.onCreated("b", "tk-2", kHeavy, SlotId{1}, "m", kT0);
  // The key-less form refuses to guess.
  EXPECT_EQ(tracker_.onSlotExpired(SlotId{1}), 0u);
  EXPECT_EQ(tracker_.stats().holding_slots, 2u);
  EXPECT_TRUE(tracker_.onSlotExpired("b", SlotId{1}));
  ASSERT_TRUE(tracker_.onStatus("a", "tk-1", "success", kT0));
  EXPECT_FALSE(tracker_.onStatus("b", "tk-2", "success", kT0));
  // Unambiguous: the key-less form works.
  tracker_.onCreated("c", "tk-3", kHeavy, SlotId{9}, "m", kT0);
  EXPECT_EQ(tracker_.onSlotExpired(SlotId{9}), 1u);
  EXPECT_EQ(tracker_.stats().holding_slots, 0u);
}

TEST_F(TaskTrackerTest, DuplicateCreateGivesTheNewSlotBack) {
  tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{1}, "m", kT0);
  auto dup = tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{2}, "m", kT0 + seconds(1));
  ASSERT_TRUE(dup);
  EXPECT_EQ(dup->slot, SlotId{2});
  EXPECT_EQ(dup->reason, ReleaseReason::NotCreated);
  // The same slot reported twice is no duplicate.
  EXPECT_FALSE(tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{1}, "m", kT0 + seconds(1)));
  auto rel = tracker_.onStatus("prod", "tk-1", "success", kT0 + seconds(2));
  ASSERT_TRUE(rel);
  EXPECT_EQ(rel->slot, SlotId{1});
  // A replay of a finished task: its new slot goes back at once.
  auto late = tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{3}, "m", kT0 + seconds(3));
  ASSERT_TRUE(late);
  EXPECT_EQ(late->slot, SlotId{3});
  EXPECT_EQ(tracker_.stats().holding_slots, 0u);
}

// ---- coalescing ---------------------------------------------------------------------------

TEST_F(TaskTrackerTest, CoalescingOneFetchManyWaiters) {
  tracker_.onCreated("prod", "tk-1", kLight, SlotId{1}, "m", kT0);
  const MonotonicTime t = kT0 + seconds(10);
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 100, t).action, PollAction::Fetch);
  for (uint64_t w = 101; w < 150; ++w) {
    EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", w, t + milliseconds(w)).action, PollAction::Join);
  }
  EXPECT_EQ(tracker_.stats().in_flight, 1u);
  auto done = tracker_.completePoll("prod", "tk-1", detail("tk-1", "handling"), t + seconds(1));
  ASSERT_EQ(done.waiters.size(), 50u);
  for (uint64_t w = 100; w < 150; ++w) {
    EXPECT_EQ(done.waiters[w - 100], w);
  }
  EXPECT_FALSE(done.release);
  auto s = tracker_.stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.coalesced, 49u);
  EXPECT_EQ(s.in_flight, 0u);
  // Nothing left recorded.
  EXPECT_TRUE(tracker_.abandonPoll("prod", "tk-1").empty());
}

TEST_F(TaskTrackerTest, CancelledWaitersAreNotReturned) {
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 1, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 2, kT0).action, PollAction::Join);
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 3, kT0).action, PollAction::Join);
  EXPECT_TRUE(tracker_.cancelWaiter("k", "tk-1", 2));
  EXPECT_FALSE(tracker_.cancelWaiter("k", "tk-1", 2));
  EXPECT_FALSE(tracker_.cancelWaiter("k", "tk-9", 3));
  auto done = tracker_.completePoll("k", "tk-1", detail("tk-1", "queued"), kT0 + seconds(1));
  EXPECT_EQ(done.waiters, (std::vector<uint64_t>{1, 3}));
}

TEST_F(TaskTrackerTest, AbandonReturnsWaitersAndOneRefetches) {
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 1, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 2, kT0).action, PollAction::Join);
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 3, kT0).action, PollAction::Join);
  // The fetcher's client went away before the request was sent.
  tracker_.cancelWaiter("k", "tk-1", 1);
  auto left = tracker_.abandonPoll("k", "tk-1");
  EXPECT_EQ(left, (std::vector<uint64_t>{2, 3}));
  // The shell re-begins them in order: one fetches, the other joins.
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 2, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_.beginPoll("k", "tk-1", 3, kT0).action, PollAction::Join);
  auto done = tracker_.completePoll("k", "tk-1", detail("tk-1", "queued"), kT0 + seconds(1));
  EXPECT_EQ(done.waiters, (std::vector<uint64_t>{2, 3}));
}

// ---- cache freshness ----------------------------------------------------------------------

TEST_F(TaskTrackerTest, HitWithinMinPollIntervalWithAge) {
  tracker_.onCreated("prod", "tk-1", kLight, SlotId{1}, "m", kT0);
  tracker_.beginPoll("prod", "tk-1", 1, kT0);
  tracker_.completePoll("prod", "tk-1", detail("tk-1", "handling"), kT0 + milliseconds(300));

  auto hit = tracker_.beginPoll("prod", "tk-1", 2, kT0 + milliseconds(1800));
  ASSERT_EQ(hit.action, PollAction::Hit);
  ASSERT_TRUE(hit.reply);
  EXPECT_EQ(hit.reply->status, 200);
  EXPECT_EQ(hit.reply->body, detailBody("tk-1", "handling"));
  EXPECT_EQ(hit.reply->headers.at(0).first, "Content-Type");
  EXPECT_EQ(hit.age, milliseconds(1500));
  // Light tier: 2 s after the reply arrived it is stale.
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 3, kT0 + milliseconds(2300)).action,
            PollAction::Fetch);
  EXPECT_EQ(tracker_.stats().hits, 1u);
}

TEST_F(TaskTrackerTest, MinPollIntervalIsPerTierAndUnknownTasksUseTheLastTier) {
  tracker_.onCreated("prod", "heavy-1", kHeavy, SlotId{1}, "m", kT0);
  for (const char* id : {"heavy-1", "stranger"}) {
    tracker_.beginPoll("prod", id, 1, kT0);
    tracker_.completePoll("prod", id, detail(id, "handling"), kT0);
  }
  // Heavy: 5 s.
  EXPECT_EQ(tracker_.beginPoll("prod", "heavy-1", 2, kT0 + milliseconds(4999)).action,
            PollAction::Hit);
  EXPECT_EQ(tracker_.beginPoll("prod", "heavy-1", 3, kT0 + seconds(5)).action, PollAction::Fetch);
  // Not created through the proxy: the last tier (light, 2 s).
  EXPECT_EQ(tracker_.beginPoll("prod", "stranger", 2, kT0 + milliseconds(1999)).action,
            PollAction::Hit);
  EXPECT_EQ(tracker_.beginPoll("prod", "stranger", 3, kT0 + seconds(2)).action, PollAction::Fetch);
}

TEST_F(TaskTrackerTest, TerminalRepliesLiveTerminalTtl) {
  cfg_.terminal_ttl = minutes(10);
  rebuild();
  tracker_.onCreated("prod", "tk-1", kLight, SlotId{1}, "m", kT0);
  tracker_.beginPoll("prod", "tk-1", 1, kT0);
  auto done = tracker_.completePoll("prod", "tk-1", detail("tk-1", "success"), kT0);
  ASSERT_TRUE(done.release);
  auto hit = tracker_.beginPoll("prod", "tk-1", 2, kT0 + minutes(9));
  ASSERT_EQ(hit.action, PollAction::Hit);
  EXPECT_EQ(hit.age, minutes(9));
  tracker_.expire(kT0 + minutes(9));
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 3, kT0 + minutes(9) + seconds(59)).action,
            PollAction::Hit);
  // Past the TTL: reply and record go.
  tracker_.expire(kT0 + minutes(10));
  EXPECT_FALSE(tracker_.find("prod", "tk-1"));
  EXPECT_EQ(tracker_.stats().cache_entries, 0u);
  EXPECT_EQ(tracker_.stats().cache_bytes, 0u);
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 4, kT0 + minutes(10)).action, PollAction::Fetch);
}

TEST_F(TaskTrackerTest, NonSuccessRepliesAreNotCachedExcept404) {
  for (int status : {429, 500, 502, 503, 401, 403, 400}) {
    const std::string id = "tk-" + std::to_string(status);
    EXPECT_EQ(tracker_.beginPoll("prod", id, 1, kT0).action, PollAction::Fetch);
    tracker_.beginPoll("prod", id, 2, kT0);
    auto done = tracker_.completePoll("prod", id, errorReply(status), kT0);
    EXPECT_EQ(done.waiters.size(), 2u) << status;
    EXPECT_EQ(tracker_.beginPoll("prod", id, 3, kT0 + milliseconds(1)).action, PollAction::Fetch)
        << status;
  }
  EXPECT_EQ(tracker_.stats().cache_entries, 0u);

  cfg_.not_found_ttl = seconds(2);
  rebuild();
  tracker_.beginPoll("prod", "gone", 1, kT0);
  tracker_.completePoll("prod", "gone", errorReply(404), kT0);
  auto hit = tracker_.beginPoll("prod", "gone", 2, kT0 + milliseconds(1999));
  ASSERT_EQ(hit.action, PollAction::Hit);
  EXPECT_EQ(hit.reply->status, 404);
  EXPECT_EQ(tracker_.beginPoll("prod", "gone", 3, kT0 + seconds(2)).action, PollAction::Fetch);
}

TEST_F(TaskTrackerTest, AFailedRefreshKeepsNothingStale) {
  tracker_.beginPoll("prod", "tk-1", 1, kT0);
  tracker_.completePoll("prod", "tk-1", detail("tk-1", "queued"), kT0);
  tracker_.beginPoll("prod", "tk-1", 2, kT0 + seconds(3));
  tracker_.completePoll("prod", "tk-1", errorReply(500), kT0 + seconds(3));
  // The old reply is stale and is never served again.
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 3, kT0 + seconds(3)).action, PollAction::Fetch);
}

TEST_F(TaskTrackerTest, StatusSeenElsewhereDropsAContradictingReply) {
  tracker_.onCreated("prod", "tk-1", kHeavy, SlotId{1}, "m", kT0);
  tracker_.beginPoll("prod", "tk-1", 1, kT0);
  tracker_.completePoll("prod", "tk-1", detail("tk-1", "handling"), kT0);
  // Same status in a list: the cached reply stays.
  tracker_.onStatus("prod", "tk-1", "Handling", kT0 + seconds(1));
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 2, kT0 + seconds(1)).action, PollAction::Hit);
  // A callback says it ended: the next poll fetches the news instead of "handling".
  ASSERT_TRUE(tracker_.onStatus("prod", "tk-1", "success", kT0 + seconds(2)));
  EXPECT_EQ(tracker_.beginPoll("prod", "tk-1", 3, kT0 + seconds(2)).action, PollAction::Fetch);
}

TEST_F(TaskTrackerTest, ReverseTimeServesWithZeroAge) {
  tracker_.beginPoll("k", "tk-1", 1, kT0 + seconds(5));
  tracker_.completePoll("k", "tk-1", detail("tk-1", "queued"), kT0 + seconds(5));
  auto hit = tracker_.beginPoll("k", "tk-1", 2, kT0 + seconds(4));
  ASSERT_EQ(hit.action, PollAction::Hit);
  EXPECT_EQ(hit.age, Duration::zero());
}

// 50 clients poll one task every 100 ms for 20 s with 300 ms upstream latency: upstream sees at
// most 20 s / min interval + 2 polls, and every client sees every status.
TEST_F(TaskTrackerTest, FiftyClientsSimulation) {
  ManualClock clock(kT0);
  tracker_.onCreated("k", "tk-1", kLight, SlotId{1}, "m", clock.now());
  const MonotonicTime start = clock.now();
  auto upstreamStatus = [&](MonotonicTime t) {
    const Duration d = t - start;
    return d < seconds(5) ? "queued" : d < seconds(15) ? "handling" : "success";
  };
  constexpr int kClients = 50;
  std::vector<std::vector<std::string>> seen(kClients);
  std::vector<bool> waiting(kClients, false);
  bool fetching = false;
  MonotonicTime fetch_done = start;
  std::string fetch_status;
  int fetches = 0;
  int releases = 0;
  auto answer = [&](uint64_t w, const CachedReply& r) {
    const auto st = parseStatus(r.body);
    auto& v = seen[w];
    if (v.empty() || v.back() != st) {
      v.push_back(st);
    }
    waiting[w] = false;
  };
  while (clock.now() - start < seconds(20)) {
    if (fetching && clock.now() >= fetch_done) {
      const CachedReply r = detail("tk-1", fetch_status);
      auto done = tracker_.completePoll("k", "tk-1", r, clock.now());
      releases += done.release ? 1 : 0;
      for (uint64_t w : done.waiters) {
        answer(w, r);
      }
      fetching = false;
    }
    for (uint64_t c = 0; c < kClients; ++c) {
      if (waiting[c]) {
        continue;
      }
      auto d = tracker_.beginPoll("k", "tk-1", c, clock.now());
      if (d.action == PollAction::Hit) {
        answer(c, *d.reply);
        continue;
      }
      waiting[c] = true;
      if (d.action == PollAction::Fetch) {
        ++fetches;
        fetch_status = upstreamStatus(clock.now());  // upstream answers as of the request
        fetching = true;
        fetch_done = clock.now() + milliseconds(300);
      }
    }
    tracker_.expire(clock.now());
    clock.advance(milliseconds(100));
  }
  EXPECT_LE(fetches, 20 / 2 + 2);
  EXPECT_EQ(releases, 1);
  for (int c = 0; c < kClients; ++c) {
    EXPECT_EQ(seen[c], (std::vector<std::string>{"queued", "handling", "success"})) << c;
  }
}

// ---- cross-key isolation ------------------------------------------------------------------

TEST_F(TaskTrackerTest, AnotherKeyIsNeverServedThisKeysTask) {
  tracker_.onCreated("A", "tk-1", kLight, SlotId{1}, "m", kT0);
  tracker_.beginPoll("A", "tk-1", 1, kT0);
  tracker_.completePoll("A", "tk-1", detail("tk-1", "success"), kT0);
  ASSERT_EQ(tracker_.beginPoll("A", "tk-1", 2, kT0 + seconds(1)).action, PollAction::Hit);

  // Key B asks for A's task: it must go upstream (which answers 404), never get A's reply.
  auto b = tracker_.beginPoll("B", "tk-1", 3, kT0 + seconds(1));
  EXPECT_EQ(b.action, PollAction::Fetch);
  EXPECT_FALSE(b.reply);
  // B's fetch in flight is not joined by A, and A's cache is not touched by B's 404.
  EXPECT_EQ(tracker_.beginPoll("A", "tk-1", 4, kT0 + seconds(1)).action, PollAction::Hit);
  auto done = tracker_.completePoll("B", "tk-1", errorReply(404), kT0 + seconds(2));
  EXPECT_EQ(done.waiters, (std::vector<uint64_t>{3}));
  auto a = tracker_.beginPoll("A", "tk-1", 5, kT0 + seconds(2));
  ASSERT_EQ(a.action, PollAction::Hit);
  EXPECT_EQ(a.reply->status, 200);
  auto b2 = tracker_.beginPoll("B", "tk-1", 6, kT0 + seconds(2));
  ASSERT_EQ(b2.action, PollAction::Hit);
  EXPECT_EQ(b2.reply->status, 404);

  // Key names that could collide if joined naively stay apart.
  EXPECT_EQ(tracker_.beginPoll("A\x1ftk", "-1", 7, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_
                .beginPoll("",
                           "A"
                           "tk-1",
                           8, kT0)
                .action,
            PollAction::Fetch);
}

TEST_F(TaskTrackerTest, KeyBJoinsNothingOfKeyA) {
  EXPECT_EQ(tracker_.beginPoll("A", "tk-1", 1, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_.beginPoll("B", "tk-1", 2, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_.completePoll("A", "tk-1", detail("tk-1", "queued"), kT0).waiters,
            (std::vector<uint64_t>{1}));
  EXPECT_EQ(tracker_.completePoll("B", "tk-1", errorReply(404), kT0).waiters,
            (std::vector<uint64_t>{2}));
}

// ---- LRU bounds ---------------------------------------------------------------------------

TEST_F(TaskTrackerTest, LruBoundByEntries) {
  cfg_.cache_max_entries = 3;
  rebuild();
  for (int i = 0; i < 5; ++i) {
    const std::string id = "tk-" + std::to_string(i);
    tracker_.beginPoll("k", id, 1, kT0);
    tracker_.completePoll("k", id, detail(id, "queued"), kT0);
  }
  auto s = tracker_.stats();
  EXPECT_EQ(s.records, 3u);
  EXPECT_EQ(s.cache_entries, 3u);
  EXPECT_EQ(s.evictions, 2u);
  EXPECT_FALSE(tracker_.find("k", "tk-0"));
  EXPECT_FALSE(tracker_.find("k", "tk-1"));
  // A hit refreshes recency: tk-2 survives the next insert, tk-3 does not.
  EXPECT_EQ(tracker_.beginPoll("k", "tk-2", 2, kT0 + seconds(1)).action, PollAction::Hit);
  tracker_.beginPoll("k", "tk-5", 1, kT0 + seconds(1));
  tracker_.completePoll("k", "tk-5", detail("tk-5", "queued"), kT0 + seconds(1));
  EXPECT_TRUE(tracker_.find("k", "tk-2"));
  EXPECT_FALSE(tracker_.find("k", "tk-3"));
}

TEST_F(TaskTrackerTest, LruBoundByBytes) {
  const CachedReply sample = detail("tk-0", "queued");
  // Room for three replies of this size, not four.
  cfg_.cache_max_bytes = 3 * (sample.body.size() + 250);
  rebuild();
  for (int i = 0; i < 6; ++i) {
    const std::string id = "tk-" + std::to_string(i);
    tracker_.beginPoll("k", id, 1, kT0 + seconds(i));
    tracker_.completePoll("k", id, detail(id, "queued"), kT0 + seconds(i));
    EXPECT_LE(tracker_.stats().cache_bytes, cfg_.cache_max_bytes);
  }
  EXPECT_EQ(tracker_.stats().cache_entries, 3u);
  EXPECT_TRUE(tracker_.find("k", "tk-5"));
  EXPECT_FALSE(tracker_.find("k", "tk-2"));
  // A reply larger than the whole budget is served to its waiters but not cached.
  CachedReply huge = detail("big", "queued");
  huge.body.append(cfg_.cache_max_bytes, ' ');
  tracker_.beginPoll("k", "big", 1, kT0 + seconds(10));
  EXPECT_EQ(tracker_.completePoll("k", "big", huge, kT0 + seconds(10)).waiters.size(), 1u);
  EXPECT_EQ(tracker_.beginPoll("k", "big", 2, kT0 + seconds(10)).action, PollAction::Fetch);
  EXPECT_LE(tracker_.stats().cache_bytes, cfg_.cache_max_bytes);
}

TEST_F(TaskTrackerTest, LruNeverEvictsWaitersOrSlotRecords) {
  cfg_.cache_max_entries = 2;
  cfg_.cache_max_bytes = 1;  // no reply fits: only records matter
  rebuild();
  tracker_.onCreated("k", "held-1", kHeavy, SlotId{1}, "m", kT0);
  tracker_.onCreated("k", "held-2", kHeavy, SlotId{2}, "m", kT0);
  tracker_.onCreated("k", "held-3", kHeavy, SlotId{3}, "m", kT0);
  EXPECT_EQ(tracker_.beginPoll("k", "waited", 10, kT0).action, PollAction::Fetch);
  EXPECT_EQ(tracker_.beginPoll("k", "waited", 11, kT0).action, PollAction::Join);
  tracker_.expire(kT0 + seconds(1));
  // Over the bound, but all four survive.
  EXPECT_EQ(tracker_.stats().records, 4u);
  EXPECT_EQ(tracker_.stats().holding_slots, 3u);
  EXPECT_EQ(
      tracker_.completePoll("k", "waited", detail("waited", "queued"), kT0 + seconds(1)).waiters,
      (std::vector<uint64_t>{10, 11}));
  // Now "waited" has no waiters and holds no slot: it goes.
  EXPECT_FALSE(tracker_.find("k", "waited"));
  for (SlotId s = 1; s <= 3; ++s) {
    ASSERT_TRUE(tracker_.onStatus("k", "held-" + std::to_string(s), "success", kT0 + seconds(2)));
  }
}

TEST_F(TaskTrackerTest, ByteBoundDropsReplyOfSlotRecordButKeepsTheSlot) {
  const CachedReply sample = detail("held", "handling");
  cfg_.cache_max_bytes = sample.body.size() + 250;  // one reply
  rebuild();
  tracker_.onCreated("k", "held", kHeavy, SlotId{1}, "m", kT0);
  tracker_.beginPoll("k", "held", 1, kT0);
  tracker_.completePoll("k", "held", sample, kT0);
  tracker_.beginPoll("k", "other", 1, kT0);
  tracker_.completePoll("k", "other", detail("other", "handling"), kT0);
  EXPECT_EQ(tracker_.stats().cache_entries, 1u);
  auto held = tracker_.find("k", "held");
  ASSERT_TRUE(held);
  EXPECT_EQ(held->slot, SlotId{1});
  EXPECT_EQ(tracker_.beginPoll("k", "held", 2, kT0).action, PollAction::Fetch);
  tracker_.abandonPoll("k", "held");
  EXPECT_TRUE(tracker_.onStatus("k", "held", "fail", kT0));
}

TEST_F(TaskTrackerTest, ExpireForgetsIdleRecordsButNotSlotHolders) {
  cfg_.terminal_ttl = minutes(10);
  rebuild();
  tracker_.onCreated("k", "held", kHeavy, SlotId{1}, "m", kT0);
  tracker_.onCreated("k", "lost", kHeavy, SlotId{2}, "m", kT0);
  tracker_.onSlotExpired("k", SlotId{2});
  tracker_.beginPoll("k", "stranger", 1, kT0);
  tracker_.completePoll("k", "stranger", detail("stranger", "queued"), kT0);
  tracker_.expire(kT0 + seconds(3));
  EXPECT_FALSE(tracker_.find("k", "stranger"));  // poll-only, reply expired
  EXPECT_TRUE(tracker_.find("k", "lost"));       // created here, asked about recently
  tracker_.expire(kT0 + hours(5));
  EXPECT_FALSE(tracker_.find("k", "lost"));
  EXPECT_TRUE(tracker_.find("k", "held"));  // holds a slot: until terminal or lease
  EXPECT_EQ(tracker_.stats().records, 1u);
}

// ---- reconcile ----------------------------------------------------------------------------

TEST_F(TaskTrackerTest, ReconcileSelectsIdleSlotHolders) {
  cfg_.reconcile_interval = seconds(15);
  rebuild();
  tracker_.onCreated("k", "polled", kHeavy, SlotId{1}, "m", kT0);
  tracker_.onCreated("k", "silent", kHeavy, SlotId{2}, "m", kT0 + seconds(1));
  tracker_.onCreated("k", "noslot", kLight, std::nullopt, "m", kT0);
  tracker_.onCreated("k", "ended", kLight, SlotId{3}, "m", kT0);
  tracker_.onStatus("k", "ended", "success", kT0 + seconds(1));
  EXPECT_EQ(tracker_.nextReconcileAt(), kT0 + seconds(15));
  EXPECT_TRUE(tracker_.dueForReconcile(kT0 + seconds(14)).empty());

  // A client polls "polled" at 10 s (and its reply lands at 11 s).
  tracker_.beginPoll("k", "polled", 1, kT0 + seconds(10));
  tracker_.completePoll("k", "polled", detail("polled", "handling"), kT0 + seconds(11));
  EXPECT_EQ(tracker_.nextReconcileAt(), kT0 + seconds(16));

  auto due = tracker_.dueForReconcile(kT0 + seconds(16));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].task_id, "silent");
  EXPECT_EQ(due[0].key, "k");
  EXPECT_EQ(due[0].tier_name, "heavy");
  EXPECT_EQ(due[0].slot, SlotId{2});
  // Marked in flight: not handed out twice; a client poll now joins it.
  EXPECT_TRUE(tracker_.dueForReconcile(kT0 + seconds(17)).empty());
  EXPECT_EQ(tracker_.beginPoll("k", "silent", 7, kT0 + seconds(17)).action, PollAction::Join);
  auto done = tracker_.completePoll("k", "silent", detail("silent", "success"), kT0 + seconds(18));
  EXPECT_EQ(done.waiters, (std::vector<uint64_t>{7}));
  ASSERT_TRUE(done.release);
  EXPECT_EQ(done.release->slot, SlotId{2});

  // "polled" is due 15 s after its last upstream poll (11 s).
  EXPECT_TRUE(tracker_.dueForReconcile(kT0 + seconds(25)).empty());
  due = tracker_.dueForReconcile(kT0 + seconds(26));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].task_id, "polled");
  // A failed reconcile poll waits a full interval before the next.
  EXPECT_TRUE(tracker_.abandonPoll("k", "polled").empty());
  EXPECT_EQ(tracker_.nextReconcileAt(), kT0 + seconds(41));
  EXPECT_TRUE(tracker_.dueForReconcile(kT0 + seconds(40)).empty());
  EXPECT_EQ(tracker_.dueForReconcile(kT0 + seconds(41)).size(), 1u);
  EXPECT_EQ(tracker_.stats().reconciles, 2u + 1u);
}

TEST_F(TaskTrackerTest, ReconcileRespectsMaxAndOrder) {
  for (int i = 0; i < 5; ++i) {
    tracker_.onCreated("k", "tk-" + std::to_string(i), kLight, SlotId(i + 1), "m",
                       kT0 + seconds(4 - i));
  }
  auto due = tracker_.dueForReconcile(kT0 + minutes(1), 2);
  ASSERT_EQ(due.size(), 2u);
  EXPECT_EQ(due[0].task_id, "tk-4");  // idle longest
  EXPECT_EQ(due[1].task_id, "tk-3");
  EXPECT_EQ(tracker_.dueForReconcile(kT0 + minutes(1), 16).size(), 3u);
}

TEST_F(TaskTrackerTest, ReconcileOff) {
  cfg_.reconcile = false;
  rebuild();
  tracker_.onCreated("k", "tk-1", kHeavy, SlotId{1}, "m", kT0);
  EXPECT_FALSE(tracker_.nextReconcileAt());
  EXPECT_TRUE(tracker_.dueForReconcile(kT0 + hours(1)).empty());
  // Turned on by a reload: the task is due at once.
  cfg_.reconcile = true;
  tracker_.reconfigure(cfg_, testTiers());
  EXPECT_EQ(tracker_.dueForReconcile(kT0 + hours(1)).size(), 1u);
}

TEST_F(TaskTrackerTest, ReconfigureFollowsTiersByName) {
  tracker_.onCreated("k", "tk-1", kHeavy, SlotId{1}, "m", kT0);
  tracker_.onCreated("k", "tk-2", kLight, SlotId{2}, "m", kT0);
  auto tiers = testTiers();
  std::swap(tiers[0], tiers[1]);  // light, heavy
  TierConfig video;
  video.name = "video";
  tiers.push_back(video);
  tracker_.reconfigure(cfg_, tiers);
  EXPECT_EQ(tracker_.find("k", "tk-1")->tier, 1u);
  EXPECT_EQ(tracker_.find("k", "tk-1")->tier_name, "heavy");
  EXPECT_EQ(tracker_.find("k", "tk-2")->tier, 0u);
  tracker_.reconfigure(cfg_, {video});  // both tiers gone: the last tier
  EXPECT_EQ(tracker_.find("k", "tk-1")->tier_name, "video");
  auto rel = tracker_.onStatus("k", "tk-1", "success", kT0);
  ASSERT_TRUE(rel);
  EXPECT_EQ(rel->tier, 0u);
  EXPECT_EQ(tracker_.tierIndex("heavy"), 0u);
}

// ---- persistence --------------------------------------------------------------------------

TEST_F(TaskTrackerTest, SerializeParseRoundTrip) {
  tracker_.onCreated("prod", "tk-a", kHeavy, SlotId{1}, "seedance-2-0", kT0);
  tracker_.onCreated("prod", "tk-b", kLight, SlotId{2}, "flux \"2\"\n/pro", kT0 + seconds(20));
  tracker_.onCreated("batch", "tk-c", kHeavy, SlotId{1}, "veo-3.1/fast", kT0 + seconds(30));
  tracker_.onCreated("prod", "tk-done", kHeavy, SlotId{3}, "m", kT0);
  tracker_.onStatus("prod", "tk-done", "success", kT0);
  tracker_.onCreated("prod", "tk-noslot", kHeavy, std::nullopt, "m", kT0);
  tracker_.beginPoll("prod", "stranger", 1, kT0);

  const std::string text = tracker_.serialize(kT0 + seconds(60), 1'767'225'600'000);
  EXPECT_NE(text.find("\"version\":1"), std::string::npos);
  EXPECT_NE(text.find("\"saved_at_unix_ms\":1767225600000"), std::string::npos);

  std::string error;
  auto tasks = TaskTracker::parseState(text, &error);
  ASSERT_TRUE(tasks) << error;
  ASSERT_EQ(tasks->size(), 3u);
  EXPECT_EQ((*tasks)[0].key, "prod");
  EXPECT_EQ((*tasks)[0].task_id, "tk-a");
  EXPECT_EQ((*tasks)[0].tier, "heavy");
  EXPECT_EQ((*tasks)[0].model, "seedance-2-0");
  EXPECT_EQ((*tasks)[0].age, seconds(60));
  EXPECT_EQ((*tasks)[1].task_id, "tk-b");
  EXPECT_EQ((*tasks)[1].tier, "light");
  EXPECT_EQ((*tasks)[1].model, "flux \"2\"\n/pro");
  EXPECT_EQ((*tasks)[1].age, seconds(40));
  EXPECT_EQ((*tasks)[2].key, "batch");
  EXPECT_EQ((*tasks)[2].age, seconds(30));

  // Downtime since saved_at is added when the wall clock is given.
  auto later = TaskTracker::parseState(text, &error, 1'767'225'600'000 + 5'000);
  ASSERT_TRUE(later);
  EXPECT_EQ((*later)[0].age, seconds(65));
  auto skewed = TaskTracker::parseState(text, &error, 1'767'225'600'000 - 5'000);
  ASSERT_TRUE(skewed);
  EXPECT_EQ((*skewed)[0].age, seconds(60));

  // Restore into a fresh tracker (after a restart): the slots are held again.
  const MonotonicTime boot = MonotonicTime{} + hours(100);
  TaskTracker restored(cfg_, testTiers());
  SlotId next = 1;
  for (const auto& t : *tasks) {
    restored.onRestored(t.key, t.task_id, restored.tierIndex(t.tier), next++, t.model,
                        boot - t.age);
  }
  auto running = restored.running();
  ASSERT_EQ(running.size(), 3u);
  EXPECT_EQ(running[0].task_id, "tk-a");
  EXPECT_EQ(running[0].created, boot - seconds(60));
  EXPECT_EQ(running[0].tier, kHeavy);
  auto rel = restored.onStatus("prod", "tk-a", "success", boot);
  ASSERT_TRUE(rel);
  EXPECT_EQ(rel->slot, SlotId{1});
  EXPECT_EQ(restored.serialize(boot, 0).find("tk-a"), std::string::npos);
}

TEST_F(TaskTrackerTest, SerializeEmptyAndNeverASecret) {
  const std::string text = tracker_.serialize(kT0, 0);
  EXPECT_EQ(text, R"({"version":1,"saved_at_unix_ms":0,"tasks":[]})");
  auto tasks = TaskTracker::parseState(text, nullptr);
  ASSERT_TRUE(tasks);
  EXPECT_TRUE(tasks->empty());
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// Runs one light task from creation to its end, polled every @p every; @return when each fetch
// was made (offsets from @p start).
std::vector<Duration> runLightTaskAt(TaskTracker& t, const std::string& id, MonotonicTime start,
                                     Duration length, Duration every = milliseconds(500)) {
  t.onCreated("prod", id, kLight, SlotId{100}, "m", start);
  std::vector<Duration> fetches;
  uint64_t waiter = 1;
  for (MonotonicTime now = start; now < start + length + seconds(5); now += every) {
    const PollDecision d = t.beginPoll("prod", id, waiter++, now);
    if (d.action == PollAction::Fetch) {
      fetches.push_back(now - start);
      const bool done = now >= start + length;
      t.completePoll("prod", id, detail(id, done ? "success" : "handling"), now);
      if (done) {
        break;
      }
    }
  }
  return fetches;
}

// As runLightTaskAt, polled every 500 ms; @return the number of fetches made.
int runLightTask(TaskTracker& t, const std::string& id, MonotonicTime start, Duration length) {
  return static_cast<int>(runLightTaskAt(t, id, start, length).size());
}

TEST_F(TaskTrackerTest, LearnedDurationsHoldRunningDetailsUntilTheLikelyEnd) {
  cfg_.max_hold = seconds(10);
  rebuild();
  EXPECT_FALSE(tracker_.typicalDuration(kLight));
  // Two light tasks of 8 s, polled every 500 ms: a fetch every 2 s (min_poll_interval).
  for (int i = 0; i < 2; ++i) {
    const int fetches = runLightTask(tracker_, "warm-" + std::to_string(i), kT0 + minutes(i), seconds(8));
    EXPECT_GE(fetches, 4) << "nothing learned yet: plain min_poll_interval";
  }
  ASSERT_TRUE(tracker_.typicalDuration(kLight));
  EXPECT_NEAR(toSeconds(*tracker_.typicalDuration(kLight)), 8.0, 1.0);
  // Now a running task's detail is served from memory until about 8 s: one fetch at the start,
  // then none until shortly before the likely end, and then a few close together.
  const auto fetches = runLightTaskAt(tracker_, "held", kT0 + minutes(10), seconds(8));
  ASSERT_GE(fetches.size(), 2u);
  EXPECT_LE(fetches.size(), 4u);
  EXPECT_EQ(fetches[0], Duration::zero());
  EXPECT_GE(fetches[1], seconds(6)) << "held mid-task";
  EXPECT_EQ(fetches.back(), seconds(8)) << "the end is seen at once";
}

// Another instance sharing the key (through the store) has learned the light tier: a tracker
// that has seen no end of it starts from that estimate, the best-informed one offered per tier,
// and holds a running detail until the likely end from its first task on.
TEST_F(TaskTrackerTest, AnotherInstancesLearnedDurationsAreTakenByName) {
  cfg_.max_hold = seconds(10);
  rebuild();
  TaskTracker other(cfg_, testTiers());
  for (int i = 0; i < 2; ++i) {
    runLightTask(other, "warm-" + std::to_string(i), kT0 + minutes(i), seconds(8));
  }
  const std::vector<NamedDuration> known = other.knownDurations();
  ASSERT_EQ(known.size(), 1u) << "only the light tier has ended tasks";
  EXPECT_EQ(known[0].tier, "light");
  std::vector<NamedDuration> offered = known;
  offered.push_back({"light", {seconds(30), 1}});     // a less informed instance
  offered.push_back({"no-such-tier", {seconds(3), 9}});  // a tier this one does not have
  EXPECT_TRUE(tracker_.adoptDurations(offered));
  EXPECT_EQ(tracker_.typicalDuration(kLight), other.typicalDuration(kLight));
  EXPECT_FALSE(tracker_.typicalDuration(kHeavy));
  EXPECT_FALSE(tracker_.adoptDurations(offered)) << "the same news twice changes nothing";
  const auto fetches = runLightTaskAt(tracker_, "held", kT0 + minutes(10), seconds(8));
  ASSERT_GE(fetches.size(), 2u);
  EXPECT_GE(fetches[1], seconds(6)) << "held mid-task by the adopted estimate";
}

TEST_F(TaskTrackerTest, MaxHoldZeroKeepsPlainMinPollInterval) {
  cfg_.max_hold = Duration::zero();
  rebuild();
  for (int i = 0; i < 3; ++i) {
    runLightTask(tracker_, "warm-" + std::to_string(i), kT0 + minutes(i), seconds(8));
  }
  EXPECT_GE(runLightTask(tracker_, "plain", kT0 + minutes(10), seconds(8)), 4);
}

TEST_F(TaskTrackerTest, HoldNeverExceedsMaxHold) {
  cfg_.max_hold = seconds(3);
  rebuild();
  for (int i = 0; i < 3; ++i) {
    runLightTask(tracker_, "long-" + std::to_string(i), kT0 + minutes(i), seconds(30));
  }
  tracker_.onCreated("prod", "t", kLight, SlotId{7}, "m", kT0 + minutes(20));
  tracker_.beginPoll("prod", "t", 1, kT0 + minutes(20));
  tracker_.completePoll("prod", "t", detail("t", "handling"), kT0 + minutes(20));
  EXPECT_EQ(tracker_.beginPoll("prod", "t", 2, kT0 + minutes(20) + milliseconds(2900)).action,
            PollAction::Hit);
  EXPECT_EQ(tracker_.beginPoll("prod", "t", 3, kT0 + minutes(20) + seconds(3)).action,
            PollAction::Fetch);
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST_F(TaskTrackerTest, LikelyRunningOnlyOnceDurationsAreKnownAndBeforeTheLikelyEnd) {
  tracker_.onCreated("prod", "new", kLight, SlotId{1}, "m", kT0);
  EXPECT_FALSE(tracker_.likelyRunning("prod", "new", kT0 + milliseconds(100)))
      << "nothing learned yet";
  EXPECT_EQ(tracker_.slotTier("prod", "new"), std::optional<size_t>(kLight));
  EXPECT_EQ(tracker_.tierDurations(kT0 + seconds(3))[kLight],
            std::optional<TierDuration>(TierDuration{seconds(3), false}))
      << "before any task ended, a lower bound on the duration";
  for (int i = 0; i < 1; ++i) {
    runLightTask(tracker_, "warm-" + std::to_string(i), kT0 + minutes(i + 1), seconds(8));
  }
  const MonotonicTime t = kT0 + minutes(10);
  tracker_.onCreated("prod", "run", kLight, SlotId{2}, "m", t);
  EXPECT_TRUE(tracker_.likelyRunning("prod", "run", t + seconds(1)));
  EXPECT_FALSE(tracker_.likelyRunning("prod", "run", t + seconds(8)));
  EXPECT_FALSE(tracker_.likelyRunning("other-key", "run", t + seconds(1)));
  EXPECT_FALSE(tracker_.likelyRunning("prod", "stranger", t + seconds(1)));
  tracker_.onStatus("prod", "run", "fail", t + seconds(2));
  EXPECT_FALSE(tracker_.likelyRunning("prod", "run", t + seconds(3))) << "ended";
  EXPECT_FALSE(tracker_.slotTier("prod", "run")) << "its slot is free";
  EXPECT_FALSE(tracker_.slotTier("prod", "stranger"));
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST_F(TaskTrackerTest, GatePressurePollsTasksLikelyDoneAtMostEveryMinInterval) {
  // Learn light tasks of 8 s.
  for (int i = 0; i < 3; ++i) {
    runLightTask(tracker_, "warm-" + std::to_string(i), kT0 + minutes(i), seconds(8));
  }
  const MonotonicTime t = kT0 + minutes(10);
  tracker_.onCreated("prod", "a", kLight, SlotId{1}, "m", t);
  tracker_.onCreated("prod", "b", kLight, SlotId{2}, "m", t + seconds(3));
  tracker_.onCreated("other", "c", kLight, SlotId{3}, "m", t);
  EXPECT_TRUE(tracker_.dueForGatePressure("prod", kLight, t + seconds(2)).empty())
      << "still running by the learned duration";
  // The next look is planned at a's likely end (the scheduler keeps tokens for it).
  const std::optional<MonotonicTime> planned =
      tracker_.nextGatePressureAt("prod", kLight, t + seconds(2));
  ASSERT_TRUE(planned);
  EXPECT_EQ(*planned, t + *tracker_.typicalDuration(kLight));
  EXPECT_FALSE(tracker_.nextGatePressureAt("prod", kHeavy, t + seconds(2))) << "no heavy task";
  EXPECT_TRUE(tracker_.dueForGatePressure("prod", kLight, *planned - milliseconds(1)).empty());
  auto due = tracker_.dueForGatePressure("prod", kLight, t + seconds(8));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].task_id, "a");
  EXPECT_TRUE(tracker_.dueForGatePressure("prod", kLight, t + seconds(8)).empty()) << "in flight";
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t + seconds(8)), t + seconds(8))
      << "in flight: its answer may free the slot now";
  // A client poll joins the in-flight fetch.
  EXPECT_EQ(tracker_.beginPoll("prod", "a", 9, t + seconds(8)).action, PollAction::Join);
  auto done = tracker_.completePoll("prod", "a", detail("a", "handling"), t + seconds(8));
  EXPECT_EQ(done.waiters, std::vector<uint64_t>{9});
  // Past its likely end, again after the end-poll interval (1/20 of the typical duration), not
  // the plain min_poll_interval (2 s for light).
  const Duration fine = tracker_.endPollInterval(kLight);
  EXPECT_LT(fine, seconds(1));
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t + seconds(8)), t + seconds(8) + fine);
  EXPECT_TRUE(tracker_.dueForGatePressure("prod", kLight, t + seconds(8) + fine - milliseconds(1))
                  .empty());
  due = tracker_.dueForGatePressure("prod", kLight, t + seconds(8) + fine);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].task_id, "a");
  tracker_.completePoll("prod", "a", detail("a", "handling"), t + seconds(8) + fine);
  // Long past it (more than half a typical duration): a long task, min_poll_interval again.
  tracker_.beginPoll("prod", "a", 10, t + seconds(13));
  tracker_.completePoll("prod", "a", detail("a", "handling"), t + seconds(13));
  due = tracker_.dueForGatePressure("prod", kLight, t + seconds(14));
  ASSERT_EQ(due.size(), 1u) << "b (created 3 s later) is due, a is not";
  EXPECT_EQ(due[0].task_id, "b");
  tracker_.abandonPoll("prod", "b");
  due = tracker_.dueForGatePressure("prod", kLight, t + seconds(15));
  ASSERT_FALSE(due.empty());
  EXPECT_EQ(due[0].task_id, "a");
  EXPECT_TRUE(tracker_.dueForGatePressure("prod", kHeavy, t + seconds(15)).empty());
}

TEST_F(TaskTrackerTest, EndPollIntervalIsATwentiethOfTheTypicalDurationWithinBounds) {
  EXPECT_EQ(tracker_.endPollInterval(kLight), seconds(2)) << "nothing learned: min_poll_interval";
  for (int i = 0; i < 2; ++i) {
    runLightTaskAt(tracker_, "w" + std::to_string(i), kT0 + minutes(i), seconds(8),
                   milliseconds(100));
    // One ended task is enough to aim end polls (typicalDuration waits for two).
    EXPECT_LT(tracker_.endPollInterval(kLight), seconds(1)) << i + 1 << " ended";
    EXPECT_EQ(tracker_.typicalDuration(kLight).has_value(), i == 1);
  }
  ASSERT_TRUE(tracker_.typicalDuration(kLight));
  EXPECT_NEAR(toSeconds(tracker_.endPollInterval(kLight)),
              toSeconds(*tracker_.typicalDuration(kLight)) / 20, 0.001);
  // Short tasks: at least 100 ms.
  TaskTracker quick(cfg_, testTiers());
  for (int i = 0; i < 2; ++i) {
    runLightTaskAt(quick, "q" + std::to_string(i), kT0 + minutes(i), milliseconds(600),
                   milliseconds(50));
  }
  ASSERT_TRUE(quick.typicalDuration(kLight));
  EXPECT_EQ(quick.endPollInterval(kLight), milliseconds(100));
}

// Tasks of exactly @p length, polled the way the proxy would under gate pressure: at the likely
// end and then every end-poll interval; @return how late each end was seen.
std::vector<Duration> endLateness(TaskTracker& t, Duration length, int n, MonotonicTime start) {
  std::vector<Duration> late;
  for (int i = 0; i < n; ++i) {
    const std::string id = "g" + std::to_string(i);
    const MonotonicTime created = start + minutes(i);
    t.onCreated("prod", id, kLight, SlotId{200}, "m", created);
    for (MonotonicTime now = created; now < created + length * 3; now += milliseconds(10)) {
      auto due = t.dueForGatePressure("prod", kLight, now, 1);
      if (due.empty()) {
        continue;
      }
      const bool done = now >= created + length;
      t.completePoll("prod", id, detail(id, done ? "success" : "handling"), now);
      if (done) {
        late.push_back(now - (created + length));
        break;
      }
    }
  }
  return late;
}

TEST_F(TaskTrackerTest, LearnedDurationConvergesSoEndsAreSeenWithinAboutOneEndPollInterval) {
  // Warm up with coarse client polls (every 2 s): the first estimates are off by up to 1 s.
  for (int i = 0; i < 2; ++i) {
    runLightTaskAt(tracker_, "warm-" + std::to_string(i), kT0 + minutes(i), seconds(5),
                   milliseconds(1700));
  }
  ASSERT_TRUE(tracker_.typicalDuration(kLight));
  const std::vector<Duration> late = endLateness(tracker_, seconds(5), 12, kT0 + minutes(10));
  ASSERT_EQ(late.size(), 12u);
  const Duration fine = tracker_.endPollInterval(kLight);
  // After a few tasks every end is seen within about one end-poll interval (plus the 10 ms step).
  for (size_t i = 4; i < late.size(); ++i) {
    EXPECT_LE(late[i], fine + milliseconds(20)) << "task " << i;
  }
  EXPECT_NEAR(toSeconds(*tracker_.typicalDuration(kLight)), 5.0, toSeconds(fine));
}

TEST_F(TaskTrackerTest, AnEstimateThatIsTooLongComesDown) {
  // Learn 10 s tasks, then the tasks get faster (6 s): the estimate follows them down.
  for (int i = 0; i < 3; ++i) {
    runLightTaskAt(tracker_, "slow-" + std::to_string(i), kT0 + minutes(i), seconds(10),
                   milliseconds(100));
  }
  ASSERT_TRUE(tracker_.typicalDuration(kLight));
  EXPECT_NEAR(toSeconds(*tracker_.typicalDuration(kLight)), 10.0, 1.0);
  // Clients polling every 500 ms are held until the (too long) estimate; each end seen by the
  // first look after the hold lowers it a little.
  for (int i = 0; i < 25; ++i) {
    runLightTaskAt(tracker_, "fast-" + std::to_string(i), kT0 + minutes(10 + i), seconds(6),
                   milliseconds(500));
  }
  EXPECT_LT(toSeconds(*tracker_.typicalDuration(kLight)), 7.0);
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

TEST_F(TaskTrackerTest, ExpectedDurationIsTheStartingEstimateAndLearningFollowsTiersByName) {
  std::vector<TierConfig> tiers = testTiers();
  tiers[kHeavy].expected_duration = seconds(30);
  TaskTracker t(cfg_, tiers);
  ASSERT_TRUE(t.typicalDuration(kHeavy));
  EXPECT_EQ(*t.typicalDuration(kHeavy), seconds(30));
  EXPECT_FALSE(t.typicalDuration(kLight)) << "no expectation: learn from nothing";
  // The very first heavy task is held until about 30 s and looked at then.
  t.onCreated("prod", "h", kHeavy, SlotId{1}, "m", kT0);
  EXPECT_TRUE(t.likelyRunning("prod", "h", kT0 + seconds(29)));
  EXPECT_TRUE(t.dueForGatePressure("prod", kHeavy, kT0 + seconds(29)).empty());
  ASSERT_EQ(t.dueForGatePressure("prod", kHeavy, kT0 + seconds(30)).size(), 1u);
  t.completePoll("prod", "h", detail("h", "success"), kT0 + seconds(30));
  // Learn light tasks, then reload with the tiers in the other order: each keeps its own.
  for (int i = 0; i < 2; ++i) {
    runLightTaskAt(t, "l" + std::to_string(i), kT0 + minutes(1 + i), seconds(4), milliseconds(100));
  }
  const Duration light = *t.typicalDuration(kLight);
  const Duration heavy = *t.typicalDuration(kHeavy);
  std::vector<TierConfig> swapped{tiers[kLight], tiers[kHeavy]};
  t.reconfigure(cfg_, swapped);
  EXPECT_EQ(t.typicalDuration(0), light);
  EXPECT_EQ(t.typicalDuration(1), heavy);
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// Tasks started together end together: only the first end of a wave probes the estimate lower.
TEST_F(TaskTrackerTest, OnlyTheFirstEndOfAWaveProbesTheEstimateLower) {
  std::vector<TierConfig> tiers = testTiers();
  tiers[kLight].expected_duration = seconds(5);
  TaskTracker t(cfg_, tiers);
  const Duration fine = t.endPollInterval(kLight);
  const MonotonicTime at = kT0 + minutes(1);
  t.onCreated("prod", "a", kLight, SlotId{1}, "m", at);
  t.onCreated("prod", "b", kLight, SlotId{2}, "m", at + milliseconds(100));
  t.onStatus("prod", "a", "success", at + seconds(5));
  EXPECT_EQ(*t.typicalDuration(kLight), seconds(5) - fine / 8) << "seen by the look aimed at it";
  t.onStatus("prod", "b", "success", at + milliseconds(100) + seconds(5));
  EXPECT_EQ(*t.typicalDuration(kLight), seconds(5) - fine / 8) << "the same wave: no second step";
  t.onCreated("prod", "c", kLight, SlotId{3}, "m", at + minutes(1));
  t.onStatus("prod", "c", "success", at + minutes(1) + seconds(5) - fine / 8);
  EXPECT_LT(*t.typicalDuration(kLight), seconds(5) - fine / 4) << "the next wave's (doubled)";
}

// A light task seen running at `running` and ended one end-poll interval later: a narrow
// bracket, which sets the floor the next probes stop above.
void endSeenNarrowly(TaskTracker& t, const std::string& id, MonotonicTime at, Duration running) {
  t.onCreated("prod", id, kLight, SlotId{1}, "m", at);
  t.onStatus("prod", id, "handling", at + running);
  t.onStatus("prod", id, "success", at + running + t.endPollInterval(kLight));
}

// A task of `tier` ended when the look aimed at the estimate sees it; the estimate after it.
Duration endAtTheEstimate(TaskTracker& t, size_t tier, const std::string& id, MonotonicTime at) {
  const Duration e = *t.typicalDuration(tier);
  t.onCreated("prod", id, tier, SlotId{2}, "m", at);
  t.onStatus("prod", id, "success", at + e);
  return *t.typicalDuration(tier);
}

// A task seen running close to its end sets a floor the next probes stop above (a look below it
// would find the next task running too); the floor sinks with each probe it stops.
TEST_F(TaskTrackerTest, ProbesStopAboveTheAgeATaskWasLastSeenRunningNearItsEnd) {
  std::vector<TierConfig> tiers = testTiers();
  tiers[kLight].expected_duration = seconds(5);
  TaskTracker t(cfg_, tiers);
  const Duration fine = t.endPollInterval(kLight);
  MonotonicTime at = kT0 + minutes(1);
  const Duration running = milliseconds(4990);
  endSeenNarrowly(t, "c", at, running);
  std::vector<Duration> estimates;
  for (int i = 0; i < 6; ++i) {
    at += minutes(1);
    estimates.push_back(endAtTheEstimate(t, kLight, "d" + std::to_string(i), at));
  }
  EXPECT_GT(estimates[2], running) << "three probes stopped above the floor";
  EXPECT_LT(estimates[5], running - fine / 2) << "the floor sank: shorter tasks are followed";
  EXPECT_TRUE(std::is_sorted(estimates.rbegin(), estimates.rend()));
}

// A hot reload keeps what steers the next probe with the tier, by name: a wave's second end
// after it still does not step the estimate again, and the floor still stops the probes.
TEST_F(TaskTrackerTest, AReloadKeepsTheWaveAndTheFloorWithTheirTier) {
  std::vector<TierConfig> tiers = testTiers();
  tiers[kLight].expected_duration = seconds(5);
  TaskTracker t(cfg_, tiers);
  MonotonicTime at = kT0 + minutes(1);
  endSeenNarrowly(t, "f", at, milliseconds(4990));
  at += minutes(1);
  const Duration e = *t.typicalDuration(kLight);
  t.onCreated("prod", "a", kLight, SlotId{2}, "m", at);
  t.onCreated("prod", "b", kLight, SlotId{3}, "m", at + milliseconds(100));
  t.onStatus("prod", "a", "success", at + e);
  const Duration after_first = *t.typicalDuration(kLight);
  ASSERT_LT(after_first, e) << "the wave's first end probed lower";
  std::vector<TierConfig> swapped{tiers[kLight], tiers[kHeavy]};
  t.reconfigure(cfg_, swapped);
  const size_t light = 0;
  ASSERT_EQ(t.typicalDuration(light), after_first);
  t.onStatus("prod", "b", "success", at + milliseconds(100) + after_first);
  EXPECT_EQ(*t.typicalDuration(light), after_first) << "the same wave across the reload";
  at += minutes(1);
  endAtTheEstimate(t, light, "n0", at);
  at += minutes(1);
  EXPECT_GT(endAtTheEstimate(t, light, "n1", at), milliseconds(4990)) << "the floor came across";
}

// Before any task of a tier has ended, the proxy knows nothing of its duration. While the
// tier's oldest task runs, younger ones likely do too: their client polls wait for spare tokens
// (likely running), and gate pressure looks only at the oldest. Once one has ended, each task
// is judged by its own likely end.
TEST_F(TaskTrackerTest, BeforeAnyEndOnlyTheOldestTaskOfATierIsWorthALook) {
  tracker_.onCreated("prod", "old", kHeavy, SlotId{1}, "m", kT0);
  tracker_.onCreated("prod", "young", kHeavy, SlotId{2}, "m", kT0 + seconds(1));
  tracker_.onCreated("other", "elsewhere", kHeavy, SlotId{3}, "m", kT0 + seconds(2));
  const MonotonicTime t = kT0 + seconds(10);
  EXPECT_FALSE(tracker_.likelyRunning("prod", "old", t));
  EXPECT_TRUE(tracker_.likelyRunning("prod", "young", t));
  EXPECT_FALSE(tracker_.likelyRunning("other", "elsewhere", t)) << "the oldest of its key";
  const std::optional<MonotonicTime> next = tracker_.nextGatePressureAt("prod", kHeavy, t);
  ASSERT_TRUE(next);
  EXPECT_EQ(*next, kT0 + seconds(5)) << "old's look, min_poll_interval after its creation";
  auto due = tracker_.dueForGatePressure("prod", kHeavy, t);
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].task_id, "old");
  auto done = tracker_.completePoll("prod", "old", detail("old", "success"), t);
  EXPECT_TRUE(done.release) << "old ended: its slot is free";
  // One ended task of 10 s (or so): young's likely end is about 11 s.
  EXPECT_TRUE(tracker_.likelyRunning("prod", "young", t + seconds(0)));
  EXPECT_FALSE(tracker_.likelyRunning("prod", "young", t + seconds(5)));
  due = tracker_.dueForGatePressure("prod", kHeavy, t + seconds(5));
  ASSERT_EQ(due.size(), 1u);
  EXPECT_EQ(due[0].task_id, "young");
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// tasks.hold_near_end asks whether a task likely ends within a short window from now, and
// until when a poll may wait for that end: two end-poll intervals past it.
TEST_F(TaskTrackerTest, HoldPollUntilOnlyOnceADurationIsEstimatedAndTheEndIsNear) {
  tracker_.onCreated("prod", "t", kLight, SlotId{1}, "m", kT0 + minutes(10));
  EXPECT_FALSE(tracker_.holdPollUntil("prod", "t", kT0 + minutes(10), seconds(30)))
      << "no task of the tier has ended yet";
  runLightTask(tracker_, "warm", kT0, seconds(8));  // one ended task is enough
  const std::optional<MonotonicTime> end =
      tracker_.likelyRunningUntil("prod", "t", kT0 + minutes(10));
  ASSERT_TRUE(end);
  const MonotonicTime until = *end + 2 * tracker_.endPollInterval(kLight);
  EXPECT_EQ(tracker_.holdPollUntil("prod", "t", *end - seconds(1), seconds(2)), until);
  EXPECT_EQ(tracker_.holdPollUntil("prod", "t", *end - seconds(2), seconds(2)), until);
  EXPECT_FALSE(tracker_.holdPollUntil("prod", "t", *end - seconds(3), seconds(2))) << "too early";
  EXPECT_FALSE(tracker_.holdPollUntil("prod", "t", *end, seconds(2))) << "already due";
  EXPECT_FALSE(tracker_.holdPollUntil("other", "t", *end - seconds(1), seconds(2)));
  tracker_.onStatus("prod", "t", "success", *end - seconds(3));
  EXPECT_FALSE(tracker_.holdPollUntil("prod", "t", *end - seconds(1), seconds(2))) << "ended";
}

}  // namespace
}  // namespace hiapi::core

namespace hiapi::core {
namespace {

// While polls are held for a task's end, the proxy looks itself: at the likely end, then every
// end-poll interval, each look in flight until answered.
TEST_F(TaskTrackerTest, HeldLooksComeAtTheLikelyEndAndThenEveryEndPollInterval) {
  const MonotonicTime t = kT0 + minutes(10);
  tracker_.onCreated("prod", "t", kLight, SlotId{1}, "m", t);
  EXPECT_FALSE(tracker_.nextHeldLookAt("prod", "t", t)) << "no duration estimate yet";
  runLightTask(tracker_, "warm", kT0, seconds(8));
  const std::optional<MonotonicTime> end = tracker_.likelyRunningUntil("prod", "t", t);
  ASSERT_TRUE(end);
  EXPECT_EQ(tracker_.nextHeldLookAt("prod", "t", t + seconds(1)), *end);
  EXPECT_FALSE(tracker_.startHeldLook("prod", "t", *end - milliseconds(1))) << "not due yet";
  const std::optional<TrackedTaskInfo> look = tracker_.startHeldLook("prod", "t", *end);
  ASSERT_TRUE(look);
  EXPECT_EQ(look->task_id, "t");
  EXPECT_FALSE(tracker_.nextHeldLookAt("prod", "t", *end)) << "in flight";
  EXPECT_FALSE(tracker_.startHeldLook("prod", "t", *end));
  EXPECT_EQ(tracker_.beginPoll("prod", "t", 7, *end).action, PollAction::Join);
  tracker_.completePoll("prod", "t", detail("t", "handling"), *end);
  const Duration fine = tracker_.endPollInterval(kLight);
  EXPECT_EQ(tracker_.nextHeldLookAt("prod", "t", *end), *end + fine);
  tracker_.onStatus("prod", "t", "success", *end + fine);
  EXPECT_FALSE(tracker_.nextHeldLookAt("prod", "t", *end + fine)) << "ended";
  EXPECT_FALSE(tracker_.nextHeldLookAt("prod", "stranger", *end)) << "not tracked";
}

// The plan of gate-pressure looks lists every candidate's next look, soonest first, and counts
// looks in flight apart (the scheduler reserves tokens for all of them).
TEST_F(TaskTrackerTest, GatePressurePlanListsEveryPlannedLook) {
  runLightTask(tracker_, "warm", kT0, seconds(8));
  const MonotonicTime t = kT0 + minutes(10);
  tracker_.onCreated("prod", "late", kLight, SlotId{1}, "m", t + seconds(1));
  tracker_.onCreated("prod", "early", kLight, SlotId{2}, "m", t);
  tracker_.onCreated("prod", "heavy", kHeavy, SlotId{3}, "m", t);
  tracker_.onCreated("other", "x", kLight, SlotId{4}, "m", t);
  const std::optional<MonotonicTime> early_end = tracker_.likelyRunningUntil("prod", "early", t);
  const std::optional<MonotonicTime> late_end = tracker_.likelyRunningUntil("prod", "late", t);
  ASSERT_TRUE(early_end && late_end);
  LookPlan plan = tracker_.gatePressurePlan("prod", kLight, t + seconds(2));
  EXPECT_EQ(plan.looks, (std::vector<MonotonicTime>{*early_end, *late_end}));
  EXPECT_EQ(plan.in_flight, 0u);
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t + seconds(2)), *early_end);
  ASSERT_EQ(tracker_.dueForGatePressure("prod", kLight, *early_end).size(), 1u);
  plan = tracker_.gatePressurePlan("prod", kLight, *early_end);
  EXPECT_EQ(plan.looks, (std::vector<MonotonicTime>{*late_end}));
  EXPECT_EQ(plan.in_flight, 1u);
  tracker_.onStatus("prod", "early", "success", *early_end);
  tracker_.completePoll("prod", "early", detail("early", "success"), *early_end);
  plan = tracker_.gatePressurePlan("prod", kLight, *early_end);
  // (The end seen moved the estimate, so late's likely end moved with it.)
  const std::optional<MonotonicTime> late_end2 =
      tracker_.likelyRunningUntil("prod", "late", *early_end);
  ASSERT_TRUE(late_end2);
  EXPECT_EQ(plan.looks, (std::vector<MonotonicTime>{*late_end2})) << "an ended task needs none";
  EXPECT_EQ(plan.in_flight, 0u);
}

// Before any task of a tier has ended, gate pressure looks at its oldest task every
// min_poll_interval; when the tier bounds the makespan (LearnPace::Eager), twice as often, and
// every 1/20 of the task's age once that is longer.
TEST_F(TaskTrackerTest, EagerGatePressureLooksMoreOftenBeforeAnyEndIsKnown) {
  LearnPace pace = LearnPace::Plain;
  tracker_.setLearnPace([&pace](const std::string&, size_t) { return pace; });
  const MonotonicTime t = kT0 + minutes(10);
  tracker_.onCreated("prod", "a", kLight, SlotId{1}, "m", t);
  const Duration interval = tracker_.endPollInterval(kLight);  // min_poll_interval: no end yet
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t), t + interval);
  EXPECT_TRUE(tracker_.dueForGatePressure("prod", kLight, t + interval / 2, 4).empty());
  pace = LearnPace::Eager;
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t), t + interval / 2);
  const MonotonicTime late = t + 20 * interval;
  ASSERT_EQ(tracker_.dueForGatePressure("prod", kLight, t + interval / 2, 4).size(), 1u);
  tracker_.completePoll("prod", "a", detail("a", "handling"), t + interval / 2);
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t + interval / 2), t + interval);
  // A long task: at 10 intervals of age, every half interval (1/20 of its age).
  ASSERT_EQ(tracker_.dueForGatePressure("prod", kLight, t + 10 * interval, 4).size(), 1u);
  tracker_.completePoll("prod", "a", detail("a", "handling"), t + 10 * interval);
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t + 10 * interval),
            t + 10 * interval + interval / 2);
  ASSERT_EQ(tracker_.dueForGatePressure("prod", kLight, late, 4).size(), 1u);
  tracker_.completePoll("prod", "a", detail("a", "handling"), late);
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, late), late + interval)
      << "never less often than min_poll_interval";
}

// Before any task of the tier has ended only the oldest is looked at, but once it is seen ended
// the tasks started with it are looked at at once: an eager plan counts them with it.
TEST_F(TaskTrackerTest, AnEagerPlanCountsTheTasksBehindTheOldestWithIt) {
  LearnPace pace = LearnPace::Plain;
  tracker_.setLearnPace([&pace](const std::string&, size_t) { return pace; });
  const MonotonicTime t = kT0 + minutes(10);
  tracker_.onCreated("prod", "a", kLight, SlotId{1}, "m", t);
  tracker_.onCreated("prod", "b", kLight, SlotId{2}, "m", t + milliseconds(1));
  const LookPlan plain = tracker_.gatePressurePlan("prod", kLight, t + milliseconds(1));
  ASSERT_EQ(plain.looks.size(), 1u) << "only the oldest";
  pace = LearnPace::Eager;
  const LookPlan eager = tracker_.gatePressurePlan("prod", kLight, t + milliseconds(1));
  ASSERT_EQ(eager.looks.size(), 2u);
  EXPECT_EQ(eager.looks[0], eager.looks[1]);
  EXPECT_EQ(eager.looks[0], *tracker_.nextGatePressureAt("prod", kLight, t));
}

// Where the budget binds (LearnPace::Sparse) a look that finds a task running costs a create its
// token: before any task of the tier has ended, the next look at its oldest (gate pressure's,
// and a client poll's fetch: the running detail stays fresh as long) comes half the task's age
// after the last, at least min_poll_interval after it. The first end is then bracketed widely:
// the estimate takes the bracket's upper end, so the next task is looked at after its end.
TEST_F(TaskTrackerTest, SparsePaceBacksOffWithTheAgeAndEstimatesFromTheUpperEnd) {
  tracker_.setLearnPace([](const std::string&, size_t) { return LearnPace::Sparse; });
  const MonotonicTime t = kT0 + minutes(10);
  const Duration interval = tracker_.endPollInterval(kLight);
  // Videos: their prior (60 s) lets the gaps grow to 15 s, past what this test reaches.
  tracker_.onCreated("prod", "a", kLight, SlotId{1}, "seedance-2-0", t);
  tracker_.onCreated("prod", "b", kLight, SlotId{2}, "seedance-2-0", t + interval / 2);
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, t), t + interval) << "young: the plain";
  // Looked at (by a client's poll) at 4 intervals of age: the next look 2 intervals later.
  const MonotonicTime first = t + 4 * interval;
  ASSERT_EQ(tracker_.beginPoll("prod", "a", 1, first).action, PollAction::Fetch);
  tracker_.completePoll("prod", "a", detail("a", "handling"), first);
  EXPECT_EQ(tracker_.nextGatePressureAt("prod", kLight, first), first + 2 * interval);
  EXPECT_EQ(tracker_.beginPoll("prod", "a", 2, first + 2 * interval - milliseconds(1)).action,
            PollAction::Hit)
      << "the running detail is fresh until then";
  EXPECT_EQ(tracker_.beginPoll("prod", "a", 3, first + 2 * interval).action, PollAction::Fetch);
  const MonotonicTime seen = first + 2 * interval;
  tracker_.onStatus("prod", "a", "success", seen);
  tracker_.completePoll("prod", "a", detail("a", "success"), seen);
  // Ended in (4, 6] intervals of age: estimated at 6, so b (half an interval younger) likely
  // runs until 6.5 intervals after t.
  EXPECT_EQ(tracker_.likelyRunningUntil("prod", "b", seen), t + interval / 2 + 6 * interval);
}

}  // namespace
}  // namespace hiapi::core
