#pragma once
// HttpServer's connection state, shared by the server (src/shell/http_server.cc) and its request
// parser callbacks (src/shell/http_request_parser.cc). Private to the shell: not installed.

#include <chrono>
#include <cstdint>
#include <ctime>
#include <string>

#include <event2/event.h>
#include <llhttp.h>

#include "hiapi/core/clock.h"
#include "hiapi/shell/http_server.h"

namespace hiapi::shell {

// Idle timeouts are in seconds: the coarse clock (a few milliseconds, no TSC read) will do, and
// it is read up to three times per request.
inline core::MonotonicTime coarseNow() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return core::MonotonicTime(std::chrono::duration_cast<core::MonotonicTime::duration>(
      std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
}

struct HttpServer::Conn {
  HttpServer* server = nullptr;
  evutil_socket_t fd = -1;
  event* ev = nullptr;     ///< read | write | closed, edge-triggered, registered once
  event* timer = nullptr;  ///< idle timeout, then the linger
  llhttp_t parser{};
  std::string in;   ///< bytes read and not yet parsed
  std::string out;  ///< reply bytes not yet written
  InboundRequest req;
  bool in_value = false;      ///< the last header callback was a value
  uint64_t header_bytes = 0;  ///< names + values + 4 per line, as max_header_bytes counts
  uint64_t target_bytes = 0;  ///< the request target so far
  bool message_done = false;
  bool expect_continue = false;
  uint64_t exchange = 0;  ///< the open exchange, 0 when none
  bool head = false;      ///< the open exchange is a HEAD request
  bool keep_alive = true;
  bool close_after = false;  ///< close once `out` is written
  bool lingering = false;
  bool read_blocked = false;  ///< stopped reading (buffer cap): read again after the reply
  bool http10 = false;        ///< the open exchange is HTTP/1.0 (keep-alive said so)
  bool parsing = false;       ///< parse() runs: a reply inside it lets that loop go on
  int busy = 0;               ///< inside one of its handlers: destroy on the way out
  bool dead = false;
  core::MonotonicTime last_activity{};
  /// Where the request being received is: its deadlines (header_timeout, body_timeout) run
  /// from its first byte and from the end of its headers.
  enum class Phase { Idle, Headers, Body } phase = Phase::Idle;
  core::MonotonicTime phase_started{};
  uint64_t budget_counted = 0;  ///< bytes of `out` counted in the server's BufferBudget
  bool deadline_armed = false;  ///< the timer is set for the phase's deadline
  std::string peer;  ///< the client's address and port, for the access log
};

/// The llhttp settings of a request parser whose `data` is its HttpServer::Conn.
const llhttp_settings_t& requestParserSettings();

}  // namespace hiapi::shell
