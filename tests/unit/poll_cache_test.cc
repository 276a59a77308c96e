#include "hiapi/core/poll_cache.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::seconds;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);

CachedReply reply(size_t body_bytes) {
  CachedReply r;
  r.headers = {{"Content-Type", "application/json"}};
  r.body.assign(body_bytes, 'x');
  return r;
}

TEST(PollCache, ChargesBodyHeadersAndOverhead) {
  EXPECT_EQ(PollCache::cost(reply(100)), 128u + 100u + 32u + 12u + 16u);
}

TEST(PollCache, OneFetchForManyWaitersThenAHitWhenFresh) {
  TaskRegistry reg;
  PollCache cache;
  TaskRecord& r = reg.findOrCreate("prod", "tk", 0, kT0);
  EXPECT_EQ(cache.begin(r, 1, false, kT0).action, PollAction::Fetch);
  EXPECT_EQ(cache.begin(r, 2, false, kT0).action, PollAction::Join);
  EXPECT_EQ(cache.begin(r, 3, false, kT0).action, PollAction::Join);
  EXPECT_TRUE(PollCache::cancel(r, 2));
  EXPECT_FALSE(PollCache::cancel(r, 2));
  EXPECT_EQ(PollCache::finish(r), (std::vector<uint64_t>{1, 3}));
  EXPECT_FALSE(r.in_flight);
  cache.store(r, reply(10), kT0, "handling", false, 1 << 20);
  const PollDecision hit = cache.begin(r, 4, true, kT0 + seconds(2));
  EXPECT_EQ(hit.action, PollAction::Hit);
  EXPECT_EQ(hit.age, seconds(2));
  EXPECT_EQ(hit.reply->body, std::string(10, 'x'));
  EXPECT_EQ(cache.begin(r, 5, false, kT0 + seconds(9)).action, PollAction::Fetch);  // stale
}

TEST(PollCache, StoreAndDropKeepTheAccounts) {
  TaskRegistry reg;
  PollCache cache;
  TaskRecord& r = reg.findOrCreate("prod", "tk", 0, kT0);
  cache.store(r, reply(100), kT0, "success", true, 1 << 20);
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), PollCache::cost(reply(100)));
  EXPECT_TRUE(r.reply_terminal);
  cache.store(r, reply(50), kT0, "", false, 1 << 20);  // replaces
  EXPECT_EQ(cache.entries(), 1u);
  EXPECT_EQ(cache.bytes(), PollCache::cost(reply(50)));
  cache.store(r, reply(5000), kT0, "", false, 1000);  // too big alone: not cached
  EXPECT_EQ(cache.entries(), 0u);
  EXPECT_FALSE(r.reply);
  cache.drop(r);
  EXPECT_EQ(cache.bytes(), 0u);
}

TEST(PollCache, BoundsSpareWaitersAndSlotHolders) {
  TaskRegistry reg;
  PollCache cache;
  TaskRecord& waited = reg.findOrCreate("prod", "waited", 0, kT0);
  cache.begin(waited, 1, false, kT0);
  TaskRecord& holder = reg.findOrCreate("prod", "holder", 0, kT0);
  holder.slot = SlotId{1};
  cache.store(holder, reply(100), kT0, "", false, 1 << 20);
  TaskRecord& plain = reg.findOrCreate("prod", "plain", 0, kT0);
  cache.store(plain, reply(100), kT0, "", false, 1 << 20);
  // One record and no bytes allowed: the plain one goes, the holder keeps its record only.
  EXPECT_EQ(cache.enforceBounds(reg, 1, 0), 2u);
  EXPECT_EQ(reg.find("prod", "plain"), nullptr);
  ASSERT_NE(reg.find("prod", "holder"), nullptr);
  EXPECT_FALSE(reg.find("prod", "holder")->reply);
  EXPECT_NE(reg.find("prod", "waited"), nullptr);
  EXPECT_EQ(cache.bytes(), 0u);
}

}  // namespace
}  // namespace hiapi::core
