#include "hiapi/core/tier_matcher.h"

#include "hiapi/core/http_rules.h"

#include <cctype>

namespace hiapi::core {

namespace {

char lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }


}  // namespace

bool globMatch(std::string_view glob, std::string_view text) {
  // Iterative matcher with single-star backtracking: O(|glob| * |text|) worst case.
  size_t g = 0;
  size_t t = 0;
  size_t star = std::string_view::npos;
  size_t star_text = 0;
  while (t < text.size()) {
    if (g < glob.size() && (glob[g] == '?' || (glob[g] != '*' && lower(glob[g]) == lower(text[t])))) {
      ++g;
      ++t;
    } else if (g < glob.size() && glob[g] == '*') {
      star = g++;
      star_text = t;
    } else if (star != std::string_view::npos) {
      g = star + 1;
      t = ++star_text;
    } else {
      return false;
    }
  }
  while (g < glob.size() && glob[g] == '*') {
    ++g;
  }
  return g == glob.size();
}

std::vector<TierConfig> defaultTiers() {
  return defaultTierConfigs();  // one list of defaults, kept with the config
}

TierMatcher::TierMatcher(std::vector<TierConfig> tiers) : tiers_(std::move(tiers)) {
  if (tiers_.empty()) {
    tiers_ = defaultTiers();
  }
}

std::optional<size_t> TierMatcher::indexOf(std::string_view name) const {
  for (size_t i = 0; i < tiers_.size(); ++i) {
    if (tiers_[i].name == name) {
      return i;
    }
  }
  return std::nullopt;
}

size_t TierMatcher::match(std::string_view model, std::optional<std::string_view> route) const {
  std::string_view base = model;
  std::optional<std::string_view> suffix_route;
  if (const size_t at = model.rfind('@'); at != std::string_view::npos) {
    base = model.substr(0, at);
    suffix_route = model.substr(at + 1);
  }
  for (size_t i = 0; i < tiers_.size(); ++i) {
    const TierConfig& tier = tiers_[i];
    for (const std::string& r : tier.routes) {
      if ((route && !route->empty() && iequals(r, *route)) ||
          (suffix_route && !suffix_route->empty() && iequals(r, *suffix_route))) {
        return i;
      }
    }
    for (const std::string& pattern : tier.models) {
      if (globMatch(pattern, model) || (base.size() != model.size() && globMatch(pattern, base))) {
        return i;
      }
    }
  }
  return tiers_.size() - 1;
}

}  // namespace hiapi::core
