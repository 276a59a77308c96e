// HttpServer's request parsing: llhttp callbacks that fill a connection's InboundRequest and
// enforce the size limits and RFC 9112's rules on the way (a request that breaks one is marked,
// and answered by the server with the matching error).

#include <cstring>
#include <string_view>

#include "hiapi/core/http_rules.h"
#include "http_conn.h"

namespace hiapi::shell {
namespace {

HttpServer::Conn& connOf(llhttp_t* p) { return *static_cast<HttpServer::Conn*>(p->data); }

// llhttp has no limit of its own on the request line and headers: a callback stops it (with
// the problem set) once they are over the limit.
constexpr int kStop = -1;

int onMessageBegin(llhttp_t* p) {
  auto& c = connOf(p);
  c.req = InboundRequest{};
  c.req.headers.reserve(12);  // one allocation rather than a doubling chain
  c.in_value = false;
  c.header_bytes = 0;
  c.target_bytes = 0;
  c.message_done = false;
  c.expect_continue = false;
  c.phase = HttpServer::Conn::Phase::Headers;
  c.phase_started = coarseNow();
  c.deadline_armed = false;
  return 0;
}

// RFC 9110 §5.6.2 tchar: a field name is a token. "Host : x" has a name with a space in it, and
// RFC 9112 §5.1 says to answer it 400 (a server that trimmed it would see a second Host).
bool isToken(std::string_view s) {
  if (s.empty()) {
    return false;
  }
  for (unsigned char ch : s) {
    const bool ok = std::isalnum(ch) != 0 || std::strchr("!#$%&'*+-.^_`|~", ch) != nullptr;
    if (!ok || ch == 0) {
      return false;
    }
  }
  return true;
}

int onUrl(llhttp_t* p, const char* at, size_t len) {
  auto& c = connOf(p);
  c.target_bytes += len;
  // The target has a bound of its own, above the headers' (at least 80 KiB, twice
  // max_header_bytes), as the start line had with http-parser.
  const uint64_t max_header = c.server->limits().max_header_bytes;
  if (c.target_bytes > std::max<uint64_t>(80 * 1024, max_header * 2 + 8192)) {
    c.req.problem = InboundProblem::HeadersTooLarge;
    return kStop;
  }
  c.req.target.append(at, len);
  return 0;
}

int onHeaderField(llhttp_t* p, const char* at, size_t len) {
  auto& c = connOf(p);
  if (c.phase == HttpServer::Conn::Phase::Body) {
    // A chunked body's trailer section: counted against the limit, never forwarded (it would
    // arrive upstream as headers the client did not send as headers).
    c.header_bytes += len + 4;
    return c.header_bytes > c.server->limits().max_header_bytes ? kStop : 0;
  }
  if (c.in_value || c.req.headers.empty()) {
    c.req.headers.emplace_back();
    c.in_value = false;
    c.header_bytes += 4;
  }
  c.header_bytes += len;
  if (c.header_bytes > c.server->limits().max_header_bytes) {
    c.req.problem = InboundProblem::HeadersTooLarge;
    return kStop;
  }
  c.req.headers.back().name.append(at, len);
  return 0;
}

int onHeaderValue(llhttp_t* p, const char* at, size_t len) {
  auto& c = connOf(p);
  if (c.phase == HttpServer::Conn::Phase::Body) {
    c.header_bytes += len;
    return c.header_bytes > c.server->limits().max_header_bytes ? kStop : 0;
  }
  if (c.req.headers.empty()) {
    return kStop;
  }
  c.in_value = true;
  c.header_bytes += len;
  if (c.header_bytes > c.server->limits().max_header_bytes) {
    c.req.problem = InboundProblem::HeadersTooLarge;
    return kStop;
  }
  c.req.headers.back().value.append(at, len);
  return 0;
}

int onHeadersComplete(llhttp_t* p) {
  auto& c = connOf(p);
  const HttpServerLimits& lim = c.server->limits();
  c.req.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
  c.req.http_major = p->http_major;
  c.req.http_minor = p->http_minor;
  c.phase = HttpServer::Conn::Phase::Body;
  c.phase_started = coarseNow();
  c.deadline_armed = false;
  // Only HTTP/1.0 and 1.1 are served: an HTTP/0.9 line has no headers to frame it (nor a Host),
  // and HTTP/2 does not start with a request line at all.
  bool readable = p->http_major == 1 && p->http_minor <= 1;
  int hosts = 0;
  for (const Header& h : c.req.headers) {
    // A line break inside a value is an obs-fold (RFC 9112 §5.2: reject or replace it); passed
    // on, it would be a header line of its own to the upstream.
    readable = readable && isToken(h.name) &&
               h.value.find_first_of("\r\n") == std::string::npos;
    hosts += core::iequals(h.name, "Host") ? 1 : 0;
  }
  readable = readable && hosts <= 1;  // RFC 9112 §3.2: more than one Host is a 400
  if (!readable) {
    c.req.problem = InboundProblem::Malformed;
    return HPE_PAUSED;
  }
  const bool has_length = (p->flags & F_CONTENT_LENGTH) != 0;
  if (has_length && p->content_length > lim.max_body_bytes) {
    c.req.problem = InboundProblem::BodyTooLarge;
    c.req.body_bytes_seen = p->content_length;
    return HPE_PAUSED;
  }
  const bool has_body = (p->flags & F_CHUNKED) != 0 || (has_length && p->content_length > 0);
  if (has_body && p->http_major == 1 && p->http_minor >= 1) {
    for (const Header& h : c.req.headers) {
      if (core::iequals(h.name, "Expect") && core::iequals(h.value, "100-continue")) {
        c.expect_continue = true;
      }
    }
  }
  return 0;
}

int onBody(llhttp_t* p, const char* at, size_t len) {
  auto& c = connOf(p);
  if (c.req.body.size() + len > c.server->limits().max_body_bytes) {
    c.req.problem = InboundProblem::BodyTooLarge;
    c.req.body_bytes_seen = c.req.body.size() + len;
    return kStop;
  }
  c.req.body.append(at, len);
  return 0;
}

int onMessageComplete(llhttp_t* p) {
  auto& c = connOf(p);
  c.message_done = true;
  c.phase = HttpServer::Conn::Phase::Idle;
  c.keep_alive = llhttp_should_keep_alive(p) != 0 && p->upgrade == 0;
  return HPE_PAUSED;  // one request at a time: what follows waits for the reply
}

}  // namespace

const llhttp_settings_t& requestParserSettings() {
  static const llhttp_settings_t s = [] {
    llhttp_settings_t x;
    llhttp_settings_init(&x);
    x.on_message_begin = &onMessageBegin;
    x.on_url = &onUrl;
    x.on_header_field = &onHeaderField;
    x.on_header_value = &onHeaderValue;
    x.on_headers_complete = &onHeadersComplete;
    x.on_body = &onBody;
    x.on_message_complete = &onMessageComplete;
    return x;
  }();
  return s;
}

}  // namespace hiapi::shell
