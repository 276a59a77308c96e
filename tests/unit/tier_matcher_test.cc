#include "hiapi/core/tier_matcher.h"

#include <gtest/gtest.h>

#include <string>
#include <tuple>

namespace hiapi::core {
namespace {

TEST(Glob, Basics) {
  EXPECT_TRUE(globMatch("*", ""));
  EXPECT_TRUE(globMatch("*", "anything"));
  EXPECT_TRUE(globMatch("a?c", "abc"));
  EXPECT_FALSE(globMatch("a?c", "ac"));
  EXPECT_TRUE(globMatch("seedance-*", "Seedance-2.0"));
  EXPECT_TRUE(globMatch("*-PRO", "flux-1.1-pro"));
  EXPECT_FALSE(globMatch("*-pro", "flux-1.1-pro-x"));
  EXPECT_TRUE(globMatch("*-pro/*", "seedream-pro/text"));
  EXPECT_TRUE(globMatch("a*b*c", "aXXbYYbZc"));
  EXPECT_FALSE(globMatch("a*b*c", "aXXbYY"));
  EXPECT_TRUE(globMatch("**x", "abx"));
  EXPECT_FALSE(globMatch("", "a"));
  EXPECT_TRUE(globMatch("", ""));
}

// model, body route, expected tier name with the default tiers
class DefaultTiers
    : public ::testing::TestWithParam<std::tuple<std::string, std::string, std::string>> {};

TEST_P(DefaultTiers, Match) {
  const auto& [model, route, expected] = GetParam();
  TierMatcher m(defaultTiers());
  std::optional<std::string_view> r;
  if (!route.empty()) {
    r = route;
  }
  EXPECT_EQ(m.tier(m.match(model, r)).name, expected) << model << " route=" << route;
}

INSTANTIATE_TEST_SUITE_P(
    Models, DefaultTiers,
    ::testing::Values(
        std::make_tuple("seedance-2-0", "", "heavy"), std::make_tuple("seedance-2.0", "", "heavy"),
        std::make_tuple("seedance-2.5/i2v", "", "heavy"),
        std::make_tuple("SEEDANCE-1.0-lite", "", "heavy"),
        std::make_tuple("wan2.7-video/t2v", "", "heavy"),
        std::make_tuple("wan2.7-image/edit", "", "light"),
        std::make_tuple("happyhorse-1-0", "", "heavy"), std::make_tuple("veo-3.1/fast", "", "heavy"),
        std::make_tuple("kling-3.0-master", "", "heavy"),
        std::make_tuple("hailuo-2.3/pro", "", "heavy"),
        std::make_tuple("Nano-Banana-Pro", "", "heavy"), std::make_tuple("Nano-Banana", "", "light"),
        std::make_tuple("Nano-Banana", "pro", "heavy"), std::make_tuple("Nano-Banana", "PRO", "heavy"),
        std::make_tuple("Nano-Banana", "beta", "light"),
        std::make_tuple("gpt-image-2", "", "light"),
        std::make_tuple("gpt-image-2/text-to-image", "", "light"),
        std::make_tuple("gpt-image-2.5-flare/text-to-image@pro", "", "heavy"),
        std::make_tuple("gpt-image-2@default", "", "light"),
        std::make_tuple("seedream-5.0-pro", "", "heavy"),
        std::make_tuple("seedream-5.0-pro@beta", "", "heavy"),
        std::make_tuple("flux-1.1-pro", "", "heavy"), std::make_tuple("flux-2/dev", "", "light"),
        std::make_tuple("qwen-image-edit", "", "light"), std::make_tuple("", "", "light")));

TEST(TierMatcher, DefaultTierSettings) {
  auto tiers = defaultTiers();
  ASSERT_EQ(tiers.size(), 2u);
  EXPECT_EQ(tiers[0].name, "heavy");
  EXPECT_EQ(tiers[0].max_running, 2u);
  EXPECT_EQ(tiers[0].lease, std::chrono::minutes(20));
  EXPECT_EQ(tiers[0].routes, std::vector<std::string>{"pro"});
  EXPECT_EQ(tiers[1].name, "light");
  EXPECT_EQ(tiers[1].max_running, 5u);
  EXPECT_EQ(tiers[1].lease, std::chrono::minutes(5));
  EXPECT_EQ(tiers[1].models, std::vector<std::string>{"*"});
}

TEST(TierMatcher, FirstMatchWinsAndLastIsFallback) {
  TierConfig a{"a", {"x-*"}, {}, 1, std::chrono::minutes(1), std::chrono::seconds(2)};
  TierConfig b{"b", {"x-1"}, {"beta"}, 2, std::chrono::minutes(1), std::chrono::seconds(2)};
  TierConfig c{"c", {"y"}, {}, 3, std::chrono::minutes(1), std::chrono::seconds(2)};
  TierMatcher m({a, b, c});
  EXPECT_EQ(m.match("x-1"), 0u);
  EXPECT_EQ(m.match("nothing"), 2u);  // fallback: last tier even though its pattern differs
  EXPECT_EQ(m.match("nothing@beta"), 1u);
  EXPECT_EQ(m.match("nothing", std::string_view("beta")), 1u);
  EXPECT_EQ(m.match("y@whatever"), 2u);  // base name match
  EXPECT_EQ(m.indexOf("b"), 1u);
  EXPECT_FALSE(m.indexOf("zz"));
}

TEST(TierMatcher, EmptyConfigMeansDefaults) {
  TierMatcher m({});
  EXPECT_EQ(m.size(), 2u);
  EXPECT_EQ(m.tier(m.match("veo-3")).name, "heavy");
}

}  // namespace
}  // namespace hiapi::core
