#pragma once
// A client's request as read off the socket → the request the proxy would send upstream, or the
// proxy error that answers it instead. Pure: routing, header filtering and key selection are
// decided here from the config alone; the server only applies the result.

#include <cstdint>
#include <optional>
#include <string>
#include <variant>

#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"
#include "hiapi/core/http_rules.h"
#include "hiapi/core/proxy_error.h"
#include "hiapi/http/message.h"
#include "hiapi/http/method.h"

namespace hiapi::core {

/// The header that picks one of several configured keys in inject mode.
inline constexpr std::string_view kKeySelectHeader = "X-HiAPI-Key";

/// What normalize() reads: a request line and its headers (the body goes on untouched).
struct InboundHead {
  std::string method;
  std::string target;
  http::Headers headers;
};

/// A request the proxy may send upstream.
struct Normalized {
  http::Method method = http::Method::Get;
  RouteMatch route;
  std::string target;     ///< origin-form: path and query
  /// End-to-end headers in arrival order. Not among them: hop-by-hop ones, Host,
  /// Content-Length (recomputed), Expect, Authorization and the proxy's control headers.
  http::Headers headers;
  std::string client;     ///< fairness class from queue.client_header, at most 64 bytes
  std::optional<Duration> client_deadline;  ///< from queue.deadline_header
  /// Inject mode: the configured key it goes out with. Passthrough: nullptr (the key is the
  /// client's own, in authorization).
  const KeyConfig* key = nullptr;
  /// The Authorization value to send upstream (never logged).
  std::string authorization;
};

/// Why the proxy answers a request itself.
struct Refusal {
  ProxyError error = ProxyError::BadRequest;
  std::string message;  ///< empty: the error's own message
  std::string path;     ///< the path asked for, when known (for the access log)
  std::string client;   ///< the fairness class, when the headers were read (for the access log)
};

/// Where the proxy itself listens, for the "set the base URL to ..." hint and for recognising
/// absolute-form targets that name the proxy.
struct ListenerName {
  std::string address;
  uint16_t port = 0;
};

/// Normalises @p in under @p cfg. @p in is consumed (its headers move into the result).
std::variant<Normalized, Refusal> normalize(InboundHead&& in, const Config& cfg,
                                            const ListenerName& self);

/// Parses a client's deadline header: "5s", "2500ms" or a plain number of seconds (> 0).
std::optional<Duration> parseClientDeadline(std::string_view v);

/// @return whether @p host names this machine's loopback ("localhost", "::1", "127.…").
bool isLoopbackName(std::string_view host);

}  // namespace hiapi::core
