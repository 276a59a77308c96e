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

/// The shape of a key's request limit (`--limiter`).
enum class LimiterShape { TokenBucket, FixedWindow, SlidingWindow, Gcra };
/// @return "token-bucket", "fixed-window", "sliding-window" or "gcra".
const char* limiterShapeName(LimiterShape shape);
/// Parses a limiterShapeName(). @return false when unknown.
bool parseLimiterShape(const std::string& text, LimiterShape* shape);

/// A limit's parameters: `rate` per second (<= 0: unlimited) and `burst`; windows hold
/// `window_limit()` requests per `window_s()` (default burst / rate, so that every shape lets
/// `burst` requests through at once and `rate` per second on average).
struct LimitParams {
  double rate = 1.0;
  double burst = 10.0;
  double window = 0.0;  ///< seconds; 0 = burst / rate
  double window_s() const { return window > 0 ? window : burst / rate; }
  double window_limit() const;
};

/// What a gateway tells about a key in X-RateLimit-*: at most `remaining` more requests are let
/// through before `reset_s` seconds from now (for a window, its reset; for a bucket, its next
/// whole token), out of `limit`.
struct LimitCounters {
  long long limit = 0;
  long long remaining = 0;
  double reset_s = 0.0;
};

/// One key's request limit, of any shape. Time in seconds (non-decreasing). Thread-safety: none.
class KeyLimiter {
public:
  /// Takes one unit if allowed now. @return true when taken.
  bool consume(LimiterShape shape, const LimitParams& p, double now);
  /// Takes one unit even when refused (`--count-rejected`): a bucket goes up to one burst into
  /// debt, a window counts it.
  void forceConsume(LimiterShape shape, const LimitParams& p, double now);
  /// Gives back the unit of a request that was then refused for another reason.
  void refund(LimiterShape shape, const LimitParams& p, double now);
  /// @return seconds until one more request would be let through (0 when now).
  double secondsUntilAllowed(LimiterShape shape, const LimitParams& p, double now) const;
  /// @return the X-RateLimit-* view at `now`.
  LimitCounters counters(LimiterShape shape, const LimitParams& p, double now) const;

private:
  void expire(const LimitParams& p, double now) const;

  TokenBucket bucket_;
  bool tat_started_ = false;
  double tat_ = 0.0;                    ///< GCRA theoretical arrival time
  long long window_index_ = -1;         ///< fixed window: index of the current window
  long long window_count_ = 0;
  mutable std::deque<double> log_;      ///< sliding window: admission times in (now - W, now]
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

/// A lognormal run time whose mean is `mean_s`: exp(ln(mean) - sigma^2/2 + sigma * z) for a
/// standard normal draw `z`.
double lognormalDuration(double mean_s, double sigma, double z);

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
