// The sections that are lists of named maps: keys and limits.tiers. Each entry is read by its
// table; the name (required, unique) and the rules across an entry's fields are checked here.

#include <algorithm>

#include "config_parser.h"

namespace hiapi::core::config_internal {
namespace {

constexpr size_t kMaxKeyFileBytes = 64 * 1024;

/// Names already seen in one list, with the line each was first set at.
using SeenNames = std::vector<std::pair<std::string, int>>;

/// Fails when @p name was seen before; else remembers it.
void checkUnique(const Parser& p, const Field& name, const char* what, SeenNames& seen) {
  const std::string& n = name.value.Scalar();
  for (const auto& [other, line] : seen) {
    if (other == n) {
      p.fail(name, std::string("duplicate ") + what + " name " + quote(n) + " (first at line " +
                       std::to_string(line) + ")");
    }
  }
  seen.emplace_back(n, name.mark().line + 1);
}

/// Reads a list entry, a map with a required and unique name, by @p table.
/// @return its fields; nullopt when its name failed to read (that error is kept).
template <class S>
std::optional<MapRead> readNamedEntry(const Parser& p, const YAML::Node& item,
                                      const std::string& path, S& out,
                                      const FieldTable<S>& table, const char* what,
                                      SeenNames& seen) {
  MapRead m = p.readMap(item, item.Mark(), path, out, table);
  const std::optional<Field> name = m.get("name");
  if (!name) {
    p.fail(item.Mark(), path, "missing name");
  }
  if (!m.ok("name")) {
    return std::nullopt;
  }
  checkUnique(p, *name, what, seen);
  return m;
}

/// Reads each entry of the list @p f by @p entry(item, path, seen, out); one bad entry is
/// reported, and the entries after it are still checked.
template <class T, class F>
void readList(const Parser& p, const Field& f, std::vector<T>& out, F&& entry) {
  SeenNames seen;
  for (size_t i = 0; i < f.value.size(); ++i) {
    p.attempt([&] {
      T t;
      entry(f.value[i], f.path + "[" + std::to_string(i) + "]", seen, t);
      out.push_back(std::move(t));
    });
  }
}

}  // namespace

const FieldTable<KeyConfig>& keyFields() {
  using S = KeyConfig;
  static const FieldTable<S> table = {
      {"name",
       [](const Parser& p, const Field& f, S& s) {
         s.name = p.str(f);
         if (looksLikeApiKey(s.name)) {
           p.fail(f, "this looks like an API key: names are labels (e.g. prod) and appear in logs "
                     "and metrics; put the key under key or key_file");
         }
         if (!isValidName(s.name)) {
           p.fail(f, "invalid name " + quote(s.name) + " (1 to 32 of a-z, 0-9, _ and -)");
         }
       }},
      {"key", nullptr},  // read after the name: see parseKey
      {"key_file", nullptr},
      bindValue("rate", &S::rate, &Parser::rate),
      bindValue("burst", &S::burst, &Parser::burst),
  };
  return table;
}

void Parser::readKeyFile(const Field& key_file, KeyConfig& k) const {
  str(key_file);  // a string, or a type error naming it
  // ${VAR} expands here too, e.g. ${CREDENTIALS_DIRECTORY}/hiapi-key under systemd.
  const std::string p = expandKey(key_file).reveal();
  const fs::path resolved = resolve(p);
  std::string err;
  std::optional<std::string> content = readFile(resolved, kMaxKeyFileBytes, err);
  if (!content) {
    fail(key_file, "cannot read key file '" + resolved.string() + "': " + err);
  }
  std::string v = trim(*content);
  if (v.empty()) {
    fail(key_file, "key file '" + resolved.string() + "' is empty");
  }
  k.key = Secret(std::move(v));
  k.key_file = resolved.string();
}

void Parser::parseKey(const YAML::Node& item, const std::string& path, SeenNames& seen,
                      KeyConfig& k) const {
  if (!item.IsMap()) {
    // Not kindOf's "a string" detail either way: the item may be a bare key.
    fail(item.Mark(), path, "expected a map with name and key (or key_file)");
  }
  const std::optional<MapRead> m = readNamedEntry(*this, item, path, k, keyFields(), "key", seen);
  if (!m) {
    return;
  }
  const std::optional<Field> key = m->get("key");
  const std::optional<Field> key_file = m->get("key_file");
  if (key && key_file) {
    fail(key_file->key.Mark(), key_file->path, "give either key or key_file, not both");
  }
  if (!key && !key_file) {
    fail(item.Mark(), path, "missing key: give key (e.g. ${HIAPI_API_KEY}) or key_file");
  }
  if (key) {
    k.key = expandKey(*key);
  } else {
    readKeyFile(*key_file, k);
  }
  const std::string& secret = k.key.reveal();
  if (!std::all_of(secret.begin(), secret.end(), [](char c) { return c > 0x20 && c < 0x7f; })) {
    fail(key ? *key : *key_file, "the key contains spaces, line breaks or non-ASCII characters");
  }
}

void Parser::parseKeys(const Field& f, std::vector<KeyConfig>& out) const {
  out.clear();
  if (f.value.IsNull()) {
    return;
  }
  if (!f.value.IsSequence()) {
    fail(f, std::string("expected a list of keys, got ") + kindOf(f.value));
  }
  readList(*this, f, out,
           [this](const YAML::Node& item, const std::string& path, SeenNames& seen,
                  KeyConfig& k) { parseKey(item, path, seen, k); });
}

const FieldTable<TierConfig>& tierFields() {
  using S = TierConfig;
  static const FieldTable<S> table = {
      {"name",
       [](const Parser& p, const Field& f, S& s) {
         s.name = p.str(f);
         if (!isValidName(s.name)) {
           p.fail(f, "invalid name " + quote(s.name) + " (1 to 32 of a-z, 0-9, _ and -)");
         }
         // A tier named heavy defers unless told otherwise, as the built-in one does.
         s.defer = s.name == "heavy";
       }},
      bindValue("models", &S::models, &Parser::stringList),
      bindValue("routes", &S::routes, &Parser::stringList),
      bindInteger("max_running", &S::max_running, 1, 100000),
      bindValue("lease", &S::lease, &Parser::positiveDuration),
      bindValue("min_poll_interval", &S::min_poll_interval, &Parser::duration),
      bindValue("expected_duration", &S::expected_duration, &Parser::positiveDuration),
      bindValue("defer", &S::defer, &Parser::boolean),
      bindCappedDuration("defer_after", &S::defer_after, &Parser::duration,
                         std::chrono::seconds(30),
                         "at most 30s (the create is answered only after it, within the "
                         "client's 60 s timeout)",
                         ShowValue::Yes),
  };
  return table;
}

void Parser::parseTier(const YAML::Node& item, const std::string& path, SeenNames& seen,
                       TierConfig& t) const {
  if (!item.IsMap()) {
    fail(item.Mark(), path, std::string("expected a map, got ") + kindOf(item));
  }
  const std::optional<MapRead> m =
      readNamedEntry(*this, item, path, t, tierFields(), "tier", seen);
  if (m && m->ok("models") && m->ok("routes") && t.models.empty() && t.routes.empty()) {
    fail(item.Mark(), path, "tier " + quote(t.name) + " has neither models nor routes");
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
  readList(*this, f, out,
           [this](const YAML::Node& item, const std::string& path, SeenNames& seen,
                  TierConfig& t) { parseTier(item, path, seen, t); });
}

}  // namespace hiapi::core::config_internal
