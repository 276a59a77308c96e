#pragma once
// Structured logging: one line per event, logfmt (default) or JSON, to stderr (journald keeps it).
// Fields are plain strings; a Secret cannot be passed in (it has no conversion to string).

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "hiapi/core/config.h"

namespace hiapi::shell {

/// One key=value field of a log line. Numbers and booleans stay numbers and booleans in JSON.
struct LogField {
  enum class Kind { String, Number, Bool };
  std::string_view key;
  std::string value;
  Kind kind = Kind::String;
  LogField(std::string_view k, std::string v) : key(k), value(std::move(v)) {}
  LogField(std::string_view k, const char* v) : key(k), value(v ? v : "") {}
  LogField(std::string_view k, std::string_view v) : key(k), value(v) {}
  LogField(std::string_view k, bool b) : key(k), value(b ? "true" : "false"), kind(Kind::Bool) {}
  template <typename N, typename = std::enable_if_t<std::is_arithmetic_v<N> &&
                                                    !std::is_same_v<N, bool>>>
  LogField(std::string_view k, N n) : key(k), value(std::to_string(n)), kind(Kind::Number) {
    if constexpr (std::is_floating_point_v<N>) {
      if (!std::isfinite(n)) {
        kind = Kind::String;  // "nan", "inf": not JSON numbers
      }
    }
  }
};

/// Thread-safety: used from the event-loop thread only.
class Logger {
public:
  explicit Logger(core::LogFormat format = core::LogFormat::Logfmt,
                  core::LogLevel level = core::LogLevel::Info, FILE* out = stderr)
      : format_(format), level_(level), out_(out) {}

  void setFormat(core::LogFormat f) { format_ = f; }
  void setLevel(core::LogLevel l) { level_ = l; }
  bool enabled(core::LogLevel l) const { return static_cast<int>(l) >= static_cast<int>(level_); }

  void log(core::LogLevel level, std::string_view msg, std::initializer_list<LogField> fields = {});
  void log(core::LogLevel level, std::string_view msg, const std::vector<LogField>& fields);
  void debug(std::string_view m, std::initializer_list<LogField> f = {}) { log(core::LogLevel::Debug, m, f); }
  void info(std::string_view m, std::initializer_list<LogField> f = {}) { log(core::LogLevel::Info, m, f); }
  void warn(std::string_view m, std::initializer_list<LogField> f = {}) { log(core::LogLevel::Warn, m, f); }
  void error(std::string_view m, std::initializer_list<LogField> f = {}) { log(core::LogLevel::Error, m, f); }

private:
  template <typename It>
  void write(core::LogLevel level, std::string_view msg, It begin, It end);

  core::LogFormat format_;
  core::LogLevel level_;
  FILE* out_;
};

}  // namespace hiapi::shell
