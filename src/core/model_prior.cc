#include "hiapi/core/model_prior.h"

#include <algorithm>
#include <array>
#include <string>

#include "hiapi/core/http_rules.h"

namespace hiapi::core {

ModelClass modelClass(std::string_view model) {
  const std::string m = asciiLowerCopy(model.substr(0, model.rfind('@')));
  // Substrings that only video model names carry; the families are those HiAPI's docs and
  // model list name (seedance, happyhorse, wan*-video) and the video families other gateways
  // serve under their own names.
  static constexpr std::array<std::string_view, 10> kVideo = {
      "video", "t2v", "i2v", "seedance", "happyhorse", "veo", "kling", "hailuo", "sora", "vidu"};
  for (std::string_view marker : kVideo) {
    if (m.find(marker) != std::string::npos) {
      return ModelClass::Video;
    }
  }
  return ModelClass::Image;
}

Duration classPrior(ModelClass c) {
  return c == ModelClass::Video ? std::chrono::seconds(60) : std::chrono::seconds(8);
}

Duration modelPrior(std::string_view model, std::string_view tier_name) {
  return classPrior(modelClass(model.empty() ? tier_name : model));
}

Duration tierPrior(const TierConfig& tier) {
  Duration prior = modelPrior({}, tier.name);
  for (const std::string& glob : tier.models) {
    prior = std::max(prior, modelPrior(glob));
  }
  return prior;
}

}  // namespace hiapi::core
