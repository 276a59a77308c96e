#include "hiapi/core/retry_policy.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>

namespace hiapi::core {

namespace {

using SysTime = std::chrono::system_clock::time_point;
constexpr double kMaxDelaySeconds = 1e9;

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' ||
                        s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

bool isDigit(char c) { return c >= '0' && c <= '9'; }

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
int64_t daysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2 ? 1 : 0;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

int civilYear(SysTime t) {
  const int64_t days =
      std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count() / 86400;
  // Inverse of daysFromCivil, year only.
  const int64_t z = days + 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const int64_t y = static_cast<int64_t>(yoe) + era * 400;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return static_cast<int>(y + (m <= 2 ? 1 : 0));
}

/// A tiny cursor over the date text.
class Cursor {
public:
  explicit Cursor(std::string_view s) : s_(s) {}
  bool done() const { return i_ == s_.size(); }
  bool lit(std::string_view l) {
    if (s_.substr(i_, l.size()) != l) {
      return false;
    }
    i_ += l.size();
    return true;
  }
  /// Exactly @p n digits (or, with allow_space_pad, a space then n-1 digits).
  std::optional<int> digits(size_t n, bool allow_space_pad = false) {
    if (i_ + n > s_.size()) {
      return std::nullopt;
    }
    int v = 0;
    for (size_t k = 0; k < n; ++k) {
      const char c = s_[i_ + k];
      if (k == 0 && allow_space_pad && c == ' ') {
        continue;
      }
      if (!isDigit(c)) {
        return std::nullopt;
      }
      v = v * 10 + (c - '0');
    }
    i_ += n;
    return v;
  }
  std::optional<int> month() {
    static constexpr std::array<std::string_view, 12> kMonths = {
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    for (size_t m = 0; m < kMonths.size(); ++m) {
      if (lit(kMonths[m])) {
        return static_cast<int>(m + 1);
      }
    }
    return std::nullopt;
  }
  /// Skips a day name made of letters.
  bool dayName() {
    const size_t start = i_;
    while (i_ < s_.size() && std::isalpha(static_cast<unsigned char>(s_[i_]))) {
      ++i_;
    }
    return i_ - start >= 3;
  }
  bool time(int& h, int& mi, int& sec) {
    auto a = digits(2);
    if (!a || !lit(":")) return false;
    auto b = digits(2);
    if (!b || !lit(":")) return false;
    auto c = digits(2);
    if (!c) return false;
    h = *a;
    mi = *b;
    sec = *c;
    return true;
  }

private:
  std::string_view s_;
  size_t i_ = 0;
};

std::optional<SysTime> makeTime(int year, int month, int day, int h, int mi, int sec) {
  if (month < 1 || month > 12 || day < 1 || day > 31 || h > 23 || mi > 59 || sec > 60) {
    return std::nullopt;
  }
  const int64_t days = daysFromCivil(year, static_cast<unsigned>(month), static_cast<unsigned>(day));
  const int64_t secs = days * 86400 + h * 3600 + mi * 60 + sec;
  // A four-digit year reaches past what the wall clock's nanoseconds can hold (years 1678 to
  // 2262): such a date is as good as "never" or "long ago", and converting it would overflow.
  using std::chrono::duration_cast;
  const int64_t lo = duration_cast<std::chrono::seconds>(SysTime::min().time_since_epoch()).count();
  const int64_t hi = duration_cast<std::chrono::seconds>(SysTime::max().time_since_epoch()).count();
  return SysTime{} + std::chrono::seconds(std::clamp(secs, lo, hi));
}

}  // namespace

HttpMethod parseHttpMethod(std::string_view method) {
  if (method == "GET") return HttpMethod::Get;
  if (method == "HEAD") return HttpMethod::Head;
  if (method == "POST") return HttpMethod::Post;
  if (method == "PUT") return HttpMethod::Put;
  if (method == "DELETE") return HttpMethod::Delete;
  return HttpMethod::Other;
}

std::optional<SysTime> parseHttpDate(std::string_view text, SysTime wall_now) {
  text = trim(text);
  int h = 0, mi = 0, sec = 0;
  // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
  {
    Cursor c(text);
    if (c.dayName() && c.lit(", ")) {
      Cursor save = c;
      auto day = c.digits(2);
      if (day && c.lit(" ")) {
        auto month = c.month();
        if (month && c.lit(" ")) {
          auto year = c.digits(4);
          if (year && c.lit(" ") && c.time(h, mi, sec) && c.lit(" GMT") && c.done()) {
            return makeTime(*year, *month, *day, h, mi, sec);
          }
        }
      }
      // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
      c = save;
      day = c.digits(2);
      if (day && c.lit("-")) {
        auto month = c.month();
        if (month && c.lit("-")) {
          auto yy = c.digits(2);
          if (yy && c.lit(" ") && c.time(h, mi, sec) && c.lit(" GMT") && c.done()) {
            const int now_year = civilYear(wall_now);
            int year = (now_year / 100) * 100 + *yy;
            if (year > now_year + 50) {
              year -= 100;
            }
            return makeTime(year, *month, *day, h, mi, sec);
          }
        }
      }
      return std::nullopt;
    }
  }
  // asctime: Sun Nov  6 08:49:37 1994
  {
    Cursor c(text);
    if (c.dayName() && c.lit(" ")) {
      auto month = c.month();
      if (month && c.lit(" ")) {
        auto day = c.digits(2, /*allow_space_pad=*/true);
        if (day && c.lit(" ") && c.time(h, mi, sec) && c.lit(" ")) {
          auto year = c.digits(4);
          if (year && c.done()) {
            return makeTime(*year, *month, *day, h, mi, sec);
          }
        }
      }
    }
  }
  return std::nullopt;
}

std::optional<Duration> parseRetryAfter(std::string_view value, SysTime wall_now) {
  value = trim(value);
  if (value.empty()) {
    return std::nullopt;
  }
  if (isDigit(value.front())) {
    // delay-seconds: digits, optionally a decimal fraction (tolerated).
    double seconds = 0;
    size_t i = 0;
    while (i < value.size() && isDigit(value[i])) {
      seconds = std::min(seconds * 10 + (value[i] - '0'), kMaxDelaySeconds);
      ++i;
    }
    if (i < value.size() && value[i] == '.') {
      ++i;
      double scale = 0.1;
      const size_t frac_start = i;
      while (i < value.size() && isDigit(value[i])) {
        seconds += (value[i] - '0') * scale;
        scale /= 10;
        ++i;
      }
      if (i == frac_start) {
        return std::nullopt;
      }
    }
    if (i != value.size()) {
      return std::nullopt;
    }
    return fromSeconds(std::min(seconds, kMaxDelaySeconds));
  }
  auto date = parseHttpDate(value, wall_now);
  if (!date) {
    return std::nullopt;
  }
  if (*date <= wall_now) {
    return Duration::zero();
  }
  const double secs = std::chrono::duration<double>(*date - wall_now).count();
  return fromSeconds(std::min(secs, kMaxDelaySeconds));
}

Duration fullJitterBackoff(Duration base, Duration max, uint32_t attempt, Random& random) {
  const uint32_t exponent = std::min<uint32_t>(attempt > 0 ? attempt - 1 : 0, 40);
  const double ceiling_s = std::min(toSeconds(max), toSeconds(base) * std::ldexp(1.0, exponent));
  return fromSeconds(std::max(0.0, random.uniform() * ceiling_s));
}

const char* retryReasonName(RetryReason r) {
  switch (r) {
    case RetryReason::Retry429: return "retry_429";
    case RetryReason::Retry503: return "retry_503";
    case RetryReason::RetryServerError: return "retry_server_error";
    case RetryReason::RetryNetworkError: return "retry_network_error";
    case RetryReason::NotRetryableStatus: return "not_retryable_status";
    case RetryReason::UnsafeToRetry: return "unsafe_to_retry";
    case RetryReason::MaxAttempts: return "max_attempts";
    case RetryReason::RetryAfterTooLong: return "retry_after_too_long";
    case RetryReason::DeadlineTooClose: return "deadline_too_close";
  }
  return "unknown";
}

RetryPolicy::RetryPolicy(const RetryConfig& config) : config_(config) {}

RetryDecision RetryPolicy::decide(const RetryInput& in, Random& random) const {
  RetryDecision no;
  no.retry = false;

  const bool throttled = in.status == 429 || in.status == 503;
  const bool server_error = in.status == 500 || in.status == 502 || in.status == 504;
  const bool network_error = in.status == 0;
  if (!throttled && !server_error && !network_error) {
    no.reason = RetryReason::NotRetryableStatus;
    return no;
  }
  if (!throttled) {
    const bool safe = in.method == HttpMethod::Get || in.method == HttpMethod::Head ||
                      in.has_idempotency_key || !in.bytes_sent;
    if (!safe) {
      no.reason = RetryReason::UnsafeToRetry;
      return no;
    }
  }
  if (in.attempt >= config_.max_attempts) {
    no.reason = RetryReason::MaxAttempts;
    return no;
  }

  RetryDecision yes;
  yes.retry = true;
  yes.reason = in.status == 429   ? RetryReason::Retry429
               : in.status == 503 ? RetryReason::Retry503
               : server_error     ? RetryReason::RetryServerError
                                  : RetryReason::RetryNetworkError;

  std::optional<Duration> retry_after;
  if (throttled && in.retry_after) {
    retry_after = parseRetryAfter(*in.retry_after, in.wall_now);
  }
  if (retry_after) {
    if (*retry_after > config_.max_delay) {
      no.reason = RetryReason::RetryAfterTooLong;
      return no;
    }
    if (*retry_after >= in.time_left) {
      no.reason = RetryReason::DeadlineTooClose;
      return no;
    }
    yes.delay = *retry_after;
    return yes;
  }
  yes.delay = fullJitterBackoff(config_.base_delay, config_.max_delay, in.attempt, random);
  if (in.time_left <= Duration::zero() || yes.delay >= in.time_left) {
    no.reason = RetryReason::DeadlineTooClose;
    return no;
  }
  return yes;
}

RetryBudget::RetryBudget(double ratio, uint32_t min_retries, Duration window)
    : ratio_(ratio),
      min_retries_(min_retries),
      width_(std::max<Duration>(window / static_cast<int64_t>(kBuckets), Duration(1))) {}

void RetryBudget::reconfigure(double ratio, uint32_t min_retries) {
  ratio_ = ratio;
  min_retries_ = min_retries;
}

int64_t RetryBudget::epochOf(MonotonicTime now) const {
  const int64_t e = now.time_since_epoch() / width_;
  // Time that runs backwards counts into the latest bucket.
  return std::max(e, latest_epoch_);
}

RetryBudget::Bucket& RetryBudget::bucketFor(MonotonicTime now) {
  const int64_t e = epochOf(now);
  latest_epoch_ = e;
  Bucket& b = buckets_[static_cast<size_t>(((e % static_cast<int64_t>(kBuckets)) +
                                            static_cast<int64_t>(kBuckets)) %
                                           static_cast<int64_t>(kBuckets))];
  if (b.epoch != e) {
    b = Bucket{e, 0, 0};
  }
  return b;
}

uint64_t RetryBudget::requestsInWindow(MonotonicTime now) const {
  const int64_t e = epochOf(now);
  uint64_t n = 0;
  for (const Bucket& b : buckets_) {
    if (b.epoch <= e && b.epoch > e - static_cast<int64_t>(kBuckets)) {
      n += b.requests;
    }
  }
  return n;
}

uint64_t RetryBudget::retriesInWindow(MonotonicTime now) const {
  const int64_t e = epochOf(now);
  uint64_t n = 0;
  for (const Bucket& b : buckets_) {
    if (b.epoch <= e && b.epoch > e - static_cast<int64_t>(kBuckets)) {
      n += b.retries;
    }
  }
  return n;
}

void RetryBudget::onRequest(MonotonicTime now) { ++bucketFor(now).requests; }

bool RetryBudget::wouldAllow(MonotonicTime now) const {
  const double allowed =
      ratio_ * static_cast<double>(requestsInWindow(now)) + static_cast<double>(min_retries_);
  return static_cast<double>(retriesInWindow(now)) + 1.0 <= allowed + 1e-9;
}

bool RetryBudget::tryRetry(MonotonicTime now) {
  if (!wouldAllow(now)) {
    ++refused_;
    return false;
  }
  ++bucketFor(now).retries;
  return true;
}

}  // namespace hiapi::core
