// The machinery of the YAML walk (config_parser.h): value readers, map key checks and error
// keeping. Values of `key` fields never reach a message.

#include "config_parser.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace hiapi::core::config_internal {
namespace {

std::optional<std::string> systemEnv(const std::string& name) {
  const char* v = std::getenv(name.c_str());
  if (v == nullptr) {
    return std::nullopt;
  }
  return std::string(v);
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

std::string suggest(const std::string& name, const std::vector<std::string_view>& allowed) {
  std::string_view best;
  size_t best_d = 3;
  const std::string typed = lower(name);
  for (std::string_view a : allowed) {
    const size_t limit = a.size() >= 5 ? 2 : 1;
    // The distance is at least the difference in length: a name much longer or shorter than a
    // key is no typo of it, and is not worth the table (an unknown 2 KB key would cost a
    // table of its length times each key's).
    const size_t apart = std::max(typed.size(), a.size()) - std::min(typed.size(), a.size());
    if (apart > limit) {
      continue;
    }
    const size_t d = editDistance(typed, a);
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

}  // namespace

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

std::string join(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : path + "." + std::string(key);
}

// ---- maps and errors ----------------------------------------------------------------------------

std::optional<Field> MapRead::get(std::string_view name) const {
  for (const Field& f : fields_) {
    if (f.key.Scalar() == name) {
      return f;
    }
  }
  return std::nullopt;
}

bool MapRead::ok(std::string_view name) const {
  return std::find(failed_.begin(), failed_.end(), name) == failed_.end();
}

Parser::Parser(std::string file, EnvLookup env)
    : file_(std::move(file)), env_(env != nullptr ? env : &systemEnv) {
  base_dir_ = fs::path(file_).parent_path();
}

void Parser::note(const YAML::Mark& m, const std::string& path, const std::string& msg) const {
  attempt([&] { fail(m, path, msg); });
}

void Parser::throwErrors() const {
  if (errors_.empty()) {
    return;
  }
  std::vector<ConfigError> all = errors_;
  std::stable_sort(all.begin(), all.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::make_pair(a.line(), a.column()) < std::make_pair(b.line(), b.column());
  });
  throw ConfigError(std::move(all));
}

void Parser::fail(const YAML::Mark& m, const std::string& path, const std::string& msg) const {
  const bool known = !m.is_null() && m.line >= 0;
  throw ConfigError(file_, known ? m.line + 1 : 0, known ? m.column + 1 : 0, path, msg);
}

MapRead Parser::readKeys(const YAML::Node& node, const YAML::Mark& where, const std::string& path,
                         const std::vector<std::string_view>& allowed) const {
  MapRead m;
  if (node.IsNull()) {
    return m;  // `section:` with everything commented out: all defaults
  }
  if (!node.IsMap()) {
    fail(where, path, std::string("expected a map, got ") + kindOf(node));
  }
  for (const auto& entry : node) {
    // Copies: a yaml-cpp iterator's `->` yields a temporary, so a reference would dangle.
    const YAML::Node k = entry.first;
    if (!k.IsScalar()) {
      note(k.Mark(), path, std::string("expected a plain key, got ") + kindOf(k));
      continue;
    }
    const std::string name = k.Scalar();
    const std::string child = join(path, name);
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) {
      note(k.Mark(), looksLikeApiKey(name) ? path : child,
           "unknown key " + quote(name) + suggest(name, allowed));
      continue;
    }
    const auto first = std::find_if(m.fields_.begin(), m.fields_.end(),
                                    [&](const Field& f) { return f.key.Scalar() == name; });
    if (first != m.fields_.end()) {
      note(k.Mark(), child,
           "duplicate key " + quote(name) + " (first set at line " +
               std::to_string(first->key.Mark().line + 1) + ")");
      continue;
    }
    m.fields_.push_back(Field{child, k, entry.second});
  }
  return m;
}

// ---- values -------------------------------------------------------------------------------------

std::string Parser::scalar(const Field& f, const char* expected) const {
  if (!f.value.IsScalar()) {
    fail(f, std::string("expected ") + expected + ", got " + kindOf(f.value));
  }
  return f.value.Scalar();
}

bool Parser::boolean(const Field& f) const {
  const std::string s = scalar(f, "true or false");
  bool b = false;
  if (!YAML::convert<bool>::decode(f.value, b)) {
    fail(f, "expected true or false, got " + quote(s));
  }
  return b;
}

uint64_t Parser::integer(const Field& f, uint64_t min, uint64_t max) const {
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

double Parser::number(const Field& f) const {
  const std::string s = scalar(f, "a number");
  double v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) {
    fail(f, "expected a number, got " + quote(s));
  }
  return v;
}

Duration Parser::duration(const Field& f) const {
  const std::string s = scalar(f, "a duration like 250ms, 2s, 5m or 1h");
  std::optional<Duration> d = parseDuration(s);
  if (!d) {
    fail(f, "invalid duration " + quote(s) + " (expected e.g. 250ms, 2s, 1.5s, 5m or 1h)");
  }
  return *d;
}

Duration Parser::positiveDuration(const Field& f) const {
  const Duration d = duration(f);
  if (d <= Duration::zero()) {
    fail(f, "must be greater than 0");
  }
  return d;
}

Rate Parser::rate(const Field& f) const {
  const std::string s = scalar(f, "a rate like 60/min or 5/s");
  std::optional<Rate> r = parseRate(s);
  if (!r) {
    fail(f, "invalid rate " + quote(s) +
                " (expected a positive count per s, min or h, e.g. 60/min or 5/s)");
  }
  return *r;
}

uint64_t Parser::size(const Field& f) const {
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

double Parser::burst(const Field& f) const {
  const double b = number(f);
  if (b < 1) {
    fail(f, "must be at least 1 (a burst below one token would never admit a request)");
  }
  return b;
}

double Parser::fraction(const Field& f, bool open_top) const {
  const double v = number(f);
  if (v <= 0 || (open_top ? v >= 1 : v > 1)) {
    fail(f, std::string("must be greater than 0 and ") +
                (open_top ? "less than 1" : "at most 1"));
  }
  return v;
}

std::vector<std::string> Parser::stringList(const Field& f) const {
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

std::string Parser::address(const Field& f) const {
  const std::string a = str(f);
  if (classifyAddress(a) == AddressKind::Invalid) {
    fail(f, "expected an IPv4 or IPv6 address (without brackets) or localhost, got " + quote(a));
  }
  return a;
}

fs::path Parser::resolve(const std::string& p) const {
  fs::path path(p);
  if (path.is_relative() && !base_dir_.empty()) {
    path = base_dir_ / path;
  }
  return path.lexically_normal();
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

}  // namespace hiapi::core::config_internal
