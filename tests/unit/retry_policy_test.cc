#include "hiapi/core/retry_policy.h"

#include <gtest/gtest.h>

#include <string>
#include <tuple>

namespace hiapi::core {
namespace {

const MonotonicTime kStart = MonotonicTime{} + std::chrono::hours(1);
const auto kWall = std::chrono::system_clock::time_point{} + std::chrono::seconds(1'800'000'000);

// ---- Retry-After parsing ------------------------------------------------------------------------

class RetryAfterParse
    : public ::testing::TestWithParam<std::tuple<std::string, std::optional<int64_t>>> {};

TEST_P(RetryAfterParse, Value) {
  const auto& [text, expected_ms] = GetParam();
  auto got = parseRetryAfter(text, kWall);
  if (!expected_ms) {
    EXPECT_FALSE(got) << text;
  } else {
    ASSERT_TRUE(got) << text;
    EXPECT_EQ(std::chrono::duration_cast<milliseconds>(*got).count(), *expected_ms) << text;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Forms, RetryAfterParse,
    ::testing::Values(
        std::make_tuple("0", 0), std::make_tuple("5", 5000), std::make_tuple(" 7 ", 7000),
        std::make_tuple("1.5", 1500), std::make_tuple("0.25", 250),
        std::make_tuple("561635", 561635000LL),
        std::make_tuple("Fri, 15 Jan 2027 08:00:10 GMT", 10000),      // IMF-fixdate
        std::make_tuple("Fri, 15 Jan 2027 08:01:30 GMT", 90000),
        std::make_tuple("Friday, 15-Jan-27 08:00:10 GMT", 10000),     // RFC 850
        std::make_tuple("Fri Jan 15 08:00:10 2027", 10000),           // asctime
        std::make_tuple("Tue Jan  5 08:00:10 2027", 0),               // asctime, past: zero
        std::make_tuple("Thu, 01 Jan 1970 00:00:00 GMT", 0),          // past: zero
        // Beyond the wall clock's range (1678-2262): the longest delay, and the past.
        std::make_tuple("Wed, 21 Oct 2441 07:28:00 GMT", 1'000'000'000'000LL),
        std::make_tuple("Mon, 01 Jan 0001 00:00:00 GMT", 0),
        std::make_tuple("", std::nullopt), std::make_tuple("-5", std::nullopt),
        std::make_tuple("5s", std::nullopt), std::make_tuple("1.", std::nullopt),
        std::make_tuple("soon", std::nullopt),
        std::make_tuple("Fri, 15 Jan 2027 08:00:10 UTC", std::nullopt),
        std::make_tuple("Fri, 15 Foo 2027 08:00:10 GMT", std::nullopt),
        std::make_tuple("Fri, 15 Jan 2027 25:00:10 GMT", std::nullopt)));

TEST(HttpDate, RFC850CenturyFollowsWallClock) {
  auto t = parseHttpDate("Sunday, 06-Nov-94 08:49:37 GMT", kWall);
  ASSERT_TRUE(t);
  // 1994, not 2094: more than 50 years ahead of 2027 goes back a century.
  EXPECT_EQ(std::chrono::duration_cast<std::chrono::seconds>(t->time_since_epoch()).count(),
            784111777);
  auto imf = parseHttpDate("Sun, 06 Nov 1994 08:49:37 GMT", kWall);
  auto asc = parseHttpDate("Sun Nov  6 08:49:37 1994", kWall);
  EXPECT_EQ(*t, *imf);
  EXPECT_EQ(*t, *asc);
}

TEST(Backoff, FullJitterDoublesToCap) {
  FixedRandom almost_one(0.999999);
  const double caps[] = {1, 2, 4, 8, 16, 30, 30, 30};
  for (uint32_t attempt = 1; attempt <= 8; ++attempt) {
    EXPECT_NEAR(toSeconds(fullJitterBackoff(seconds(1), seconds(30), attempt, almost_one)),
                caps[attempt - 1] * 0.999999, 1e-6);
  }
  FixedRandom zero(0.0);
  EXPECT_EQ(fullJitterBackoff(seconds(1), seconds(30), 3, zero), Duration::zero());
  FixedRandom half(0.5);
  EXPECT_EQ(fullJitterBackoff(seconds(1), seconds(30), 3, half), seconds(2));
}

// ---- decide(): status × method × key × bytes --------------------------------------------------

struct Case {
  const char* name;
  int status;
  HttpMethod method;
  bool has_key;
  bool bytes_sent;
  bool retry;
  RetryReason reason;
};

class Decide : public ::testing::TestWithParam<Case> {};

TEST_P(Decide, Table) {
  const Case& c = GetParam();
  RetryPolicy policy{RetryConfig{}};
  RetryInput in;
  in.status = c.status;
  in.method = c.method;
  in.has_idempotency_key = c.has_key;
  in.bytes_sent = c.bytes_sent;
  in.attempt = 1;
  in.time_left = seconds(40);
  in.wall_now = kWall;
  FixedRandom half(0.5);
  auto d = policy.decide(in, half);
  EXPECT_EQ(d.retry, c.retry) << c.name;
  EXPECT_EQ(d.reason, c.reason) << c.name << " got " << retryReasonName(d.reason);
  if (d.retry) {
    EXPECT_EQ(d.delay, milliseconds(500)) << c.name;  // 0.5 * min(30, 1 * 2^0)
  }
}

constexpr auto G = HttpMethod::Get;
constexpr auto P = HttpMethod::Post;
constexpr auto H = HttpMethod::Head;
constexpr auto O = HttpMethod::Other;

INSTANTIATE_TEST_SUITE_P(
    Statuses, Decide,
    ::testing::Values(
        Case{"200", 200, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"201 post", 201, P, false, true, false, RetryReason::NotRetryableStatus},
        Case{"304", 304, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"400", 400, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"401", 401, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"403", 403, G, true, true, false, RetryReason::NotRetryableStatus},
        Case{"404", 404, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"409", 409, P, true, true, false, RetryReason::NotRetryableStatus},
        Case{"422", 422, P, true, true, false, RetryReason::NotRetryableStatus},
        Case{"429 get", 429, G, false, true, true, RetryReason::Retry429},
        Case{"429 post no key", 429, P, false, true, true, RetryReason::Retry429},
        Case{"429 post key", 429, P, true, true, true, RetryReason::Retry429},
        Case{"503 get", 503, G, false, true, true, RetryReason::Retry503},
        Case{"503 post no key", 503, P, false, true, true, RetryReason::Retry503},
        Case{"500 get", 500, G, false, true, true, RetryReason::RetryServerError},
        Case{"500 head", 500, H, false, true, true, RetryReason::RetryServerError},
        Case{"500 post key", 500, P, true, true, true, RetryReason::RetryServerError},
        Case{"500 post no key", 500, P, false, true, false, RetryReason::UnsafeToRetry},
        Case{"502 get", 502, G, false, true, true, RetryReason::RetryServerError},
        Case{"502 post no key", 502, P, false, true, false, RetryReason::UnsafeToRetry},
        Case{"504 post key", 504, P, true, true, true, RetryReason::RetryServerError},
        Case{"504 other no key", 504, O, false, true, false, RetryReason::UnsafeToRetry},
        Case{"501", 501, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"505", 505, G, false, true, false, RetryReason::NotRetryableStatus},
        Case{"net get", 0, G, false, true, true, RetryReason::RetryNetworkError},
        Case{"net post key", 0, P, true, true, true, RetryReason::RetryNetworkError},
        Case{"net post no key sent", 0, P, false, true, false, RetryReason::UnsafeToRetry},
        Case{"net post no key unsent", 0, P, false, false, true,
             RetryReason::RetryNetworkError}));

RetryInput throttled(int status, const char* retry_after, Duration time_left = seconds(40)) {
  RetryInput in;
  in.status = status;
  in.method = HttpMethod::Post;
  in.attempt = 1;
  in.time_left = time_left;
  in.wall_now = kWall;
  if (retry_after != nullptr) {
    in.retry_after = retry_after;
  }
  return in;
}

TEST(Decide, RetryAfterSecondsIsHonouredExactly) {
  RetryPolicy policy{RetryConfig{}};
  FixedRandom r(0.0);
  auto d = policy.decide(throttled(429, "7"), r);
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, seconds(7));
  d = policy.decide(throttled(503, "2.5"), r);
  EXPECT_EQ(d.delay, milliseconds(2500));
  d = policy.decide(throttled(429, "Fri, 15 Jan 2027 08:00:10 GMT"), r);
  EXPECT_EQ(d.delay, seconds(10));
  d = policy.decide(throttled(429, "Friday, 15-Jan-27 08:00:10 GMT"), r);
  EXPECT_EQ(d.delay, seconds(10));
  d = policy.decide(throttled(429, "Fri Jan 15 08:00:10 2027"), r);
  EXPECT_EQ(d.delay, seconds(10));
  d = policy.decide(throttled(429, "30"), r);  // at the cap: allowed
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, seconds(30));
}

TEST(Decide, RetryAfterAboveCapOrDeadlineIsNotRetried) {
  RetryPolicy policy{RetryConfig{}};
  FixedRandom r(0.0);
  auto d = policy.decide(throttled(429, "561635"), r);
  EXPECT_FALSE(d.retry);
  EXPECT_EQ(d.reason, RetryReason::RetryAfterTooLong);
  d = policy.decide(throttled(429, "31"), r);
  EXPECT_EQ(d.reason, RetryReason::RetryAfterTooLong);
  d = policy.decide(throttled(429, "Fri, 15 Jan 2027 08:01:30 GMT"), r);  // 90 s
  EXPECT_EQ(d.reason, RetryReason::RetryAfterTooLong);
  d = policy.decide(throttled(503, "10", seconds(9)), r);
  EXPECT_FALSE(d.retry);
  EXPECT_EQ(d.reason, RetryReason::DeadlineTooClose);
  d = policy.decide(throttled(503, "10", seconds(10)), r);
  EXPECT_EQ(d.reason, RetryReason::DeadlineTooClose);
}

TEST(Decide, BadRetryAfterFallsBackToBackoff) {
  RetryPolicy policy{RetryConfig{}};
  FixedRandom r(0.5);
  auto d = policy.decide(throttled(429, "tomorrow-ish"), r);
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, milliseconds(500));
}

TEST(Decide, RetryAfterIgnoredOn5xx) {
  RetryPolicy policy{RetryConfig{}};
  FixedRandom r(0.5);
  RetryInput in = throttled(502, "20");
  in.method = HttpMethod::Get;
  auto d = policy.decide(in, r);
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, milliseconds(500));
}

TEST(Decide, MaxAttempts) {
  RetryConfig cfg;
  cfg.max_attempts = 3;
  RetryPolicy policy{cfg};
  FixedRandom r(0.5);
  RetryInput in = throttled(429, nullptr);
  in.attempt = 2;
  auto d = policy.decide(in, r);
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, seconds(1));  // 0.5 * 2
  in.attempt = 3;
  d = policy.decide(in, r);
  EXPECT_FALSE(d.retry);
  EXPECT_EQ(d.reason, RetryReason::MaxAttempts);
}

TEST(Decide, BackoffCappedAndWithinTimeLeft) {
  RetryConfig cfg;
  cfg.max_attempts = 100;
  RetryPolicy policy{cfg};
  FixedRandom r(0.9);
  RetryInput in = throttled(503, nullptr, seconds(59));
  in.attempt = 20;
  auto d = policy.decide(in, r);
  EXPECT_TRUE(d.retry);
  EXPECT_EQ(d.delay, seconds(27));  // 0.9 * 30
  in.time_left = seconds(27);
  d = policy.decide(in, r);
  EXPECT_FALSE(d.retry);
  EXPECT_EQ(d.reason, RetryReason::DeadlineTooClose);
  in.time_left = Duration::zero();
  d = policy.decide(in, r);
  EXPECT_EQ(d.reason, RetryReason::DeadlineTooClose);
}

// ---- RetryBudget --------------------------------------------------------------------------------

TEST(RetryBudget, MinRetriesThenRatio) {
  RetryBudget b(0.2, 3, seconds(10));
  EXPECT_TRUE(b.tryRetry(kStart));
  EXPECT_TRUE(b.tryRetry(kStart));
  EXPECT_TRUE(b.tryRetry(kStart));
  EXPECT_FALSE(b.tryRetry(kStart));
  for (int i = 0; i < 10; ++i) {
    b.onRequest(kStart);
  }
  EXPECT_TRUE(b.tryRetry(kStart));   // 3 + 0.2*10 = 5 allowed
  EXPECT_TRUE(b.tryRetry(kStart));
  EXPECT_FALSE(b.tryRetry(kStart));
  EXPECT_EQ(b.refusedTotal(), 2u);
  EXPECT_EQ(b.requestsInWindow(kStart), 10u);
  EXPECT_EQ(b.retriesInWindow(kStart), 5u);
}

TEST(RetryBudget, WindowSlides) {
  RetryBudget b(0.0, 2, seconds(10));
  EXPECT_TRUE(b.tryRetry(kStart));
  EXPECT_TRUE(b.tryRetry(kStart + seconds(5)));
  EXPECT_FALSE(b.tryRetry(kStart + seconds(9)));
  EXPECT_TRUE(b.tryRetry(kStart + seconds(11)));  // the first left the window
  EXPECT_FALSE(b.tryRetry(kStart + seconds(12)));
  EXPECT_TRUE(b.wouldAllow(kStart + seconds(30)));
  // Time running backwards counts in the latest bucket; it does not reopen old ones.
  EXPECT_FALSE(b.tryRetry(kStart));
}

TEST(RetryBudget, SteadyStateShareUnderOutage) {
  RetryBudget b(0.1, 0, seconds(10));
  uint64_t retries = 0, requests = 0;
  for (int ms = 0; ms < 120000; ms += 10) {
    const MonotonicTime now = kStart + milliseconds(ms);
    b.onRequest(now);
    ++requests;
    if (b.tryRetry(now)) {  // every request fails and wants a retry
      ++retries;
    }
  }
  EXPECT_LE(static_cast<double>(retries), 0.1 * static_cast<double>(requests) + 1);
  EXPECT_GE(static_cast<double>(retries), 0.09 * static_cast<double>(requests));
}

}  // namespace
}  // namespace hiapi::core
