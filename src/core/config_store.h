#pragma once
// The `store:` section's parser (config_store.cc), called by the YAML walk in config.cc.
// Private to src/core.

#include <filesystem>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "hiapi/core/config.h"

namespace hiapi::core::detail {

/// Where the section sits and what it may read.
struct StoreSectionContext {
  std::string file;                 ///< the config file (for messages)
  std::filesystem::path base_dir;   ///< relative paths are resolved against it
  EnvLookup env;                    ///< ${VAR} lookup (never nullptr)
};

/// Parses the `store:` map into @p out. Every error found is appended to @p errors (file, line,
/// column and key path); nothing is thrown.
void parseStoreSection(const YAML::Node& key, const YAML::Node& value, const std::string& path,
                       const StoreSectionContext& ctx, StoreConfig& out,
                       std::vector<ConfigError>& errors);

}  // namespace hiapi::core::detail
