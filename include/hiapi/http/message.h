#pragma once
// HTTP/1.1 messages as the proxy, its simulator, its load generator and its tests all see them:
// headers in arrival order (names as sent, looked up case-insensitively), a status, a body.
// One definition so that every client in the tree reads and writes the same bytes.

#include <string>
#include <string_view>
#include <vector>

namespace hiapi::http {

struct Header {
  std::string name;
  std::string value;
};
using Headers = std::vector<Header>;

/// @return the first value of @p name (case-insensitive), or nullptr.
const std::string* findHeader(const Headers& headers, std::string_view name);

/// A response: what ResponseParser fills in.
struct Response {
  int status = 0;
  Headers headers;
  std::string body;
};

/// @return whether @p h can be written as it is: a name without CR, LF or NUL, a value with CR
///         or LF only as an obs-fold (followed by a space or tab) and no NUL. Anything else could
///         smuggle a header or a second request.
bool safeHeader(const Header& h);

/// Whether writeRequest() drops headers that fail safeHeader() (the proxy forwarding a client's
/// headers) or writes them as given (a test that means to send them).
enum class UnsafeHeaders { Drop, Keep };

/// Writes a request into @p out (cleared first, its capacity reused): the request line, `Host`
/// (@p host), @p headers, `Content-Length` and the body. `Content-Length` is written for a
/// non-empty body and always for POST, PUT and PATCH (servers expect it even when empty), unless
/// @p headers state one themselves.
void writeRequest(std::string& out, std::string_view method, std::string_view target,
                  std::string_view host, const Headers& headers, std::string_view body,
                  UnsafeHeaders unsafe = UnsafeHeaders::Drop);

}  // namespace hiapi::http
