#pragma once
// modelPrior: what a task of a model is likely to take before the proxy has seen any end of its
// tier, from the model's class.
//
// HiAPI documents images at 8–30 s and videos at one to several minutes. The prior is the LOWER
// end of its class (8 s, 60 s): it only bounds how far apart the first wave's looks may drift
// (sparseLookGap), never holds a look back, so a model that runs shorter than its class loses
// nothing and one that runs longer is seen ended within a quarter of its class's shortest
// duration. A model whose class cannot be told is taken as an image: the shorter prior keeps
// looks closer together, which costs a few tokens rather than a late end.
// Thread-safety: pure.

#include <string_view>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"

namespace hiapi::core {

enum class ModelClass { Image, Video };

/// @return Video when @p model (case-insensitive; a `@route` suffix is ignored) names a video
///         model — `video`, `t2v`/`i2v` in its name, or a family HiAPI serves only as video
///         (seedance, happyhorse, veo, kling, hailuo, sora, vidu) — else Image.
ModelClass modelClass(std::string_view model);

/// @return the prior of @p c: 8 s for images, 60 s for videos.
Duration classPrior(ModelClass c);

/// @return classPrior(modelClass(model)); when @p model is empty (a task restored without its
///         create), the class of @p tier_name instead (a tier named `video` is a video tier).
Duration modelPrior(std::string_view model, std::string_view tier_name = {});

/// @return the longest prior among @p tier's model globs (a tier with any video model is a
///         video tier: its waves are the long ones), or its name's when it has no models.
Duration tierPrior(const TierConfig& tier);

}  // namespace hiapi::core
