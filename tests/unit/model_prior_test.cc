#include "hiapi/core/model_prior.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::seconds;

TEST(ModelPrior, HiApisVideoModelsAreVideosAndTheRestImages) {
  // The heavy video models HiAPI's docs name, with versions, routes and case as clients send them.
  for (const std::string m : {"seedance-2-0", "seedance-2.0", "seedance-2.5/fast", "Seedance-2.0@pro",
                              "wan2.7-video/t2v", "happyhorse-1-0", "veo-3", "kling-v2",
                              "hailuo-02", "sora-2", "vidu-q1", "wan2.2-i2v"}) {
    EXPECT_EQ(modelClass(m), ModelClass::Video) << m;
    EXPECT_EQ(modelPrior(m), seconds(60)) << m;
  }
  for (const std::string m : {"gpt-image-2", "Nano-Banana", "Nano-Banana-Pro", "flux@pro",
                              "seedream-4", "x-pro/y", ""}) {
    EXPECT_EQ(modelClass(m), ModelClass::Image) << m;
    EXPECT_EQ(modelPrior(m), seconds(8)) << m;
  }
  // A route suffix says nothing of the class: `video@pro` would not make an image a video.
  EXPECT_EQ(modelClass("gpt-image-2@video"), ModelClass::Image);
}

TEST(ModelPrior, WithoutAModelTheTiersNameTells) {
  EXPECT_EQ(modelPrior("", "video"), seconds(60));
  EXPECT_EQ(modelPrior("", "heavy"), seconds(8));
  EXPECT_EQ(modelPrior("gpt-image-2", "video"), seconds(8));  // the model wins
}

TEST(ModelPrior, ATierWithAnyVideoModelIsAVideoTier) {
  TierConfig heavy;
  heavy.name = "heavy";
  heavy.models = {"gpt-image-2.5-flare/text-to-image@pro", "wan2.7-video/*"};
  EXPECT_EQ(tierPrior(heavy), seconds(60));
  heavy.models = {"*@pro", "*-pro"};
  EXPECT_EQ(tierPrior(heavy), seconds(8));
  TierConfig light;
  light.name = "light";
  light.models = {"*"};
  EXPECT_EQ(tierPrior(light), seconds(8));
  TierConfig video;  // no models: its name tells
  video.name = "video";
  EXPECT_EQ(tierPrior(video), seconds(60));
  EXPECT_EQ(tierPrior(defaultTierConfigs().front()), seconds(60));  // the default heavy tier
}

}  // namespace
}  // namespace hiapi::core
