// The value grammars of the configuration (durations, rates, sizes), the built-in tiers, the
// error type and the one-line summary. The YAML walk itself is in config.cc.

#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <string_view>

#include "hiapi/core/config.h"

namespace hiapi::core {
namespace {

std::string formatWhat(const std::string& file, int line, int column, const std::string& key_path,
                       const std::string& message) {
  std::string s = file.empty() ? std::string("<config>") : file;
  if (line > 0) {
    s += ':' + std::to_string(line) + ':' + std::to_string(column);
  }
  s += ": ";
  if (!key_path.empty()) {
    s += key_path + ": ";
  }
  s += message;
  return s;
}

bool isDigit(char c) { return c >= '0' && c <= '9'; }
bool isAlpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

/// Reads `digits[.digits]` at text[i...]; advances i. A leading sign, a bare `.5`, a trailing `5.`
/// and exponents are all refused, so `-1s` and `1e3s` are malformed rather than surprising.
std::optional<double> readDecimal(std::string_view text, size_t& i) {
  const size_t start = i;
  while (i < text.size() && isDigit(text[i])) {
    ++i;
  }
  if (i == start) {
    return std::nullopt;
  }
  if (i < text.size() && text[i] == '.') {
    ++i;
    const size_t frac = i;
    while (i < text.size() && isDigit(text[i])) {
      ++i;
    }
    if (i == frac) {
      return std::nullopt;
    }
  }
  double v = 0;
  auto [ptr, ec] = std::from_chars(text.data() + start, text.data() + i, v);
  if (ec != std::errc() || ptr != text.data() + i || !std::isfinite(v)) {
    return std::nullopt;
  }
  return v;
}

std::string formatNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

/// `45s`, `20m`, `250ms`, `1.5s`: the shortest exact unit.
std::string formatDuration(Duration d) {
  using namespace std::chrono;
  const int64_t ns = d.count();
  if (ns != 0 && ns % duration_cast<nanoseconds>(hours(1)).count() == 0) {
    return std::to_string(duration_cast<hours>(d).count()) + "h";
  }
  if (ns != 0 && ns % duration_cast<nanoseconds>(minutes(1)).count() == 0) {
    return std::to_string(duration_cast<minutes>(d).count()) + "m";
  }
  if (ns % 1'000'000'000 == 0) {
    return std::to_string(ns / 1'000'000'000) + "s";
  }
  if (ns % 1'000'000 == 0 && ns < 1'000'000'000) {
    return std::to_string(ns / 1'000'000) + "ms";
  }
  return formatNumber(toSeconds(d)) + "s";
}

std::string formatEndpoint(const std::string& address, uint16_t port) {
  if (address.find(':') != std::string::npos) {
    return "[" + address + "]:" + std::to_string(port);
  }
  return address + ":" + std::to_string(port);
}

}  // namespace

ConfigError::ConfigError(std::string file, int line, int column, std::string key_path,
                         std::string message)
    : std::runtime_error(formatWhat(file, line, column, key_path, message)),
      file_(std::move(file)),
      line_(line),
      column_(column),
      key_path_(std::move(key_path)),
      message_(std::move(message)) {}

namespace {
std::string joinWhats(const std::vector<ConfigError>& errors) {
  std::string s;
  for (const ConfigError& e : errors) {
    s += (s.empty() ? "" : "\n") + std::string(e.what());
  }
  return s;
}
}  // namespace

ConfigError::ConfigError(std::vector<ConfigError> errors)
    : ConfigError(errors.empty() ? ConfigError("", 0, 0, "", "invalid configuration")
                                 : errors.front()) {
  static_cast<std::runtime_error&>(*this) = std::runtime_error(joinWhats(errors));
  if (errors.size() > 1) {
    all_ = std::move(errors);
  }
}

std::optional<Duration> parseDuration(const std::string& text) {
  // One or more <decimal><unit> parts: `1.5s`, `250ms`, `1m30s`. No sign, no spaces, no bare
  // numbers: a config that says `timeout: 2` is ambiguous and refused.
  constexpr double kMaxNs = 1e5 * 3600e9;  // 100000 hours: far beyond any sane setting
  if (text.empty()) {
    return std::nullopt;
  }
  std::string_view t(text);
  size_t i = 0;
  long double total_ns = 0;
  while (i < t.size()) {
    std::optional<double> v = readDecimal(t, i);
    if (!v) {
      return std::nullopt;
    }
    const size_t unit_start = i;
    while (i < t.size() && isAlpha(t[i])) {
      ++i;
    }
    const std::string_view unit = t.substr(unit_start, i - unit_start);
    long double unit_ns = 0;
    if (unit == "ms") {
      unit_ns = 1e6L;
    } else if (unit == "s") {
      unit_ns = 1e9L;
    } else if (unit == "m") {
      unit_ns = 60e9L;
    } else if (unit == "h") {
      unit_ns = 3600e9L;
    } else {
      return std::nullopt;
    }
    total_ns += static_cast<long double>(*v) * unit_ns;
    if (total_ns > kMaxNs) {
      return std::nullopt;
    }
  }
  return Duration(static_cast<Duration::rep>(std::llround(static_cast<double>(total_ns))));
}

std::optional<Rate> parseRate(const std::string& text) {
  std::string_view t(text);
  const size_t slash = t.find('/');
  if (slash == std::string_view::npos) {
    return std::nullopt;
  }
  size_t i = 0;
  const std::string_view num = t.substr(0, slash);
  std::optional<double> v = readDecimal(num, i);
  if (!v || i != num.size() || *v <= 0) {
    return std::nullopt;
  }
  const std::string_view unit = t.substr(slash + 1);
  double seconds = 0;
  if (unit == "s" || unit == "sec" || unit == "second") {
    seconds = 1;
  } else if (unit == "m" || unit == "min" || unit == "minute") {
    seconds = 60;
  } else if (unit == "h" || unit == "hour") {
    seconds = 3600;
  } else {
    return std::nullopt;
  }
  return Rate{*v / seconds};
}

std::optional<uint64_t> parseSize(const std::string& text) {
  std::string_view t(text);
  size_t i = 0;
  std::optional<double> v = readDecimal(t, i);
  if (!v) {
    return std::nullopt;
  }
  const std::string_view num = t.substr(0, i);
  const std::string_view unit = t.substr(i);
  if (unit.empty() || unit == "B") {
    // Plain bytes: an integer, read exactly (a double would round above 2^53).
    uint64_t n = 0;
    auto [ptr, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
    if (ec != std::errc() || ptr != num.data() + num.size()) {
      return std::nullopt;
    }
    return n;
  }
  double mult = 0;
  if (unit == "KiB") {
    mult = 1024.0;
  } else if (unit == "MiB") {
    mult = 1024.0 * 1024;
  } else if (unit == "GiB") {
    mult = 1024.0 * 1024 * 1024;
  } else if (unit == "KB" || unit == "kB") {
    mult = 1e3;
  } else if (unit == "MB") {
    mult = 1e6;
  } else if (unit == "GB") {
    mult = 1e9;
  } else {
    return std::nullopt;
  }
  const double bytes = std::round(*v * mult);
  if (!(bytes < 9.0e18)) {
    return std::nullopt;
  }
  return static_cast<uint64_t>(bytes);
}

std::vector<TierConfig> defaultTierConfigs() {
  // HiAPI's 429 guide: heavy models (video, `-pro` images, the `pro` route) have a stricter
  // concurrent-task ceiling than the ~10 per key of everything else; 2 and 5 stay under both.
  TierConfig heavy;
  heavy.name = "heavy";
  heavy.models = {"seedance-2-0",   "seedance-2.0", "seedance-*", "seedance-2.5/*",
                  "wan2.7-video/*", "happyhorse-*", "veo-*",      "kling-*",
                  "hailuo-*",       "*-pro",        "*-pro/*",    "*@pro"};
  heavy.routes = {"pro"};
  heavy.max_running = 2;
  heavy.lease = std::chrono::minutes(20);
  heavy.min_poll_interval = std::chrono::seconds(2);
  heavy.defer = true;  // video tasks outlast the clients' 60 s: accept at once, submit later

  TierConfig light;
  light.name = "light";
  light.models = {"*"};
  light.max_running = 5;
  light.lease = std::chrono::minutes(5);
  light.min_poll_interval = std::chrono::seconds(2);
  return {heavy, light};
}

std::string Config::summary() const {
  std::string s = "config ok: listen " + formatEndpoint(listen.address, listen.port);
  s += ", upstream " + upstream.url;
  s += std::string(", auth ") + (key_mode == KeyMode::Inject ? "inject" : "passthrough");
  s += ", " + std::to_string(keys.size()) + (keys.size() == 1 ? " key" : " keys");
  if (!keys.empty()) {
    s += " (";
    for (size_t i = 0; i < keys.size(); ++i) {
      s += (i ? ", " : "") + keys[i].name;
    }
    s += ")";
  }
  char rate[32];
  std::snprintf(rate, sizeof rate, "%.2f/s", limits.rate.per_second);
  s += std::string(", rate ") + rate + " burst " + formatNumber(limits.burst);
  s += ", tiers";
  for (const TierConfig& t : limits.tiers) {
    s += " " + t.name + "=" + std::to_string(t.max_running);
  }
  s += ", queue " + std::to_string(queue.max_size) + "/" + formatDuration(queue.deadline);
  return s;
}

}  // namespace hiapi::core
