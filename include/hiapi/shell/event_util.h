#pragma once
// Small libevent helpers shared by the shell: durations as timevals, the port a socket is bound to.

#include <chrono>
#include <cstdint>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>

#include "hiapi/core/clock.h"

namespace hiapi::shell {

/// @return @p d as a timeval for evtimer_add; negative durations become zero.
inline timeval toTimeval(core::Duration d) {
  if (d < core::Duration::zero()) {
    d = core::Duration::zero();
  }
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(d).count();
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(us / 1'000'000);
  tv.tv_usec = static_cast<suseconds_t>(us % 1'000'000);
  return tv;
}

/// @return the local port of a bound socket (IPv4 or IPv6), 0 when it cannot be read.
inline uint16_t boundPort(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    return 0;
  }
  return ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                  : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

}  // namespace hiapi::shell
