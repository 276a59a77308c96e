#pragma once
// How a passthrough key is named. Its identity is "pt-" and the 64 hex digits of a keyed hash of
// the whole key (shell/key_identity.h): the limiter, the task tracker and the poll cache keep
// their state under it, so two keys share state only if their hashes agree in full. Logs,
// metrics and /status show a shorter display name, a prefix of the same hash: it tells keys
// apart for a reader, and nothing rests on it.

#include <string_view>

namespace hiapi::core {

inline constexpr std::string_view kPassthroughPrefix = "pt-";
/// Hex digits of a passthrough key's identity (HMAC-SHA256).
inline constexpr size_t kPassthroughHexDigits = 64;
/// Hex digits shown in its display name.
inline constexpr size_t kDisplayHexDigits = 12;

/// @return @p key_name as logs, metrics and /status show it: a passthrough identity cut to
///         "pt-" and 12 hex digits, any other name (a configured key's) as it is.
///         Thread-safety: pure.
inline std::string_view keyDisplayName(std::string_view key_name) {
  if (key_name.size() == kPassthroughPrefix.size() + kPassthroughHexDigits &&
      key_name.substr(0, kPassthroughPrefix.size()) == kPassthroughPrefix) {
    return key_name.substr(0, kPassthroughPrefix.size() + kDisplayHexDigits);
  }
  return key_name;
}

}  // namespace hiapi::core
