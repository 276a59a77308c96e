// The `store:` section (see include/hiapi/core/store_config.h). Errors name file, line, column and
// key path like the rest of the configuration; a password never appears in one.

#include "config_store.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

namespace hiapi::core::detail {
namespace {

namespace fs = std::filesystem;

constexpr size_t kMaxPasswordFileBytes = 4096;
constexpr std::streamsize kMaxCaFileBytes = 1 << 20;

struct Item {
  std::string path;
  YAML::Node key;
  YAML::Node value;
  YAML::Mark mark() const { return value.IsNull() ? key.Mark() : value.Mark(); }
};

class StoreParser {
public:
  StoreParser(const StoreSectionContext& ctx, std::vector<ConfigError>& errors)
      : ctx_(ctx), errors_(errors) {}

  void parse(const Item& section, StoreConfig& out);

private:
  void error(const YAML::Mark& m, const std::string& path, const std::string& msg) {
    const bool known = !m.is_null() && m.line >= 0;
    errors_.emplace_back(ctx_.file, known ? m.line + 1 : 0, known ? m.column + 1 : 0, path, msg);
  }
  void error(const Item& f, const std::string& msg) { error(f.mark(), f.path, msg); }

  bool scalar(const Item& f, std::string& out) {
    if (!f.value.IsScalar()) {
      error(f, "expected a string, got " + std::string(f.value.IsNull()       ? "nothing"
                                                       : f.value.IsSequence() ? "a list"
                                                                              : "a map"));
      return false;
    }
    out = f.value.Scalar();
    return true;
  }
  bool duration(const Item& f, Duration& out, Duration min, Duration max);
  void url(const Item& f, StoreConfig& out);
  void password(const Item& f, StoreConfig& out);
  void passwordFile(const Item& f, StoreConfig& out);
  void keySecretFile(const Item& f, StoreConfig& out);
  void caFile(const Item& f, StoreConfig& out);
  /// Reads the field @p name (already checked to be a store key).
  void field(const std::string& name, const Item& f, StoreConfig& out);
  fs::path resolve(const std::string& p) const {
    fs::path path(p);
    if (path.is_relative() && !ctx_.base_dir.empty()) {
      path = ctx_.base_dir / path;
    }
    return path.lexically_normal();
  }

  const StoreSectionContext& ctx_;
  std::vector<ConfigError>& errors_;
};

bool StoreParser::duration(const Item& f, Duration& out, Duration min, Duration max) {
  std::string s;
  if (!scalar(f, s)) {
    return false;
  }
  const std::optional<Duration> d = parseDuration(s);
  if (!d) {
    error(f, "invalid duration '" + s + "' (expected e.g. 250ms, 2s or 1m)");
    return false;
  }
  if (*d < min || *d > max) {
    error(f, "must be between " + std::to_string(min.count() / 1'000'000) + "ms and " +
                 std::to_string(max.count() / 1'000'000) + "ms, got '" + s + "'");
    return false;
  }
  out = *d;
  return true;
}

void StoreParser::url(const Item& f, StoreConfig& out) {
  std::string u;
  if (!scalar(f, u)) {
    return;
  }
  auto bad = [&](const std::string& why) { error(f, "invalid url '" + u + "': " + why); };
  const bool tls = u.rfind("rediss://", 0) == 0;
  if (!tls && u.rfind("redis://", 0) != 0) {
    return bad("expected redis://host[:port][/db] or rediss:// (TLS)");
  }
  std::string rest = u.substr(tls ? 9 : 8);
  if (rest.find('@') != std::string::npos) {
    // A password in the URL would be printed wherever the URL is.
    return bad("must not contain a user or password (use store.password or password_file)");
  }
  std::string db_text;
  if (const size_t slash = rest.find('/'); slash != std::string::npos) {
    db_text = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
  }
  std::string host = rest;
  std::string port_text;
  if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
    host = rest.substr(0, colon);
    port_text = rest.substr(colon + 1);
    if (port_text.empty()) {
      return bad("empty port");
    }
  }
  const bool host_ok = !host.empty() && std::all_of(host.begin(), host.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
  });
  if (!host_ok || host.front() == '.' || host.front() == '-') {
    return bad("invalid host (a name or an IPv4 address)");
  }
  unsigned port = 6379;
  if (!port_text.empty()) {
    auto [p, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || p != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
      return bad("the port must be between 1 and 65535");
    }
  }
  unsigned db = 0;
  if (!db_text.empty()) {
    auto [p, ec] = std::from_chars(db_text.data(), db_text.data() + db_text.size(), db);
    if (ec != std::errc() || p != db_text.data() + db_text.size() || db > 15) {
      return bad("the database must be a number from 0 to 15");
    }
  }
  out.url = u;
  out.host = host;
  out.port = static_cast<uint16_t>(port);
  out.db = db;
}

void StoreParser::password(const Item& f, StoreConfig& out) {
  // Only ${VAR}: a password written into the config file would be read by everyone who can read
  // the file. Never quote the value in a message.
  std::string raw;
  if (!scalar(f, raw)) {
    return;
  }
  if (raw.size() < 4 || raw.rfind("${", 0) != 0 || raw.back() != '}') {
    return error(f, "write the password as ${ENV_VAR}, or use password_file");
  }
  const std::string name = raw.substr(2, raw.size() - 3);
  const bool ok = !name.empty() && !std::isdigit(static_cast<unsigned char>(name[0])) &&
                  std::all_of(name.begin(), name.end(), [](char c) {
                    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
                  });
  if (!ok) {
    return error(f, "invalid environment variable name in ${...} (letters, digits and _ only)");
  }
  const std::optional<std::string> v = ctx_.env(name);
  if (!v) {
    return error(f, "environment variable " + name + " is not set");
  }
  if (v->empty()) {
    return error(f, "environment variable " + name + " is empty");
  }
  out.password = StorePassword(*v);
  out.password_env = name;
}

void StoreParser::passwordFile(const Item& f, StoreConfig& out) {
  std::string p;
  if (!scalar(f, p)) {
    return;
  }
  const fs::path path = resolve(p);
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return error(f, "cannot read the password file '" + path.string() + "'");
  }
  std::string text(kMaxPasswordFileBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxPasswordFileBytes) {
    return error(f, "the password file '" + path.string() + "' is larger than 4 KiB");
  }
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
    text.pop_back();
  }
  if (text.empty()) {
    return error(f, "the password file '" + path.string() + "' is empty");
  }
  out.password = StorePassword(std::move(text));
  out.password_file = path.string();
}

void StoreParser::keySecretFile(const Item& f, StoreConfig& out) {
  std::string p;
  if (!scalar(f, p)) {
    return;
  }
  const fs::path path = resolve(p);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size != 32) {
    // Each host must use the same secret, so the proxy never makes one up here.
    return error(f, "'" + path.string() + "' must be a file of 32 random bytes, the same on "
                    "every host (e.g. head -c 32 /dev/urandom > " + path.filename().string() + ")");
  }
  out.key_secret_file = path.string();
}

void StoreParser::caFile(const Item& f, StoreConfig& out) {
  std::string p;
  if (!scalar(f, p)) {
    return;
  }
  if (p.empty()) {
    out.ca_file.clear();  // the system trust store
    return;
  }
  const fs::path path = resolve(p);
  const std::ifstream in(path, std::ios::binary);
  struct stat st {};
  if (!in.is_open() || ::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
    return error(f, "cannot read CA file '" + path.string() + "'");
  }
  if (st.st_size == 0 || st.st_size > kMaxCaFileBytes) {
    return error(f, "CA file '" + path.string() + "' must hold PEM certificates (at most 1 MiB)");
  }
  out.ca_file = path.string();
}

void StoreParser::field(const std::string& name, const Item& f, StoreConfig& out) {
  if (name == "kind") {
    std::string s;
    if (scalar(f, s)) {
      if (s == "local") {
        out.kind = StoreKind::Local;
      } else if (s == "redis") {
        out.kind = StoreKind::Redis;
      } else {
        error(f, "must be local or redis, got '" + s + "'");
      }
    }
  } else if (name == "url") {
    url(f, out);
  } else if (name == "password") {
    password(f, out);
  } else if (name == "password_file") {
    passwordFile(f, out);
  } else if (name == "key_prefix") {
    std::string s;
    if (scalar(f, s)) {
      if (s.empty() || s.size() > 64 ||
          s.find_first_of(" \t\r\n{}") != std::string::npos) {
        error(f, "must be 1 to 64 characters without spaces or braces");
      } else {
        out.key_prefix = s;
      }
    }
  } else if (name == "key_secret_file") {
    keySecretFile(f, out);
  } else if (name == "connect_timeout") {
    duration(f, out.connect_timeout, std::chrono::milliseconds(10), std::chrono::seconds(60));
  } else if (name == "command_timeout") {
    duration(f, out.command_timeout, std::chrono::milliseconds(5), std::chrono::seconds(10));
  } else if (name == "heartbeat_interval") {
    duration(f, out.heartbeat_interval, std::chrono::milliseconds(100), std::chrono::seconds(60));
  } else if (name == "reserve_window") {
    duration(f, out.reserve_window, Duration::zero(), std::chrono::seconds(5));
  } else if (name == "tls") {
    bool on = false;
    if (!f.value.IsScalar() || !YAML::convert<bool>::decode(f.value, on)) {
      error(f, "expected true or false");
    } else {
      out.tls = on;  // rediss:// turns it on too (see parse())
    }
  } else if (name == "ca_file") {
    caFile(f, out);
  }
}

void StoreParser::parse(const Item& section, StoreConfig& out) {
  if (section.value.IsNull()) {
    return;
  }
  if (!section.value.IsMap()) {
    return error(section, "expected a map");
  }
  static constexpr std::string_view kAllowed[] = {
      "kind", "url", "password", "password_file", "key_prefix", "key_secret_file",
      "connect_timeout", "command_timeout", "heartbeat_interval", "reserve_window", "tls",
      "ca_file"};
  std::vector<Item> items;
  for (const auto& entry : section.value) {
    const YAML::Node k = entry.first;
    const std::string name = k.IsScalar() ? k.Scalar() : "";
    const std::string path = section.path + "." + name;
    if (std::find(std::begin(kAllowed), std::end(kAllowed), name) == std::end(kAllowed)) {
      error(k.Mark(), path, "unknown key '" + name + "'");
      continue;
    }
    items.push_back(Item{path, k, entry.second});
  }
  const Item* kind = nullptr;
  const Item* pw = nullptr;
  const Item* pw_file = nullptr;
  const Item* tls = nullptr;
  for (const Item& f : items) {
    const std::string name = f.key.Scalar();
    tls = name == "tls" ? &f : tls;
    kind = name == "kind" ? &f : kind;
    pw = name == "password" ? &f : pw;
    pw_file = name == "password_file" ? &f : pw_file;
    field(name, f, out);
  }
  if (out.url.rfind("rediss://", 0) == 0) {
    if (tls != nullptr && !out.tls) {
      error(*tls, "false contradicts the rediss:// url");
    }
    out.tls = true;
  }
  if (pw != nullptr && pw_file != nullptr) {
    error(*pw_file, "give either password or password_file, not both");
  }
  if (out.kind == StoreKind::Redis && out.key_secret_file.empty() && kind != nullptr &&
      std::none_of(items.begin(), items.end(),
                   [](const Item& f) { return f.key.Scalar() == "key_secret_file"; })) {
    error(*kind, "a redis store needs key_secret_file: Redis key names are derived from the API "
                 "keys under that secret, which every host must share");
  }
}

}  // namespace

void parseStoreSection(const YAML::Node& key, const YAML::Node& value, const std::string& path,
                       const StoreSectionContext& ctx, StoreConfig& out,
                       std::vector<ConfigError>& errors) {
  StoreParser(ctx, errors).parse(Item{path, key, value}, out);
}

}  // namespace hiapi::core::detail
