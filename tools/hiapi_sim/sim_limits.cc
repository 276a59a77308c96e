// Pure limit primitives: token bucket, sliding-window maximum, tier matching.

#include "sim_limits.h"

#include <algorithm>
#include <cctype>

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
