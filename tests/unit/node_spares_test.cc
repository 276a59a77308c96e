#include "hiapi/core/node_spares.h"

#include <string>
#include <unordered_map>
#include <unordered_set>

#include <gtest/gtest.h>

namespace hiapi::core {
namespace {

using Map = std::unordered_map<uint64_t, std::string>;
using Set = std::unordered_set<uint64_t>;

TEST(NodeSpares, AnErasedEntryIsGoneAndItsNodeIsKept) {
  Map m;
  NodeSpares<Map> spares(4);
  spares.put(m, 1, std::string("one"));
  spares.put(m, 2, std::string("two"));
  EXPECT_TRUE(spares.erase(m, 1));
  EXPECT_FALSE(spares.erase(m, 1));  // already gone
  EXPECT_EQ(m.count(1), 0u);
  EXPECT_EQ(m.at(2), "two");
  EXPECT_EQ(spares.kept(), 1u);
}

TEST(NodeSpares, PutReusesAKeptNodeWithTheNewKeyAndValue) {
  Map m;
  NodeSpares<Map> spares(4);
  spares.put(m, 1, std::string("one"));
  const auto* node_value = &m.at(1);
  spares.erase(m, m.find(1));
  std::string& v = spares.put(m, 7, std::string("seven"));
  EXPECT_EQ(spares.kept(), 0u);
  EXPECT_EQ(&v, node_value);  // the same node, so the same value object
  EXPECT_EQ(m.at(7), "seven");
  EXPECT_EQ(m.count(1), 0u);
  EXPECT_EQ(m.size(), 1u);
}

TEST(NodeSpares, ReuseHandsBackTheOldValueWithWhatItOwns) {
  Map m;
  NodeSpares<Map> spares(4);
  spares.reuse(m, 1).assign(200, 'x');
  const size_t capacity = m.at(1).capacity();
  spares.erase(m, 1);
  std::string& v = spares.reuse(m, 2);
  EXPECT_EQ(v.size(), 200u);  // the caller resets it
  v.clear();
  EXPECT_EQ(v.capacity(), capacity);
  EXPECT_EQ(m.count(2), 1u);
  // With nothing kept it is a fresh, value-initialised entry.
  EXPECT_TRUE(spares.reuse(m, 3).empty());
}

TEST(NodeSpares, KeepsNoMoreThanItsBound) {
  Map m;
  NodeSpares<Map> spares(2);
  for (uint64_t k = 0; k < 5; ++k) {
    spares.put(m, k, std::to_string(k));
  }
  for (uint64_t k = 0; k < 5; ++k) {
    spares.erase(m, k);
  }
  EXPECT_TRUE(m.empty());
  EXPECT_EQ(spares.kept(), 2u);
  NodeSpares<Map> none(0);
  none.put(m, 1, std::string("a"));
  none.erase(m, 1);
  EXPECT_EQ(none.kept(), 0u);
  EXPECT_TRUE(m.empty());
}

TEST(NodeSpares, ASetInsertsIntoKeptNodesAndRefusesADuplicate) {
  Set s;
  NodeSpares<Set> spares(4);
  EXPECT_TRUE(spares.insert(s, 1));
  EXPECT_TRUE(spares.insert(s, 2));
  spares.erase(s, 1);
  EXPECT_EQ(spares.kept(), 1u);
  EXPECT_FALSE(spares.insert(s, 2));  // already there: the kept node stays kept
  EXPECT_EQ(spares.kept(), 1u);
  EXPECT_TRUE(spares.insert(s, 9));
  EXPECT_EQ(spares.kept(), 0u);
  EXPECT_EQ(s, (Set{2, 9}));
}

}  // namespace
}  // namespace hiapi::core
