#pragma once
// The identity of a passthrough key: "pt-" + HMAC-SHA256(secret, whole key) in hex. Keyed, so
// nobody without the secret can search for two keys with one name; in full, so two keys share
// limiter, task and poll-cache state only if their 256-bit hashes agree.
//
// The secret lives beside the task state file when there is one (tasks restored after a restart
// stay under their keys' names), else it is drawn for this process.

#include <array>
#include <optional>
#include <string>
#include <string_view>

#include "hiapi/shell/log.h"

namespace hiapi::shell {

/// Thread-safety: immutable after construction; nameOf() may run on any thread.
class KeyIdentity {
public:
  /// A secret drawn for this process.
  KeyIdentity();
  /// The secret in @p path (32 bytes, made 0600 when missing).
  /// @return nullopt, with the reason in @p error, when it can be neither read nor made.
  static std::optional<KeyIdentity> fromFile(const std::string& path, std::string& error);

  /// @return "pt-" and 64 hex digits for @p key (the whole key, as the client sent it).
  std::string nameOf(std::string_view key) const;

private:
  std::array<unsigned char, 32> secret_{};
};

}  // namespace hiapi::shell
