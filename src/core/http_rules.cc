#include "hiapi/core/http_rules.h"

#include <algorithm>
#include <cctype>

namespace hiapi::core {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) {
    s.remove_suffix(1);
  }
  return s;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

}  // namespace

std::string percentEncodeSegment(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~';
    if (unreserved) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

std::optional<std::string> percentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%') {
      if (i + 2 >= s.size()) {
        return std::nullopt;
      }
      const int hi = hexValue(s[i + 1]);
      const int lo = hexValue(s[i + 2]);
      if (hi < 0 || lo < 0) {
        return std::nullopt;
      }
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string_view routeName(RouteKind r) {
  switch (r) {
  case RouteKind::Create:
    return "create";
  case RouteKind::Poll:
    return "poll";
  case RouteKind::List:
    return "list";
  case RouteKind::Other:
    return "other";
  }
  return "other";
}

bool hasDotSegment(std::string_view path) {
  if (path.find('.') == std::string_view::npos && path.find('%') == std::string_view::npos) {
    return false;  // the usual case: nothing to decode
  }
  std::string decoded = percentDecode(path).value_or(std::string(path));
  std::replace(decoded.begin(), decoded.end(), '\\', '/');
  std::string_view rest = decoded;
  while (!rest.empty()) {
    const size_t slash = rest.find('/');
    const std::string_view seg = rest.substr(0, slash);
    if (seg == "." || seg == "..") {
      return true;
    }
    if (slash == std::string_view::npos) {
      break;
    }
    rest.remove_prefix(slash + 1);
  }
  return false;
}

std::optional<RouteMatch> matchRoute(std::string_view method, std::string_view path) {
  constexpr std::string_view kV1 = "/v1/";
  if (path.substr(0, kV1.size()) != kV1 && path != "/v1") {
    return std::nullopt;
  }
  RouteMatch m;
  constexpr std::string_view kTasks = "/v1/tasks";
  if (path == kTasks || path == "/v1/tasks/") {
    if (method == "POST") {
      m.kind = RouteKind::Create;
    } else if (method == "GET") {
      m.kind = RouteKind::List;
    }
    return m;
  }
  if (method == "GET" && path.substr(0, kTasks.size() + 1) == "/v1/tasks/") {
    std::string_view id = path.substr(kTasks.size() + 1);
    if (!id.empty() && id.find('/') == std::string_view::npos) {
      if (auto decoded = percentDecode(id); decoded && !decoded->empty()) {
        m.kind = RouteKind::Poll;
        m.task_id = std::move(*decoded);
      }
    }
  }
  return m;
}

bool isHopByHop(std::string_view name, std::string_view connection_value) {
  // By length first: most names are compared with one candidate at most.
  switch (name.size()) {
  case 2:
    if (iequals(name, "te")) return true;
    break;
  case 7:
    if (iequals(name, "trailer") || iequals(name, "upgrade")) return true;
    break;
  case 8:
    if (iequals(name, "trailers")) return true;
    break;
  case 10:
    if (iequals(name, "connection") || iequals(name, "keep-alive")) return true;
    break;
  case 17:
    if (iequals(name, "transfer-encoding")) return true;
    break;
  default:
    break;
  }
  // Proxy-* ("proxy-connection" among them).
  if (name.size() >= 6 && iequals(name.substr(0, 6), "proxy-")) {
    return true;
  }
  while (!connection_value.empty()) {
    const size_t comma = connection_value.find(',');
    if (iequals(trim(connection_value.substr(0, comma)), name)) {
      return true;
    }
    if (comma == std::string_view::npos) {
      break;
    }
    connection_value.remove_prefix(comma + 1);
  }
  return false;
}

std::optional<AbsoluteUri> parseAbsoluteUri(std::string_view target) {
  const size_t sep = target.find("://");
  if (target.empty() || target.front() == '/' || sep == std::string_view::npos || sep == 0) {
    return std::nullopt;
  }
  AbsoluteUri u;
  u.scheme = asciiLowerCopy(target.substr(0, sep));
  std::string_view rest = target.substr(sep + 3);
  const size_t slash = rest.find_first_of("/?");
  std::string_view authority = rest.substr(0, slash);
  u.path_and_query = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  if (!u.path_and_query.empty() && u.path_and_query.front() == '?') {
    u.path_and_query = std::string("/") + u.path_and_query;
  }
  if (const size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  std::string_view host = authority;
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      return std::nullopt;
    }
    host = authority.substr(1, close - 1);
    if (close + 1 < authority.size() && authority[close + 1] == ':') {
      port = authority.substr(close + 2);
    }
  } else if (const size_t colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  u.host = asciiLowerCopy(host);
  if (!port.empty()) {
    unsigned v = 0;
    for (char c : port) {
      if (c < '0' || c > '9' || v > 65535) {
        return std::nullopt;
      }
      v = v * 10 + static_cast<unsigned>(c - '0');
    }
    if (v == 0 || v > 65535) {
      return std::nullopt;
    }
    u.port = static_cast<uint16_t>(v);
  }
  return u;
}

std::optional<std::string> bearerToken(std::string_view authorization) {
  authorization = trim(authorization);
  constexpr std::string_view kBearer = "bearer";
  if (authorization.size() <= kBearer.size() + 1 ||
      !iequals(authorization.substr(0, kBearer.size()), kBearer) ||
      (authorization[kBearer.size()] != ' ' && authorization[kBearer.size()] != '\t')) {
    return std::nullopt;
  }
  std::string_view tok = trim(authorization.substr(kBearer.size()));
  if (tok.empty()) {
    return std::nullopt;
  }
  return std::string(tok);
}

}  // namespace hiapi::core
