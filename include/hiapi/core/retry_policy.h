#pragma once
// Retries, Envoy-style: RetryPolicy::decide() is the pure "would" (is this outcome retryable, and
// after how long); RetryBudget is the "should" (retries stay a bounded share of recent requests,
// so that retries cannot amplify an outage). The shell arms the timer and re-submits the request
// to its KeyScheduler with Priority::Retry.
//
// Rules of decide():
//  - attempt >= max_attempts: no (MaxAttempts).
//  - 429 and 503: retried for every method (the server refused before doing anything).
//      With a parseable Retry-After: delay = Retry-After exactly, never earlier. When it exceeds
//      max_delay (30 s) we do not retry (RetryAfterTooLong: waiting less would defy the server,
//      waiting more breaks the cap; the client gets the upstream reply and its own SDK backs off).
//      When it does not fit in the time left, no (DeadlineTooClose).
//      Without Retry-After: full jitter, uniform in [0, min(max_delay, base * 2^(attempt-1))).
//  - 500, 502, 504 and status 0 (connection failure, reset, timeout): retried only when it cannot
//    duplicate a task: GET/HEAD, any request with an Idempotency-Key, or nothing was sent. Delay by
//    full jitter as above. Other 5xx (501, 505, ...) are never retried.
//  - Any other status (2xx, 3xx, 4xx other than 429): no.
//  - A backoff delay that does not end before the deadline: no (DeadlineTooClose).

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include "hiapi/core/admission_queue.h"
#include "hiapi/core/clock.h"
#include "hiapi/core/config.h"

namespace hiapi::core {

enum class HttpMethod { Get, Head, Post, Put, Delete, Other };

/// @return the method for its token (case-sensitive per RFC 9110). Thread-safety: pure.
HttpMethod parseHttpMethod(std::string_view method);

/// Parses an HTTP-date in any of the three forms of RFC 9110 §5.6.7: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`; a two-digit year
/// more than 50 years ahead of @p wall_now is taken in the previous century) and asctime
/// (`Sun Nov  6 08:49:37 1994`). @return nullopt when malformed. Thread-safety: pure.
std::optional<std::chrono::system_clock::time_point> parseHttpDate(
    std::string_view text, std::chrono::system_clock::time_point wall_now);

/// Parses a Retry-After value: delay-seconds (integer or, tolerated, decimal) or an HTTP-date.
/// @return the delay from @p wall_now (a date in the past gives zero), or nullopt when malformed
///         or negative. Very large values are clamped to 1e9 s. Thread-safety: pure.
std::optional<Duration> parseRetryAfter(std::string_view value,
                                        std::chrono::system_clock::time_point wall_now);

/// Full-jitter exponential backoff: uniform in [0, min(max, base * 2^(attempt-1))).
/// @param attempt 1 for the first retry. Thread-safety: uses @p random.
Duration fullJitterBackoff(Duration base, Duration max, uint32_t attempt, Random& random);

/// Everything decide() looks at.
struct RetryInput {
  HttpMethod method = HttpMethod::Get;
  RouteKind route = RouteKind::Other;
  int status = 0;                      ///< HTTP status; 0 = connection failure / reset / timeout
  bool bytes_sent = true;              ///< whether any byte of the request reached the socket
  bool has_idempotency_key = false;
  std::optional<std::string> retry_after;  ///< raw Retry-After header value, when present
  uint32_t attempt = 1;                ///< attempts made so far, this one included (1-based)
  Duration time_left{};                ///< until the client's deadline
  std::chrono::system_clock::time_point wall_now{};  ///< for HTTP-date Retry-After
};

enum class RetryReason {
  Retry429,            ///< yes: upstream 429
  Retry503,            ///< yes: upstream 503
  RetryServerError,    ///< yes: 500/502/504 on a safe request
  RetryNetworkError,   ///< yes: connection failure on a safe request
  NotRetryableStatus,  ///< no: success, 4xx other than 429, or a 5xx we never retry
  UnsafeToRetry,       ///< no: 5xx/network error on a POST without key after bytes were sent
  MaxAttempts,         ///< no: attempts exhausted
  RetryAfterTooLong,   ///< no: Retry-After above max_delay
  DeadlineTooClose,    ///< no: the delay does not end before the deadline
};

/// @return a stable lower-case name for logs and metrics. Thread-safety: pure.
const char* retryReasonName(RetryReason r);

struct RetryDecision {
  bool retry = false;
  Duration delay{};     ///< wait before re-submitting (meaningful when retry)
  RetryReason reason = RetryReason::NotRetryableStatus;
};

/// Thread-safety: immutable after construction; decide() uses the caller's Random.
class RetryPolicy {
public:
  /// @param config max_attempts, base_delay, max_delay
  explicit RetryPolicy(const RetryConfig& config);

  /// @param in the failed attempt
  /// @param random jitter source
  /// @return whether and when to retry, and why.
  RetryDecision decide(const RetryInput& in, Random& random) const;

  const RetryConfig& config() const { return config_; }

private:
  RetryConfig config_;
};

/// Sliding-window retry budget: retries in the last `window` may not exceed
/// budget_ratio * requests in the window + budget_min_retries. The window is kept as 10 buckets.
/// Thread-safety: not thread-safe.
class RetryBudget {
public:
  /// @param ratio retries per request allowed (0.2 = 20 %)
  /// @param min_retries retries always allowed per window
  /// @param window sliding window length
  RetryBudget(double ratio, uint32_t min_retries, Duration window = std::chrono::seconds(10));

  /// Counts an upstream request (first attempts; retries are counted by tryRetry()).
  void onRequest(MonotonicTime now);
  /// @return true and counts a retry when the budget allows one now; false otherwise.
  bool tryRetry(MonotonicTime now);
  /// @return whether tryRetry(now) would succeed.
  bool wouldAllow(MonotonicTime now) const;
  uint64_t requestsInWindow(MonotonicTime now) const;
  uint64_t retriesInWindow(MonotonicTime now) const;
  /// @return retries refused so far.
  uint64_t refusedTotal() const { return refused_; }
  void reconfigure(double ratio, uint32_t min_retries);

private:
  static constexpr size_t kBuckets = 10;
  struct Bucket {
    int64_t epoch = std::numeric_limits<int64_t>::min();
    uint64_t requests = 0;
    uint64_t retries = 0;
  };
  int64_t epochOf(MonotonicTime now) const;
  Bucket& bucketFor(MonotonicTime now);

  double ratio_;
  uint32_t min_retries_;
  Duration width_;
  int64_t latest_epoch_ = std::numeric_limits<int64_t>::min();
  Bucket buckets_[kBuckets];
  uint64_t refused_ = 0;
};

}  // namespace hiapi::core
