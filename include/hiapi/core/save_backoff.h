#pragma once
// When to try a failing write again (the task state file on a full or read-only disk), and when
// to say so: exponential backoff, capped, and one log line per run of failures plus one per cap
// interval while it lasts, instead of a try and a line on every tick.

#include <algorithm>
#include <cstdint>

#include "hiapi/core/clock.h"

namespace hiapi::core {

/// Thread-safety: none (the loop thread's).
class SaveBackoff {
public:
  /// @param first the wait after the first failure; each further failure doubles it, up to @p max.
  explicit SaveBackoff(Duration first = std::chrono::seconds(1),
                       Duration max = std::chrono::seconds(60))
      : first_(first), max_(max) {}

  /// @return whether a try is due at @p now (always, unless failures are being backed off).
  bool due(MonotonicTime now) const { return failures_ == 0 || now >= next_; }
  /// Records a failed try at @p now. @return whether to log it: the first of a run, then at
  /// most once per @p max.
  bool failed(MonotonicTime now) {
    ++failures_;
    delay_ = failures_ == 1 ? first_ : std::min(delay_ * 2, max_);
    next_ = now + delay_;
    if (failures_ == 1 || now - last_log_ >= max_) {
      last_log_ = now;
      return true;
    }
    return false;
  }
  /// Records a successful try. @return the failures of the run it ends (0: there was none).
  uint64_t succeeded() {
    const uint64_t n = failures_;
    failures_ = 0;
    return n;
  }
  uint64_t failures() const { return failures_; }
  /// @return the wait after the last failure.
  Duration delay() const { return delay_; }

private:
  Duration first_;
  Duration max_;
  Duration delay_{};
  uint64_t failures_ = 0;
  MonotonicTime next_{};
  MonotonicTime last_log_{};
};

}  // namespace hiapi::core
