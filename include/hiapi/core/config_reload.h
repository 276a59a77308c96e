#pragma once
// What a reload refuses before it parses: a config file that is empty (truncated to nothing by
// an editor or a deploy that has not finished) or partial (a top-level section the running
// configuration's file had is gone). Either would parse as defaults for what is missing: an
// inject proxy would silently become a passthrough one. A reload keeps the running
// configuration instead; a restart takes any valid file.

#include <string>
#include <vector>

namespace hiapi::core {

/// @return the top-level keys of @p yaml_text, in order (none for an empty document or one
///         that is not a mapping). Never throws: text that does not parse has none.
std::vector<std::string> configSections(const std::string& yaml_text);

/// Throws ConfigError (naming @p file) when @p yaml_text has no content, or lacks a top-level
/// section of @p running_sections (the running configuration file's).
void checkReloadable(const std::string& yaml_text, const std::string& file,
                     const std::vector<std::string>& running_sections);

}  // namespace hiapi::core
