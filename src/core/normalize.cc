#include "hiapi/core/normalize.h"

#include <cstdlib>
#include <utility>

namespace hiapi::core {

namespace {

// A fairness class is a bounded label, not free-form text.
constexpr size_t kMaxClientClass = 64;

Refusal refuse(ProxyError e, std::string message = {}, std::string path = {}) {
  return Refusal{e, std::move(message), std::move(path), {}};
}

// Splits the client's headers: control headers are taken out, hop-by-hop ones and those the
// proxy writes itself are dropped, the rest stay in order for the upstream (filtered in place,
// so the common case moves no strings).
struct ControlHeaders {
  std::optional<std::string> authorization, key_select, deadline;
};

ControlHeaders filterHeaders(http::Headers& hs, const Config& cfg, std::string& client) {
  std::string connection;  // every Connection value, comma-joined (usually none or one)
  for (const http::Header& h : hs) {
    if (iequals(h.name, "Connection")) {
      connection.append(connection.empty() ? "" : ",").append(h.value);
    }
  }
  ControlHeaders control;
  size_t kept = 0;
  for (size_t i = 0; i < hs.size(); ++i) {
    http::Header& h = hs[i];
    if (iequals(h.name, "Authorization")) {
      control.authorization = std::move(h.value);
      continue;
    }
    if (iequals(h.name, cfg.queue.client_header)) {
      client = std::move(h.value);
      continue;
    }
    if (iequals(h.name, cfg.queue.deadline_header)) {
      control.deadline = std::move(h.value);
      continue;
    }
    if (iequals(h.name, kKeySelectHeader)) {
      control.key_select = std::move(h.value);
      continue;
    }
    if (iequals(h.name, "Host") || iequals(h.name, "Content-Length") ||
        iequals(h.name, "Expect") || isHopByHop(h.name, connection)) {
      continue;
    }
    if (kept != i) {
      hs[kept] = std::move(h);
    }
    ++kept;
  }
  hs.resize(kept);
  if (client.size() > kMaxClientClass) {
    client.resize(kMaxClientClass);
  }
  return control;
}

// Chooses the key a request goes out with. @return a refusal when there is none to send.
std::optional<Refusal> chooseKey(Normalized& out, ControlHeaders& control, const Config& cfg) {
  if (cfg.key_mode == KeyMode::Passthrough) {
    if (!control.authorization || control.authorization->empty()) {
      return refuse(ProxyError::MissingApiKey);
    }
    out.authorization = std::move(*control.authorization);
    return std::nullopt;
  }
  const KeyConfig* key = cfg.keys.empty() ? nullptr : &cfg.keys.front();
  if (control.key_select) {
    key = nullptr;
    for (const KeyConfig& k : cfg.keys) {
      if (k.name == *control.key_select) {
        key = &k;
      }
    }
    if (key == nullptr) {
      return refuse(ProxyError::MissingApiKey,
                    "no configured key is named '" + *control.key_select + "'");
    }
  }
  if (key == nullptr || key->key.empty()) {
    return refuse(ProxyError::MissingApiKey);
  }
  out.key = key;
  out.authorization = "Bearer " + key->key.reveal();
  return std::nullopt;
}

}  // namespace

bool isLoopbackName(std::string_view host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

std::optional<Duration> parseClientDeadline(std::string_view v) {
  if (v.empty()) {
    return std::nullopt;
  }
  const std::string text(v);
  if (auto d = parseDuration(text)) {
    return d;
  }
  char* end = nullptr;
  const double s = std::strtod(text.c_str(), &end);
  if (end != text.c_str() && *end == '\0' && s > 0) {
    return fromSeconds(s);
  }
  return std::nullopt;
}

std::variant<Normalized, Refusal> normalize(InboundHead&& in, const Config& cfg,
                                            const ListenerName& self) {
  Normalized out;
  const std::optional<http::Method> method = http::parseMethod(in.method);
  if (!method) {
    return refuse(ProxyError::MethodNotAllowed);
  }
  out.method = *method;
  std::string target = std::move(in.target);
  if (auto abs = parseAbsoluteUri(target)) {
    const bool ours = abs->host == cfg.upstream.host || isLoopbackName(abs->host) ||
                      abs->host == cfg.listen.address;
    if (!ours) {
      return refuse(ProxyError::NotAnOpenProxy,
                    "hiapi-proxy forwards only to " + cfg.upstream.url + ", not to " + abs->host);
    }
    target = std::move(abs->path_and_query);
  }
  if (target.empty() || target.front() != '/') {
    return refuse(ProxyError::BadRequest, "request target must start with /");
  }
  std::string path = target.substr(0, target.find('?'));
  if (hasDotSegment(path)) {
    return refuse(ProxyError::BadRequest, "dot segments (. or ..) in the path are refused",
                  std::move(path));
  }
  auto route = matchRoute(in.method, path);
  if (!route) {
    return refuse(ProxyError::NotFound,
                  "hiapi-proxy forwards only /v1/... paths; set the base URL to http://" +
                      self.address + ":" + std::to_string(self.port),
                  std::move(path));
  }
  out.route = std::move(*route);
  ControlHeaders control = filterHeaders(in.headers, cfg, out.client);
  out.headers = std::move(in.headers);
  if (control.deadline) {
    out.client_deadline = parseClientDeadline(*control.deadline);
  }
  if (auto refused = chooseKey(out, control, cfg)) {
    refused->client = std::move(out.client);
    return std::move(*refused);
  }
  out.target = std::move(target);
  return out;
}

}  // namespace hiapi::core
