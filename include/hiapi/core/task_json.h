#pragma once
// Readers for the few fields the proxy needs from HiAPI task bodies: a create reply's taskId, a
// task detail's id/status/model (enveloped or bare, as callbacks send it), a list reply's tasks,
// and a create request's model/route.
//
// Every input is untrusted network data: nothing here asserts or throws on it. Each field is
// looked up with FindMember and type-checked before use; a wrong type reads as absent. Parsing is
// iterative (no recursion), so deeply nested input cannot exhaust the stack. A body that is not
// JSON (or holds a number RapidJSON cannot represent, such as 1e400) reads as not parseable.
//
// Thread-safety: every function here is pure and safe to call from any thread.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hiapi::core {

/// Longest task id accepted from a body; longer ones read as absent.
inline constexpr size_t kMaxTaskIdBytes = 1024;

/// Reads the id of a created task from a create reply.
/// Accepts `{"code":200,"message":"success","data":{"taskId":"tk-..."}}`, `data.task_id`, and a
/// top-level `taskId` / `task_id`. An envelope whose integer `code` is outside 200..299 has no id.
/// @param body the raw reply body
/// @return the non-empty task id (at most kMaxTaskIdBytes), or nullopt.
/// Thread-safety: pure.
std::optional<std::string> parseCreatedTaskId(std::string_view body);

/// The fields of a task detail the proxy uses. Missing fields are empty.
struct TaskStatusView {
  std::string task_id;
  std::string status;
  std::string model;
};

/// Reads a detail reply `{"code":200,...,"data":{"taskId":..,"status":..,"model":..}}`, or the
/// bare detail object (callbacks). The id is `taskId` or `task_id`.
/// @param body the raw body
/// @return the view when the body is a JSON object whose detail has a string `status` or a task
///         id; nullopt otherwise (not JSON, `data: null`, wrong types...).
/// Thread-safety: pure.
std::optional<TaskStatusView> parseTaskDetail(std::string_view body);

/// Reads a list reply: `data` is an array, or `data.list` / `data.items` / `data.tasks` /
/// `data.records` is an array of detail objects (a bare top-level array is accepted too).
/// @param body the raw body
/// @return the elements that are objects with a task id, in order; empty when none or not
///         parseable.
/// Thread-safety: pure.
std::vector<TaskStatusView> parseTaskList(std::string_view body);

/// The fields of a create request body that decide its tier.
struct CreateBodyView {
  std::string model;
  std::optional<std::string> route;   ///< top-level `route`, when a string
  std::optional<std::string> prompt;  ///< top-level `prompt` or `input.prompt`, when a string
};

/// Reads a create request body `{"model":"x@pro","route":"pro","input":{...},...}`.
/// @param body the raw request body (the caller forwards the original bytes untouched)
/// @return the view when the body is a JSON object with a string `model`; nullopt otherwise.
/// Thread-safety: pure.
std::optional<CreateBodyView> parseCreateBody(std::string_view body);

}  // namespace hiapi::core
