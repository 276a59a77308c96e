#pragma once
// Time and randomness for the pure core: injected, never read from globals, so that every core
// class can be driven deterministically in simulated time by the tests.

#include <chrono>
#include <cstdint>
#include <random>

namespace hiapi::core {

using MonotonicClock = std::chrono::steady_clock;
using MonotonicTime = MonotonicClock::time_point;
using Duration = std::chrono::nanoseconds;
using std::chrono::milliseconds;
using std::chrono::seconds;

/// Seconds as a double, for rate arithmetic.
inline double toSeconds(Duration d) { return std::chrono::duration<double>(d).count(); }
/// A double number of seconds as a Duration (rounded toward zero).
inline Duration fromSeconds(double s) {
  return std::chrono::duration_cast<Duration>(std::chrono::duration<double>(s));
}

/// Source of monotonic and wall time. Thread-safety: implementations are safe to read from one
/// thread; the proxy's core is single-threaded.
class Clock {
public:
  virtual ~Clock() = default;
  /// @return the current monotonic time.
  virtual MonotonicTime now() const = 0;
  /// @return the current wall-clock time (for HTTP-date headers only).
  virtual std::chrono::system_clock::time_point wallNow() const = 0;
};

/// The real clock.
class SteadyClock final : public Clock {
public:
  MonotonicTime now() const override { return MonotonicClock::now(); }
  std::chrono::system_clock::time_point wallNow() const override {
    return std::chrono::system_clock::now();
  }
};

/// A clock that moves only when told: tests.
class ManualClock final : public Clock {
public:
  explicit ManualClock(MonotonicTime start = MonotonicTime{} + std::chrono::hours(1),
                       std::chrono::system_clock::time_point wall_start =
                           std::chrono::system_clock::time_point{} +
                           std::chrono::seconds(1'800'000'000))
      : now_(start), wall_(wall_start) {}
  MonotonicTime now() const override { return now_; }
  std::chrono::system_clock::time_point wallNow() const override { return wall_; }
  void advance(Duration d) {
    now_ += d;
    wall_ += std::chrono::duration_cast<std::chrono::system_clock::duration>(d);
  }
  void set(MonotonicTime t) { now_ = t; }

private:
  MonotonicTime now_;
  std::chrono::system_clock::time_point wall_;
};

/// Injected randomness (jitter). Thread-safety: not thread-safe.
class Random {
public:
  virtual ~Random() = default;
  /// @return a uniformly distributed double in [0, 1).
  virtual double uniform() = 0;
};

/// A Random that always returns one value: tests pin the jitter with it.
class FixedRandom final : public Random {
public:
  explicit FixedRandom(double v) : v_(v) {}
  double uniform() override { return v_; }

private:
  double v_;
};

/// A seeded Mersenne twister: reproducible when the seed is fixed.
class SeededRandom final : public Random {
public:
  explicit SeededRandom(uint64_t seed) : engine_(seed) {}
  double uniform() override { return dist_(engine_); }

private:
  std::mt19937_64 engine_;
  std::uniform_real_distribution<double> dist_{0.0, 1.0};
};

}  // namespace hiapi::core
