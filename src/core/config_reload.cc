#include "hiapi/core/config_reload.h"

#include <algorithm>

#include <yaml-cpp/yaml.h>

#include "hiapi/core/config.h"

namespace hiapi::core {

std::vector<std::string> configSections(const std::string& yaml_text) {
  std::vector<std::string> out;
  try {
    const YAML::Node root = YAML::Load(yaml_text);
    if (!root.IsMap()) {
      return out;
    }
    for (const auto& kv : root) {
      if (kv.first.IsScalar()) {
        out.push_back(kv.first.Scalar());
      }
    }
  } catch (const YAML::Exception&) {
    out.clear();  // the parser proper reports it, with its line
  }
  return out;
}

void checkReloadable(const std::string& yaml_text, const std::string& file,
                     const std::vector<std::string>& running_sections) {
  const std::vector<std::string> now = configSections(yaml_text);
  if (now.empty() && yaml_text.find_first_not_of(" \t\r\n") == std::string::npos) {
    throw ConfigError(file, 0, 0, "", "the config file is empty: not reloaded");
  }
  for (const std::string& s : running_sections) {
    if (std::find(now.begin(), now.end(), s) == now.end() && !now.empty()) {
      throw ConfigError(file, 0, 0, s,
                        "section missing, but the running configuration has it (a partly "
                        "written file?): not reloaded; restart to drop a section");
    }
  }
  if (now.empty() && !running_sections.empty()) {
    // Not a mapping, or only comments: what it parses to is the defaults, nothing of the file.
    throw ConfigError(file, 0, 0, "", "the config file has no settings: not reloaded");
  }
}

}  // namespace hiapi::core
