#pragma once
// Durations of the core as libevent timevals.

#include <chrono>

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

}  // namespace hiapi::shell
