#pragma once
// Pure HTTP rules the proxy applies: hop-by-hop header filtering, routing of HiAPI paths,
// absolute-form URIs, Authorization parsing. No sockets, no libevent.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hiapi/core/admission_queue.h"  // RouteKind

namespace hiapi::core {

/// @return "create", "poll", "list" or "other" (metric label values).
std::string_view routeName(RouteKind r);

/// The route of a request path (without query) and method, and the task id for a poll.
struct RouteMatch {
  RouteKind kind = RouteKind::Other;
  std::string task_id;  ///< percent-decoded id for Poll, empty otherwise
};

/// Percent-encodes @p s as one path segment: unreserved characters (RFC 3986 ALPHA, DIGIT,
/// `-._~`) stay, every other byte becomes `%XX` (upper-case hex).
std::string percentEncodeSegment(std::string_view s);

/// Percent-decodes @p s. @return nullopt on a malformed escape.
std::optional<std::string> percentDecode(std::string_view s);

/// @param method upper-case HTTP method. @param path the path part only (no query).
/// @return nullopt when the path is outside /v1/ (the proxy answers 404 itself).
std::optional<RouteMatch> matchRoute(std::string_view method, std::string_view path);

/// @return true for hop-by-hop headers (RFC 9110 §7.6.1 plus Proxy-*), and for any header named
///         by the message's Connection header, whose values @p connection_value holds joined by
///         commas ("close, X-Foo"). Case-insensitive; no allocation (it runs for every header of
///         every forwarded message).
bool isHopByHop(std::string_view name, std::string_view connection_value);

/// An absolute-form request target ("http://host:port/path?q") split up.
struct AbsoluteUri {
  std::string scheme;
  std::string host;  ///< lower-cased, brackets removed for IPv6
  std::optional<uint16_t> port;
  std::string path_and_query;  ///< "/" when empty
};

/// @return the parts when @p target is absolute-form, nullopt when it is origin-form ("/...").
std::optional<AbsoluteUri> parseAbsoluteUri(std::string_view target);

/// @return whether @p path (no query) has a dot segment ("." or ".."), also percent-encoded
///         (%2e) or behind an encoded separator (%2f, %5c, backslash): a path that names another
///         resource than it seems to once normalised ("/v1/../metrics"), so it is refused.
bool hasDotSegment(std::string_view path);

/// @return the token of "Bearer <token>" (scheme case-insensitive), nullopt otherwise.
std::optional<std::string> bearerToken(std::string_view authorization);

/// ASCII lower case, as HTTP's tokens are (without the locale lookup std::tolower does per call).
inline char asciiLower(char c) {
  return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c;
}

/// @return @p s in ASCII lower case (see asciiLower).
inline std::string asciiLowerCopy(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    c = asciiLower(c);
  }
  return out;
}

/// Case-insensitive ASCII comparison. Inline: header names are compared several times per
/// forwarded request, and most comparisons end at the length.
inline bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i) {
    if (asciiLower(a[i]) != asciiLower(b[i])) {
      return false;
    }
  }
  return true;
}

}  // namespace hiapi::core
