// hiapi-sim configuration: parsing of values, the option table, --help, JSON in and out.

#include "config.h"

#include <rapidjson/document.h>
#include <rapidjson/error/en.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <strings.h>

namespace hiapi::sim {
namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

// Splits a number from its unit suffix. @return false when there is no leading number.
bool splitNumber(const std::string& text, double* number, std::string* unit) {
  if (text.empty()) {
    return false;
  }
  const char* begin = text.c_str();
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(begin, &end);
  if (end == begin || errno != 0 || !std::isfinite(v)) {
    return false;
  }
  *number = v;
  *unit = std::string(end);
  return true;
}

bool parseInt(const std::string& text, int* out) {
  double v = 0;
  std::string unit;
  if (!splitNumber(text, &v, &unit) || !unit.empty() || v < 0 || v > 1e9 || v != std::floor(v)) {
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

bool parseBool(const std::string& text, bool* out) {
  if (text.empty() || text == "1" || strcasecmp(text.c_str(), "true") == 0 ||
      strcasecmp(text.c_str(), "yes") == 0 || strcasecmp(text.c_str(), "on") == 0) {
    *out = true;
    return true;
  }
  if (text == "0" || strcasecmp(text.c_str(), "false") == 0 ||
      strcasecmp(text.c_str(), "no") == 0 || strcasecmp(text.c_str(), "off") == 0) {
    *out = false;
    return true;
  }
  return false;
}

std::vector<std::string> splitList(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string::npos) {
      comma = text.size();
    }
    std::string item = text.substr(start, comma - start);
    // Trim blanks.
    size_t b = item.find_first_not_of(" \t");
    size_t e = item.find_last_not_of(" \t");
    if (b != std::string::npos) {
      out.push_back(item.substr(b, e - b + 1));
    }
    start = comma + 1;
  }
  return out;
}

std::string joinList(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) {
    if (!out.empty()) {
      out += ',';
    }
    out += i;
  }
  return out;
}

using Setter = bool (*)(SimConfig&, const std::string&);
using Getter = void (*)(const SimConfig&, JsonWriter&);

// One row per option. `startup` options cannot change at run time (/__config refuses them).
struct Option {
  const char* name;
  const char* arg;  // nullptr for switches
  bool startup;
  const char* help;
  Setter set;
  Getter get;
};

#define DURATION_OPT(NAME, FIELD, HELP)                                                       \
  Option {                                                                                    \
    NAME, "DURATION", false, HELP,                                                            \
        [](SimConfig& c, const std::string& v) { return parseDuration(v, &c.FIELD); },        \
        [](const SimConfig& c, JsonWriter& w) { w.Double(c.FIELD); }                          \
  }
#define RATIO_OPT(NAME, FIELD, HELP)                                                          \
  Option {                                                                                    \
    NAME, "RATIO", false, HELP,                                                               \
        [](SimConfig& c, const std::string& v) { return parseRatio(v, &c.FIELD); },           \
        [](const SimConfig& c, JsonWriter& w) { w.Double(c.FIELD); }                          \
  }
#define INT_OPT(NAME, FIELD, HELP)                                                            \
  Option {                                                                                    \
    NAME, "N", false, HELP,                                                                   \
        [](SimConfig& c, const std::string& v) { return parseInt(v, &c.FIELD); },             \
        [](const SimConfig& c, JsonWriter& w) { w.Int(c.FIELD); }                             \
  }
#define SWITCH_OPT(NAME, FIELD, HELP)                                                         \
  Option {                                                                                    \
    NAME, nullptr, false, HELP,                                                               \
        [](SimConfig& c, const std::string& v) { return parseBool(v, &c.FIELD); },            \
        [](const SimConfig& c, JsonWriter& w) { w.Bool(c.FIELD); }                            \
  }
#define STRING_OPT(NAME, FIELD, STARTUP, HELP)                                                \
  Option {                                                                                    \
    NAME, "STRING", STARTUP, HELP,                                                            \
        [](SimConfig& c, const std::string& v) {                                              \
          c.FIELD = v;                                                                        \
          return true;                                                                        \
        },                                                                                    \
        [](const SimConfig& c, JsonWriter& w) {                                               \
          w.String(c.FIELD.c_str(), static_cast<rapidjson::SizeType>(c.FIELD.size()));        \
        }                                                                                     \
  }

const Option kOptions[] = {
    // ---- start-up ----
    Option{"listen", "ADDR", true,
           "Bind address; loopback only (127.0.0.0/8, ::1, localhost). Default 127.0.0.1.",
           [](SimConfig& c, const std::string& v) {
             c.listen = v;
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) { w.String(c.listen.c_str()); }},
    Option{"port", "PORT", true,
           "TCP port; 0 (default) picks a free one. The chosen port is printed as "
           "'hiapi-sim listening on ADDR:PORT'.",
           [](SimConfig& c, const std::string& v) {
             return parseInt(v, &c.port) && c.port <= 65535;
           },
           [](const SimConfig& c, JsonWriter& w) { w.Int(c.port); }},
    STRING_OPT("port-file", port_file, true,
               "Write the bound port number to this file (atomically: temp file + rename)."),
    STRING_OPT("tls-cert", tls_cert, true, "PEM certificate chain: serve HTTPS (needs --tls-key)."),
    STRING_OPT("tls-key", tls_key, true, "PEM private key for --tls-cert."),
    Option{"seed", "N", true, "Seed of every random choice (jitter, faults, outcomes). Default 1.",
           [](SimConfig& c, const std::string& v) {
             char* end = nullptr;
             errno = 0;
             unsigned long long s = std::strtoull(v.c_str(), &end, 10);
             if (v.empty() || *end != '\0' || errno != 0) {
               return false;
             }
             c.seed = s;
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) { w.Uint64(c.seed); }},
    // ---- keys and limits ----
    Option{"keys", "K1,K2", false,
           "Comma-separated valid API keys (Authorization: Bearer KEY). Empty (default) accepts "
           "any non-empty key.",
           [](SimConfig& c, const std::string& v) {
             c.keys = splitList(v);
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) { w.String(joinList(c.keys).c_str()); }},
    Option{"rate", "RATE", false,
           "Token refill per key: '2/s', '60/m', '3600/h' or a number per second; 0 = unlimited. "
           "Every /v1 request of the key takes one token. Default 1/s.",
           [](SimConfig& c, const std::string& v) { return parseRate(v, &c.rate_per_s); },
           [](const SimConfig& c, JsonWriter& w) { w.Double(c.rate_per_s); }},
    Option{"burst", "N", false, "Bucket capacity per key (starts full). Default 10.",
           [](SimConfig& c, const std::string& v) {
             double b = 0;
             std::string unit;
             if (!splitNumber(v, &b, &unit) || !unit.empty() || b < 1) {
               return false;
             }
             c.burst = b;
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) { w.Double(c.burst); }},
    INT_OPT("heavy-max", heavy_max,
            "Running heavy-tier tasks per key (creation until terminal); 0 = unlimited. Default 2."),
    INT_OPT("light-max", light_max,
            "Running light-tier tasks per key; 0 = unlimited. Default 10."),
    SWITCH_OPT("count-rejected",
               count_rejected,
               "A 429 costs a token too, as real gateways usually do (the bucket may go up to "
               "one burst into debt). Default off: a 429 costs nothing (a concurrency 429 gives its "
               "token back)."),
    Option{"limiter", "SHAPE", false,
           "Shape of the per-key rate limit: token-bucket (default; refill --rate, capacity "
           "--burst), gcra (the same budget as a theoretical arrival time), fixed-window "
           "(--rate x --window requests per window aligned to the simulator's start) or "
           "sliding-window (as many in any trailing --window).",
           [](SimConfig& c, const std::string& v) { return parseLimiterShape(v, &c.limiter); },
           [](const SimConfig& c, JsonWriter& w) { w.String(limiterShapeName(c.limiter)); }},
    DURATION_OPT("window", window_s,
                 "Window length of fixed-window and sliding-window; 0 (default) = burst / rate, "
                 "so that every shape lets --burst through at once and --rate on average."),
    Option{"heavy-patterns", "P1,P2", false,
           "Heavy-tier model globs ('*' wildcard, case-insensitive, matched on the name without "
           "'@route'). Also heavy: '@pro' suffix or body route \"pro\". Default "
           "seedance-*,seedance-2.5/*,wan2.7-video/*,happyhorse-*,veo-*,kling-*,hailuo-*,*-pro.",
           [](SimConfig& c, const std::string& v) {
             c.heavy_patterns = splitList(v);
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) { w.String(joinList(c.heavy_patterns).c_str()); }},
    Option{"max-body", "BYTES", false,
           "Largest request body; larger gets 413. '10MB' (default), '512KB' or bytes.",
           [](SimConfig& c, const std::string& v) { return parseBytes(v, &c.max_body_bytes); },
           [](const SimConfig& c, JsonWriter& w) { w.Double(c.max_body_bytes); }},
    // ---- schedule ----
    DURATION_OPT("heavy-duration", heavy_duration_s,
                 "Heavy task run time, creation to terminal: '5s' (default), '200ms', '2m'."),
    DURATION_OPT("light-duration", light_duration_s, "Light task run time. Default 2s."),
    RATIO_OPT("duration-jitter", duration_jitter,
              "Run time is multiplied by 1 + J*uniform(-1,1). Default 0.1."),
    Option{"duration-dist", "uniform|lognormal", false,
           "Task run times: uniform (default, see --duration-jitter) or lognormal with the "
           "configured duration as its mean and --duration-sigma as the sigma of its log.",
           [](SimConfig& c, const std::string& v) {
             if (v != "uniform" && v != "lognormal") {
               return false;
             }
             c.duration_lognormal = v == "lognormal";
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) {
             w.String(c.duration_lognormal ? "lognormal" : "uniform");
           }},
    Option{"duration-sigma", "S", false,
           "Sigma of the log of a lognormal run time (0 to 3). Default 0.3.",
           [](SimConfig& c, const std::string& v) {
             double s = 0;
             std::string unit;
             if (!splitNumber(v, &s, &unit) || !unit.empty() || s < 0 || s > 3) {
               return false;
             }
             c.duration_sigma = s;
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) { w.Double(c.duration_sigma); }},
    RATIO_OPT("fail-ratio", fail_ratio, "Share of tasks that end in 'fail'. Default 0."),
    DURATION_OPT("create-delay", create_delay_s,
                 "Hold each create reply this long; meanwhile a duplicate Idempotency-Key gets "
                 "409 IDEMPOTENCY_KEY_PROCESSING. Default 0."),
    DURATION_OPT("idempotency-ttl", idempotency_ttl_s, "Idempotency-Key lifetime. Default 24h."),
    // ---- 429 ----
    Option{"envelope", "docs|guide|both", false,
           "Error body form: docs {code,message,data,error_code}, guide {error:{type,code,...}} "
           "or both merged (default).",
           [](SimConfig& c, const std::string& v) {
             if (v == "docs") {
               c.envelope = Envelope::Docs;
             } else if (v == "guide") {
               c.envelope = Envelope::Guide;
             } else if (v == "both") {
               c.envelope = Envelope::Both;
             } else {
               return false;
             }
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) {
             w.String(c.envelope == Envelope::Docs    ? "docs"
                      : c.envelope == Envelope::Guide ? "guide"
                                                      : "both");
           }},
    RATIO_OPT("retry-after-ratio", retry_after_ratio,
              "Share of 429 replies that carry Retry-After. Default 1."),
    Option{"retry-after-format", "seconds|decimal|date", false,
           "Retry-After as integer seconds (default, rounded up, >= 1), decimal seconds ('1.250') "
           "or an HTTP-date.",
           [](SimConfig& c, const std::string& v) {
             if (v == "seconds") {
               c.retry_after_format = RetryAfterFormat::Seconds;
             } else if (v == "decimal") {
               c.retry_after_format = RetryAfterFormat::Decimal;
             } else if (v == "date") {
               c.retry_after_format = RetryAfterFormat::Date;
             } else {
               return false;
             }
             return true;
           },
           [](const SimConfig& c, JsonWriter& w) {
             w.String(c.retry_after_format == RetryAfterFormat::Seconds   ? "seconds"
                      : c.retry_after_format == RetryAfterFormat::Decimal ? "decimal"
                                                                          : "date");
           }},
    SWITCH_OPT("ratelimit-headers", ratelimit_headers,
               "Add X-RateLimit-Limit, -Remaining and -Reset (decimal seconds) to every /v1 reply "
               "of a known key: at most Remaining more requests pass before Reset (buckets: "
               "Limit = burst, Reset = the next whole token; windows: Limit per window, Reset = "
               "the window's end, or when the oldest counted request leaves a sliding one). "
               "'on'/'off' also accepted."),
    // ---- faults ----
    RATIO_OPT("fault-5xx", fault_5xx,
              "Share of /v1 requests answered 502 or 503 (half each) before any processing."),
    RATIO_OPT("fault-reset", fault_reset,
              "Share of /v1 requests whose connection is reset (RST, no reply) before processing."),
    DURATION_OPT("latency", latency_s, "Fixed delay before each /v1 request is processed."),
    DURATION_OPT("latency-jitter", latency_jitter_s,
                 "Extra uniform random delay in [0, J] before processing."),
    DURATION_OPT("jitter", latency_jitter_s, "The same as --latency-jitter."),
    RATIO_OPT("stall-ratio", stall_ratio,
              "Share of /v1 replies held back --stall-time after processing (the request has "
              "taken effect; the client just does not hear of it in time)."),
    DURATION_OPT("stall-time", stall_time_s, "How long a stalled reply is held. Default 70s."),
    // ---- callbacks ----
    STRING_OPT("callback-secret", callback_secret, false,
               "Sign callbacks: X-HiAPI-Timestamp and X-HiAPI-Signature = hex "
               "HMAC-SHA256(secret, ts + '.' + body). Empty (default): unsigned."),
    INT_OPT("callback-attempts", callback_attempts,
            "Deliveries tried per callback (first + redeliveries on non-2xx/error). Default 5."),
    DURATION_OPT("callback-backoff", callback_backoff_s,
                 "Delay before the first redelivery, doubled each time. Default 500ms."),
    DURATION_OPT("callback-timeout", callback_timeout_s, "Per-delivery timeout. Default 5s."),
    SWITCH_OPT("verbose", verbose, "Log every request to stderr."),
};

const Option* findOption(const std::string& name) {
  for (const auto& o : kOptions) {
    if (name == o.name) {
      return &o;
    }
  }
  return nullptr;
}

}  // namespace

bool parseDuration(const std::string& text, double* seconds) {
  double v = 0;
  std::string unit;
  if (!splitNumber(text, &v, &unit) || v < 0) {
    return false;
  }
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1;
  } else if (unit == "ms") {
    scale = 1e-3;
  } else if (unit == "us") {
    scale = 1e-6;
  } else if (unit == "m" || unit == "min") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  } else {
    return false;
  }
  *seconds = v * scale;
  return true;
}

bool parseRate(const std::string& text, double* per_second) {
  if (text == "inf" || text == "unlimited") {
    *per_second = 0;
    return true;
  }
  double v = 0;
  std::string unit;
  if (!splitNumber(text, &v, &unit) || v < 0) {
    return false;
  }
  double per = 0;
  if (unit.empty() || unit == "/s") {
    per = 1;
  } else if (unit == "/m" || unit == "/min") {
    per = 60;
  } else if (unit == "/h") {
    per = 3600;
  } else {
    return false;
  }
  *per_second = v / per;
  return true;
}

bool parseRatio(const std::string& text, double* ratio) {
  double v = 0;
  std::string unit;
  if (!splitNumber(text, &v, &unit) || !unit.empty() || v < 0 || v > 1) {
    return false;
  }
  *ratio = v;
  return true;
}

bool parseBytes(const std::string& text, double* bytes) {
  double v = 0;
  std::string unit;
  if (!splitNumber(text, &v, &unit) || v < 1) {
    return false;
  }
  double scale = 0;
  if (unit.empty() || unit == "B") {
    scale = 1;
  } else if (unit == "KB" || unit == "KiB" || unit == "k") {
    scale = 1024;
  } else if (unit == "MB" || unit == "MiB" || unit == "M") {
    scale = 1024.0 * 1024;
  } else {
    return false;
  }
  *bytes = std::floor(v * scale);
  return *bytes <= 1024.0 * 1024 * 1024;
}

bool isSwitch(const std::string& name) {
  const Option* o = findOption(name);
  return o != nullptr && o->arg == nullptr;
}

bool applyOption(SimConfig& cfg, const std::string& name, const std::string& value, bool runtime,
                 std::string* error) {
  const Option* o = findOption(name);
  if (o == nullptr) {
    *error = "unknown option \"" + name + "\"";
    return false;
  }
  if (runtime && o->startup) {
    *error = "option \"" + name + "\" can only be set at start-up";
    return false;
  }
  if (!o->set(cfg, value)) {
    *error = "invalid value \"" + value + "\" for option \"" + name + "\"";
    return false;
  }
  return true;
}

bool parseArgs(int argc, char** argv, SimConfig& cfg, bool* help, std::string* error) {
  *help = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      *help = true;
      return true;
    }
    if (arg.rfind("--", 0) != 0) {
      *error = "unexpected argument \"" + arg + "\"";
      return false;
    }
    std::string name = arg.substr(2);
    std::string value;
    size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    } else if (isSwitch(name)) {
      value = "true";
      bool ignored = false;
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0 &&
          parseBool(argv[i + 1], &ignored)) {
        value = argv[++i];  // "--ratelimit-headers off"
      }
    } else if (findOption(name) != nullptr) {
      // "--keys" as the last argument, or followed by another option: an empty value.
      if (i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0) {
        value = argv[++i];
      }
    }
    if (!applyOption(cfg, name, value, false, error)) {
      return false;
    }
  }
  if (cfg.tls_cert.empty() != cfg.tls_key.empty()) {
    *error = "--tls-cert and --tls-key go together";
    return false;
  }
  return true;
}

std::string helpText() {
  std::string out =
      "Usage: hiapi-sim [--option VALUE | --option=VALUE | --switch] ...\n"
      "A HiAPI task API simulator that enforces per-key limits, injects faults and counts\n"
      "everything (GET /__stats, POST /__reset, GET|POST /__config). The same options can be\n"
      "changed at run time by POST /__config with a JSON object {\"rate\":\"5/s\",...}\n"
      "(start-up options excepted). SIGTERM/SIGINT exit 0.\n\nOptions:\n";
  for (const auto& o : kOptions) {
    out += "  --";
    out += o.name;
    if (o.arg != nullptr) {
      out += " ";
      out += o.arg;
    }
    out += o.startup ? "   [start-up only]\n" : "\n";
    out += "      ";
    out += o.help;
    out += "\n";
  }
  out += "  --help\n      This text.\n";
  return out;
}

std::string configJson(const SimConfig& cfg) {
  rapidjson::StringBuffer sb;
  JsonWriter w(sb);
  w.StartObject();
  for (const auto& o : kOptions) {
    w.Key(o.name);
    o.get(cfg, w);
  }
  w.EndObject();
  return sb.GetString();
}

bool applyConfigJson(SimConfig& cfg, const char* data, size_t len, std::string* error) {
  rapidjson::Document doc;
  doc.Parse(data, len);
  if (doc.HasParseError()) {
    *error = std::string("invalid JSON: ") + rapidjson::GetParseError_En(doc.GetParseError()) +
             " at offset " + std::to_string(doc.GetErrorOffset());
    return false;
  }
  if (!doc.IsObject()) {
    *error = "expected a JSON object";
    return false;
  }
  SimConfig next = cfg;  // all or nothing
  for (auto m = doc.MemberBegin(); m != doc.MemberEnd(); ++m) {
    std::string name(m->name.GetString(), m->name.GetStringLength());
    std::string value;
    const rapidjson::Value& v = m->value;
    if (v.IsString()) {
      value.assign(v.GetString(), v.GetStringLength());
    } else if (v.IsBool()) {
      value = v.GetBool() ? "true" : "false";
    } else if (v.IsNumber()) {
      char buf[64];
      std::snprintf(buf, sizeof buf, "%.17g", v.GetDouble());
      value = buf;
    } else if (v.IsArray()) {
      for (auto it = v.Begin(); it != v.End(); ++it) {
        if (!it->IsString()) {
          *error = "option \"" + name + "\": array items must be strings";
          return false;
        }
        if (!value.empty()) {
          value += ',';
        }
        value.append(it->GetString(), it->GetStringLength());
      }
    } else if (v.IsNull()) {
      value = "";
    } else {
      *error = "option \"" + name + "\": unsupported value type";
      return false;
    }
    if (!applyOption(next, name, value, true, error)) {
      return false;
    }
  }
  cfg = next;
  return true;
}

}  // namespace hiapi::sim
