// What clients see of deferred tasks: the create reply, the detail of a task HiAPI does not
// hold (queued, failed, cancelled, expired) in HiAPI's shape, and HiAPI's details and lists
// rewritten to the proxy's task ids.

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <functional>

#include "hiapi/core/deferred.h"

namespace hiapi::core {
namespace {

using rapidjson::Value;
using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

constexpr unsigned kParseFlags = rapidjson::kParseIterativeFlag;

void str(JsonWriter& w, std::string_view s) {
  w.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

// The detail object of a record HiAPI does not hold, as HiAPI shapes its own.
void writeDetail(JsonWriter& w, const DeferredRecord& r, std::optional<size_t> position,
                 std::optional<int64_t> estimated_start_s) {
  const bool queued = r.state == DeferredState::Queued;
  w.StartObject();
  w.Key("taskId");
  str(w, r.id);
  w.Key("model");
  str(w, r.model);
  w.Key("status");
  w.String(queued ? "queued" : "fail");
  w.Key("created");
  w.Int64(r.accepted_ms / 1000);
  w.Key("completed");
  w.Int64(queued ? 0 : r.ended_ms / 1000);
  if (!queued) {
    w.Key("error");
    w.StartObject();
    w.Key("code");
    str(w, r.fail_code);
    w.Key("message");
    str(w, r.fail_message);
    w.EndObject();
  }
  w.Key("deferred");
  w.StartObject();
  w.Key("state");
  str(w, deferredStateName(r.state));
  if (position) {
    w.Key("position");
    w.Uint64(*position);
  }
  if (estimated_start_s) {
    w.Key("estimatedStart");
    w.Int64(*estimated_start_s);
  }
  if (r.fail_status != 0) {
    w.Key("upstreamStatus");
    w.Int(r.fail_status);
  }
  w.EndObject();
  w.EndObject();
}

std::string envelope(const std::function<void(JsonWriter&)>& data) {
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  w.Key("code");
  w.Int(200);
  w.Key("message");
  w.String("success");
  w.Key("data");
  data(w);
  w.EndObject();
  return std::string(sb.GetString(), sb.GetSize());
}

std::string serialize(const rapidjson::Document& d) {
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  d.Accept(w);
  return std::string(sb.GetString(), sb.GetSize());
}

// Sets taskId to @p client_id and upstreamTaskId to the id HiAPI gave, in detail object @p obj.
void aliasTask(Value& obj, std::string_view client_id, rapidjson::Document::AllocatorType& a) {
  const auto it = obj.FindMember("taskId");
  if (it == obj.MemberEnd() || !it->value.IsString()) {
    return;
  }
  Value upstream(it->value, a);
  it->value.SetString(client_id.data(), static_cast<rapidjson::SizeType>(client_id.size()), a);
  if (auto u = obj.FindMember("upstreamTaskId"); u != obj.MemberEnd()) {
    u->value = upstream;
  } else {
    obj.AddMember("upstreamTaskId", upstream, a);
  }
}

}  // namespace

std::string renderDeferredCreate(std::string_view id) {
  return envelope([&](JsonWriter& w) {
    w.StartObject();
    w.Key("taskId");
    str(w, id);
    w.Key("status");
    w.String("queued");
    w.EndObject();
  });
}

std::string renderDeferredDetail(const DeferredRecord& r, std::optional<size_t> position,
                                 std::optional<int64_t> estimated_start_s) {
  return envelope([&](JsonWriter& w) { writeDetail(w, r, position, estimated_start_s); });
}

std::string renderDeferredCancelled(std::string_view id) {
  return envelope([&](JsonWriter& w) {
    w.StartObject();
    w.Key("taskId");
    str(w, id);
    w.Key("status");
    w.String("cancelled");
    w.EndObject();
  });
}

std::optional<std::string> rewriteDetail(std::string_view body, std::string_view client_id) {
  rapidjson::Document d;
  d.Parse<kParseFlags>(body.data(), body.size());
  if (d.HasParseError() || !d.IsObject()) {
    return std::nullopt;
  }
  Value* detail = &d;
  if (auto it = d.FindMember("data"); it != d.MemberEnd()) {
    detail = &it->value;
  }
  if (!detail->IsObject()) {
    return std::nullopt;
  }
  aliasTask(*detail, client_id, d.GetAllocator());
  return serialize(d);
}

std::optional<std::string> rewriteList(
    std::string_view body, const std::map<std::string, std::string, std::less<>>& alias,
    const std::vector<const DeferredRecord*>& extra) {
  rapidjson::Document d;
  d.Parse<kParseFlags>(body.data(), body.size());
  if (d.HasParseError() || !d.IsObject()) {
    return std::nullopt;
  }
  auto& a = d.GetAllocator();
  // Where the items are: data itself, or one of the names HiAPI and the SDKs use.
  Value* items = nullptr;
  if (auto it = d.FindMember("data"); it != d.MemberEnd()) {
    if (it->value.IsArray()) {
      items = &it->value;
    } else if (it->value.IsObject()) {
      for (const char* name : {"tasks", "items", "list", "data", "records"}) {
        if (auto m = it->value.FindMember(name);
            m != it->value.MemberEnd() && m->value.IsArray()) {
          items = &m->value;
          break;
        }
      }
    }
  }
  if (items == nullptr) {
    return std::nullopt;
  }
  for (Value& item : items->GetArray()) {
    if (!item.IsObject()) {
      continue;
    }
    const auto id = item.FindMember("taskId");
    if (id == item.MemberEnd() || !id->value.IsString()) {
      continue;
    }
    if (auto hit = alias.find(std::string_view(id->value.GetString(), id->value.GetStringLength()));
        hit != alias.end()) {
      aliasTask(item, hit->second, a);
    }
  }
  if (!extra.empty()) {
    Value merged(rapidjson::kArrayType);
    for (const DeferredRecord* r : extra) {
      rapidjson::StringBuffer sb;
      JsonWriter w(sb);
      writeDetail(w, *r, std::nullopt, std::nullopt);
      rapidjson::Document one(&a);
      one.Parse<kParseFlags>(sb.GetString(), sb.GetSize());
      merged.PushBack(Value(one, a), a);
    }
    for (Value& item : items->GetArray()) {
      merged.PushBack(item, a);  // moves
    }
    *items = std::move(merged);
  }
  return serialize(d);
}

}  // namespace hiapi::core
