#pragma once
// The Limiter's per-key state and its retry timers, shared by the admission side
// (src/shell/limiter.cc) and the reply side (src/shell/limiter_outcome.cc). Private to the shell:
// not installed.

#include <memory>
#include <optional>
#include <string>
#include <unordered_set>

#include "hiapi/core/key_scheduler.h"
#include "hiapi/core/node_spares.h"
#include "hiapi/core/retry_policy.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/timers.h"

namespace hiapi::shell {

struct Limiter::KeyState {
  std::string name;
  std::unique_ptr<core::KeyScheduler> sched;
  std::unique_ptr<core::RetryBudget> budget;
  std::unique_ptr<Timer> timer;
  /// When `timer` fires (nullopt: not armed). pump() re-arms only when this changes: most pumps
  /// (one per admitted or finished request) leave it as it was.
  std::optional<core::MonotonicTime> armed_for;
  std::unordered_set<uint64_t> waiting;  ///< ids queued in the scheduler
  core::NodeSpares<std::unordered_set<uint64_t>> waiting_spares;
  /// pumpOnce's dispatch, reused (pump() never nests for one key).
  core::Dispatch dispatch;
  /// @return whether @p id was waiting (it is not any more).
  bool unwait(uint64_t id) { return waiting_spares.erase(waiting, id); }
  core::MonotonicTime last_used{};
  /// pump() is running: a pump asked for meanwhile (a callback submitted or cancelled a request
  /// of this key) runs as another round of that one.
  bool pumping = false;
  bool pump_again = false;
};

struct Limiter::RetryTimer {
  std::string key;
  std::unique_ptr<Timer> timer;
};

}  // namespace hiapi::shell
