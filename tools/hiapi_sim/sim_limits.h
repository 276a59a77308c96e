#pragma once
// Pure limit primitives of the simulator: no libevent, time passed in as seconds (double) since
// the simulator started, so that the unit tests drive them with plain numbers.

#include <cstddef>
#include <deque>
#include <string>
#include <vector>

namespace hiapi::sim {

/// Token bucket with one number of state (folly style): the moment the bucket was empty.
/// Tokens are derived, min((now - zero_time) * rate, burst); consuming moves zero_time forward.
/// rate <= 0 means unlimited. Thread-safety: none (single event loop).
class TokenBucket {
public:
  /// @return the tokens available at `now` (may be negative when in debt).
  double available(double rate, double burst, double now) const;
  /// Takes one token if at least one is available. @return true when taken.
  bool consume(double rate, double burst, double now);
  /// Takes one token even when empty, going into debt down to -burst (for `count-rejected`).
  void forceConsume(double rate, double burst, double now);
  /// Gives one token back (a request that took a token and was then refused), capped at burst.
  void refund(double rate, double burst, double now);
  /// @return seconds until one whole token is available (0 when one is already).
  double secondsUntilToken(double rate, double burst, double now) const;
  /// @return seconds until the bucket is full.
  double secondsUntilFull(double rate, double burst, double now) const;

private:
  void setTokens(double tokens, double rate, double now);
  bool started_ = false;    // a fresh bucket is full
  double zero_time_ = 0.0;  // seconds; tokens == 0 at this moment
};

/// Largest number of events in any window (t - 1 s, t], exact: keeps the timestamps of the last
/// second only, so memory is bounded by the admitted rate.
class WindowMax {
public:
  explicit WindowMax(double window_s = 1.0) : window_s_(window_s) {}
  /// Records one event at `now` (non-decreasing).
  void add(double now);
  /// @return the largest count seen in any window so far.
  size_t max() const { return max_; }

private:
  double window_s_;
  std::deque<double> times_;
  size_t max_ = 0;
};

enum class Tier { Light = 0, Heavy = 1 };
inline const char* tierName(Tier t) { return t == Tier::Heavy ? "heavy" : "light"; }

/// Glob match with '*' (any run of characters), ASCII case-insensitive.
bool globMatch(const std::string& pattern, const std::string& text);

/// Splits "base@route" → base and route ("" when no '@').
void splitModel(const std::string& model, std::string* base, std::string* route);

/// Tier of a create: heavy when the route (body `route` or '@route' suffix) is "pro", or the base
/// name matches one of `heavy_patterns`; light otherwise.
Tier classifyTier(const std::string& model, const std::string& body_route,
                  const std::vector<std::string>& heavy_patterns);

}  // namespace hiapi::sim
