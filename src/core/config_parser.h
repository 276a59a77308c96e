#pragma once
// The YAML walk's machinery, shared by the config*.cc files (not a public header).
//
// Each map of the file is described by one table, FieldTable<Section>: its keys, in the order
// they are read, each with how its value is read into the section. The table is both the list
// of known keys (an unknown one is an error, with a "did you mean") and the parser, so a key
// cannot be accepted without being read. Rules across the fields of one section are checked
// after reading it (see the wrappers in sectionsTable(), config.cc).
//
// Adding a section `foo:`: a FooConfig in config.h, a `const FieldTable<FooConfig>& fooFields()`
// (in config_foo.cc when it is long, declared below), and one line in sectionsTable().
//
// Every error is a ConfigError at the offending node's line and column with its key path; the
// Parser keeps them (attempt()) so that one run reports every error of a file.

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "hiapi/core/config.h"

namespace hiapi::core::config_internal {

namespace fs = std::filesystem;

const char* kindOf(const YAML::Node& n);
bool looksLikeApiKey(const std::string& v);
/// A non-secret value, quoted and cut short for a message (an API key lookalike is not shown).
std::string quote(const std::string& v);
std::string lower(std::string s);
std::string trim(const std::string& s);
/// A key or tier name: 1 to 32 of a-z, 0-9, _ and -.
bool isValidName(const std::string& s);
/// An HTTP header name (RFC 9110 token).
bool isToken(const std::string& s);

enum class AddressKind { Invalid, Loopback, Other };
AddressKind classifyAddress(const std::string& a);

/// Reads at most `limit` bytes. @return nullopt with errno-style text in `err` on failure.
std::optional<std::string> readFile(const fs::path& p, size_t limit, std::string& err);

std::string join(const std::string& path, std::string_view key);

/// One `key: value` of a map, with the path to name it by.
struct Field {
  std::string path;
  YAML::Node key;
  YAML::Node value;

  /// Where an error about the value points: the value itself, or its key when the value is empty
  /// (yaml-cpp marks an empty value at the start of the next line).
  YAML::Mark mark() const { return value.IsNull() ? key.Mark() : value.Mark(); }
};

class Parser;

/// One key of a map and how its value is read into the section @p S. A rule without `read` is
/// a known key the section reads by hand.
template <class S>
struct FieldRule {
  std::string_view key;
  std::function<void(const Parser&, const Field&, S&)> read;
};
template <class S>
using FieldTable = std::vector<FieldRule<S>>;

/// What reading one map found: the fields set (known keys, first of duplicates), and which of
/// them failed to read.
class MapRead {
public:
  std::optional<Field> get(std::string_view name) const;
  /// @return false when @p name is set and reading it raised an error.
  bool ok(std::string_view name) const;

private:
  friend class Parser;
  std::vector<Field> fields_;
  std::vector<std::string> failed_;
};

class Parser {
public:
  Parser(std::string file, EnvLookup env);

  /// The whole file. @throws ConfigError with every error found.
  Config parse(const YAML::Node& root);

  // ---- errors --------------------------------------------------------------------------------
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
  void note(const YAML::Mark& m, const std::string& path, const std::string& msg) const;
  /// @throws ConfigError with every error kept, in file order, when there is any.
  void throwErrors() const;
  [[noreturn]] void fail(const YAML::Mark& m, const std::string& path,
                         const std::string& msg) const;
  [[noreturn]] void fail(const Field& f, const std::string& msg) const {
    fail(f.mark(), f.path, msg);
  }

  // ---- maps ----------------------------------------------------------------------------------
  /// Checks the keys of the map @p node (at @p where, named @p path) against @p table and reads
  /// each set field by its rule, in table order; an error in one field is kept and the others
  /// are still read. A null node is an empty map. @throws ConfigError when it is not a map.
  template <class S>
  MapRead readMap(const YAML::Node& node, const YAML::Mark& where, const std::string& path,
                  S& out, const FieldTable<S>& table) const {
    std::vector<std::string_view> allowed;
    allowed.reserve(table.size());
    for (const FieldRule<S>& rule : table) {
      allowed.push_back(rule.key);
    }
    MapRead m = readKeys(node, where, path, allowed);
    for (const FieldRule<S>& rule : table) {
      if (rule.read) {
        with(m, rule.key, [&](const Field& v) { rule.read(*this, v, out); });
      }
    }
    return m;
  }
  /// readMap() of a field's value.
  template <class S>
  MapRead readSection(const Field& f, S& out, const FieldTable<S>& table) const {
    return readMap(f.value, f.mark(), f.path, out, table);
  }

  // ---- values (each @throws ConfigError naming the field) ----------------------------------
  std::string scalar(const Field& f, const char* expected) const;
  std::string str(const Field& f) const { return scalar(f, "a string"); }
  /// A string, or empty for an empty value.
  std::string optionalStr(const Field& f) const { return f.value.IsNull() ? "" : str(f); }
  bool boolean(const Field& f) const;
  uint64_t integer(const Field& f, uint64_t min, uint64_t max) const;
  double number(const Field& f) const;
  Duration duration(const Field& f) const;
  Duration positiveDuration(const Field& f) const;
  Rate rate(const Field& f) const;
  uint64_t size(const Field& f) const;
  double burst(const Field& f) const;
  double fraction(const Field& f, bool open_top) const;
  std::vector<std::string> stringList(const Field& f) const;
  std::string address(const Field& f) const;
  /// A path, relative ones against the config file's directory.
  fs::path resolve(const std::string& p) const;
  /// A key's value with ${ENV_VAR}s expanded; never quoted in a message.
  Secret expandKey(const Field& f) const;

  // ---- sections read by hand -----------------------------------------------------------------
  void parseUrl(const Field& f, UpstreamConfig& out) const;
  /// `store:` (config_store.cc), its errors kept with the others.
  void parseStore(const Field& f, StoreConfig& out) const;
  void parseKeys(const Field& f, std::vector<KeyConfig>& out) const;
  void parseTiers(const Field& f, std::vector<TierConfig>& out) const;

private:
  MapRead readKeys(const YAML::Node& node, const YAML::Mark& where, const std::string& path,
                   const std::vector<std::string_view>& allowed) const;
  /// Runs @p f with the field @p name of @p m when it is set, keeping its error and marking it
  /// failed. @return false when @p f threw.
  template <typename F>
  bool with(MapRead& m, std::string_view name, F&& f) const {
    const std::optional<Field> v = m.get(name);
    if (!v) {
      return true;
    }
    const size_t before = errors_.size();
    const bool ran = attempt([&] { f(*v); });
    if (errors_.size() != before) {
      m.failed_.emplace_back(name);
    }
    return ran;
  }
  void parseKey(const YAML::Node& item, const std::string& path,
                std::vector<std::pair<std::string, int>>& seen, KeyConfig& k) const;
  void readKeyFile(const Field& key_file, KeyConfig& k) const;
  void parseTier(const YAML::Node& item, const std::string& path,
                 std::vector<std::pair<std::string, int>>& seen, TierConfig& t) const;
  /// The rules across sections, given what the top level read.
  void checkAcrossSections(const Config& c, const MapRead& top, const YAML::Node& root) const;

  std::string file_;
  EnvLookup env_;
  mutable std::vector<ConfigError> errors_;  ///< every error found so far (attempt())
  fs::path base_dir_;
};

// ---- binding a key to a member ---------------------------------------------------------------

/// @p key is read by the Parser's @p read into @p member.
template <class S, class T, class V>
FieldRule<S> bindValue(std::string_view key, T S::*member, V (Parser::*read)(const Field&) const) {
  return {key, [member, read](const Parser& p, const Field& f, S& s) {
            s.*member = static_cast<T>((p.*read)(f));
          }};
}
/// @p key is an integer in [@p min, @p max] read into @p member.
template <class S, class T>
FieldRule<S> bindInteger(std::string_view key, T S::*member, uint64_t min, uint64_t max) {
  return {key, [member, min, max](const Parser& p, const Field& f, S& s) {
            s.*member = static_cast<T>(p.integer(f, min, max));
          }};
}
/// @p key is a fraction (0, 1) (@p open_top) or (0, 1] read into @p member.
template <class S>
FieldRule<S> bindFraction(std::string_view key, double S::*member, bool open_top) {
  return {key, [member, open_top](const Parser& p, const Field& f, S& s) {
            s.*member = p.fraction(f, open_top);
          }};
}
/// @p key is one of the words of @p choices (@p expected lists them for messages), read into
/// @p member as the word's value.
template <class S, class E>
FieldRule<S> bindChoice(std::string_view key, E S::*member,
                        std::vector<std::pair<std::string_view, E>> choices,
                        const char* expected) {
  return {key, [member, choices, expected](const Parser& p, const Field& f, S& s) {
            const std::string v = p.scalar(f, expected);
            for (const auto& [word, value] : choices) {
              if (v == word) {
                s.*member = value;
                return;
              }
            }
            p.fail(f, std::string("must be ") + expected + ", got " + quote(v));
          }};
}

/// Whether a message about a value too large quotes the value.
enum class ShowValue { No, Yes };

/// @p key is a duration read by @p read into @p member, at most @p cap; @p message explains why.
template <class S>
FieldRule<S> bindCappedDuration(std::string_view key, Duration S::*member,
                                 Duration (Parser::*read)(const Field&) const, Duration cap,
                                 std::string message, ShowValue show = ShowValue::No) {
  return {key, [member, read, cap, message, show](const Parser& p, const Field& f, S& s) {
            s.*member = (p.*read)(f);
            if (s.*member > cap) {
              p.fail(f, show == ShowValue::Yes
                            ? message + ", got " + quote(p.scalar(f, "a duration"))
                            : message);
            }
          }};
}

// ---- the sections' tables --------------------------------------------------------------------
const FieldTable<ListenConfig>& listenFields();
const FieldTable<AdminConfig>& adminFields();
const FieldTable<UpstreamConfig>& upstreamFields();
const FieldTable<LimitsConfig>& limitsFields();
const FieldTable<TierConfig>& tierFields();
const FieldTable<KeyConfig>& keyFields();
const FieldTable<QueueConfig>& queueFields();
const FieldTable<RetryConfig>& retryFields();
const FieldTable<TasksConfig>& tasksFields();
const FieldTable<DeferredConfig>& deferredFields();
const FieldTable<LogConfig>& logFields();

}  // namespace hiapi::core::config_internal
