#include "hiapi/core/task_registry.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::seconds;

const MonotonicTime kT0 = MonotonicTime{} + std::chrono::hours(1);

std::vector<std::string> lruIds(const TaskRegistry& reg) {
  std::vector<std::string> out;
  for (const TaskRecord* r : reg.lru()) {
    out.push_back(r->id->second);
  }
  return out;
}

TEST(TaskRegistry, RecordsAreMadeOnceAndKeptPerKey) {
  TaskRegistry reg;
  TaskRecord& a = reg.findOrCreate("prod", "tk-1", 1, kT0);
  EXPECT_EQ(a.tier, 1u);
  EXPECT_EQ(a.created, kT0);
  EXPECT_FALSE(a.tracked);
  a.tier = 0;
  EXPECT_EQ(&reg.findOrCreate("prod", "tk-1", 1, kT0 + seconds(1)), &a);
  EXPECT_EQ(a.tier, 0u);
  EXPECT_EQ(reg.find("batch", "tk-1"), nullptr);  // another key's task is another record
  EXPECT_TRUE(reg.hasRecords("prod"));
  EXPECT_FALSE(reg.hasRecords("batch"));
  EXPECT_FALSE(reg.hasRecords("pro"));
}

TEST(TaskRegistry, TouchAndEraseKeepTheLruOrder) {
  TaskRegistry reg;
  for (const char* id : {"a", "b", "c"}) {
    reg.findOrCreate("prod", id, 0, kT0);
  }
  reg.touch(*reg.find("prod", "a"));
  EXPECT_EQ(lruIds(reg), (std::vector<std::string>{"b", "c", "a"}));
  reg.erase(*reg.find("prod", "c"));
  EXPECT_EQ(lruIds(reg), (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(reg.size(), 2u);
  // Moving the registry keeps records and LRU nodes together.
  TaskRegistry moved = std::move(reg);
  moved.touch(*moved.find("prod", "b"));
  EXPECT_EQ(lruIds(moved), (std::vector<std::string>{"a", "b"}));
}

TEST(TaskRegistry, SlotsAreForgottenPerKeyOrOnlyWhenUnambiguous) {
  TaskRegistry reg;
  reg.findOrCreate("prod", "a", 0, kT0).slot = SlotId{1};
  reg.findOrCreate("batch", "b", 0, kT0).slot = SlotId{1};
  reg.findOrCreate("batch", "c", 0, kT0).slot = SlotId{2};
  EXPECT_EQ(reg.forgetSlot(SlotId{1}), 0u);  // two keys hold slot 1
  EXPECT_FALSE(reg.forgetSlot("prod", SlotId{2}));
  EXPECT_TRUE(reg.forgetSlot("prod", SlotId{1}));
  EXPECT_FALSE(reg.find("prod", "a")->slot);
  EXPECT_EQ(reg.forgetSlot(SlotId{1}), 1u);
  EXPECT_FALSE(reg.find("batch", "b")->slot);
}

TEST(TaskRegistry, SlotHoldersComeOldestFirst) {
  TaskRegistry reg;
  reg.findOrCreate("prod", "late", 0, kT0 + seconds(5)).slot = SlotId{1};
  reg.findOrCreate("prod", "early", 0, kT0).slot = SlotId{2};
  reg.findOrCreate("prod", "none", 0, kT0);
  const std::vector<const TaskRecord*> holders = reg.slotHolders();
  ASSERT_EQ(holders.size(), 2u);
  EXPECT_EQ(holders[0]->id->second, "early");
  EXPECT_EQ(holders[1]->id->second, "late");
}

}  // namespace
}  // namespace hiapi::core
