#pragma once
// SendLog: at most `limit` sends in any window of `window` — a sliding log.
//
// A key's budget is a token bucket of (rate, burst). A bucket that has been spending at its rate
// still holds tokens, so it may send a burst more within one window of burst / rate; a gateway
// that counts in windows (fixed or sliding) of that length lets through only `burst`. Without
// the gateway's X-RateLimit-* counters nothing says which shape it is until it answers 429 while
// the bucket had the token. From then the key also keeps to this log, with limit = burst and
// window = burst / rate: the strictest shape with that rate and burst (no window of burst / rate,
// fixed or sliding, and no bucket of (rate, burst) refuses what it lets through), at the same
// long-run rate.
// Thread-safety: not thread-safe; one event-loop thread owns it.

#include <cstddef>
#include <deque>

#include "hiapi/core/clock.h"

namespace hiapi::core {

class SendLog {
public:
  /// @param limit sends per window (at least 1); @param window > 0
  SendLog(size_t limit, Duration window);

  /// @return whether a send at @p now keeps to the limit.
  bool allows(MonotonicTime now) const;
  /// @return the earliest time >= @p now at which a send keeps to the limit.
  MonotonicTime nextAllowed(MonotonicTime now) const;
  /// Keeps the sends counted, under a new limit and window.
  void setShape(size_t limit, Duration window);
  /// Counts a send at @p now.
  void record(MonotonicTime now);
  /// Takes back the last record() (the send did not happen).
  void unrecord();

  size_t limit() const { return limit_; }
  Duration window() const { return window_; }

private:
  /// Drops sends that left the window ending at @p now.
  void expire(MonotonicTime now) const;

  size_t limit_;
  Duration window_;
  mutable std::deque<MonotonicTime> sends_;  ///< in (now - window, now], oldest first
};

}  // namespace hiapi::core
