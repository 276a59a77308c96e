#pragma once
// TierMatcher: model name (plus the body's `route` or a legacy `@route` suffix) to a tier index.
//
// Tiers are tried in order; the first that matches wins. A tier matches when
//   - one of its `models` globs (`*` any run, `?` one character, case-insensitive) matches the
//     full model name (`x@pro`) or its base name (`x`, the part before the last `@`), or
//   - one of its `routes` (case-insensitive) equals the body route or the `@route` suffix.
// When no tier matches, the LAST tier is the fallback (the default config ends with light `*`).

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hiapi/core/config.h"

namespace hiapi::core {

/// @return whether @p glob (with `*` and `?`) matches all of @p text, ignoring ASCII case.
/// Thread-safety: pure.
bool globMatch(std::string_view glob, std::string_view text);

/// The default tiers, from HiAPI's guide: heavy (video models, `@pro` / `-pro` images; 2 running,
/// 20 min lease) then light (everything else; 5 running, 5 min lease). The config parser uses
/// these when `limits.tiers` is absent. Thread-safety: pure.
std::vector<TierConfig> defaultTiers();

/// Thread-safety: immutable after construction; safe to share for reading.
class TierMatcher {
public:
  /// @param tiers ordered tiers; when empty, defaultTiers() are used.
  explicit TierMatcher(std::vector<TierConfig> tiers);

  /// @param model the body's `model` (may carry `@route`)
  /// @param route the body's `route`, if any
  /// @return the index of the first matching tier, or the last index when none matches.
  size_t match(std::string_view model, std::optional<std::string_view> route = std::nullopt) const;

  /// @return the number of tiers (>= 1).
  size_t size() const { return tiers_.size(); }
  /// @return tier @p i's config.
  const TierConfig& tier(size_t i) const { return tiers_.at(i); }
  const std::vector<TierConfig>& tiers() const { return tiers_; }
  /// @return the index of the tier named @p name (exact), or nullopt.
  std::optional<size_t> indexOf(std::string_view name) const;

private:
  std::vector<TierConfig> tiers_;
};

}  // namespace hiapi::core
