// Pure parts of hiapi-sim, in plain numbers: no sockets, no clock.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "config.h"
#include "sim_limits.h"
#include "util.h"

namespace hiapi::sim {
namespace {

constexpr double kRate = 2.0;
constexpr double kBurst = 3.0;

TEST(TokenBucket, StartsFullThenRefillsAtRate) {
  TokenBucket b;
  for (int i = 0; i < 3; ++i) {
    EXPECT_TRUE(b.consume(kRate, kBurst, 10.0)) << i;
  }
  EXPECT_FALSE(b.consume(kRate, kBurst, 10.0));
  EXPECT_DOUBLE_EQ(b.secondsUntilToken(kRate, kBurst, 10.0), 0.5);
  EXPECT_FALSE(b.consume(kRate, kBurst, 10.49));
  EXPECT_TRUE(b.consume(kRate, kBurst, 10.5));
  EXPECT_DOUBLE_EQ(b.secondsUntilFull(kRate, kBurst, 10.5), 1.5);
}

TEST(TokenBucket, NeverAboveRateTimesTimePlusBurst) {
  TokenBucket b;
  int admitted = 0;
  for (int ms = 0; ms <= 10000; ++ms) {
    double now = ms / 1000.0;
    if (b.consume(kRate, kBurst, now)) {
      ++admitted;
    }
    ASSERT_LE(admitted, kRate * now + kBurst + 1e-6);
  }
  EXPECT_EQ(admitted, 23);  // burst + 10 s × 2/s
}

TEST(TokenBucket, ReverseTimeAddsNothing) {
  TokenBucket b;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(b.consume(kRate, kBurst, 5.0));
  }
  EXPECT_FALSE(b.consume(kRate, kBurst, 4.0));
  EXPECT_FALSE(b.consume(kRate, kBurst, 5.0));
}

TEST(TokenBucket, RefundCappedDebtBounded) {
  TokenBucket b;
  b.refund(kRate, kBurst, 0.0);
  EXPECT_DOUBLE_EQ(b.available(kRate, kBurst, 0.0), kBurst);
  for (int i = 0; i < 100; ++i) {
    b.forceConsume(kRate, kBurst, 0.0);
  }
  EXPECT_DOUBLE_EQ(b.available(kRate, kBurst, 0.0), -kBurst);
  EXPECT_DOUBLE_EQ(b.secondsUntilToken(kRate, kBurst, 0.0), 2.0);  // (1 - -3) / 2
}

TEST(TokenBucket, ZeroRateIsUnlimited) {
  TokenBucket b;
  for (int i = 0; i < 1000; ++i) {
    ASSERT_TRUE(b.consume(0, kBurst, 0.0));
  }
}

// ---- limiter shapes -------------------------------------------------------------------------

LimitParams params(double rate = kRate, double burst = kBurst, double window = 0.0) {
  LimitParams p;
  p.rate = rate;
  p.burst = burst;
  p.window = window;
  return p;
}

constexpr LimiterShape kShapes[] = {LimiterShape::TokenBucket, LimiterShape::Gcra,
                                    LimiterShape::FixedWindow, LimiterShape::SlidingWindow};

TEST(KeyLimiter, ShapesParseAndNameThemselves) {
  for (LimiterShape shape : kShapes) {
    LimiterShape back = LimiterShape::TokenBucket;
    ASSERT_TRUE(parseLimiterShape(limiterShapeName(shape), &back));
    EXPECT_EQ(back, shape);
  }
  LimiterShape s = LimiterShape::Gcra;
  EXPECT_FALSE(parseLimiterShape("leaky", &s));
  EXPECT_EQ(s, LimiterShape::Gcra);
  // A window defaults to burst / rate and holds rate x window.
  EXPECT_DOUBLE_EQ(params().window_s(), 1.5);
  EXPECT_DOUBLE_EQ(params().window_limit(), 3.0);
  EXPECT_DOUBLE_EQ(params(1.0, 5.0, 60.0).window_limit(), 60.0);
}

TEST(KeyLimiter, EveryShapeLetsTheBurstThroughAtOnceThenHoldsTheRate) {
  for (LimiterShape shape : kShapes) {
    KeyLimiter l;
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(l.consume(shape, params(), 0.0)) << limiterShapeName(shape) << i;
    }
    EXPECT_FALSE(l.consume(shape, params(), 0.0)) << limiterShapeName(shape);
    // Over 30 s of 1 ms steps, never more than what the shape allows; on average the rate.
    int admitted = 3;
    for (int ms = 1; ms <= 30000; ++ms) {
      admitted += l.consume(shape, params(), ms / 1000.0) ? 1 : 0;
    }
    EXPECT_GE(admitted, 3 + 2 * 30 - 3) << limiterShapeName(shape);
    EXPECT_LE(admitted, 3 + 2 * 30 + 3) << limiterShapeName(shape);
  }
}

TEST(KeyLimiter, WindowsDifferFromBucketsAtTheirEdges) {
  // A fixed window lets a second burst through right after its boundary; a bucket does not.
  KeyLimiter fixed, bucket, sliding;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(fixed.consume(LimiterShape::FixedWindow, params(), 1.4));
    ASSERT_TRUE(bucket.consume(LimiterShape::TokenBucket, params(), 1.4));
    ASSERT_TRUE(sliding.consume(LimiterShape::SlidingWindow, params(), 1.4));
  }
  EXPECT_NEAR(fixed.secondsUntilAllowed(LimiterShape::FixedWindow, params(), 1.4), 0.1, 1e-9);
  EXPECT_TRUE(fixed.consume(LimiterShape::FixedWindow, params(), 1.5));  // a new window
  EXPECT_TRUE(fixed.consume(LimiterShape::FixedWindow, params(), 1.5));
  EXPECT_FALSE(bucket.consume(LimiterShape::TokenBucket, params(), 1.5));
  // A sliding window frees a slot when its oldest request leaves (1.4 + 1.5).
  EXPECT_FALSE(sliding.consume(LimiterShape::SlidingWindow, params(), 2.8));
  EXPECT_NEAR(sliding.secondsUntilAllowed(LimiterShape::SlidingWindow, params(), 2.8), 0.1, 1e-9);
  EXPECT_TRUE(sliding.consume(LimiterShape::SlidingWindow, params(), 2.9));
}

TEST(KeyLimiter, GcraMatchesTheTokenBucketsDecisions) {
  KeyLimiter gcra, bucket;
  uint64_t x = 88172645463325252ull;  // xorshift: irregular arrivals, seeded
  double now = 0.0;
  for (int i = 0; i < 5000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    now += static_cast<double>(x % 1000) / 1000.0 * 0.6;
    ASSERT_EQ(gcra.consume(LimiterShape::Gcra, params(), now),
              bucket.consume(LimiterShape::TokenBucket, params(), now))
        << i << " at " << now;
  }
}

TEST(KeyLimiter, CountersPromiseNoMoreThanRemainingBeforeReset) {
  // For every shape: after any history, at most `remaining` requests pass before `reset_s`,
  // and the counters' limit is the burst (buckets) or the window's limit.
  for (LimiterShape shape : kShapes) {
    KeyLimiter l;
    uint64_t x = 2463534242ull;
    double now = 0.0;
    for (int i = 0; i < 300; ++i) {
      x ^= x << 13;
      x ^= x >> 17;
      x ^= x << 5;
      now += static_cast<double>(x % 700) / 1000.0;
      l.consume(shape, params(), now);
      const LimitCounters c = l.counters(shape, params(), now);
      EXPECT_EQ(c.limit, 3) << limiterShapeName(shape);
      ASSERT_GE(c.remaining, 0);
      ASSERT_LE(c.remaining, 3);
      // Try to send as much as possible until just before the reset, on a copy.
      KeyLimiter probe = l;
      int passed = 0;
      for (double t = now; t < now + c.reset_s - 1e-9; t += 0.001) {
        while (probe.consume(shape, params(), t)) {
          ++passed;
        }
      }
      ASSERT_LE(passed, c.remaining) << limiterShapeName(shape) << " at " << now;
    }
  }
}

TEST(KeyLimiter, RefundAndCountRejected) {
  for (LimiterShape shape : kShapes) {
    KeyLimiter l;
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(l.consume(shape, params(), 0.2));
    }
    l.refund(shape, params(), 0.2);
    EXPECT_TRUE(l.consume(shape, params(), 0.2)) << limiterShapeName(shape);
    EXPECT_FALSE(l.consume(shape, params(), 0.2)) << limiterShapeName(shape);
    const double before = l.secondsUntilAllowed(shape, params(), 0.2);
    l.forceConsume(shape, params(), 0.2);  // a counted rejection waits no less
    EXPECT_GE(l.secondsUntilAllowed(shape, params(), 0.2), before) << limiterShapeName(shape);
  }
}

TEST(Durations, LognormalKeepsTheMeanAndSpreads) {
  Rng rng(5);
  double sum = 0.0, lo = 1e9, hi = 0.0;
  const int n = 20000;
  for (int i = 0; i < n; ++i) {
    const double d = lognormalDuration(5.0, 0.3, rng.normal());
    sum += d;
    lo = std::min(lo, d);
    hi = std::max(hi, d);
  }
  EXPECT_NEAR(sum / n, 5.0, 0.05);
  EXPECT_LT(lo, 3.0);
  EXPECT_GT(hi, 9.0);
  EXPECT_DOUBLE_EQ(lognormalDuration(5.0, 0.0, 1.7), 5.0);
}

TEST(WindowMax, ExactOverHalfOpenOneSecondWindows) {
  WindowMax w;
  for (double t : {0.0, 0.5, 0.99}) {
    w.add(t);
  }
  EXPECT_EQ(w.max(), 3u);
  w.add(1.0);  // window (0, 1]: 0.5, 0.99, 1.0
  EXPECT_EQ(w.max(), 3u);
  w.add(1.2);  // (0.2, 1.2]: 0.5, 0.99, 1.0, 1.2
  EXPECT_EQ(w.max(), 4u);
  w.add(5.0);
  EXPECT_EQ(w.max(), 4u);
}

TEST(Tier, HeavyPatternsRoutesAndSuffixes) {
  SimConfig cfg;
  const auto& p = cfg.heavy_patterns;
  struct Row {
    const char* model;
    const char* route;
    Tier tier;
  } rows[] = {
      {"seedance-2-0", "", Tier::Heavy},
      {"seedance-2.5/text-to-video", "", Tier::Heavy},
      {"wan2.7-video/i2v", "", Tier::Heavy},
      {"happyhorse-1-0", "", Tier::Heavy},
      {"veo-3.1/fast", "", Tier::Heavy},
      {"kling-3.0-master", "", Tier::Heavy},
      {"hailuo-2.3/standard", "", Tier::Heavy},
      {"Nano-Banana-Pro", "", Tier::Heavy},
      {"flux-1.1-pro", "", Tier::Heavy},
      {"gpt-image-2.5-flare/text-to-image@pro", "", Tier::Heavy},
      {"gpt-image-2", "pro", Tier::Heavy},
      {"gpt-image-2", "", Tier::Light},
      {"gpt-image-2@beta", "", Tier::Light},
      {"Nano-Banana", "", Tier::Light},
      {"qwen-image-edit", "", Tier::Light},
      {"wan2.7-image/t2i", "", Tier::Light},
      {"prolific", "", Tier::Light},
  };
  for (const auto& r : rows) {
    EXPECT_EQ(classifyTier(r.model, r.route, p), r.tier) << r.model << " route=" << r.route;
  }
}

TEST(Glob, StarsAndCase) {
  EXPECT_TRUE(globMatch("*-pro", "X-PRO"));
  EXPECT_TRUE(globMatch("a*b*c", "aXXbYYc"));
  EXPECT_FALSE(globMatch("a*b*c", "aXXbYY"));
  EXPECT_TRUE(globMatch("*", ""));
  EXPECT_FALSE(globMatch("veo-*", "vevo-1"));
}

TEST(Parse, DurationsRatesRatiosBytes) {
  double v = 0;
  EXPECT_TRUE(parseDuration("200ms", &v));
  EXPECT_DOUBLE_EQ(v, 0.2);
  EXPECT_TRUE(parseDuration("1.5m", &v));
  EXPECT_DOUBLE_EQ(v, 90);
  EXPECT_TRUE(parseDuration("3", &v));
  EXPECT_DOUBLE_EQ(v, 3);
  EXPECT_FALSE(parseDuration("-1s", &v));
  EXPECT_FALSE(parseDuration("5 parsecs", &v));
  EXPECT_TRUE(parseRate("60/m", &v));
  EXPECT_DOUBLE_EQ(v, 1);
  EXPECT_TRUE(parseRate("2/s", &v));
  EXPECT_DOUBLE_EQ(v, 2);
  EXPECT_TRUE(parseRate("inf", &v));
  EXPECT_DOUBLE_EQ(v, 0);
  EXPECT_FALSE(parseRate("2/fortnight", &v));
  EXPECT_TRUE(parseRatio("0.25", &v));
  EXPECT_FALSE(parseRatio("1.5", &v));
  EXPECT_TRUE(parseBytes("10MB", &v));
  EXPECT_DOUBLE_EQ(v, 10.0 * 1024 * 1024);
}

TEST(Config, ArgsAndEmptyKeys) {
  SimConfig cfg;
  bool help = false;
  std::string err;
  const char* argv[] = {"hiapi-sim", "--keys", "--rate", "5/s", "--ratelimit-headers",
                        "--envelope=guide"};
  ASSERT_TRUE(parseArgs(6, const_cast<char**>(argv), cfg, &help, &err)) << err;
  EXPECT_TRUE(cfg.keys.empty());  // "--keys" with none given: any key
  EXPECT_DOUBLE_EQ(cfg.rate_per_s, 5);
  EXPECT_TRUE(cfg.ratelimit_headers);
  EXPECT_EQ(cfg.envelope, Envelope::Guide);
  const char* shapes[] = {"hiapi-sim", "--limiter",        "sliding-window", "--ratelimit-headers",
                          "off",       "--jitter",         "10ms",           "--duration-dist",
                          "lognormal", "--duration-sigma", "0.5",            "--window",
                          "2s"};
  ASSERT_TRUE(parseArgs(13, const_cast<char**>(shapes), cfg, &help, &err)) << err;
  EXPECT_EQ(cfg.limiter, LimiterShape::SlidingWindow);
  EXPECT_FALSE(cfg.ratelimit_headers);  // "--x off"
  EXPECT_DOUBLE_EQ(cfg.latency_jitter_s, 0.010);
  EXPECT_TRUE(cfg.duration_lognormal);
  EXPECT_DOUBLE_EQ(cfg.duration_sigma, 0.5);
  EXPECT_DOUBLE_EQ(cfg.window_s, 2.0);
  const char* bad_shape[] = {"hiapi-sim", "--limiter", "leaky-bucket"};
  EXPECT_FALSE(parseArgs(3, const_cast<char**>(bad_shape), cfg, &help, &err));
  EXPECT_NE(err.find("limiter"), std::string::npos);
  const char* bad[] = {"hiapi-sim", "--fail-ratio", "2"};
  EXPECT_FALSE(parseArgs(3, const_cast<char**>(bad), cfg, &help, &err));
  EXPECT_NE(err.find("fail-ratio"), std::string::npos);
}

TEST(Config, JsonIsAllOrNothingAndRefusesStartupOptions) {
  SimConfig cfg;
  std::string err;
  std::string ok = R"({"rate":"4/s","burst":7,"keys":["a","b"],"ratelimit-headers":true})";
  ASSERT_TRUE(applyConfigJson(cfg, ok.data(), ok.size(), &err)) << err;
  EXPECT_DOUBLE_EQ(cfg.rate_per_s, 4);
  EXPECT_DOUBLE_EQ(cfg.burst, 7);
  EXPECT_EQ(cfg.keys.size(), 2u);
  std::string partial = R"({"burst":9,"port":5})";
  EXPECT_FALSE(applyConfigJson(cfg, partial.data(), partial.size(), &err));
  EXPECT_NE(err.find("port"), std::string::npos);
  EXPECT_DOUBLE_EQ(cfg.burst, 7);  // untouched
  std::string dump = configJson(cfg);
  EXPECT_NE(dump.find("\"fault-reset\""), std::string::npos);
  EXPECT_NE(dump.find("\"keys\":\"a,b\""), std::string::npos);
}

TEST(Util, UlidHmacDateLoopback) {
  Rng rng(1);
  std::string id = makeUlid(1700000000000ULL, rng);
  EXPECT_TRUE(isUlid(id)) << id;
  EXPECT_EQ(id.substr(0, 10), makeUlid(1700000000000ULL, rng).substr(0, 10));  // time prefix
  EXPECT_LT(id.substr(0, 10), makeUlid(1700000000001ULL, rng).substr(0, 10));
  // RFC 4231 test case 2.
  EXPECT_EQ(hmacSha256Hex("Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(httpDate(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
  EXPECT_TRUE(isLoopbackHost("127.0.0.1"));
  EXPECT_TRUE(isLoopbackHost("127.8.9.10"));
  EXPECT_TRUE(isLoopbackHost("[::1]"));
  EXPECT_TRUE(isLoopbackHost("LOCALHOST"));
  EXPECT_FALSE(isLoopbackHost("10.0.0.1"));
  EXPECT_FALSE(isLoopbackHost("example.com"));
  EXPECT_FALSE(isLoopbackHost("0.0.0.0"));
}

}  // namespace
}  // namespace hiapi::sim
