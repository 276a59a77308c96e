#include "hiapi/core/task_state_codec.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <algorithm>
#include <limits>

#include "hiapi/core/task_json.h"

namespace hiapi::core {
namespace {

/// Ages in the state file are capped here (as parseDuration caps durations): no overflow.
constexpr int64_t kMaxAgeMs = int64_t{100000} * 3600 * 1000;

using Writer = rapidjson::Writer<rapidjson::StringBuffer>;

void writeString(Writer& w, const char* key, const std::string& value) {
  w.Key(key);
  w.String(value.data(), static_cast<rapidjson::SizeType>(value.size()));
}

/// A field's error message, or nullopt when it is fine (or absent and optional).
std::optional<std::string> readString(const rapidjson::Value& item, const std::string& where,
                                      const char* name, bool required, bool non_empty,
                                      std::string* dst) {
  auto it = item.FindMember(name);
  if (it == item.MemberEnd()) {
    if (required) {
      return where + "." + name + ": missing";
    }
    return std::nullopt;
  }
  if (!it->value.IsString() || (non_empty && it->value.GetStringLength() == 0)) {
    return where + "." + name +
           (non_empty ? ": expected a non-empty string" : ": expected a string");
  }
  dst->assign(it->value.GetString(), it->value.GetStringLength());
  return std::nullopt;
}

/// One element of "tasks" into @p t; an error message on failure.
std::optional<std::string> readTask(const rapidjson::Value& item, const std::string& where,
                                    int64_t downtime_ms, RestoredTask* t) {
  if (!item.IsObject()) {
    return where + ": expected an object";
  }
  if (auto e = readString(item, where, "key", true, true, &t->key)) {
    return e;
  }
  if (auto e = readString(item, where, "task_id", true, true, &t->task_id)) {
    return e;
  }
  if (t->task_id.size() > kMaxTaskIdBytes) {
    return where + ".task_id: too long";
  }
  if (auto e = readString(item, where, "tier", true, false, &t->tier)) {
    return e;
  }
  if (auto e = readString(item, where, "model", false, false, &t->model)) {
    return e;
  }
  auto age = item.FindMember("age_ms");
  if (age == item.MemberEnd() || !age->value.IsInt64() || age->value.GetInt64() < 0) {
    return where + ".age_ms: expected a non-negative integer";
  }
  const int64_t age_ms =
      std::min(std::min(age->value.GetInt64(), kMaxAgeMs) + downtime_ms, kMaxAgeMs);
  t->age = milliseconds(age_ms);
  return std::nullopt;
}

/// The version and saved_at checks; the downtime to add to every age, or an error message.
std::optional<std::string> readHeader(const rapidjson::Document& doc,
                                      std::optional<int64_t> wall_now_unix_ms,
                                      int64_t* downtime_ms) {
  auto version = doc.FindMember("version");
  if (version == doc.MemberEnd() || !version->value.IsInt64()) {
    return std::string("version: expected an integer");
  }
  if (version->value.GetInt64() != 1) {
    return "version: unsupported version " + std::to_string(version->value.GetInt64()) +
           " (expected 1)";
  }
  std::optional<int64_t> saved_at;
  if (auto it = doc.FindMember("saved_at_unix_ms"); it != doc.MemberEnd()) {
    if (!it->value.IsInt64()) {
      return std::string("saved_at_unix_ms: expected an integer");
    }
    saved_at = it->value.GetInt64();
  }
  *downtime_ms = 0;
  if (saved_at && wall_now_unix_ms && *wall_now_unix_ms > *saved_at) {
    // Both are bounded int64s; clamp the difference before subtracting can overflow.
    *downtime_ms =
        (*saved_at < 0 && *wall_now_unix_ms > std::numeric_limits<int64_t>::max() + *saved_at)
            ? kMaxAgeMs
            : std::min(*wall_now_unix_ms - *saved_at, kMaxAgeMs);
  }
  return std::nullopt;
}

}  // namespace

std::string serializeTaskState(const std::vector<TrackedTaskInfo>& tasks, MonotonicTime now,
                               int64_t wall_now_unix_ms) {
  rapidjson::StringBuffer buf;
  Writer w(buf);
  w.StartObject();
  w.Key("version");
  w.Int(1);
  w.Key("saved_at_unix_ms");
  w.Int64(wall_now_unix_ms);
  w.Key("tasks");
  w.StartArray();
  for (const TrackedTaskInfo& t : tasks) {
    const int64_t age_ms = std::clamp<int64_t>(
        std::chrono::duration_cast<milliseconds>(now - t.created).count(), 0, kMaxAgeMs);
    w.StartObject();
    writeString(w, "key", t.key);
    writeString(w, "task_id", t.task_id);
    writeString(w, "tier", t.tier_name);
    writeString(w, "model", t.model);
    w.Key("age_ms");
    w.Int64(age_ms);
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

std::optional<std::vector<RestoredTask>> parseTaskState(
    std::string_view text, std::string* error, std::optional<int64_t> wall_now_unix_ms) {
  auto fail = [error](std::string message) -> std::optional<std::vector<RestoredTask>> {
    if (error != nullptr) {
      *error = std::move(message);
    }
    return std::nullopt;
  };
  rapidjson::Document doc;
  doc.Parse<rapidjson::kParseIterativeFlag>(text.data(), text.size());
  if (doc.HasParseError()) {
    return fail(std::string("not JSON: ") + rapidjson::GetParseError_En(doc.GetParseError()) +
                " at offset " + std::to_string(doc.GetErrorOffset()));
  }
  if (!doc.IsObject()) {
    return fail("expected a JSON object");
  }
  int64_t downtime_ms = 0;
  if (auto e = readHeader(doc, wall_now_unix_ms, &downtime_ms)) {
    return fail(*e);
  }
  auto tasks = doc.FindMember("tasks");
  if (tasks == doc.MemberEnd() || !tasks->value.IsArray()) {
    return fail("tasks: expected an array");
  }
  std::vector<RestoredTask> out;
  size_t index = 0;
  for (const auto& item : tasks->value.GetArray()) {
    const std::string where = "tasks[" + std::to_string(index++) + "]";
    RestoredTask t;
    if (auto e = readTask(item, where, downtime_ms, &t)) {
      return fail(*e);
    }
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace hiapi::core
