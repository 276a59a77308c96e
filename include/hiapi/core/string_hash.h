#pragma once
// A hash for std::string keys that also takes std::string_view (with std::equal_to<>): lookups
// in an unordered container by a view, without building a string first.

#include <cstddef>
#include <functional>
#include <string_view>

namespace hiapi::core {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view v) const { return std::hash<std::string_view>{}(v); }
};

}  // namespace hiapi::core
