// Walks the YAML tree into a Config, strictly: every map is checked for unknown and duplicate
// keys, every value for its type and range, and every error is a ConfigError at the offending
// node's line and column with its key path. Values of `key` fields never reach a message.

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <sstream>
#include <string_view>

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include "hiapi/core/config.h"
#include "config_store.h"

namespace hiapi::core {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

constexpr size_t kMaxKeyFileBytes = 64 * 1024;
constexpr size_t kMaxCaFileBytes = 16 * 1024 * 1024;
constexpr size_t kMaxConfigBytes = 16 * 1024 * 1024;

std::optional<std::string> systemEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) {
    return std::nullopt;
  }
  return std::string(v);
}

const char* kindOf(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a string";
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

/// A non-secret value, quoted and cut short for a message. Something that looks like an API key
/// pasted into the wrong place (an unknown key, a name) is not shown either.
bool looksLikeApiKey(const std::string& v) {
  return v.rfind("sk-", 0) == 0 || v.rfind("hi-sk-", 0) == 0;
}

std::string quote(const std::string& v) {
  if (looksLikeApiKey(v)) {
    return "(a value that looks like an API key, not shown)";
  }
  std::string out = "'";
  for (size_t i = 0; i < v.size() && i < 60; ++i) {
    const unsigned char c = static_cast<unsigned char>(v[i]);
    out += (c < 0x20 || c == 0x7f) ? '?' : static_cast<char>(c);
  }
  if (v.size() > 60) {
    out += "...";
  }
  return out + "'";
}

/// Optimal string alignment distance: a swapped pair of letters (`burts`) counts as one edit.
size_t editDistance(std::string_view a, std::string_view b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) {
    d[i][0] = i;
  }
  for (size_t j = 0; j <= b.size(); ++j) {
    d[0][j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) {
    return "";
  }
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

bool isValidName(const std::string& s) {
  if (s.empty() || s.size() > 32) {
    return false;
  }
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

/// An HTTP header name (RFC 9110 token).
bool isToken(const std::string& s) {
  static constexpr std::string_view kExtra = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || kExtra.find(c) != std::string_view::npos;
  });
}

enum class AddressKind { Invalid, Loopback, Other };

AddressKind classifyAddress(const std::string& a) {
  if (lower(a) == "localhost") {
    return AddressKind::Loopback;
  }
  in_addr v4{};
  if (inet_pton(AF_INET, a.c_str(), &v4) == 1) {
    const auto* b = reinterpret_cast<const unsigned char*>(&v4.s_addr);
    return b[0] == 127 ? AddressKind::Loopback : AddressKind::Other;
  }
  in6_addr v6{};
  if (inet_pton(AF_INET6, a.c_str(), &v6) == 1) {
    const unsigned char* b = v6.s6_addr;
    static constexpr unsigned char kLoop[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    static constexpr unsigned char kMapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (std::memcmp(b, kLoop, 16) == 0) {
      return AddressKind::Loopback;
    }
    if (std::memcmp(b, kMapped, 12) == 0 && b[12] == 127) {
      return AddressKind::Loopback;
    }
    return AddressKind::Other;
  }
  return AddressKind::Invalid;
}

/// Reads at most `limit` bytes. @return nullopt with errno-style text in `err` on failure.
std::optional<std::string> readFile(const fs::path& p, size_t limit, std::string& err) {
  FILE* fp = std::fopen(p.c_str(), "rb");
  if (fp == nullptr) {
    err = std::strerror(errno);
    return std::nullopt;
  }
  std::string out(limit + 1, '\0');
  const size_t n = std::fread(out.data(), 1, out.size(), fp);
  const bool failed = std::ferror(fp) != 0;
  const int saved = errno;
  std::fclose(fp);
  if (failed) {
    err = std::strerror(saved);
    return std::nullopt;
  }
  if (n > limit) {
    err = "larger than " + std::to_string(limit) + " bytes";
    return std::nullopt;
  }
  out.resize(n);
  return out;
}

/// One `key: value` of a map, with the path to name it by.
struct Field {
  std::string path;
  YAML::Node key;
  YAML::Node value;

  /// Where an error about the value points: the value itself, or its key when the value is empty
  /// (yaml-cpp marks an empty value at the start of the next line).
  YAML::Mark mark() const { return value.IsNull() ? key.Mark() : value.Mark(); }
};

std::string join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

class Parser {
public:
  Parser(std::string file, EnvLookup env)
      : file_(std::move(file)), env_(env != nullptr ? env : &systemEnv) {
    base_dir_ = fs::path(file_).parent_path();
  }

  Config parse(const YAML::Node& root);

  /// Runs @p f; a ConfigError it throws is kept, so that one run reports every error of a file.
  /// @return whether @p f ran without one.
  template <typename F>
  bool attempt(F&& f) const {
    try {
      f();
      return true;
    } catch (const ConfigError& e) {
      errors_.push_back(e);
      return false;
    }
  }
  /// Keeps an error and goes on.
  void note(const YAML::Mark& m, const std::string& path, const std::string& msg) const {
    attempt([&] { fail(m, path, msg); });
  }
  /// @throws ConfigError with every error kept, in file order, when there is any.
  void throwErrors() const {
    if (errors_.empty()) {
      return;
    }
    std::vector<ConfigError> all = errors_;
    std::stable_sort(all.begin(), all.end(), [](const ConfigError& a, const ConfigError& b) {
      return std::make_pair(a.line(), a.column()) < std::make_pair(b.line(), b.column());
    });
    throw ConfigError(std::move(all));
  }

  [[noreturn]] void fail(const YAML::Mark& m, const std::string& path,
                         const std::string& msg) const {
    const bool known = !m.is_null() && m.line >= 0;
    throw ConfigError(file_, known ? m.line + 1 : 0, known ? m.column + 1 : 0, path, msg);
  }
  [[noreturn]] void fail(const Field& f, const std::string& msg) const {
    fail(f.mark(), f.path, msg);
  }

private:
  /// The keys of one map, checked against the allowed names.
  class MapView {
  public:
    MapView(const Parser& p, const YAML::Node& node, const YAML::Mark& where,
            const std::string& path, std::initializer_list<std::string_view> allowed)
        : parser_(p) {
      if (node.IsNull()) {
        return;  // `section:` with everything commented out: all defaults
      }
      if (!node.IsMap()) {
        p.fail(where, path, std::string("expected a map, got ") + kindOf(node));
      }
      for (const auto& entry : node) {
        // Copies: a yaml-cpp iterator's `->` yields a temporary, so a reference would dangle.
        const YAML::Node k = entry.first;
        if (!k.IsScalar()) {
          p.note(k.Mark(), path, std::string("expected a plain key, got ") + kindOf(k));
          continue;
        }
        const std::string name = k.Scalar();
        const std::string child = join(path, name);
        if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
          p.note(k.Mark(), looksLikeApiKey(name) ? path : child,
                 "unknown key " + quote(name) + suggest(name, allowed));
          continue;
        }
        const auto first = std::find_if(fields_.begin(), fields_.end(),
                                        [&](const Field& f) { return f.key.Scalar() == name; });
        if (first != fields_.end()) {
          p.note(k.Mark(), child,
                 "duplicate key " + quote(name) + " (first set at line " +
                     std::to_string(first->key.Mark().line + 1) + ")");
          continue;
        }
        fields_.push_back(Field{child, k, entry.second});
      }
    }

    /// Runs @p f with the field @p name when it is set; an error in it is kept and the rest of
    /// the map goes on. @return false when @p f failed.
    template <typename F>
    bool with(std::string_view name, F&& f) const {
      if (const std::optional<Field> v = get(name)) {
        return parser_.attempt([&] { f(&*v); });
      }
      return true;
    }

    std::optional<Field> get(std::string_view name) const {
      for (const Field& f : fields_) {
        if (f.key.Scalar() == name) {
          return f;
        }
      }
      return std::nullopt;
    }

  private:
    static std::string suggest(const std::string& name,
                               std::initializer_list<std::string_view> allowed) {
      std::string_view best;
      size_t best_d = 3;
      for (std::string_view a : allowed) {
        const size_t d = editDistance(lower(name), a);
        const size_t limit = a.size() >= 5 ? 2 : 1;
        if (d <= limit && d < best_d) {
          best = a;
          best_d = d;
        }
      }
      if (best.empty()) {
        return "";
      }
      return " (did you mean '" + std::string(best) + "'?)";
    }

    const Parser& parser_;
    std::vector<Field> fields_;
  };

  // ---- scalars -------------------------------------------------------------------------------
  std::string scalar(const Field& f, const char* expected) const {
    if (!f.value.IsScalar()) {
      fail(f, std::string("expected ") + expected + ", got " + kindOf(f.value));
    }
    return f.value.Scalar();
  }

  std::string str(const Field& f) const { return scalar(f, "a string"); }

  bool boolean(const Field& f) const {
    const std::string s = scalar(f, "true or false");
    bool b = false;
    if (!YAML::convert<bool>::decode(f.value, b)) {
      fail(f, "expected true or false, got " + quote(s));
    }
    return b;
  }

  uint64_t integer(const Field& f, uint64_t min, uint64_t max) const {
    const std::string s = scalar(f, "an integer");
    uint64_t v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec == std::errc::invalid_argument || ptr != s.data() + s.size()) {
      fail(f, "expected a non-negative integer, got " + quote(s));
    }
    if (ec == std::errc::result_out_of_range || v < min || v > max) {
      fail(f, "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
                  quote(s));
    }
    return v;
  }

  double number(const Field& f) const {
    const std::string s = scalar(f, "a number");
    double v = 0;
    auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) {
      fail(f, "expected a number, got " + quote(s));
    }
    return v;
  }

  Duration duration(const Field& f) const {
    const std::string s = scalar(f, "a duration like 250ms, 2s, 5m or 1h");
    std::optional<Duration> d = parseDuration(s);
    if (!d) {
      fail(f, "invalid duration " + quote(s) + " (expected e.g. 250ms, 2s, 1.5s, 5m or 1h)");
    }
    return *d;
  }

  Duration positiveDuration(const Field& f) const {
    const Duration d = duration(f);
    if (d <= Duration::zero()) {
      fail(f, "must be greater than 0");
    }
    return d;
  }

  Rate rate(const Field& f) const {
    const std::string s = scalar(f, "a rate like 60/min or 5/s");
    std::optional<Rate> r = parseRate(s);
    if (!r) {
      fail(f, "invalid rate " + quote(s) +
                  " (expected a positive count per s, min or h, e.g. 60/min or 5/s)");
    }
    return *r;
  }

  uint64_t size(const Field& f) const {
    const std::string s = scalar(f, "a size like 10MiB");
    std::optional<uint64_t> n = parseSize(s);
    if (!n) {
      fail(f, "invalid size " + quote(s) +
                  " (expected bytes, or a number with KiB, MiB, GiB, KB, MB or GB)");
    }
    if (*n == 0) {
      fail(f, "must be greater than 0");
    }
    return *n;
  }

  double burst(const Field& f) const {
    const double b = number(f);
    if (b < 1) {
      fail(f, "must be at least 1 (a burst below one token would never admit a request)");
    }
    return b;
  }

  double fraction(const Field& f, bool open_top) const {
    const double v = number(f);
    if (v <= 0 || (open_top ? v >= 1 : v > 1)) {
      fail(f, std::string("must be greater than 0 and ") +
                  (open_top ? "less than 1" : "at most 1"));
    }
    return v;
  }

  std::vector<std::string> stringList(const Field& f) const {
    if (f.value.IsNull()) {
      return {};
    }
    if (!f.value.IsSequence()) {
      fail(f, std::string("expected a list of strings, got ") + kindOf(f.value));
    }
    std::vector<std::string> out;
    for (size_t i = 0; i < f.value.size(); ++i) {
      const YAML::Node item = f.value[i];
      const std::string path = f.path + "[" + std::to_string(i) + "]";
      if (!item.IsScalar()) {
        fail(item.Mark(), path, std::string("expected a string, got ") + kindOf(item));
      }
      if (item.Scalar().empty()) {
        fail(item.Mark(), path, "must not be empty");
      }
      out.push_back(item.Scalar());
    }
    return out;
  }

  std::string address(const Field& f) const {
    const std::string a = str(f);
    if (classifyAddress(a) == AddressKind::Invalid) {
      fail(f, "expected an IPv4 or IPv6 address (without brackets) or localhost, got " + quote(a));
    }
    return a;
  }

  fs::path resolve(const std::string& p) const {
    fs::path path(p);
    if (path.is_relative() && !base_dir_.empty()) {
      path = base_dir_ / path;
    }
    return path.lexically_normal();
  }

  // ---- sections ------------------------------------------------------------------------------
  void parseListen(const Field& f, ListenConfig& out, std::optional<Field>& address_field) const;
  void parseAdmin(const Field& f, AdminConfig& out, std::optional<Field>& address_field,
                  std::optional<Field>& port_field) const;
  void parseUpstream(const Field& f, UpstreamConfig& out) const;
  void parseUrl(const Field& f, UpstreamConfig& out) const;
  void parseKeys(const Field& f, std::vector<KeyConfig>& out) const;
  Secret expandKey(const Field& f) const;
  void parseLimits(const Field& f, LimitsConfig& out) const;
  void parseTiers(const Field& f, std::vector<TierConfig>& out) const;
  void parseQueue(const Field& f, QueueConfig& out) const;
  void parseRetry(const Field& f, RetryConfig& out) const;
  void parseTasks(const Field& f, TasksConfig& out) const;
  void parseDeferred(const Field& f, DeferredConfig& out) const;
  void parseLog(const Field& f, LogConfig& out) const;

  std::string file_;
  EnvLookup env_;
  mutable std::vector<ConfigError> errors_;  ///< every error found so far (attempt())
  fs::path base_dir_;
};

void Parser::parseListen(const Field& f, ListenConfig& out,
                         std::optional<Field>& address_field) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"address", "port", "allow_non_loopback", "max_body_size", "max_header_size",
             "client_timeout", "header_timeout", "body_timeout", "max_connections",
             "max_reply_buffer"});
  if ((address_field = m.get("address"))) {
    out.address = address(*address_field);
  }
  m.with("port", [&](const Field* v) {
    out.port = static_cast<uint16_t>(integer(*v, 0, 65535));
  });
  m.with("allow_non_loopback", [&](const Field* v) {
    out.allow_non_loopback = boolean(*v);
  });
  m.with("max_body_size", [&](const Field* v) {
    out.max_body_bytes = size(*v);
  });
  m.with("max_header_size", [&](const Field* v) {
    out.max_header_bytes = size(*v);
  });
  m.with("client_timeout", [&](const Field* v) {
    out.client_timeout = positiveDuration(*v);
  });
  m.with("header_timeout", [&](const Field* v) {
    out.header_timeout = positiveDuration(*v);
  });
  m.with("body_timeout", [&](const Field* v) {
    out.body_timeout = positiveDuration(*v);
  });
  m.with("max_connections", [&](const Field* v) {
    out.max_connections = static_cast<uint64_t>(integer(*v, 1, 1'000'000));
  });
  m.with("max_reply_buffer", [&](const Field* v) {
    out.max_reply_buffer_bytes = size(*v);
  });
}

void Parser::parseAdmin(const Field& f, AdminConfig& out, std::optional<Field>& address_field,
                        std::optional<Field>& port_field) const {
  MapView m(*this, f.value, f.mark(), f.path, {"enabled", "address", "port"});
  m.with("enabled", [&](const Field* v) {
    out.enabled = boolean(*v);
  });
  if ((address_field = m.get("address"))) {
    out.address = address(*address_field);
  }
  if ((port_field = m.get("port"))) {
    out.port = static_cast<uint16_t>(integer(*port_field, 0, 65535));
  }
}

void Parser::parseUrl(const Field& f, UpstreamConfig& out) const {
  const std::string url = str(f);
  auto bad = [&](const std::string& why) {
    fail(f, "invalid url " + quote(url) + ": " + why);
  };
  const size_t sep = url.find("://");
  if (sep == std::string::npos) {
    bad("expected http://host[:port] or https://host[:port]");
  }
  const std::string scheme = lower(url.substr(0, sep));
  if (scheme != "http" && scheme != "https") {
    bad("the scheme must be http or https");
  }
  std::string rest = url.substr(sep + 3);
  if (!rest.empty() && rest.back() == '/') {
    rest.pop_back();  // `https://api.hiapi.ai/` is the same upstream
  }
  if (rest.find_first_of("/?#") != std::string::npos) {
    bad("must not have a path, query or fragment (clients' /v1/... paths are forwarded as they "
        "are)");
  }
  if (rest.find('@') != std::string::npos) {
    bad("must not contain user information");
  }
  std::string host;
  std::string port_text;
  bool v6 = false;
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos) {
      bad("unterminated IPv6 literal");
    }
    host = rest.substr(1, close - 1);
    in6_addr a{};
    if (inet_pton(AF_INET6, host.c_str(), &a) != 1) {
      bad("invalid IPv6 literal");
    }
    v6 = true;
    const std::string after = rest.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        bad("unexpected text after the IPv6 literal");
      }
      port_text = after.substr(1);
      if (port_text.empty()) {
        bad("empty port");
      }
    }
  } else {
    const size_t colon = rest.find(':');
    host = rest.substr(0, colon);
    if (colon != std::string::npos) {
      port_text = rest.substr(colon + 1);
      if (port_text.empty()) {
        bad("empty port");
      }
    }
    const bool ok = std::all_of(host.begin(), host.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
    });
    if (host.empty() || !ok || host.front() == '.' || host.front() == '-') {
      bad("invalid host");
    }
    host = lower(host);
  }
  uint16_t port = scheme == "https" ? 443 : 80;
  const uint16_t default_port = port;
  if (!port_text.empty()) {
    unsigned p = 0;
    auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), p);
    if (ec != std::errc() || ptr != port_text.data() + port_text.size() || p == 0 || p > 65535) {
      bad("the port must be between 1 and 65535");
    }
    port = static_cast<uint16_t>(p);
  }
  out.scheme = scheme;
  out.host = host;
  out.port = port;
  out.authority = v6 ? "[" + host + "]" : host;
  if (port != default_port) {
    out.authority += ":" + std::to_string(port);
  }
  out.url = scheme + "://" + out.authority;
}

void Parser::parseUpstream(const Field& f, UpstreamConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"url", "ca_file", "tls_min_version", "connect_timeout", "response_timeout",
             "pool_size", "idle_timeout"});
  m.with("url", [&](const Field* v) {
    parseUrl(*v, out);
  });
  m.with("ca_file", [&](const Field* v) {
    const std::string p = v->value.IsNull() ? "" : str(*v);
    if (!p.empty()) {
      const fs::path path = resolve(p);
      std::string err;
      std::optional<std::string> content = readFile(path, kMaxCaFileBytes, err);
      if (!content) {
        fail(*v, "cannot read CA file '" + path.string() + "': " + err);
      }
      if (content->empty()) {
        fail(*v, "CA file '" + path.string() + "' is empty");
      }
      out.ca_file = path.string();
    } else {
      out.ca_file.clear();
    }
  });
  m.with("tls_min_version", [&](const Field* v) {
    const std::string s = scalar(*v, "1.2 or 1.3");
    if (s == "1.2") {
      out.tls_min_version = TlsMinVersion::Tls12;
    } else if (s == "1.3") {
      out.tls_min_version = TlsMinVersion::Tls13;
    } else {
      fail(*v, "must be 1.2 or 1.3, got " + quote(s));
    }
  });
  m.with("connect_timeout", [&](const Field* v) {
    out.connect_timeout = positiveDuration(*v);
  });
  m.with("response_timeout", [&](const Field* v) {
    out.response_timeout = positiveDuration(*v);
  });
  m.with("pool_size", [&](const Field* v) {
    out.pool_size = static_cast<uint32_t>(integer(*v, 1, 65535));
  });
  m.with("idle_timeout", [&](const Field* v) {
    out.idle_timeout = positiveDuration(*v);
  });
  if (out.scheme == "http" && !out.ca_file.empty()) {
    const std::optional<Field> ca = m.get("ca_file");
    fail(*ca, "a CA file makes no sense with a plain http:// upstream");
  }
}

Secret Parser::expandKey(const Field& f) const {
  // Never quote the value: every message here is about its shape, or names a variable.
  if (!f.value.IsScalar()) {
    fail(f, std::string("expected a string or ${ENV_VAR}, got ") + kindOf(f.value));
  }
  const std::string& raw = f.value.Scalar();
  std::string out;
  size_t vars = 0;
  std::string last_var;
  for (size_t i = 0; i < raw.size(); ++i) {
    if (raw[i] == '$' && i + 1 < raw.size() && raw[i + 1] == '{') {
      const size_t close = raw.find('}', i + 2);
      if (close == std::string::npos) {
        fail(f, "unterminated ${ (write ${ENV_VAR})");
      }
      const std::string name = raw.substr(i + 2, close - i - 2);
      const bool ok = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
                      std::all_of(name.begin(), name.end(), [](char c) {
                        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                      });
      if (!ok) {
        fail(f, "invalid environment variable name in ${...} (letters, digits and _ only)");
      }
      std::optional<std::string> value = env_(name);
      if (!value) {
        fail(f, "environment variable " + name + " is not set");
      }
      out += *value;
      ++vars;
      last_var = name;
      i = close;
    } else {
      out += raw[i];
    }
  }
  out = trim(out);
  if (out.empty()) {
    if (vars == 1 && trim(raw) == "${" + last_var + "}") {
      fail(f, "environment variable " + last_var + " is empty");
    }
    fail(f, "the key is empty");
  }
  return Secret(std::move(out));
}

void Parser::parseKeys(const Field& f, std::vector<KeyConfig>& out) const {
  out.clear();
  if (f.value.IsNull()) {
    return;
  }
  if (!f.value.IsSequence()) {
    fail(f, std::string("expected a list of keys, got ") + kindOf(f.value));
  }
  std::vector<std::pair<std::string, int>> seen;
  for (size_t i = 0; i < f.value.size(); ++i) {
    // One bad entry is reported, and the entries after it are still checked.
    attempt([&] {
      const YAML::Node item = f.value[i];
      const std::string path = f.path + "[" + std::to_string(i) + "]";
      if (!item.IsMap()) {
        // Not kindOf's "a string" detail either way: the item may be a bare key.
        fail(item.Mark(), path, "expected a map with name and key (or key_file)");
      }
      MapView m(*this, item, item.Mark(), path, {"name", "key", "key_file", "rate", "burst"});
      KeyConfig k;
      const std::optional<Field> name = m.get("name");
      if (!name) {
        fail(item.Mark(), path, "missing name");
      }
      k.name = str(*name);
      if (looksLikeApiKey(k.name)) {
        fail(*name, "this looks like an API key: names are labels (e.g. prod) and appear in logs "
                    "and metrics; put the key under key or key_file");
      }
      if (!isValidName(k.name)) {
        fail(*name, "invalid name " + quote(k.name) + " (1 to 32 of a-z, 0-9, _ and -)");
      }
      for (const auto& [n, line] : seen) {
        if (n == k.name) {
          fail(*name, "duplicate key name " + quote(k.name) + " (first at line " +
                          std::to_string(line) + ")");
        }
      }
      seen.emplace_back(k.name, name->mark().line + 1);
      const std::optional<Field> key = m.get("key");
      const std::optional<Field> key_file = m.get("key_file");
      if (key && key_file) {
        fail(key_file->key.Mark(), key_file->path, "give either key or key_file, not both");
      }
      if (!key && !key_file) {
        fail(item.Mark(), path, "missing key: give key (e.g. ${HIAPI_API_KEY}) or key_file");
      }
      if (key) {
        k.key = expandKey(*key);
      } else {
        str(*key_file);  // a string, or a type error naming it
        // ${VAR} expands here too, e.g. ${CREDENTIALS_DIRECTORY}/hiapi-key under systemd.
        const std::string p = expandKey(*key_file).reveal();
        const fs::path resolved = resolve(p);
        std::string err;
        std::optional<std::string> content = readFile(resolved, kMaxKeyFileBytes, err);
        if (!content) {
          fail(*key_file, "cannot read key file '" + resolved.string() + "': " + err);
        }
        std::string v = trim(*content);
        if (v.empty()) {
          fail(*key_file, "key file '" + resolved.string() + "' is empty");
        }
        k.key = Secret(std::move(v));
        k.key_file = resolved.string();
      }
      const std::string& secret = k.key.reveal();
      if (!std::all_of(secret.begin(), secret.end(),
                       [](char c) { return c > 0x20 && c < 0x7f; })) {
        const Field& src = key ? *key : *key_file;
        fail(src, "the key contains spaces, line breaks or non-ASCII characters");
      }
      m.with("rate", [&](const Field* v) {
        k.rate = rate(*v);
      });
      m.with("burst", [&](const Field* v) {
        k.burst = burst(*v);
      });
      out.push_back(std::move(k));
    });
  }
}

void Parser::parseTiers(const Field& f, std::vector<TierConfig>& out) const {
  if (f.value.IsNull() || (f.value.IsSequence() && f.value.size() == 0)) {
    fail(f, "at least one tier is needed (leave out limits.tiers for the built-in heavy and "
            "light tiers)");
  }
  if (!f.value.IsSequence()) {
    fail(f, std::string("expected a list of tiers, got ") + kindOf(f.value));
  }
  out.clear();
  std::vector<std::pair<std::string, int>> seen;
  for (size_t i = 0; i < f.value.size(); ++i) {
    // One bad entry is reported, and the entries after it are still checked.
    attempt([&] {
      const YAML::Node item = f.value[i];
      const std::string path = f.path + "[" + std::to_string(i) + "]";
      if (!item.IsMap()) {
        fail(item.Mark(), path, std::string("expected a map, got ") + kindOf(item));
      }
      MapView m(*this, item, item.Mark(), path,
                {"name", "models", "routes", "max_running", "lease", "min_poll_interval",
                 "expected_duration", "defer", "defer_after"});
      TierConfig t;
      const std::optional<Field> name = m.get("name");
      if (!name) {
        fail(item.Mark(), path, "missing name");
      }
      t.name = str(*name);
      if (!isValidName(t.name)) {
        fail(*name, "invalid name " + quote(t.name) + " (1 to 32 of a-z, 0-9, _ and -)");
      }
      for (const auto& [n, line] : seen) {
        if (n == t.name) {
          fail(*name, "duplicate tier name " + quote(t.name) + " (first at line " +
                          std::to_string(line) + ")");
        }
      }
      seen.emplace_back(t.name, name->mark().line + 1);
      const bool models_ok = m.with("models", [&](const Field* v) {
        t.models = stringList(*v);
      });
      const bool routes_ok = m.with("routes", [&](const Field* v) {
        t.routes = stringList(*v);
      });
      if (models_ok && routes_ok && t.models.empty() && t.routes.empty()) {
        fail(item.Mark(), path, "tier " + quote(t.name) + " has neither models nor routes");
      }
      m.with("max_running", [&](const Field* v) {
        t.max_running = static_cast<uint32_t>(integer(*v, 1, 100000));
      });
      m.with("lease", [&](const Field* v) {
        t.lease = positiveDuration(*v);
      });
      m.with("min_poll_interval", [&](const Field* v) {
        t.min_poll_interval = duration(*v);
      });
      m.with("expected_duration", [&](const Field* v) {
        t.expected_duration = positiveDuration(*v);
      });
      // A tier named heavy defers unless told otherwise, as the built-in one does.
      t.defer = t.name == "heavy";
      m.with("defer", [&](const Field* v) {
        t.defer = boolean(*v);
      });
      m.with("defer_after", [&](const Field* v) {
        t.defer_after = duration(*v);
        if (t.defer_after > std::chrono::seconds(30)) {
          fail(*v, "at most 30s (the create is answered only after it, within the client's 60 s "
                   "timeout), got " + quote(scalar(*v, "a duration")));
        }
      });
      out.push_back(std::move(t));
    });
  }
}

void Parser::parseLimits(const Field& f, LimitsConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"rate", "burst", "decrease_factor", "min_rate_fraction", "recovery_time",
             "max_cooldown", "repeat_window", "phase_margin", "tiers"});
  m.with("rate", [&](const Field* v) {
    out.rate = rate(*v);
  });
  m.with("burst", [&](const Field* v) {
    out.burst = burst(*v);
  });
  m.with("decrease_factor", [&](const Field* v) {
    out.decrease_factor = fraction(*v, /*open_top=*/true);
  });
  m.with("min_rate_fraction", [&](const Field* v) {
    out.min_rate_fraction = fraction(*v, /*open_top=*/false);
  });
  m.with("recovery_time", [&](const Field* v) {
    out.recovery_time = positiveDuration(*v);
  });
  m.with("max_cooldown", [&](const Field* v) {
    out.max_cooldown = positiveDuration(*v);
  });
  m.with("repeat_window", [&](const Field* v) {
    out.repeat_window = duration(*v);
  });
  m.with("phase_margin", [&](const Field* v) {
    out.phase_margin = duration(*v);
    if (out.phase_margin > std::chrono::seconds(1)) {
      fail(*v, "must be at most 1s (a guard against arrival jitter, not a pause)");
    }
  });
  m.with("tiers", [&](const Field* v) {
    parseTiers(*v, out.tiers);
  });
}

void Parser::parseQueue(const Field& f, QueueConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"max_size", "max_per_client", "deadline", "create_gather", "client_header",
             "deadline_header"});
  m.with("max_size", [&](const Field* v) {
    out.max_size = static_cast<uint32_t>(integer(*v, 1, 10'000'000));
  });
  m.with("max_per_client", [&](const Field* v) {
    out.max_per_client = static_cast<uint32_t>(integer(*v, 0, 10'000'000));
  });
  m.with("deadline", [&](const Field* v) {
    out.deadline = positiveDuration(*v);
    if (out.deadline >= 60s) {
      fail(*v, "must be less than 60s: HiAPI clients give up after 60 s, so a queued request "
               "must get its answer (if only a 429) before then");
    }
  });
  m.with("create_gather", [&](const Field* v) {
    out.create_gather = duration(*v);
    if (out.create_gather > 1s) {
      fail(*v, "must be at most 1s: every create burst waits this long before the first is sent");
    }
  });
  auto header = [&](std::string_view key, std::string& dst) {
    m.with(key, [&](const Field* v) {
      dst = str(*v);
      if (!isToken(dst)) {
        fail(*v, "invalid HTTP header name " + quote(dst));
      }
    });
  };
  header("client_header", out.client_header);
  header("deadline_header", out.deadline_header);
}

void Parser::parseRetry(const Field& f, RetryConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"max_attempts", "base_delay", "max_delay", "budget_ratio", "budget_min_retries",
             "idempotency"});
  m.with("max_attempts", [&](const Field* v) {
    out.max_attempts = static_cast<uint32_t>(integer(*v, 1, 10));
  });
  const std::optional<Field> base = m.get("base_delay");
  if (base) {
    out.base_delay = positiveDuration(*base);
  }
  const bool max_ok = m.with("max_delay", [&](const Field* v) {
    out.max_delay = positiveDuration(*v);
    if (out.max_delay > 60s) {
      fail(*v, "must be at most 60s (clients time out after 60 s)");
    }
  });
  if (max_ok && out.base_delay > out.max_delay) {
    fail(base ? *base : *m.get("max_delay"), "base_delay must not exceed max_delay");
  }
  m.with("budget_ratio", [&](const Field* v) {
    const double r = number(*v);
    if (r < 0 || r > 1) {
      fail(*v, "must be between 0 and 1");
    }
    out.budget_ratio = r;
  });
  m.with("budget_min_retries", [&](const Field* v) {
    out.budget_min_retries = static_cast<uint32_t>(integer(*v, 0, 1'000'000));
  });
  m.with("idempotency", [&](const Field* v) {
    const std::string s = scalar(*v, "off or inject");
    // YAML 1.1 tools (PyYAML, Ansible) write `off` back as `false`: the same word here.
    if (s == "off" || s == "false" || s == "no") {
      out.idempotency = IdempotencyMode::Off;
    } else if (s == "inject") {
      out.idempotency = IdempotencyMode::Inject;
    } else {
      fail(*v, "must be off or inject, got " + quote(s));
    }
  });
}

void Parser::parseTasks(const Field& f, TasksConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"terminal_statuses", "tolerated_terminal", "terminal_ttl", "not_found_ttl",
             "cache_max_entries", "cache_max_bytes", "reconcile", "reconcile_interval",
             "state_file", "state_save_interval", "max_hold", "hold_near_end"});
  m.with("terminal_statuses", [&](const Field* v) {
    out.terminal_statuses = stringList(*v);
    if (out.terminal_statuses.empty()) {
      fail(*v, "at least one terminal status is needed (HiAPI's are success and fail)");
    }
  });
  m.with("tolerated_terminal", [&](const Field* v) {
    out.tolerated_terminal = stringList(*v);
  });
  m.with("terminal_ttl", [&](const Field* v) {
    out.terminal_ttl = positiveDuration(*v);
  });
  m.with("not_found_ttl", [&](const Field* v) {
    out.not_found_ttl = duration(*v);
  });
  m.with("cache_max_entries", [&](const Field* v) {
    out.cache_max_entries = static_cast<uint32_t>(integer(*v, 1, 100'000'000));
  });
  m.with("cache_max_bytes", [&](const Field* v) {
    out.cache_max_bytes = size(*v);
  });
  m.with("reconcile", [&](const Field* v) {
    out.reconcile = boolean(*v);
  });
  m.with("reconcile_interval", [&](const Field* v) {
    out.reconcile_interval = positiveDuration(*v);
  });
  m.with("state_file", [&](const Field* v) {
    out.state_file = v->value.IsNull() ? "" : str(*v);
  });
  m.with("state_save_interval", [&](const Field* v) {
    out.state_save_interval = positiveDuration(*v);
  });
  m.with("max_hold", [&](const Field* v) {
    out.max_hold = duration(*v);
  });
  m.with("hold_near_end", [&](const Field* v) {
    out.hold_near_end = duration(*v);
    if (out.hold_near_end > std::chrono::seconds(10)) {
      fail(*v, "at most 10s (a held poll still has to be answered well within the client's "
               "timeout), got " + quote(scalar(*v, "a duration")));
    }
  });
}

void Parser::parseDeferred(const Field& f, DeferredConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path,
            {"journal", "max_per_key", "max_total", "max_age", "keep"});
  m.with("journal", [&](const Field* v) {
    out.journal = v->value.IsNull() || str(*v).empty() ? "" : resolve(str(*v)).string();
  });
  m.with("max_per_key", [&](const Field* v) {
    out.max_per_key = static_cast<uint32_t>(integer(*v, 0, 1'000'000));
  });
  m.with("max_total", [&](const Field* v) {
    out.max_total = static_cast<uint32_t>(integer(*v, 0, 1'000'000));
  });
  m.with("max_age", [&](const Field* v) {
    out.max_age = positiveDuration(*v);
    if (out.max_age > std::chrono::hours(23)) {
      fail(*v, "at most 23h: a create resubmitted after a restart must stay inside HiAPI's ~24 h "
               "idempotency window, got " + quote(scalar(*v, "a duration")));
    }
  });
  m.with("keep", [&](const Field* v) {
    out.keep = positiveDuration(*v);
  });
}

void Parser::parseLog(const Field& f, LogConfig& out) const {
  MapView m(*this, f.value, f.mark(), f.path, {"format", "level"});
  m.with("format", [&](const Field* v) {
    const std::string s = scalar(*v, "logfmt or json");
    if (s == "logfmt") {
      out.format = LogFormat::Logfmt;
    } else if (s == "json") {
      out.format = LogFormat::Json;
    } else {
      fail(*v, "must be logfmt or json, got " + quote(s));
    }
  });
  m.with("level", [&](const Field* v) {
    const std::string s = scalar(*v, "debug, info, warn or error");
    if (s == "debug") {
      out.level = LogLevel::Debug;
    } else if (s == "info") {
      out.level = LogLevel::Info;
    } else if (s == "warn" || s == "warning") {
      out.level = LogLevel::Warn;
    } else if (s == "error") {
      out.level = LogLevel::Error;
    } else {
      fail(*v, "must be debug, info, warn or error, got " + quote(s));
    }
  });
}

Config Parser::parse(const YAML::Node& root) {
  Config c;
  c.source_file = file_;
  if (!root.IsNull() && !root.IsMap()) {
    fail(root.Mark(), "", std::string("expected a map at the top level, got ") + kindOf(root));
  }
  MapView m(*this, root, root.Mark(), "",
            {"listen", "admin", "upstream", "auth", "keys", "limits", "queue", "retry", "tasks",
             "deferred", "store", "log", "drain_timeout"});
  std::optional<Field> listen_address;
  std::optional<Field> admin_address;
  std::optional<Field> admin_port;
  m.with("listen", [&](const Field* v) {
    parseListen(*v, c.listen, listen_address);
  });
  m.with("admin", [&](const Field* v) {
    parseAdmin(*v, c.admin, admin_address, admin_port);
  });
  m.with("upstream", [&](const Field* v) {
    parseUpstream(*v, c.upstream);
  });
  std::optional<Field> mode;
  m.with("auth", [&](const Field* v) {
    MapView a(*this, v->value, v->mark(), v->path, {"mode"});
    if ((mode = a.get("mode"))) {
      const std::string s = scalar(*mode, "passthrough or inject");
      if (s == "passthrough") {
        c.key_mode = KeyMode::Passthrough;
      } else if (s == "inject") {
        c.key_mode = KeyMode::Inject;
      } else {
        fail(*mode, "must be passthrough or inject, got " + quote(s));
      }
    }
  });
  const size_t errors_before_keys = errors_.size();
  m.with("keys", [&](const Field* v) {
    parseKeys(*v, c.keys);
  });
  const bool keys_ok = errors_.size() == errors_before_keys;
  m.with("limits", [&](const Field* v) {
    parseLimits(*v, c.limits);
  });
  m.with("queue", [&](const Field* v) {
    parseQueue(*v, c.queue);
  });
  m.with("retry", [&](const Field* v) {
    parseRetry(*v, c.retry);
  });
  m.with("tasks", [&](const Field* v) {
    parseTasks(*v, c.tasks);
  });
  m.with("deferred", [&](const Field* v) {
    parseDeferred(*v, c.deferred);
  });
  m.with("store", [&](const Field* v) {
    detail::parseStoreSection(v->key, v->value, v->path, {file_, base_dir_, env_}, c.store,
                              errors_);
  });
  m.with("log", [&](const Field* v) {
    parseLog(*v, c.log);
  });
  m.with("drain_timeout", [&](const Field* v) {
    c.drain_timeout = duration(*v);
  });

  // ---- rules across sections -----------------------------------------------------------------
  // (Each on its own: one broken rule does not hide the next. Keys that failed to parse are not
  // "no keys".)
  if (c.key_mode == KeyMode::Inject && c.keys.empty() && keys_ok && mode) {
    note(mode->mark(), mode->path,
         "inject mode needs at least one entry under keys (e.g. name: prod, key: "
         "${HIAPI_API_KEY}); use passthrough to forward the clients' own keys");
  }
  const std::string how = " (set listen.allow_non_loopback: true to expose it on a network on "
                          "purpose, e.g. a sidecar on a pod network)";
  if (!c.listen.allow_non_loopback) {
    if (classifyAddress(c.listen.address) != AddressKind::Loopback && listen_address) {
      note(listen_address->mark(), listen_address->path,
           "refusing to listen on a non-loopback address " + quote(c.listen.address) + how);
    }
    if (c.admin.enabled && classifyAddress(c.admin.address) != AddressKind::Loopback &&
        admin_address) {
      note(admin_address->mark(), admin_address->path,
           "refusing to serve the admin endpoint on a non-loopback address " +
               quote(c.admin.address) + how);
    }
  }
  if (c.admin.enabled && c.admin.port != 0 && c.admin.port == c.listen.port) {
    const YAML::Mark where = admin_port ? admin_port->mark() : root.Mark();
    note(where, "admin.port", "the admin port must differ from listen.port (" +
                                  std::to_string(c.listen.port) + ")");
  }
  throwErrors();
  return c;
}

}  // namespace

namespace {

// Counts documents without building them. YAML::LoadAll never ends on some malformed input in
// yaml-cpp 0.7 (found by tests/fuzz): documents are counted here with a bound instead.
class DocumentCounter final : public YAML::EventHandler {
public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents == 2) {
      second = mark;
    }
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  int documents = 0;
  YAML::Mark second;
};

}  // namespace

Config parseConfig(const std::string& yaml_text, const std::string& file_name, EnvLookup env) {
  Parser parser(file_name, env);
  std::vector<YAML::Node> docs;
  try {
    std::istringstream in(yaml_text);
    YAML::Parser events(in);
    DocumentCounter counter;
    for (int i = 0; i < 2 && events.HandleNextDocument(counter); ++i) {
    }
    if (counter.documents > 1) {
      parser.fail(counter.second, "", "expected one YAML document, found more");
    }
    docs.push_back(YAML::Load(yaml_text));
  } catch (const YAML::Exception& e) {
    // yaml-cpp's messages name the construct ("illegal map value"), not the text around it,
    // except a bad escape, which quotes one character: possibly of a key, so drop it.
    std::string msg = e.msg;
    if (msg.rfind("unknown escape character", 0) == 0) {
      msg = "unknown escape character in a double-quoted string";
    }
    parser.fail(e.mark, "", "invalid YAML: " + msg);
  }
  return parser.parse(docs.empty() ? YAML::Node() : docs[0]);
}

Config loadConfig(const std::string& path, EnvLookup env) {
  std::string err;
  std::optional<std::string> text = readFile(path, kMaxConfigBytes, err);
  if (!text) {
    throw ConfigError(path, 0, 0, "", "cannot read the config file: " + err);
  }
  return parseConfig(*text, path, env);
}

}  // namespace hiapi::core
