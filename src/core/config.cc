// Walks the YAML tree into a Config, strictly: every map is checked for unknown and duplicate
// keys, every value for its type and range, and every error is a ConfigError at the offending
// node's line and column with its key path. The sections and their keys are tables
// (config_parser.h); this file lists the sections and checks the rules across them.

#include <sstream>

#include <yaml-cpp/eventhandler.h>

#include "config_parser.h"
#include "config_store.h"

namespace hiapi::core {
namespace config_internal {
namespace {

constexpr size_t kMaxConfigBytes = 16 * 1024 * 1024;

/// The section @p key, read by @p table into @p member.
template <class S>
FieldRule<Config> section(std::string_view key, S Config::*member,
                          const FieldTable<S>& (*table)()) {
  return {key, [member, table](const Parser& p, const Field& f, Config& c) {
            p.readSection(f, c.*member, table());
          }};
}

const FieldTable<Config>& authFields() {
  static const FieldTable<Config> table = {
      bindChoice("mode", &Config::key_mode,
                 {{"passthrough", KeyMode::Passthrough}, {"inject", KeyMode::Inject}},
                 "passthrough or inject"),
  };
  return table;
}

/// The top level: one entry per section.
const FieldTable<Config>& sectionsTable() {
  static const FieldTable<Config> table = {
      section("listen", &Config::listen, listenFields),
      section("admin", &Config::admin, adminFields),
      {"upstream",
       [](const Parser& p, const Field& f, Config& c) {
         const MapRead m = p.readSection(f, c.upstream, upstreamFields());
         if (c.upstream.scheme == "http" && !c.upstream.ca_file.empty()) {
           p.fail(*m.get("ca_file"), "a CA file makes no sense with a plain http:// upstream");
         }
       }},
      {"auth",
       [](const Parser& p, const Field& f, Config& c) { p.readSection(f, c, authFields()); }},
      {"keys", [](const Parser& p, const Field& f, Config& c) { p.parseKeys(f, c.keys); }},
      section("limits", &Config::limits, limitsFields),
      section("queue", &Config::queue, queueFields),
      {"retry",
       [](const Parser& p, const Field& f, Config& c) {
         const MapRead m = p.readSection(f, c.retry, retryFields());
         if (m.ok("base_delay") && m.ok("max_delay") && c.retry.base_delay > c.retry.max_delay) {
           const std::optional<Field> base = m.get("base_delay");
           p.fail(base ? *base : *m.get("max_delay"), "base_delay must not exceed max_delay");
         }
       }},
      section("tasks", &Config::tasks, tasksFields),
      section("deferred", &Config::deferred, deferredFields),
      {"store", [](const Parser& p, const Field& f, Config& c) { p.parseStore(f, c.store); }},
      section("log", &Config::log, logFields),
      bindValue("drain_timeout", &Config::drain_timeout, &Parser::duration),
  };
  return table;
}

/// The field @p name of the map @p parent (the first when repeated), if both are there.
std::optional<Field> childOf(const std::optional<Field>& parent, std::string_view name) {
  if (!parent || !parent->value.IsMap()) {
    return std::nullopt;
  }
  for (const auto& entry : parent->value) {
    const YAML::Node k = entry.first;
    if (k.IsScalar() && k.Scalar() == name) {
      return Field{join(parent->path, name), k, entry.second};
    }
  }
  return std::nullopt;
}

}  // namespace

void Parser::parseStore(const Field& f, StoreConfig& out) const {
  detail::parseStoreSection(f.key, f.value, f.path, {file_, base_dir_, env_}, out, errors_);
}

Config Parser::parse(const YAML::Node& root) {
  Config c;
  c.source_file = file_;
  if (!root.IsNull() && !root.IsMap()) {
    fail(root.Mark(), "", std::string("expected a map at the top level, got ") + kindOf(root));
  }
  const MapRead top = readMap(root, root.Mark(), "", c, sectionsTable());
  checkAcrossSections(c, top, root);
  throwErrors();
  return c;
}

void Parser::checkAcrossSections(const Config& c, const MapRead& top,
                                 const YAML::Node& root) const {
  // Each on its own: one broken rule does not hide the next. Keys that failed to parse are not
  // "no keys".
  const std::optional<Field> mode = childOf(top.get("auth"), "mode");
  if (c.key_mode == KeyMode::Inject && c.keys.empty() && top.ok("keys") && mode) {
    note(mode->mark(), mode->path,
         "inject mode needs at least one entry under keys (e.g. name: prod, key: "
         "${HIAPI_API_KEY}); use passthrough to forward the clients' own keys");
  }
  const std::string how = " (set listen.allow_non_loopback: true to expose it on a network on "
                          "purpose, e.g. a sidecar on a pod network)";
  const std::optional<Field> listen_address = childOf(top.get("listen"), "address");
  const std::optional<Field> admin_address = childOf(top.get("admin"), "address");
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
    const std::optional<Field> admin_port = childOf(top.get("admin"), "port");
    const YAML::Mark where = admin_port ? admin_port->mark() : root.Mark();
    note(where, "admin.port", "the admin port must differ from listen.port (" +
                                  std::to_string(c.listen.port) + ")");
  }
}

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
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
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
}  // namespace config_internal

using config_internal::DocumentCounter;
using config_internal::Parser;

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
  std::optional<std::string> text =
      config_internal::readFile(path, config_internal::kMaxConfigBytes, err);
  if (!text) {
    throw ConfigError(path, 0, 0, "", "cannot read the config file: " + err);
  }
  return parseConfig(*text, path, env);
}

}  // namespace hiapi::core
