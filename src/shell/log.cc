#include "hiapi/shell/log.h"

#include <chrono>
#include <ctime>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

namespace hiapi::shell {
namespace {

const char* levelName(core::LogLevel l) {
  switch (l) {
  case core::LogLevel::Debug:
    return "debug";
  case core::LogLevel::Info:
    return "info";
  case core::LogLevel::Warn:
    return "warn";
  case core::LogLevel::Error:
    return "error";
  }
  return "info";
}

std::string timestamp() {
  const auto now = std::chrono::system_clock::now();
  const auto secs = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

// logfmt: quote a value when it has spaces, quotes, '=' or control characters.
void appendLogfmtValue(std::string& out, std::string_view v) {
  bool quote = v.empty();
  for (unsigned char c : v) {
    if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f) {
      quote = true;
      break;
    }
  }
  if (!quote) {
    out.append(v);
    return;
  }
  out.push_back('"');
  for (unsigned char c : v) {
    switch (c) {
    case '"':
      out.append("\\\"");
      break;
    case '\\':
      out.append("\\\\");
      break;
    case '\n':
      out.append("\\n");
      break;
    case '\r':
      out.append("\\r");
      break;
    case '\t':
      out.append("\\t");
      break;
    default:
      if (c < 0x20) {
        char esc[8];
        std::snprintf(esc, sizeof esc, "\\x%02x", c);
        out.append(esc);
      } else {
        out.push_back(static_cast<char>(c));
      }
    }
  }
  out.push_back('"');
}

}  // namespace

template <typename It>
void Logger::write(core::LogLevel level, std::string_view msg, It begin, It end) {
  if (!enabled(level)) {
    return;
  }
  std::string line;
  if (format_ == core::LogFormat::Json) {
    rapidjson::StringBuffer buf;
    rapidjson::Writer<rapidjson::StringBuffer> w(buf);
    w.StartObject();
    const std::string ts = timestamp();
    w.Key("ts");
    w.String(ts.c_str());
    w.Key("level");
    w.String(levelName(level));
    w.Key("msg");
    w.String(msg.data(), static_cast<rapidjson::SizeType>(msg.size()));
    for (It it = begin; it != end; ++it) {
      w.Key(it->key.data(), static_cast<rapidjson::SizeType>(it->key.size()));
      const auto size = static_cast<rapidjson::SizeType>(it->value.size());
      switch (it->kind) {
      case LogField::Kind::Number:
        w.RawValue(it->value.data(), size, rapidjson::kNumberType);  // RawNumber would quote it
        break;
      case LogField::Kind::Bool:
        w.Bool(it->value == "true");
        break;
      case LogField::Kind::String:
        w.String(it->value.data(), size);
        break;
      }
    }
    w.EndObject();
    line.assign(buf.GetString(), buf.GetSize());
  } else {
    line = "ts=" + timestamp() + " level=" + levelName(level) + " msg=";
    appendLogfmtValue(line, msg);
    for (It it = begin; it != end; ++it) {
      line.push_back(' ');
      line.append(it->key);
      line.push_back('=');
      appendLogfmtValue(line, it->value);
    }
  }
  line.push_back('\n');
  std::fwrite(line.data(), 1, line.size(), out_);
  std::fflush(out_);
}

void Logger::log(core::LogLevel level, std::string_view msg, std::initializer_list<LogField> fields) {
  write(level, msg, fields.begin(), fields.end());
}

void Logger::log(core::LogLevel level, std::string_view msg, const std::vector<LogField>& fields) {
  write(level, msg, fields.begin(), fields.end());
}

}  // namespace hiapi::shell
