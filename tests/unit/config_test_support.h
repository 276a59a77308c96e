#pragma once
// What the config tests share: a fake environment for ${VAR} expansion, and parsing that
// asserts where an error points.

#include <gtest/gtest.h>

#include <map>
#include <optional>
#include <string>

#include "hiapi/core/config.h"

namespace hiapi::core::config_testing {

/// The environment ${VAR}s expand from in these tests (testEnv reads it).
inline std::map<std::string, std::string>& fakeEnv() {
  static std::map<std::string, std::string> env;
  return env;
}

inline std::optional<std::string> testEnv(const std::string& name) {
  auto it = fakeEnv().find(name);
  if (it == fakeEnv().end()) {
    return std::nullopt;
  }
  return it->second;
}

/// @return the error parsing @p yaml as @p file raises; fails the test when there is none.
inline ConfigError parseError(const std::string& yaml, const std::string& file) {
  try {
    parseConfig(yaml, file, &testEnv);
  } catch (const ConfigError& e) {
    return e;
  }
  ADD_FAILURE() << "expected a ConfigError for:\n" << yaml;
  return ConfigError("", 0, 0, "", "");
}

/// Asserts that parsing @p yaml as @p file reports, among its errors, one at @p line:@p col on
/// @p path whose message contains @p part, and that the first one is printed as
/// "<file name>:line:col: path: ...".
inline void expectErrorIn(const std::string& file, const std::string& yaml, int line, int col,
                          const std::string& path, const std::string& part) {
  SCOPED_TRACE(yaml);
  const ConfigError e = parseError(yaml, file);
  bool found = false;
  for (const ConfigError& one : e.all()) {
    found = found || (one.line() == line && one.column() == col && one.keyPath() == path &&
                      one.message().find(part) != std::string::npos);
  }
  EXPECT_TRUE(found) << e.what();
}

}  // namespace hiapi::core::config_testing
