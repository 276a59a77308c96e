#pragma once
// The task state file: which tasks held a slot when the proxy stopped, so that a restart
// re-occupies their slots instead of letting creates overrun the account's concurrency.
//
// `{"version":1,"saved_at_unix_ms":...,"tasks":[{"key":"prod","task_id":"..","tier":"heavy",
// "model":"..","age_ms":12345},...]}`. Key NAMES only, never a secret. The shell reads and writes
// the file; this produces and consumes its text.
// Thread-safety: pure functions.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/task_registry.h"

namespace hiapi::core {

/// One task read back from the state file.
struct RestoredTask {
  std::string key;
  std::string task_id;
  std::string tier;  ///< tier NAME; map it with the current tiers (unknown → last tier)
  std::string model;
  Duration age{};  ///< age when saved, plus the time since saved_at when wall_now is given
};

/// @param tasks the tasks to save (each one's key, task_id, tier_name, model and created)
/// @param now the current time (ages are relative to it)
/// @param wall_now_unix_ms the wall clock, in Unix ms, written as saved_at_unix_ms
/// @return the file's text.
std::string serializeTaskState(const std::vector<TrackedTaskInfo>& tasks, MonotonicTime now,
                               int64_t wall_now_unix_ms);

/// Parses a state file. Strict: any malformed task rejects the whole file.
/// @param text the file's content
/// @param error set to a message (with the JSON offset or the field path) on failure; may be
///        nullptr
/// @param wall_now_unix_ms when given, the downtime since saved_at_unix_ms (when positive) is
///        added to every age
/// @return the tasks; nullopt for non-JSON, an unknown version or wrong types. Never throws.
std::optional<std::vector<RestoredTask>> parseTaskState(
    std::string_view text, std::string* error,
    std::optional<int64_t> wall_now_unix_ms = std::nullopt);

}  // namespace hiapi::core
