// Pure limit primitives: token bucket, sliding-window maximum, tier matching.

#include "sim_limits.h"

#include <algorithm>
#include <cctype>
#include <cmath>

namespace hiapi::sim {

double TokenBucket::available(double rate, double burst, double now) const {
  if (rate <= 0) {
    return burst;
  }
  if (!started_) {
    return burst;
  }
  return std::min((now - zero_time_) * rate, burst);
}

void TokenBucket::setTokens(double tokens, double rate, double now) {
  started_ = true;
  zero_time_ = now - tokens / rate;
}

bool TokenBucket::consume(double rate, double burst, double now) {
  if (rate <= 0) {
    return true;
  }
  double tokens = available(rate, burst, now);
  if (tokens < 1.0) {
    return false;
  }
  setTokens(tokens - 1.0, rate, now);
  return true;
}

void TokenBucket::forceConsume(double rate, double burst, double now) {
  if (rate <= 0) {
    return;
  }
  setTokens(std::max(available(rate, burst, now) - 1.0, -burst), rate, now);
}

void TokenBucket::refund(double rate, double burst, double now) {
  if (rate <= 0) {
    return;
  }
  setTokens(std::min(available(rate, burst, now) + 1.0, burst), rate, now);
}

double TokenBucket::secondsUntilToken(double rate, double burst, double now) const {
  if (rate <= 0) {
    return 0;
  }
  double tokens = available(rate, burst, now);
  return tokens >= 1.0 ? 0.0 : (1.0 - tokens) / rate;
}

double TokenBucket::secondsUntilFull(double rate, double burst, double now) const {
  if (rate <= 0) {
    return 0;
  }
  return std::max(0.0, (burst - available(rate, burst, now)) / rate);
}

const char* limiterShapeName(LimiterShape shape) {
  switch (shape) {
    case LimiterShape::FixedWindow:
      return "fixed-window";
    case LimiterShape::SlidingWindow:
      return "sliding-window";
    case LimiterShape::Gcra:
      return "gcra";
    case LimiterShape::TokenBucket:
      break;
  }
  return "token-bucket";
}

bool parseLimiterShape(const std::string& text, LimiterShape* shape) {
  for (LimiterShape s : {LimiterShape::TokenBucket, LimiterShape::FixedWindow,
                         LimiterShape::SlidingWindow, LimiterShape::Gcra}) {
    if (text == limiterShapeName(s)) {
      *shape = s;
      return true;
    }
  }
  return false;
}

double LimitParams::window_limit() const {
  return std::max(1.0, std::round(rate * window_s()));
}

void KeyLimiter::expire(const LimitParams& p, double now) const {
  while (!log_.empty() && log_.front() <= now - p.window_s()) {
    log_.pop_front();
  }
}

bool KeyLimiter::consume(LimiterShape shape, const LimitParams& p, double now) {
  if (p.rate <= 0) {
    return true;
  }
  switch (shape) {
    case LimiterShape::TokenBucket:
      return bucket_.consume(p.rate, p.burst, now);
    case LimiterShape::Gcra: {
      // Generic cell rate algorithm: one request per T = 1/rate, tolerance tau = (burst-1)*T.
      const double t = 1.0 / p.rate;
      const double tau = (std::max(1.0, p.burst) - 1.0) * t;
      const double tat = tat_started_ ? std::max(tat_, now) : now;
      if (now < tat - tau) {
        return false;
      }
      tat_started_ = true;
      tat_ = tat + t;
      return true;
    }
    case LimiterShape::FixedWindow: {
      const long long index = static_cast<long long>(std::floor(now / p.window_s()));
      if (index != window_index_) {
        window_index_ = index;
        window_count_ = 0;
      }
      if (static_cast<double>(window_count_) >= p.window_limit()) {
        return false;
      }
      ++window_count_;
      return true;
    }
    case LimiterShape::SlidingWindow:
      expire(p, now);
      if (static_cast<double>(log_.size()) >= p.window_limit()) {
        return false;
      }
      log_.push_back(now);
      return true;
  }
  return true;
}

void KeyLimiter::forceConsume(LimiterShape shape, const LimitParams& p, double now) {
  if (p.rate <= 0) {
    return;
  }
  switch (shape) {
    case LimiterShape::TokenBucket:
      bucket_.forceConsume(p.rate, p.burst, now);
      break;
    case LimiterShape::Gcra: {
      const double t = 1.0 / p.rate;
      const double tat = tat_started_ ? std::max(tat_, now) : now;
      tat_started_ = true;
      tat_ = std::min(tat + t, now + 2.0 * std::max(1.0, p.burst) * t);  // at most a burst of debt
      break;
    }
    case LimiterShape::FixedWindow: {
      const long long index = static_cast<long long>(std::floor(now / p.window_s()));
      if (index != window_index_) {
        window_index_ = index;
        window_count_ = 0;
      }
      ++window_count_;
      break;
    }
    case LimiterShape::SlidingWindow:
      expire(p, now);
      log_.push_back(now);
      break;
  }
}

void KeyLimiter::refund(LimiterShape shape, const LimitParams& p, double now) {
  if (p.rate <= 0) {
    return;
  }
  switch (shape) {
    case LimiterShape::TokenBucket:
      bucket_.refund(p.rate, p.burst, now);
      break;
    case LimiterShape::Gcra:
      if (tat_started_) {
        tat_ = std::max(now, tat_ - 1.0 / p.rate);
      }
      break;
    case LimiterShape::FixedWindow:
      if (window_count_ > 0) {
        --window_count_;
      }
      break;
    case LimiterShape::SlidingWindow:
      if (!log_.empty()) {
        log_.pop_back();
      }
      break;
  }
}

double KeyLimiter::secondsUntilAllowed(LimiterShape shape, const LimitParams& p,
                                       double now) const {
  if (p.rate <= 0) {
    return 0.0;
  }
  switch (shape) {
    case LimiterShape::TokenBucket:
      return bucket_.secondsUntilToken(p.rate, p.burst, now);
    case LimiterShape::Gcra: {
      const double tau = (std::max(1.0, p.burst) - 1.0) / p.rate;
      return tat_started_ ? std::max(0.0, tat_ - tau - now) : 0.0;
    }
    case LimiterShape::FixedWindow: {
      const long long index = static_cast<long long>(std::floor(now / p.window_s()));
      if (index != window_index_ || static_cast<double>(window_count_) < p.window_limit()) {
        return 0.0;
      }
      return static_cast<double>(index + 1) * p.window_s() - now;
    }
    case LimiterShape::SlidingWindow:
      expire(p, now);
      if (static_cast<double>(log_.size()) < p.window_limit()) {
        return 0.0;
      }
      return std::max(0.0, log_.front() + p.window_s() - now);
  }
  return 0.0;
}

LimitCounters KeyLimiter::counters(LimiterShape shape, const LimitParams& p, double now) const {
  LimitCounters c;
  if (p.rate <= 0) {
    c.limit = c.remaining = static_cast<long long>(std::floor(p.burst));
    return c;
  }
  switch (shape) {
    case LimiterShape::TokenBucket:
    case LimiterShape::Gcra: {
      // Tokens now, and the time until the next whole one: no more than `remaining` go through
      // before it.
      double tokens = 0.0;
      if (shape == LimiterShape::TokenBucket) {
        tokens = bucket_.available(p.rate, p.burst, now);
      } else {
        const double tau = (std::max(1.0, p.burst) - 1.0) / p.rate;
        tokens = tat_started_ ? std::min(p.burst, (now - (tat_ - tau)) * p.rate + 1.0) : p.burst;
      }
      c.limit = static_cast<long long>(std::floor(p.burst));
      c.remaining = static_cast<long long>(std::floor(std::max(0.0, tokens)));
      c.reset_s = tokens >= p.burst ? 0.0
                                    : (static_cast<double>(c.remaining) + 1.0 - tokens) / p.rate;
      break;
    }
    case LimiterShape::FixedWindow: {
      const long long index = static_cast<long long>(std::floor(now / p.window_s()));
      const long long used = index == window_index_ ? window_count_ : 0;
      c.limit = static_cast<long long>(p.window_limit());
      c.remaining = std::max<long long>(0, c.limit - used);
      c.reset_s = static_cast<double>(index + 1) * p.window_s() - now;
      break;
    }
    case LimiterShape::SlidingWindow:
      expire(p, now);
      c.limit = static_cast<long long>(p.window_limit());
      c.remaining = std::max<long long>(0, c.limit - static_cast<long long>(log_.size()));
      c.reset_s = log_.empty() ? 0.0 : std::max(0.0, log_.front() + p.window_s() - now);
      break;
  }
  return c;
}

double lognormalDuration(double mean_s, double sigma, double z) {
  return std::exp(std::log(mean_s) - 0.5 * sigma * sigma + sigma * z);
}

void WindowMax::add(double now) {
  times_.push_back(now);
  while (!times_.empty() && times_.front() <= now - window_s_) {
    times_.pop_front();
  }
  max_ = std::max(max_, times_.size());
}

bool globMatch(const std::string& pattern, const std::string& text) {
  // Iterative matcher with single-star backtracking: linear-ish, no recursion.
  size_t p = 0, t = 0, star = std::string::npos, mark = 0;
  auto eq = [](char a, char b) {
    return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
  };
  while (t < text.size()) {
    if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (p < pattern.size() && eq(pattern[p], text[t])) {
      ++p;
      ++t;
    } else if (star != std::string::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') {
    ++p;
  }
  return p == pattern.size();
}

void splitModel(const std::string& model, std::string* base, std::string* route) {
  size_t at = model.rfind('@');
  if (at == std::string::npos) {
    *base = model;
    route->clear();
  } else {
    *base = model.substr(0, at);
    *route = model.substr(at + 1);
  }
}

Tier classifyTier(const std::string& model, const std::string& body_route,
                  const std::vector<std::string>& heavy_patterns) {
  std::string base, suffix_route;
  splitModel(model, &base, &suffix_route);
  if (globMatch("pro", body_route) || globMatch("pro", suffix_route)) {
    return Tier::Heavy;
  }
  for (const auto& p : heavy_patterns) {
    if (globMatch(p, base)) {
      return Tier::Heavy;
    }
  }
  return Tier::Light;
}

}  // namespace hiapi::sim
