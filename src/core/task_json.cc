#include "hiapi/core/task_json.h"

#include <rapidjson/document.h>

#include <initializer_list>

namespace hiapi::core {
namespace {

using rapidjson::Value;

constexpr unsigned kParseFlags = rapidjson::kParseIterativeFlag;

/// Parses @p body into @p doc. @return false when it is not JSON.
bool parse(std::string_view body, rapidjson::Document& doc) {
  doc.Parse<kParseFlags>(body.data(), body.size());
  return !doc.HasParseError();
}

/// @return the member @p name of object @p obj, or nullptr.
const Value* member(const Value& obj, const char* name) {
  if (!obj.IsObject()) {
    return nullptr;
  }
  const auto it = obj.FindMember(name);
  return it == obj.MemberEnd() ? nullptr : &it->value;
}

/// @return the string member @p name of @p obj, or nullopt when absent or not a string.
std::optional<std::string> stringMember(const Value& obj, const char* name) {
  const Value* v = member(obj, name);
  if (v == nullptr || !v->IsString()) {
    return std::nullopt;
  }
  return std::string(v->GetString(), v->GetStringLength());
}

/// @return the first of @p names that is a usable task id in @p obj.
std::optional<std::string> taskIdMember(const Value& obj,
                                        std::initializer_list<const char*> names) {
  for (const char* name : names) {
    auto id = stringMember(obj, name);
    if (id && !id->empty() && id->size() <= kMaxTaskIdBytes) {
      return id;
    }
  }
  return std::nullopt;
}

/// @return false when the envelope carries an integer `code` outside 200..299.
bool envelopeOk(const Value& root) {
  const Value* code = member(root, "code");
  if (code == nullptr || !code->IsNumber()) {
    return true;  // absent, or a string code such as "rate_limit_exceeded": not decisive
  }
  if (code->IsInt64()) {
    const int64_t c = code->GetInt64();
    return c >= 200 && c <= 299;
  }
  return false;  // a fractional or out-of-range number is no success code
}

TaskStatusView viewOf(const Value& detail) {
  TaskStatusView view;
  if (auto id = taskIdMember(detail, {"taskId", "task_id"})) {
    view.task_id = std::move(*id);
  }
  if (auto status = stringMember(detail, "status")) {
    view.status = std::move(*status);
  }
  if (auto model = stringMember(detail, "model")) {
    view.model = std::move(*model);
  }
  return view;
}

bool looksLikeDetail(const Value& obj) {
  if (!obj.IsObject()) {
    return false;
  }
  const Value* status = member(obj, "status");
  return (status != nullptr && status->IsString()) ||
         taskIdMember(obj, {"taskId", "task_id"}).has_value();
}

}  // namespace

std::optional<std::string> parseCreatedTaskId(std::string_view body) {
  rapidjson::Document doc;
  if (!parse(body, doc) || !doc.IsObject() || !envelopeOk(doc)) {
    return std::nullopt;
  }
  if (const Value* data = member(doc, "data"); data != nullptr && data->IsObject()) {
    if (auto id = taskIdMember(*data, {"taskId", "task_id"})) {
      return id;
    }
  }
  return taskIdMember(doc, {"taskId", "task_id"});
}

std::optional<TaskStatusView> parseTaskDetail(std::string_view body) {
  rapidjson::Document doc;
  if (!parse(body, doc) || !doc.IsObject()) {
    return std::nullopt;
  }
  if (const Value* data = member(doc, "data"); data != nullptr) {
    // An envelope: the detail is `data`, and nothing else counts (`data: null` is an error).
    if (!envelopeOk(doc) || !looksLikeDetail(*data)) {
      return std::nullopt;
    }
    return viewOf(*data);
  }
  if (!looksLikeDetail(doc)) {
    return std::nullopt;
  }
  return viewOf(doc);
}

std::vector<TaskStatusView> parseTaskList(std::string_view body) {
  std::vector<TaskStatusView> out;
  rapidjson::Document doc;
  if (!parse(body, doc)) {
    return out;
  }
  const Value* array = nullptr;
  if (doc.IsArray()) {
    array = &doc;
  } else if (doc.IsObject() && envelopeOk(doc)) {
    if (const Value* data = member(doc, "data"); data != nullptr) {
      if (data->IsArray()) {
        array = data;
      } else if (data->IsObject()) {
        for (const char* name : {"list", "items", "tasks", "records"}) {
          const Value* v = member(*data, name);
          if (v != nullptr && v->IsArray()) {
            array = v;
            break;
          }
        }
      }
    }
  }
  if (array == nullptr) {
    return out;
  }
  for (const Value& item : array->GetArray()) {
    if (!item.IsObject()) {
      continue;
    }
    TaskStatusView view = viewOf(item);
    if (!view.task_id.empty()) {
      out.push_back(std::move(view));
    }
  }
  return out;
}

std::optional<CreateBodyView> parseCreateBody(std::string_view body) {
  rapidjson::Document doc;
  if (!parse(body, doc) || !doc.IsObject()) {
    return std::nullopt;
  }
  auto model = stringMember(doc, "model");
  if (!model) {
    return std::nullopt;
  }
  CreateBodyView view;
  view.model = std::move(*model);
  view.route = stringMember(doc, "route");
  view.prompt = stringMember(doc, "prompt");
  if (!view.prompt) {
    if (const Value* input = member(doc, "input"); input != nullptr) {
      view.prompt = stringMember(*input, "prompt");
    }
  }
  return view;
}

}  // namespace hiapi::core
