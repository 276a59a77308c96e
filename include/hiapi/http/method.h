#pragma once
// The request methods the proxy forwards, and their names on the wire: one table for the server
// that reads them, the upstream client that writes them and the simulator that counts them.

#include <optional>
#include <string_view>
#include <utility>

namespace hiapi::http {

/// Every method the proxy forwards (RFC 9110 §9 less CONNECT and TRACE, plus PATCH). CONNECT
/// would make it an open tunnel and TRACE echoes credentials back, so neither is here.
enum class Method { Get, Post, Head, Put, Delete, Options, Patch };

inline constexpr std::pair<std::string_view, Method> kMethods[] = {
    {"GET", Method::Get},         {"POST", Method::Post},       {"HEAD", Method::Head},
    {"PUT", Method::Put},         {"DELETE", Method::Delete},   {"OPTIONS", Method::Options},
    {"PATCH", Method::Patch},
};

/// @return the method named @p name (case-sensitive, as RFC 9110 §9.1 says), nullopt for one
///         the proxy does not forward.
constexpr std::optional<Method> parseMethod(std::string_view name) {
  for (const auto& [n, m] : kMethods) {
    if (n == name) {
      return m;
    }
  }
  return std::nullopt;
}

/// @return the wire name of @p m.
constexpr std::string_view methodName(Method m) {
  for (const auto& [n, x] : kMethods) {
    if (x == m) {
      return n;
    }
  }
  return "GET";
}

}  // namespace hiapi::http
