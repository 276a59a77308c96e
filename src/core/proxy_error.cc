#include "hiapi/core/proxy_error.h"

#include <array>

#include <rapidjson/document.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace hiapi::core {
namespace {

constexpr std::array<ProxyErrorInfo, 18> kProxyErrorTable{{
    {404, "not_found", "NOT_FOUND", "hiapi-proxy forwards only /v1/... paths", false},
    {405, "method_not_allowed", "METHOD_NOT_ALLOWED",
     "hiapi-proxy is not a forward proxy: use http://127.0.0.1:8787 as the HiAPI base URL", false},
    {403, "not_an_open_proxy", "NOT_AN_OPEN_PROXY",
     "hiapi-proxy forwards only to its configured upstream", false},
    {400, "bad_request", "INVALID_REQUEST", "the request could not be parsed", false},
    {401, "missing_api_key", "UNAUTHORIZED",
     "no API key: send Authorization: Bearer <key> or configure a key to inject", false},
    {413, "body_too_large", "PAYLOAD_TOO_LARGE", "request body exceeds the proxy's limit", false},
    {431, "headers_too_large", "REQUEST_HEADER_FIELDS_TOO_LARGE",
     "request headers exceed the proxy's limit", false},
    {429, "queue_full", "RATE_LIMIT_EXCEEDED",
     "hiapi-proxy's admission queue is full; retry after the indicated delay", true},
    {429, "queue_timeout", "RATE_LIMIT_EXCEEDED",
     "request waited in hiapi-proxy's queue until its deadline; retry after the indicated delay",
     true},
    {502, "upstream_unreachable", "BAD_GATEWAY", "the HiAPI upstream could not be reached", true},
    {502, "upstream_tls_error", "BAD_GATEWAY", "TLS with the HiAPI upstream failed", false},
    {504, "upstream_timeout", "GATEWAY_TIMEOUT", "the HiAPI upstream did not answer in time", true},
    {503, "shutting_down", "SERVICE_UNAVAILABLE", "hiapi-proxy is shutting down", true},
    {500, "internal_error", "INTERNAL_ERROR", "hiapi-proxy internal error", false},
    {404, "task_not_found", "TASK_NOT_FOUND", "Task not found", false},
    {409, "task_not_queued", "TASK_NOT_QUEUED",
     "the task is no longer queued in hiapi-proxy: HiAPI has no cancel for a task it runs", false},
    {408, "request_timeout", "REQUEST_TIMEOUT",
     "the request's headers or body did not arrive in time", false},
    {503, "store_unavailable", "SERVICE_UNAVAILABLE",
     "the shared store that holds this proxy task id cannot be reached now", true},
}};

}  // namespace

const ProxyErrorInfo& proxyErrorInfo(ProxyError e) {
  return kProxyErrorTable.at(static_cast<size_t>(e));
}

std::string renderProxyError(ProxyError e, std::string_view request_id, std::string_view message) {
  const ProxyErrorInfo& info = proxyErrorInfo(e);
  const std::string_view msg = message.empty() ? info.message : message;
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("code");
  w.Int(info.status);
  w.Key("message");
  w.String(msg.data(), static_cast<rapidjson::SizeType>(msg.size()));
  w.Key("data");
  w.Null();
  w.Key("error_code");
  w.String(info.error_code.data(), static_cast<rapidjson::SizeType>(info.error_code.size()));
  w.Key("error");
  w.StartObject();
  w.Key("type");
  w.String("hiapi_error");
  w.Key("code");
  w.String(info.code.data(), static_cast<rapidjson::SizeType>(info.code.size()));
  w.Key("message");
  w.String(msg.data(), static_cast<rapidjson::SizeType>(msg.size()));
  w.Key("request_id");
  w.String(request_id.data(), static_cast<rapidjson::SizeType>(request_id.size()));
  w.Key("source");
  w.String("hiapi-proxy");
  w.EndObject();
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

UpstreamErrorFields parseUpstreamError(std::string_view body) {
  UpstreamErrorFields out;
  rapidjson::Document doc;
  doc.Parse(body.data(), body.size());
  if (doc.HasParseError() || !doc.IsObject()) {
    return out;
  }
  auto str = [](const rapidjson::Value& obj, const char* name) -> std::optional<std::string> {
    auto it = obj.FindMember(name);
    if (it != obj.MemberEnd() && it->value.IsString()) {
      return std::string(it->value.GetString(), it->value.GetStringLength());
    }
    return std::nullopt;
  };
  auto err = doc.FindMember("error");
  if (err != doc.MemberEnd() && err->value.IsObject()) {
    out.code = str(err->value, "code");
    out.message = str(err->value, "message");
    out.request_id = str(err->value, "request_id");
  }
  if (!out.code) {
    out.code = str(doc, "error_code");
  }
  if (!out.message) {
    out.message = str(doc, "message");
  }
  if (!out.request_id) {
    out.request_id = str(doc, "request_id");
  }
  return out;
}

}  // namespace hiapi::core
