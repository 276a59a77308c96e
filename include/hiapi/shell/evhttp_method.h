#pragma once
// The wire name of a method as libevent's evhttp reports it (the simulator and the test upstream
// are evhttp servers). One switch, so every evhttp server names methods alike. Header-only and
// libevent-only: the simulator includes it without linking any of the proxy's libraries.

#include <string_view>

#include <event2/http.h>

namespace hiapi::shell {

/// @return "GET", "POST", …; "OTHER" for a value libevent adds later.
inline std::string_view evhttpMethodName(evhttp_cmd_type cmd) {
  switch (cmd) {
  case EVHTTP_REQ_GET:
    return "GET";
  case EVHTTP_REQ_POST:
    return "POST";
  case EVHTTP_REQ_HEAD:
    return "HEAD";
  case EVHTTP_REQ_PUT:
    return "PUT";
  case EVHTTP_REQ_DELETE:
    return "DELETE";
  case EVHTTP_REQ_OPTIONS:
    return "OPTIONS";
  case EVHTTP_REQ_TRACE:
    return "TRACE";
  case EVHTTP_REQ_CONNECT:
    return "CONNECT";
  case EVHTTP_REQ_PATCH:
    return "PATCH";
  }
  return "OTHER";
}

}  // namespace hiapi::shell
