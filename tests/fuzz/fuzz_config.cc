// Fuzz target for the YAML configuration: the loader with its validation, and what a reload
// judges before it applies a file (its sections, and refusing an empty or partial file). Anything
// must become a Config or a ConfigError, never a crash or another exception.
// Built as a libFuzzer binary with clang (-DHIAPI_FUZZ=ON), and always as a replay test over the
// checked-in seed corpus and its mutations (tests/fuzz/corpus/config).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "hiapi/core/config.h"
#include "hiapi/core/config_reload.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hiapi::core;
  const std::string in(reinterpret_cast<const char*>(data), size);
  // checkReloadable reads the sections itself (configSections): a YAML parse is this target's
  // whole cost, so no input is parsed more often than the daemon would.
  try {
    checkReloadable(in, "fuzz.yaml", {"listen", "upstream"});
  } catch (const ConfigError&) {
  }
  try {
    (void)parseConfig(in, "fuzz.yaml", [](const std::string&) -> std::optional<std::string> {
      return std::string("sk-fuzz");
    });
  } catch (const ConfigError&) {
  }
  return 0;
}
