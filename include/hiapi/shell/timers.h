#pragma once
// Where the shell's timers come from. A shell object asks its Timers for one-shot timers armed
// for a moment on the Timers' clock. In the daemon they are libevent timers on the loop and the
// clock is the real one; in a test they are ManualTimers on a ManualClock, which fire only when
// the test advances the clock, so a test of timing never sleeps and never races the machine.

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include <event2/event.h>

#include "hiapi/core/clock.h"

namespace hiapi::shell {

/// One one-shot timer. Destroying it cancels it. Thread-safety: the loop thread only.
class Timer {
public:
  virtual ~Timer() = default;
  /// Arms the timer for @p at on its clock (a time already past fires on the next turn);
  /// arming an armed timer moves it.
  virtual void armAt(core::MonotonicTime at) = 0;
  virtual void cancel() = 0;
  virtual bool armed() const = 0;
  /// @return when it fires, if armed.
  virtual std::optional<core::MonotonicTime> due() const = 0;
};

class Timers {
public:
  virtual ~Timers() = default;
  /// The clock timers are armed on; shell objects read the time from it too.
  virtual const core::Clock& clock() const = 0;
  /// @param fire called on the loop when the timer is due; it may re-arm or destroy the timer.
  virtual std::unique_ptr<Timer> make(std::function<void()> fire) = 0;
};

/// libevent timers on @p base, delays measured on @p clock (the real clock in the daemon).
class EventTimers final : public Timers {
public:
  EventTimers(event_base* base, const core::Clock& clock) : base_(base), clock_(clock) {}
  const core::Clock& clock() const override { return clock_; }
  std::unique_ptr<Timer> make(std::function<void()> fire) override;

private:
  event_base* base_;
  const core::Clock& clock_;
};

/// Timers that fire when the test says time has passed: advance() moves @p clock through every
/// due time in order and fires what is due at each, as a loop on that clock would.
class ManualTimers final : public Timers {
public:
  explicit ManualTimers(core::ManualClock& clock) : clock_(clock) {}
  ~ManualTimers() override;
  const core::Clock& clock() const override { return clock_; }
  std::unique_ptr<Timer> make(std::function<void()> fire) override;
  /// Moves the clock forward by @p d, firing due timers on the way (at most @p max_fires, so a
  /// timer that keeps re-arming itself for "now" cannot spin forever). @return timers fired.
  size_t advance(core::Duration d, size_t max_fires = 100000);
  /// Fires what is due now without moving the clock. @return timers fired.
  size_t runDue(size_t max_fires = 100000) { return advance(core::Duration::zero(), max_fires); }
  /// @return the earliest due time of an armed timer.
  std::optional<core::MonotonicTime> nextDue() const;

private:
  class ManualTimer;
  friend class ManualTimer;
  core::ManualClock& clock_;
  /// Armed timers by due time; the sequence number keeps arming order among equal times.
  std::set<std::tuple<core::MonotonicTime, uint64_t, ManualTimer*>> armed_;
  std::set<ManualTimer*> live_;
  uint64_t seq_ = 0;
};

}  // namespace hiapi::shell
