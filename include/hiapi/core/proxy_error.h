#pragma once
// The errors the proxy makes itself: one table from ProxyError to {status, code, message}, and one
// writer for HiAPI's two error envelopes (docs form and guide form, emitted together).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace hiapi::core {

/// Every error the proxy answers on its own. Keep in sync with kProxyErrorTable in the .cc file.
enum class ProxyError {
  NotFound,             // 404 unknown path (only /v1/... is forwarded)
  MethodNotAllowed,     // 405 CONNECT or another method the proxy does not forward
  NotAnOpenProxy,       // 403 absolute-form URI for a host other than the upstream
  BadRequest,           // 400 malformed request the proxy cannot forward
  MissingApiKey,        // 401 no key: passthrough without Authorization, or inject without a key
  BodyTooLarge,         // 413 body over the configured limit
  HeadersTooLarge,      // 431 request headers over the limit
  QueueFull,            // 429 admission queue full
  QueueTimeout,         // 429 deadline reached while queued
  UpstreamUnreachable,  // 502 connect error, reset, or bad reply
  UpstreamTlsError,     // 502 TLS handshake or certificate verification failed
  UpstreamTimeout,      // 504 no reply within the response timeout
  ShuttingDown,         // 503 daemon is draining
  Internal,             // 500 a bug: never expected
  TaskNotFound,         // 404 a proxy task id (hp-tk-…) this key does not hold
  TaskNotQueued,        // 409 cancel of a deferred task that already left the proxy's queue
  RequestTimeout,       // 408 request headers or body not received in time (slow client)
  StoreUnavailable,     // 503 a proxy task id only the shared store could answer for, store down
};

/// The fixed part of a proxy error.
struct ProxyErrorInfo {
  int status;                 ///< HTTP status
  std::string_view code;      ///< lower-case code: guide envelope `error.code` and the header
  std::string_view error_code;///< upper-case code: docs envelope `error_code`
  std::string_view message;   ///< default human message
  bool retry_helps;           ///< Retry-After accompanies it (1 s unless the caller knows better)
};

/// @return the table row for @p e. Thread-safety: pure.
const ProxyErrorInfo& proxyErrorInfo(ProxyError e);

/// Name of the header that marks an error as the proxy's own.
inline constexpr std::string_view kProxyErrorHeader = "X-HiAPI-Proxy-Error";

/// Renders the JSON body carrying both envelopes:
/// {"code":S,"message":M,"data":null,"error_code":"UPPER",
///  "error":{"type":"hiapi_error","code":"lower","message":M,"request_id":R}}
/// @param e the error
/// @param request_id the proxy's request id (never a key)
/// @param message overrides the default message when non-empty (e.g. the OpenSSL reason)
/// @return the body, always valid JSON. Thread-safety: pure.
std::string renderProxyError(ProxyError e, std::string_view request_id,
                             std::string_view message = {});

/// Fields that can be read out of an upstream error body, in either envelope.
struct UpstreamErrorFields {
  std::optional<std::string> code;        ///< error_code or error.code, as given
  std::optional<std::string> message;
  std::optional<std::string> request_id;  ///< error.request_id (or top-level request_id)
};

/// Parses an upstream error body (either envelope; non-JSON tolerated → all empty).
UpstreamErrorFields parseUpstreamError(std::string_view body);

}  // namespace hiapi::core
