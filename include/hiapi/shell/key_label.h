#pragma once
// The label of a passthrough key (one a client sends that the configuration does not name):
// "pt-" and 8 hex digits of HMAC-SHA256 under a secret of this installation. Keyed, so that the
// label says nothing about the key to whoever reads logs or metrics, and keys that differ in one
// character get unrelated labels; stable across restarts when the secret is kept in a file, so
// that saved tasks and dashboards keep their key.

#include <string>

#include "hiapi/core/config.h"
#include "hiapi/shell/log.h"

namespace hiapi::shell {

/// Thread-safety: label() is const and safe from any thread.
class KeyLabeler {
public:
  /// @param secret the HMAC key (any bytes; 32 random ones in practice)
  explicit KeyLabeler(std::string secret) : secret_(std::move(secret)) {}

  /// @return "pt-" and the first 8 hex digits of HMAC-SHA256(secret, key).
  std::string label(const core::Secret& key) const;

  /// The installation's secret: read from @p path (64 hex digits), or made (32 random bytes) and
  /// written there (mode 0600, atomically) when the file does not exist. With an empty @p path,
  /// or when the file can be neither read nor written, a secret for this process alone (logged).
  static std::string loadOrCreateSecret(const std::string& path, Logger& log);

private:
  std::string secret_;
};

}  // namespace hiapi::shell
