#include "hiapi/core/config.h"
#include "config_test_support.h"

#include <gtest/gtest.h>

#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

namespace hiapi::core {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// ---- helpers ---------------------------------------------------------------------------------

using config_testing::fakeEnv;
using config_testing::testEnv;

Config parse(const std::string& yaml, const std::string& file = "test.yaml") {
  return parseConfig(yaml, file, &testEnv);
}

ConfigError parseError(const std::string& yaml, const std::string& file = "test.yaml") {
  return config_testing::parseError(yaml, file);
}

/// Asserts the exact "test.yaml:line:col: path: " prefix and a part of the message.
void expectError(const std::string& yaml, int line, int col, const std::string& path,
                 const std::string& part) {
  SCOPED_TRACE(yaml);
  const ConfigError e = parseError(yaml);
  const std::string prefix = "test.yaml:" + std::to_string(line) + ":" + std::to_string(col) +
                             ": " + (path.empty() ? "" : path + ": ");
  EXPECT_EQ(std::string(e.what()).substr(0, prefix.size()), prefix) << e.what();
  EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  EXPECT_EQ(e.line(), line);
  EXPECT_EQ(e.column(), col);
  EXPECT_EQ(e.keyPath(), path);
}

std::string lower(std::string s) {
  for (char& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string sourceDir() {
  const std::string here = __FILE__;
  const std::string suffix = "tests/unit/config_test.cc";
  return here.substr(0, here.size() - suffix.size());
}

class TempDir {
public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "hiapi-config-test-XXXXXX").string();
    if (mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
    }
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  fs::path write(const std::string& name, const std::string& content) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << content;
    return p;
  }
  const fs::path& path() const { return path_; }

private:
  fs::path path_;
};

class ConfigTest : public ::testing::Test {
protected:
  void SetUp() override { fakeEnv().clear(); }
  void TearDown() override { fakeEnv().clear(); }
};

// ---- defaults and the shipped file -----------------------------------------------------------

void expectDefaults(const Config& c) {
  const Config d;
  EXPECT_EQ(c.listen.address, "127.0.0.1");
  EXPECT_EQ(c.listen.port, 8787);
  EXPECT_FALSE(c.listen.allow_non_loopback);
  EXPECT_EQ(c.listen.max_body_bytes, 10u * 1024 * 1024);
  EXPECT_EQ(c.listen.max_header_bytes, 64u * 1024);
  EXPECT_EQ(c.listen.client_timeout, 65s);
  EXPECT_TRUE(c.admin.enabled);
  EXPECT_EQ(c.admin.address, "127.0.0.1");
  EXPECT_EQ(c.admin.port, 9787);
  EXPECT_EQ(c.upstream.url, "https://api.hiapi.ai");
  EXPECT_EQ(c.upstream.scheme, "https");
  EXPECT_EQ(c.upstream.host, "api.hiapi.ai");
  EXPECT_EQ(c.upstream.port, 443);
  EXPECT_EQ(c.upstream.authority, "api.hiapi.ai");
  EXPECT_EQ(c.upstream.ca_file, "");
  EXPECT_EQ(c.upstream.tls_min_version, TlsMinVersion::Tls12);
  EXPECT_EQ(c.upstream.connect_timeout, 5s);
  EXPECT_EQ(c.upstream.response_timeout, 30s);
  EXPECT_EQ(c.upstream.pool_size, 32u);
  EXPECT_EQ(c.upstream.idle_timeout, 60s);
  EXPECT_EQ(c.key_mode, KeyMode::Passthrough);
  EXPECT_TRUE(c.keys.empty());
  EXPECT_DOUBLE_EQ(c.limits.rate.per_second, 1.0);
  EXPECT_DOUBLE_EQ(c.limits.burst, 5);
  EXPECT_DOUBLE_EQ(c.limits.decrease_factor, 0.5);
  EXPECT_DOUBLE_EQ(c.limits.min_rate_fraction, 0.1);
  EXPECT_EQ(c.limits.recovery_time, 30s);
  EXPECT_EQ(c.limits.max_cooldown, 60s);
  EXPECT_EQ(c.limits.repeat_window, 30s);
  EXPECT_EQ(c.limits.phase_margin, 10ms);
  EXPECT_EQ(c.limits.pace_without_counters, UncountedPacing::Bucket);
  ASSERT_EQ(c.limits.tiers.size(), 2u);
  const std::vector<TierConfig> tiers = defaultTierConfigs();
  for (size_t i = 0; i < tiers.size(); ++i) {
    EXPECT_EQ(c.limits.tiers[i].name, tiers[i].name);
    EXPECT_EQ(c.limits.tiers[i].models, tiers[i].models);
    EXPECT_EQ(c.limits.tiers[i].routes, tiers[i].routes);
    EXPECT_EQ(c.limits.tiers[i].max_running, tiers[i].max_running);
    EXPECT_EQ(c.limits.tiers[i].lease, tiers[i].lease);
    EXPECT_EQ(c.limits.tiers[i].min_poll_interval, tiers[i].min_poll_interval);
  }
  EXPECT_EQ(c.queue.max_size, 10000u);
  EXPECT_EQ(c.queue.max_per_client, 0u);
  EXPECT_EQ(c.queue.deadline, 45s);
  EXPECT_EQ(c.queue.create_gather, 10ms);
  EXPECT_EQ(c.queue.client_header, "X-HiAPI-Client");
  EXPECT_EQ(c.queue.deadline_header, "X-HiAPI-Deadline");
  EXPECT_EQ(c.retry.max_attempts, 4u);
  EXPECT_EQ(c.retry.base_delay, 1s);
  EXPECT_EQ(c.retry.max_delay, 30s);
  EXPECT_DOUBLE_EQ(c.retry.budget_ratio, 0.2);
  EXPECT_EQ(c.retry.budget_min_retries, 10u);
  EXPECT_EQ(c.retry.idempotency, IdempotencyMode::Off);
  EXPECT_EQ(c.limits.mode, LimitMode::Enforce);
  EXPECT_EQ(c.tasks.terminal_statuses, d.tasks.terminal_statuses);
  EXPECT_EQ(c.tasks.tolerated_terminal, d.tasks.tolerated_terminal);
  EXPECT_EQ(c.tasks.terminal_ttl, 10min);
  EXPECT_EQ(c.tasks.not_found_ttl, 2s);
  EXPECT_EQ(c.tasks.cache_max_entries, 10000u);
  EXPECT_EQ(c.tasks.cache_max_bytes, 64u * 1024 * 1024);
  EXPECT_TRUE(c.tasks.reconcile);
  EXPECT_EQ(c.tasks.reconcile_interval, 15s);
  EXPECT_EQ(c.tasks.state_file, "");
  EXPECT_EQ(c.tasks.state_save_interval, 10s);
  EXPECT_EQ(c.tasks.hold_near_end, 5s);
  EXPECT_EQ(c.deferred.journal, "");
  EXPECT_EQ(c.deferred.max_per_key, 1000u);
  EXPECT_EQ(c.deferred.max_total, 5000u);
  EXPECT_EQ(c.deferred.max_age, 6h);
  EXPECT_EQ(c.deferred.keep, 24h);
  EXPECT_EQ(c.log.format, LogFormat::Logfmt);
  EXPECT_EQ(c.log.level, LogLevel::Info);
  EXPECT_EQ(c.drain_timeout, 30s);
}

TEST_F(ConfigTest, EmptyDocumentGivesDefaults) {
  expectDefaults(parse(""));
  expectDefaults(parse("# nothing but a comment\n"));
  expectDefaults(parse("---\n"));
  // A section with every key commented out is an empty section, not an error.
  expectDefaults(parse("listen:\n  # port: 1\nlimits:\n"));
  EXPECT_EQ(parse("").source_file, "test.yaml");
}

TEST_F(ConfigTest, DefaultTiersMatchTheGuide) {
  const std::vector<TierConfig> t = defaultTierConfigs();
  ASSERT_EQ(t.size(), 2u);
  EXPECT_EQ(t[0].name, "heavy");
  EXPECT_EQ(t[0].max_running, 2u);
  EXPECT_EQ(t[0].lease, 20min);
  EXPECT_EQ(t[0].min_poll_interval, 2s);
  EXPECT_EQ(t[0].routes, std::vector<std::string>{"pro"});
  const std::vector<std::string> heavy{"seedance-2-0", "seedance-2.0",   "seedance-*",
                                       "seedance-2.5/*", "wan2.7-video/*", "happyhorse-*",
                                       "veo-*",          "kling-*",        "hailuo-*",
                                       "*-pro",          "*-pro/*",        "*@pro"};
  EXPECT_EQ(t[0].models, heavy);
  EXPECT_EQ(t[1].name, "light");
  EXPECT_EQ(t[1].models, std::vector<std::string>{"*"});
  EXPECT_EQ(t[1].max_running, 5u);
  EXPECT_EQ(t[1].lease, 5min);
  EXPECT_EQ(t[1].min_poll_interval, 2s);
  EXPECT_TRUE(t[0].defer);
  EXPECT_FALSE(t[1].defer);
  EXPECT_EQ(t[0].defer_after, 2s);
  // A default-constructed Config already carries them.
  EXPECT_EQ(Config{}.limits.tiers.size(), 2u);
}

TEST_F(ConfigTest, ShippedConfigParsesAndStatesTheDefaults) {
  const std::string path = sourceDir() + "conf/hiapi-proxy.yaml";
  const Config c = loadConfig(path, &testEnv);  // no environment: it must need no secret
  expectDefaults(c);
  EXPECT_EQ(c.source_file, path);
  EXPECT_EQ(c.summary(), Config{}.summary());
}

TEST_F(ConfigTest, EveryKeyIsRead) {
  fakeEnv()["HIAPI_API_KEY"] = "sk-test-1";
  const Config c = parse(R"(listen:
  address: "::1"
  port: 0
  allow_non_loopback: false
  max_body_size: 1MiB
  max_header_size: 8KiB
  client_timeout: 61s
admin: { enabled: false, address: localhost, port: 0 }
upstream:
  url: http://[::1]:8080/
  tls_min_version: "1.3"
  connect_timeout: 250ms
  response_timeout: 1.5s
  pool_size: 4
  idle_timeout: 1m30s
auth:
  mode: inject
keys:
  - name: prod
    key: ${HIAPI_API_KEY}
    rate: 5/s
    burst: 2
limits:
  rate: 3600/h
  burst: 3
  decrease_factor: 0.25
  min_rate_fraction: 1
  recovery_time: 1m
  max_cooldown: 10s
  repeat_window: 0s
  phase_margin: 2ms
  pace_without_counters: window
  mode: shadow
  tiers:
    - { name: video, models: [veo-*], max_running: 1, lease: 1h, min_poll_interval: 0s, expected_duration: 90s }
    - { name: pro-route, routes: [pro] }
queue: { max_size: 5, max_per_client: 2, deadline: 59s, create_gather: 0s, client_header: X-Me, deadline_header: X-D }
retry: { max_attempts: 10, base_delay: 100ms, max_delay: 60s, budget_ratio: 0, budget_min_retries: 0, idempotency: inject }
tasks:
  terminal_statuses: [done]
  tolerated_terminal: []
  terminal_ttl: 1h
  not_found_ttl: 0s
  cache_max_entries: 1
  cache_max_bytes: 1000
  reconcile: false
  reconcile_interval: 1s
  state_file: /var/lib/hiapi-proxy/state.json
  state_save_interval: 5s
  hold_near_end: 500ms
log: { format: json, level: debug }
drain_timeout: 0s
)");
  EXPECT_EQ(c.listen.address, "::1");
  EXPECT_EQ(c.listen.port, 0);
  EXPECT_EQ(c.listen.max_body_bytes, 1024u * 1024);
  EXPECT_EQ(c.listen.max_header_bytes, 8u * 1024);
  EXPECT_EQ(c.listen.client_timeout, 61s);
  EXPECT_FALSE(c.admin.enabled);
  EXPECT_EQ(c.admin.address, "localhost");
  EXPECT_EQ(c.upstream.url, "http://[::1]:8080");
  EXPECT_EQ(c.upstream.scheme, "http");
  EXPECT_EQ(c.upstream.host, "::1");
  EXPECT_EQ(c.upstream.port, 8080);
  EXPECT_EQ(c.upstream.authority, "[::1]:8080");
  EXPECT_EQ(c.upstream.tls_min_version, TlsMinVersion::Tls13);
  EXPECT_EQ(c.upstream.connect_timeout, 250ms);
  EXPECT_EQ(c.upstream.response_timeout, 1500ms);
  EXPECT_EQ(c.upstream.pool_size, 4u);
  EXPECT_EQ(c.upstream.idle_timeout, 90s);
  EXPECT_EQ(c.key_mode, KeyMode::Inject);
  ASSERT_EQ(c.keys.size(), 1u);
  EXPECT_EQ(c.keys[0].name, "prod");
  EXPECT_EQ(c.keys[0].key.reveal(), "sk-test-1");
  EXPECT_EQ(c.keys[0].key_file, "");
  ASSERT_TRUE(c.keys[0].rate.has_value());
  EXPECT_DOUBLE_EQ(c.keys[0].rate->per_second, 5);
  EXPECT_EQ(c.keys[0].burst, 2);
  EXPECT_DOUBLE_EQ(c.limits.rate.per_second, 1);
  EXPECT_DOUBLE_EQ(c.limits.burst, 3);
  EXPECT_DOUBLE_EQ(c.limits.decrease_factor, 0.25);
  EXPECT_DOUBLE_EQ(c.limits.min_rate_fraction, 1);
  EXPECT_EQ(c.limits.recovery_time, 60s);
  EXPECT_EQ(c.limits.max_cooldown, 10s);
  EXPECT_EQ(c.limits.repeat_window, 0s);
  EXPECT_EQ(c.limits.phase_margin, 2ms);
  EXPECT_EQ(c.limits.pace_without_counters, UncountedPacing::Window);
  ASSERT_EQ(c.limits.tiers.size(), 2u);
  EXPECT_EQ(c.limits.tiers[0].name, "video");
  EXPECT_EQ(c.limits.tiers[0].models, std::vector<std::string>{"veo-*"});
  EXPECT_EQ(c.limits.tiers[0].max_running, 1u);
  EXPECT_EQ(c.limits.tiers[0].lease, 1h);
  EXPECT_EQ(c.limits.tiers[0].min_poll_interval, 0s);
  EXPECT_EQ(c.limits.tiers[0].expected_duration, 90s);
  EXPECT_EQ(c.limits.tiers[1].name, "pro-route");
  EXPECT_EQ(c.limits.tiers[1].expected_duration, 0s) << "unset: learn only";
  EXPECT_TRUE(c.limits.tiers[1].models.empty());
  EXPECT_EQ(c.limits.tiers[1].routes, std::vector<std::string>{"pro"});
  EXPECT_EQ(c.limits.tiers[1].max_running, TierConfig{}.max_running);
  EXPECT_EQ(c.queue.max_size, 5u);
  EXPECT_EQ(c.queue.max_per_client, 2u);
  EXPECT_EQ(c.queue.deadline, 59s);
  EXPECT_EQ(c.queue.create_gather, 0s) << "0 turns gathering off";
  EXPECT_EQ(c.queue.client_header, "X-Me");
  EXPECT_EQ(c.queue.deadline_header, "X-D");
  EXPECT_EQ(c.retry.max_attempts, 10u);
  EXPECT_EQ(c.retry.base_delay, 100ms);
  EXPECT_EQ(c.retry.max_delay, 60s);
  EXPECT_DOUBLE_EQ(c.retry.budget_ratio, 0);
  EXPECT_EQ(c.retry.budget_min_retries, 0u);
  EXPECT_EQ(c.retry.idempotency, IdempotencyMode::Inject);
  EXPECT_EQ(c.limits.mode, LimitMode::Shadow);
  EXPECT_EQ(c.tasks.terminal_statuses, std::vector<std::string>{"done"});
  EXPECT_TRUE(c.tasks.tolerated_terminal.empty());
  EXPECT_EQ(c.tasks.terminal_ttl, 1h);
  EXPECT_EQ(c.tasks.not_found_ttl, 0s);
  EXPECT_EQ(c.tasks.cache_max_entries, 1u);
  EXPECT_EQ(c.tasks.cache_max_bytes, 1000u);
  EXPECT_FALSE(c.tasks.reconcile);
  EXPECT_EQ(c.tasks.reconcile_interval, 1s);
  EXPECT_EQ(c.tasks.state_file, "/var/lib/hiapi-proxy/state.json");
  EXPECT_EQ(c.tasks.state_save_interval, 5s);
  EXPECT_EQ(c.tasks.hold_near_end, 500ms);
  EXPECT_EQ(c.log.format, LogFormat::Json);
  EXPECT_EQ(c.log.level, LogLevel::Debug);
  EXPECT_EQ(c.drain_timeout, 0s);
}

// ---- value grammars ----------------------------------------------------------------------------

TEST(ParseDurationTest, Table) {
  const std::vector<std::pair<std::string, std::optional<Duration>>> rows{
      {"250ms", 250ms},   {"2s", 2s},          {"5m", 5min},      {"1h", 1h},
      {"1.5s", 1500ms},   {"0s", 0s},          {"0.1s", 100ms},   {"1m30s", 90s},
      {"45s", 45s},       {"2", std::nullopt}, {"2 sec", std::nullopt},
      {"-1s", std::nullopt}, {"s", std::nullopt}, {"", std::nullopt},
      {"1.s", std::nullopt}, {".5s", std::nullopt}, {"1e3s", std::nullopt},
      {"2sec", std::nullopt}, {"2d", std::nullopt}, {" 2s", std::nullopt},
      {"2s ", std::nullopt}, {"+2s", std::nullopt}, {"1S", std::nullopt},
      {"999999999999h", std::nullopt}};
  for (const auto& [text, want] : rows) {
    EXPECT_EQ(parseDuration(text), want) << "'" << text << "'";
  }
}

TEST(ParseRateTest, Table) {
  const std::vector<std::pair<std::string, std::optional<double>>> rows{
      {"60/min", 1.0},     {"5/s", 5.0},         {"3600/h", 1.0},     {"0.5/s", 0.5},
      {"30/m", 0.5},       {"120/minute", 2.0},  {"1/sec", 1.0},      {"7200/hour", 2.0},
      {"0/s", std::nullopt}, {"0.0/min", std::nullopt}, {"60", std::nullopt},
      {"60/day", std::nullopt}, {"abc", std::nullopt}, {"-5/s", std::nullopt},
      {"/s", std::nullopt}, {"5/", std::nullopt}, {"5 / s", std::nullopt}, {"", std::nullopt}};
  for (const auto& [text, want] : rows) {
    const std::optional<Rate> got = parseRate(text);
    ASSERT_EQ(got.has_value(), want.has_value()) << "'" << text << "'";
    if (got) {
      EXPECT_DOUBLE_EQ(got->per_second, *want) << "'" << text << "'";
    }
  }
}

TEST(ParseSizeTest, Table) {
  const std::vector<std::pair<std::string, std::optional<uint64_t>>> rows{
      {"10MiB", 10ull << 20}, {"64KiB", 64ull << 10}, {"1GiB", 1ull << 30},
      {"10MB", 10'000'000},   {"1KB", 1000},          {"1kB", 1000},
      {"2GB", 2'000'000'000}, {"1024", 1024},         {"0", 0},
      {"512B", 512},          {"1.5KiB", 1536},       {"18446744073709551615", UINT64_MAX},
      {"10mb", std::nullopt}, {"10 MiB", std::nullopt}, {"-1", std::nullopt},
      {"MiB", std::nullopt},  {"", std::nullopt},       {"1.5", std::nullopt},
      {"10TiB0", std::nullopt}, {"99999999999GiB", std::nullopt},
      {"18446744073709551616", std::nullopt}};
  for (const auto& [text, want] : rows) {
    EXPECT_EQ(parseSize(text), want) << "'" << text << "'";
  }
}

// ---- structure errors --------------------------------------------------------------------------

TEST_F(ConfigTest, DeferredCreatesAreConfiguredPerTierAndInTheirSection) {
  const Config c = parse(R"(limits:
  tiers:
    - {name: heavy, models: [veo-*]}
    - {name: video, models: [kling-*], defer: true, defer_after: 500ms}
    - {name: light, models: ["*"]}
    - {name: heavy2, models: [x], defer: false}
deferred:
  journal: state/deferred.journal
  max_per_key: 10
  max_total: 20
  max_age: 2h
  keep: 1h
)");
  ASSERT_EQ(c.limits.tiers.size(), 4u);
  EXPECT_TRUE(c.limits.tiers[0].defer);  // named heavy: defers unless told otherwise
  EXPECT_TRUE(c.limits.tiers[1].defer);
  EXPECT_EQ(c.limits.tiers[1].defer_after, 500ms);
  EXPECT_FALSE(c.limits.tiers[2].defer);
  EXPECT_FALSE(c.limits.tiers[3].defer);
  // Relative to the config file's directory, as key_file is.
  EXPECT_EQ(c.deferred.journal, "state/deferred.journal");
  EXPECT_EQ(c.deferred.max_per_key, 10u);
  EXPECT_EQ(c.deferred.max_total, 20u);
  EXPECT_EQ(c.deferred.max_age, 2h);
  EXPECT_EQ(c.deferred.keep, 1h);
  expectError("deferred:\n  max_age: 30h\n", 2, 12, "deferred.max_age", "at most 23h");
  expectError("limits:\n  tiers:\n    - {name: h, models: [x], defer_after: 45s}\n", 3, 43,
              "limits.tiers[0].defer_after", "at most 30s");
  expectError("limits:\n  tiers:\n    - {name: h, models: [x], defer: maybe}\n", 3, 37,
              "limits.tiers[0].defer", "");
  expectError("deferred:\n  jornal: x\n", 2, 3, "deferred.jornal", "did you mean 'journal'?");
}

TEST_F(ConfigTest, UnknownKeysAreNamedWithASuggestion) {
  expectError("limits:\n  burts: 5\n", 2, 3, "limits.burts",
              "unknown key 'burts' (did you mean 'burst'?)");
  expectError("listn:\n  port: 1\n", 1, 1, "listn", "unknown key 'listn' (did you mean 'listen'?)");
  expectError("queue:\n  max_sise: 3\n", 2, 3, "queue.max_sise", "(did you mean 'max_size'?)");
  // Nothing close: no suggestion.
  const ConfigError e = parseError("upstream:\n  frobnicate: 1\n");
  EXPECT_STREQ(e.what(), "test.yaml:2:3: upstream.frobnicate: unknown key 'frobnicate'");
  expectError("limits:\n  tiers:\n    - name: a\n      models: [x]\n      max_runing: 1\n", 5, 7,
              "limits.tiers[0].max_runing", "(did you mean 'max_running'?)");
  expectError("keys:\n  - name: a\n    key: k\n    brust: 1\n", 4, 5, "keys[0].brust",
              "(did you mean 'burst'?)");
}

TEST_F(ConfigTest, DuplicateKeysAreRefused) {
  expectError("listen:\n  port: 1\n  port: 2\n", 3, 3, "listen.port",
              "duplicate key 'port' (first set at line 2)");
}

TEST_F(ConfigTest, WrongTypes) {
  expectError("listen: 5\n", 1, 9, "listen", "expected a map, got a string");
  expectError("listen:\n  port: {a: 1}\n", 2, 9, "listen.port", "expected an integer, got a map");
  expectError("listen:\n  port: abc\n", 2, 9, "listen.port",
              "expected a non-negative integer, got 'abc'");
  expectError("listen:\n  port:\n", 2, 3, "listen.port", "expected an integer, got nothing");
  expectError("limits:\n  burst: five\n", 2, 10, "limits.burst", "expected a number, got 'five'");
  expectError("limits:\n  rate: [1]\n", 2, 9, "limits.rate", "expected a rate like 60/min");
  expectError("admin:\n  enabled: maybe\n", 2, 12, "admin.enabled", "expected true or false");
  expectError("limits:\n  tiers: {name: a}\n", 2, 10, "limits.tiers", "expected a list of tiers");
  expectError("limits:\n  tiers:\n    - name: a\n      models: [x, {b: c}]\n", 4, 19,
              "limits.tiers[0].models[1]", "expected a string, got a map");
  expectError("limits:\n  tiers:\n    - name: a\n      models: x\n", 4, 15,
              "limits.tiers[0].models", "expected a list of strings, got a string");
  expectError("- a\n- b\n", 1, 1, "", "expected a map at the top level, got a list");
  expectError("keys: {name: a}\n", 1, 7, "keys", "expected a list of keys, got a map");
  expectError("log:\n  level: loud\n", 2, 10, "log.level", "must be debug, info, warn or error");
  expectError("log:\n  format: xml\n", 2, 11, "log.format", "must be logfmt or json");
  expectError("auth:\n  mode: steal\n", 2, 9, "auth.mode", "must be passthrough or inject");
  expectError("retry:\n  idempotency: on\n", 2, 16, "retry.idempotency", "must be off or inject");
  expectError("limits:\n  mode: dry-run\n", 2, 9, "limits.mode", "must be enforce or shadow");
  expectError("{1: 2}\n", 1, 2, "1", "unknown key '1'");
  expectError("tasks:\n  hold_near_end: 30s\n", 2, 18, "tasks.hold_near_end",
              "at most 10s (a held poll still has to be answered well within the client's "
              "timeout), got '30s'");
}

TEST_F(ConfigTest, PhaseMarginAndRepeatWindowAreChecked) {
  expectError("limits:\n  phase_margin: 2s\n", 2, 17, "limits.phase_margin", "at most 1s");
  expectError("limits:\n  pace_without_counters: gcra\n", 2, 26, "limits.pace_without_counters",
              "must be window or bucket");
  expectError("limits:\n  repeat_window: soon\n", 2, 18, "limits.repeat_window",
              "invalid duration");
}

TEST_F(ConfigTest, YamlSyntaxErrorsCarryTheirPosition) {
  const ConfigError e = parseError("listen:\n  port: [1\n");
  EXPECT_EQ(e.line(), 3);
  EXPECT_EQ(e.column(), 1);
  EXPECT_EQ(e.keyPath(), "");
  EXPECT_EQ(std::string(e.what()).rfind("test.yaml:3:1: invalid YAML: ", 0), 0u) << e.what();
  expectError("a: b: c\n", 1, 5, "", "invalid YAML: illegal map value");
  expectError("listen: {}\n---\nadmin: {}\n", 2, 1, "", "expected one YAML document, found more");
}

TEST_F(ConfigTest, BadValuesInFieldsNameTheField) {
  expectError("limits:\n  recovery_time: 2\n", 2, 18, "limits.recovery_time",
              "invalid duration '2'");
  expectError("limits:\n  recovery_time: 2 sec\n", 2, 18, "limits.recovery_time",
              "invalid duration '2 sec'");
  expectError("limits:\n  recovery_time: -1s\n", 2, 18, "limits.recovery_time",
              "invalid duration '-1s'");
  expectError("limits:\n  rate: 60\n", 2, 9, "limits.rate", "invalid rate '60'");
  expectError("limits:\n  rate: 60/day\n", 2, 9, "limits.rate", "invalid rate '60/day'");
  expectError("limits:\n  rate: 0/s\n", 2, 9, "limits.rate", "invalid rate '0/s'");
  expectError("listen:\n  max_body_size: 10 megabytes\n", 2, 18, "listen.max_body_size",
              "invalid size '10 megabytes'");
  expectError("listen:\n  max_body_size: 0\n", 2, 18, "listen.max_body_size",
              "must be greater than 0");
}

// ---- impossible values -------------------------------------------------------------------------

TEST_F(ConfigTest, ImpossibleValues) {
  expectError("listen:\n  port: 65536\n", 2, 9, "listen.port", "must be between 0 and 65535");
  expectError("listen:\n  port: -1\n", 2, 9, "listen.port", "expected a non-negative integer");
  expectError("listen:\n  port: 99999999999999999999999\n", 2, 9, "listen.port",
              "must be between 0 and 65535");
  expectError("admin:\n  port: 70000\n", 2, 9, "admin.port", "must be between 0 and 65535");
  expectError("upstream:\n  pool_size: 0\n", 2, 14, "upstream.pool_size", "must be between 1");
  expectError("limits:\n  burst: 0.5\n", 2, 10, "limits.burst", "must be at least 1");
  expectError("limits:\n  decrease_factor: 1\n", 2, 20, "limits.decrease_factor",
              "must be greater than 0 and less than 1");
  expectError("limits:\n  decrease_factor: 0\n", 2, 20, "limits.decrease_factor",
              "must be greater than 0 and less than 1");
  expectError("limits:\n  min_rate_fraction: 1.5\n", 2, 22, "limits.min_rate_fraction",
              "at most 1");
  expectError("limits:\n  recovery_time: 0s\n", 2, 18, "limits.recovery_time",
              "must be greater than 0");
  expectError("queue:\n  deadline: 60s\n", 2, 13, "queue.deadline",
              "must be less than 60s: HiAPI clients give up after 60 s");
  expectError("queue:\n  deadline: 2m\n", 2, 13, "queue.deadline", "clients give up after 60 s");
  expectError("queue:\n  deadline: 0s\n", 2, 13, "queue.deadline", "must be greater than 0");
  expectError("queue:\n  max_size: 0\n", 2, 13, "queue.max_size", "must be between 1");
  expectError("queue:\n  create_gather: 2s\n", 2, 18, "queue.create_gather", "must be at most 1s");
  expectError("queue:\n  client_header: \"X Client\"\n", 2, 18, "queue.client_header",
              "invalid HTTP header name");
  expectError("retry:\n  max_delay: 61s\n", 2, 14, "retry.max_delay", "must be at most 60s");
  expectError("retry:\n  max_attempts: 0\n", 2, 17, "retry.max_attempts",
              "must be between 1 and 10");
  expectError("retry:\n  max_attempts: 11\n", 2, 17, "retry.max_attempts",
              "must be between 1 and 10");
  expectError("retry:\n  base_delay: 40s\n", 2, 15, "retry.base_delay",
              "base_delay must not exceed max_delay");
  expectError("retry:\n  budget_ratio: 1.5\n", 2, 17, "retry.budget_ratio",
              "must be between 0 and 1");
  expectError("tasks:\n  terminal_statuses: []\n", 2, 22, "tasks.terminal_statuses",
              "at least one terminal status");
  expectError("upstream:\n  tls_min_version: \"1.1\"\n", 2, 20, "upstream.tls_min_version",
              "must be 1.2 or 1.3");
  expectError("upstream:\n  tls_min_version: 1.0\n", 2, 20, "upstream.tls_min_version",
              "must be 1.2 or 1.3");
  expectError("admin:\n  port: 8787\n", 2, 9, "admin.port", "must differ from listen.port");
  // Both on port 0 is fine (each gets its own free port), as is a disabled admin on the same port.
  EXPECT_NO_THROW(parse("listen: {port: 0}\nadmin: {port: 0}\n"));
  EXPECT_NO_THROW(parse("admin: {enabled: false, port: 8787}\n"));
}

TEST_F(ConfigTest, TierRules) {
  expectError("limits:\n  tiers: []\n", 2, 10, "limits.tiers", "at least one tier is needed");
  expectError("limits:\n  tiers:\n", 2, 3, "limits.tiers", "at least one tier is needed");
  expectError(R"(limits:
  tiers:
    - { name: a, models: ["*"] }
    - { name: a, routes: [pro] }
)",
              4, 15, "limits.tiers[1].name", "duplicate tier name 'a' (first at line 3)");
  expectError("limits:\n  tiers:\n    - name: a\n      max_running: 1\n", 3, 7, "limits.tiers[0]",
              "tier 'a' has neither models nor routes");
  expectError("limits:\n  tiers:\n    - name: a\n      models: []\n      routes: []\n", 3, 7,
              "limits.tiers[0]", "neither models nor routes");
  expectError("limits:\n  tiers:\n    - name: a\n      models: [x]\n      max_running: 0\n", 5,
              20, "limits.tiers[0].max_running", "must be between 1");
  expectError("limits:\n  tiers:\n    - models: [x]\n", 3, 7, "limits.tiers[0]", "missing name");
  expectError("limits:\n  tiers:\n    - name: Heavy!\n      models: [x]\n", 3, 13,
              "limits.tiers[0].name", "invalid name 'Heavy!'");
  expectError("limits:\n  tiers:\n    - name: a\n      models: [x]\n      lease: 0s\n", 5, 14,
              "limits.tiers[0].lease", "must be greater than 0");
  expectError("limits:\n  tiers:\n    - name: a\n      models: [x]\n      expected_duration: 0s\n",
              5, 26, "limits.tiers[0].expected_duration", "must be greater than 0");
  expectError("limits:\n  tiers:\n    - name: a\n      models: [\"\"]\n", 4, 16,
              "limits.tiers[0].models[0]", "must not be empty");
}

TEST_F(ConfigTest, UpstreamUrl) {
  struct Row {
    std::string url;
    std::string scheme, host, authority, normal;
    uint16_t port;
  };
  const std::vector<Row> ok{
      {"https://api.hiapi.ai", "https", "api.hiapi.ai", "api.hiapi.ai", "https://api.hiapi.ai",
       443},
      {"https://api.hiapi.ai/", "https", "api.hiapi.ai", "api.hiapi.ai", "https://api.hiapi.ai",
       443},
      {"HTTP://LocalHost:8080", "http", "localhost", "localhost:8080", "http://localhost:8080",
       8080},
      {"http://127.0.0.1", "http", "127.0.0.1", "127.0.0.1", "http://127.0.0.1", 80},
      {"https://[::1]:8443", "https", "::1", "[::1]:8443", "https://[::1]:8443", 8443},
      {"https://[2001:db8::1]", "https", "2001:db8::1", "[2001:db8::1]", "https://[2001:db8::1]",
       443},
      {"https://example.com:443", "https", "example.com", "example.com", "https://example.com",
       443},
  };
  for (const Row& r : ok) {
    SCOPED_TRACE(r.url);
    const Config c = parse("upstream:\n  url: \"" + r.url + "\"\n");
    EXPECT_EQ(c.upstream.scheme, r.scheme);
    EXPECT_EQ(c.upstream.host, r.host);
    EXPECT_EQ(c.upstream.port, r.port);
    EXPECT_EQ(c.upstream.authority, r.authority);
    EXPECT_EQ(c.upstream.url, r.normal);
  }
  const std::vector<std::pair<std::string, std::string>> bad{
      {"api.hiapi.ai", "expected http://host[:port]"},
      {"ftp://api.hiapi.ai", "the scheme must be http or https"},
      {"https://api.hiapi.ai/v1", "must not have a path, query or fragment"},
      {"https://api.hiapi.ai?x=1", "must not have a path, query or fragment"},
      {"https://api.hiapi.ai#f", "must not have a path, query or fragment"},
      {"https://user:pw@api.hiapi.ai", "must not contain user information"},
      {"https://", "invalid host"},
      {"https://:443", "invalid host"},
      {"https://api.hiapi.ai:0", "the port must be between 1 and 65535"},
      {"https://api.hiapi.ai:65536", "the port must be between 1 and 65535"},
      {"https://api.hiapi.ai:x", "the port must be between 1 and 65535"},
      {"https://api.hiapi.ai:", "empty port"},
      {"https://[::1", "unterminated IPv6 literal"},
      {"https://[zz::1]", "invalid IPv6 literal"},
      {"https://[::1]x", "unexpected text after the IPv6 literal"},
      {"https://a b", "invalid host"},
  };
  for (const auto& [url, part] : bad) {
    expectError("upstream:\n  url: \"" + url + "\"\n", 2, 8, "upstream.url", part);
  }
}

TEST_F(ConfigTest, ListenAddressMustBeLoopbackUnlessAllowed) {
  for (const char* a : {"127.0.0.1", "127.1.2.3", "::1", "localhost", "LOCALHOST",
                        "::ffff:127.0.0.1"}) {
    EXPECT_EQ(parse(std::string("listen:\n  address: \"") + a + "\"\n").listen.address, a);
  }
  expectError("listen:\n  address: 0.0.0.0\n", 2, 12, "listen.address",
              "refusing to listen on a non-loopback address '0.0.0.0' (set "
              "listen.allow_non_loopback: true");
  expectError("listen:\n  address: \"::\"\n", 2, 12, "listen.address", "non-loopback");
  expectError("listen:\n  address: 10.0.0.5\n", 2, 12, "listen.address", "non-loopback");
  expectError("admin:\n  address: 0.0.0.0\n", 2, 12, "admin.address",
              "refusing to serve the admin endpoint on a non-loopback address");
  expectError("listen:\n  address: my-host\n", 2, 12, "listen.address",
              "expected an IPv4 or IPv6 address");
  expectError("listen:\n  address: \"[::1]\"\n", 2, 12, "listen.address", "without brackets");
  const Config c = parse("listen:\n  address: 0.0.0.0\n  allow_non_loopback: true\n");
  EXPECT_EQ(c.listen.address, "0.0.0.0");
  EXPECT_TRUE(c.listen.allow_non_loopback);
  // The order of the keys does not matter.
  EXPECT_NO_THROW(parse("listen:\n  allow_non_loopback: yes\n  address: \"::\"\n"));
}

// ---- keys and secrets --------------------------------------------------------------------------

TEST_F(ConfigTest, KeyRules) {
  expectError("auth:\n  mode: inject\n", 2, 9, "auth.mode",
              "inject mode needs at least one entry under keys");
  expectError("auth:\n  mode: inject\nkeys: []\n", 2, 9, "auth.mode", "inject mode needs");
  expectError("keys:\n  - name: a\n    key: x\n    key_file: /f\n", 4, 5, "keys[0].key_file",
              "give either key or key_file, not both");
  expectError("keys:\n  - name: a\n", 2, 5, "keys[0]", "missing key: give key");
  expectError("keys:\n  - key: x\n", 2, 5, "keys[0]", "missing name");
  expectError("keys:\n  - name: a\n    key: x\n  - name: a\n    key: y\n", 4, 11, "keys[1].name",
              "duplicate key name 'a' (first at line 2)");
  expectError("keys:\n  - name: Prod Key\n    key: x\n", 2, 11, "keys[0].name",
              "invalid name 'Prod Key'");
  expectError("keys:\n  - name: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n    key: x\n", 2, 11,
              "keys[0].name", "invalid name");
  expectError("keys:\n  - name: a\n    key: x\n    rate: fast\n", 4, 11, "keys[0].rate",
              "invalid rate 'fast'");
  expectError("keys:\n  - name: a\n    key: x\n    burst: 0\n", 4, 12, "keys[0].burst",
              "must be at least 1");
  expectError("keys:\n  - name: a\n    key: \"\"\n", 3, 10, "keys[0].key", "the key is empty");
  expectError("keys:\n  - name: a\n    key: \"sk-a b\"\n", 3, 10, "keys[0].key",
              "the key contains spaces");
  const Config c = parse("keys:\n  - name: a\n    key: sk-literal\n  - name: b_2\n    key: x\n");
  ASSERT_EQ(c.keys.size(), 2u);
  EXPECT_EQ(c.keys[0].key.reveal(), "sk-literal");
  EXPECT_FALSE(c.keys[0].rate.has_value());
  EXPECT_FALSE(c.keys[0].burst.has_value());
  EXPECT_EQ(c.key_mode, KeyMode::Passthrough);
}

TEST_F(ConfigTest, EnvironmentExpansion) {
  fakeEnv()["HIAPI_API_KEY"] = "sk-from-env";
  fakeEnv()["PREFIX"] = "hi-";
  fakeEnv()["EMPTY"] = "";
  fakeEnv()["NEWLINE"] = "sk-nl\n";
  auto key = [](const std::string& value) {
    return parse("keys:\n  - name: a\n    key: \"" + value + "\"\n").keys.at(0).key.reveal();
  };
  EXPECT_EQ(key("${HIAPI_API_KEY}"), "sk-from-env");
  EXPECT_EQ(key("${PREFIX}sk-x"), "hi-sk-x");
  EXPECT_EQ(key("${PREFIX}${HIAPI_API_KEY}"), "hi-sk-from-env");
  EXPECT_EQ(key("${NEWLINE}"), "sk-nl");
  EXPECT_EQ(key("a$b"), "a$b");
  expectError("keys:\n  - name: a\n    key: ${HIAPI_OTHER_KEY}\n", 3, 10, "keys[0].key",
              "environment variable HIAPI_OTHER_KEY is not set");
  expectError("keys:\n  - name: a\n    key: ${EMPTY}\n", 3, 10, "keys[0].key",
              "environment variable EMPTY is empty");
  expectError("keys:\n  - name: a\n    key: ${EMPTY}${EMPTY}\n", 3, 10, "keys[0].key",
              "the key is empty");
  expectError("keys:\n  - name: a\n    key: ${HIAPI_API_KEY\n", 3, 10, "keys[0].key",
              "unterminated ${");
  expectError("keys:\n  - name: a\n    key: ${1BAD}\n", 3, 10, "keys[0].key",
              "invalid environment variable name");
  expectError("keys:\n  - name: a\n    key: ${}\n", 3, 10, "keys[0].key",
              "invalid environment variable name");
}

TEST_F(ConfigTest, NullEnvLookupUsesTheProcessEnvironment) {
  ASSERT_EQ(setenv("HIAPI_CONFIG_TEST_KEY", "sk-real-env", 1), 0);
  const Config c =
      parseConfig("keys:\n  - name: a\n    key: ${HIAPI_CONFIG_TEST_KEY}\n", "x.yaml", nullptr);
  EXPECT_EQ(c.keys.at(0).key.reveal(), "sk-real-env");
  ASSERT_EQ(unsetenv("HIAPI_CONFIG_TEST_KEY"), 0);
  EXPECT_THROW(
      parseConfig("keys:\n  - name: a\n    key: ${HIAPI_CONFIG_TEST_KEY}\n", "x.yaml", nullptr),
      ConfigError);
}

TEST_F(ConfigTest, KeyFile) {
  TempDir dir;
  const fs::path abs = dir.write("abs-key", "sk-from-file\n");
  dir.write("rel-key", "  sk-relative\r\n\n");
  dir.write("empty-key", "\n");
  dir.write("spaced-key", "sk-a\nsk-b\n");
  fs::create_directories(dir.path() / "sub");

  const std::string cfg_file = (dir.path() / "hiapi-proxy.yaml").string();
  const Config c = parse("keys:\n  - name: a\n    key_file: " + abs.string() +
                             "\n  - name: b\n    key_file: rel-key\n",
                         cfg_file);
  ASSERT_EQ(c.keys.size(), 2u);
  EXPECT_EQ(c.keys[0].key.reveal(), "sk-from-file");
  EXPECT_EQ(c.keys[0].key_file, abs.string());
  EXPECT_EQ(c.keys[1].key.reveal(), "sk-relative");
  EXPECT_EQ(c.keys[1].key_file, (dir.path() / "rel-key").string());

  // ${VAR} expands in the path (systemd's ${CREDENTIALS_DIRECTORY}); an unset one is named.
  ASSERT_EQ(setenv("HIAPI_CONFIG_TEST_CREDS", dir.path().c_str(), 1), 0);
  const Config creds = parseConfig("keys:\n  - name: a\n    key_file: ${HIAPI_CONFIG_TEST_CREDS}/abs-key\n",
                                   cfg_file, nullptr);
  EXPECT_EQ(creds.keys.at(0).key.reveal(), "sk-from-file");
  ASSERT_EQ(unsetenv("HIAPI_CONFIG_TEST_CREDS"), 0);
  try {
    parseConfig("keys:\n  - name: a\n    key_file: ${HIAPI_CONFIG_TEST_CREDS}/abs-key\n", cfg_file,
                nullptr);
    ADD_FAILURE() << "an unset variable in key_file must be an error";
  } catch (const ConfigError& ce) {
    EXPECT_NE(std::string(ce.what()).find("HIAPI_CONFIG_TEST_CREDS is not set"), std::string::npos)
        << ce.what();
  }

  // Through loadConfig, relative to the config file's directory, whatever the working directory.
  dir.write("hiapi-proxy.yaml", "auth: {mode: inject}\nkeys:\n  - name: a\n    key_file: rel-key\n");
  const Config loaded = loadConfig(cfg_file, &testEnv);
  EXPECT_EQ(loaded.keys.at(0).key.reveal(), "sk-relative");
  EXPECT_EQ(loaded.key_mode, KeyMode::Inject);

  auto err = [&](const std::string& file) {
    return parseError("keys:\n  - name: a\n    key_file: " + file + "\n", cfg_file);
  };
  const std::string missing = (dir.path() / "missing").string();
  ConfigError e = err("missing");
  EXPECT_EQ(std::string(e.what()),
            cfg_file + ":3:15: keys[0].key_file: cannot read key file '" + missing +
                "': No such file or directory");
  e = err("empty-key");
  EXPECT_NE(std::string(e.what()).find("is empty"), std::string::npos) << e.what();
  e = err("sub");
  EXPECT_NE(std::string(e.what()).find("cannot read key file"), std::string::npos) << e.what();
  e = err("spaced-key");
  EXPECT_NE(std::string(e.what()).find("the key contains spaces"), std::string::npos) << e.what();
  EXPECT_EQ(std::string(e.what()).find("sk-a"), std::string::npos) << e.what();
  if (geteuid() != 0) {  // root reads anything
    const fs::path locked = dir.write("locked-key", "sk-locked\n");
    fs::permissions(locked, fs::perms::none);
    e = err("locked-key");
    EXPECT_NE(std::string(e.what()).find("Permission denied"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigTest, CaFile) {
  TempDir dir;
  const fs::path ca = dir.write("ca.pem", "-----BEGIN CERTIFICATE-----\n");
  dir.write("empty.pem", "");
  const std::string cfg_file = (dir.path() / "c.yaml").string();
  EXPECT_EQ(parse("upstream:\n  ca_file: ca.pem\n", cfg_file).upstream.ca_file, ca.string());
  EXPECT_EQ(parse("upstream:\n  ca_file: " + ca.string() + "\n", cfg_file).upstream.ca_file,
            ca.string());
  EXPECT_EQ(parse("upstream:\n  ca_file: \"\"\n", cfg_file).upstream.ca_file, "");
  const ConfigError e = parseError("upstream:\n  ca_file: nope.pem\n", cfg_file);
  EXPECT_EQ(std::string(e.what()), cfg_file + ":2:12: upstream.ca_file: cannot read CA file '" +
                                       (dir.path() / "nope.pem").string() +
                                       "': No such file or directory");
  const ConfigError empty = parseError("upstream:\n  ca_file: empty.pem\n", cfg_file);
  EXPECT_NE(std::string(empty.what()).find("is empty"), std::string::npos);
  const ConfigError http =
      parseError("upstream:\n  url: http://127.0.0.1:1\n  ca_file: ca.pem\n", cfg_file);
  EXPECT_NE(std::string(http.what()).find("plain http://"), std::string::npos);
}

TEST_F(ConfigTest, SecretsNeverAppearInMessages) {
  const std::string secret = "sk-TOPSECRET-0123456789";
  fakeEnv()["HIAPI_API_KEY"] = secret;
  fakeEnv()["SPACED"] = "sk-TOPSECRET 0123456789";
  TempDir dir;
  dir.write("bad-key", "sk-TOPSECRET\x01-0123456789\n");
  const std::string cfg_file = (dir.path() / "c.yaml").string();
  const std::vector<std::string> docs{
      "keys:\n  - name: a\n    key: [" + secret + "]\n",
      "keys:\n  - name: a\n    key: {" + secret + ": 1}\n",
      "keys:\n  - name: a\n    key: {x: " + secret + "}\n",
      "keys:\n  - name: a\n    key: \"" + secret + " with a space\"\n",
      "keys:\n  - name: a\n    key: \"" + secret + "\"\n    key_file: x\n",
      "keys:\n  - " + secret + "\n",
      "keys:\n  - [" + secret + "]\n",
      "keys:\n  - name: a\n    key: \"" + secret + "${NOT_SET}\"\n",
      "keys:\n  - name: a\n    key: \"" + secret + "${\"\n",
      "keys:\n  - name: a\n    key: \"${" + secret + "\"\n",
      "keys:\n  - name: a\n    key: ${SPACED}\n",
      "keys:\n  - name: a\n    key: ${HIAPI_API_KEY}\n    kye: 1\n",
      "keys:\n  - name: a\n    key: ${HIAPI_API_KEY}\n  - name: a\n    key: " + secret + "\n",
      "keys:\n  - name: a\n    key_file: bad-key\n",
      "keys:\n  - name: a\n    key: " + secret + "\nlimits:\n  rate: 60\n",
      "keys:\n  - name: a\n    key: " + secret + "\nauth:\n  mode: x\n",
      // Pasted into the wrong place: as a map key, as a name, with a bad escape.
      "keys:\n  - name: a\n    " + secret + ": 1\n",
      "keys:\n  - name: " + secret + "\n    key: x\n",
      "keys:\n  - name: sk-topsecret\n    key: x\n",
      "keys:\n  - name: a\n    key: \"sk-\\TOPSECRET\"\n",
      "keys:\n  - name: a\n    key: \"\\TOPSECRET\"\n",
  };
  for (const std::string& doc : docs) {
    SCOPED_TRACE(doc);
    const ConfigError e = parseError(doc, cfg_file);
    EXPECT_EQ(lower(e.what()).find("topsecret"), std::string::npos) << e.what();
  }
}

TEST_F(ConfigTest, Summary) {
  EXPECT_EQ(parse("").summary(),
            "config ok: listen 127.0.0.1:8787, upstream https://api.hiapi.ai, auth passthrough, "
            "0 keys, rate 1.00/s burst 5, tiers heavy=2 light=5, queue 10000/45s");
  fakeEnv()["HIAPI_API_KEY"] = "sk-summary-secret";
  const Config c = parse(R"(listen: { address: "::1", port: 9000 }
auth: { mode: inject }
keys:
  - { name: prod, key: "${HIAPI_API_KEY}" }
limits: { rate: 5/s, burst: 2.5 }
queue: { deadline: 1.5s }
)");
  const std::string s = c.summary();
  EXPECT_EQ(s,
            "config ok: listen [::1]:9000, upstream https://api.hiapi.ai, auth inject, "
            "1 key (prod), rate 5.00/s burst 2.5, tiers heavy=2 light=5, queue 10000/1.5s");
  EXPECT_EQ(s.find("sk-summary-secret"), std::string::npos);
  EXPECT_EQ(s.find(c.keys[0].key.fingerprint()), std::string::npos);
}

TEST_F(ConfigTest, LoadConfigReportsAnUnreadableFile) {
  TempDir dir;
  const std::string missing = (dir.path() / "missing.yaml").string();
  try {
    loadConfig(missing, &testEnv);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              missing + ": cannot read the config file: No such file or directory");
    EXPECT_EQ(e.line(), 0);
    EXPECT_EQ(e.file(), missing);
  }
  EXPECT_THROW(loadConfig(dir.path().string(), &testEnv), ConfigError);
  const fs::path broken = dir.write("broken.yaml", "listen:\n  port: 8787\n  prot: 1\n");
  try {
    loadConfig(broken.string(), &testEnv);
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              broken.string() + ":3:3: listen.prot: unknown key 'prot' (did you mean 'port'?)");
  }
}

}  // namespace
namespace {
TEST(ConfigFuzzFinds, MalformedFlowMapThatNeverEndedInLoadAllIsAnError) {
  // tests/fuzz found it: yaml-cpp 0.7's LoadAll produced documents forever on this input.
  const std::string text = "{\"model\":\"sdance-2-0\",\"input\":ompt\":\"p\"},\"rout\xb0" "e\":\x17\"pro\"}";
  EXPECT_THROW(parseConfig(text, "fuzz.yaml"), ConfigError);
}
// ---- every error of a file in one run ------------------------------------------------------

TEST(ConfigErrors, OneRunReportsEveryErrorOfAFileInFileOrder) {
  const std::string yaml = "listen:\n"
                           "  port: eighty\n"          // 2:9   a value
                           "  bogus: 1\n"              // 3:3   an unknown key
                           "limits:\n"
                           "  rate: fast\n"            // 5:9   a value in another section
                           "  burst: 0\n"              // 6:10  a second value in that section
                           "  tiers:\n"
                           "    - name: BAD\n"         // 8:13  an entry of a list...
                           "      models: ['*']\n"
                           "    - name: ok\n"
                           "      max_running: -1\n"   // 11:20 ...and the next one
                           "      models: ['*']\n"
                           "retry:\n"
                           "  idempotency: maybe\n";   // 14:16
  const ConfigError e = parseError(yaml);
  const std::vector<ConfigError> all = e.all();
  std::vector<std::string> where;
  for (const ConfigError& one : all) {
    where.push_back(std::to_string(one.line()) + ":" + std::to_string(one.column()) + " " +
                    one.keyPath());
  }
  EXPECT_EQ(where, (std::vector<std::string>{
                       "2:9 listen.port", "3:3 listen.bogus", "5:9 limits.rate",
                       "6:10 limits.burst", "8:13 limits.tiers[0].name",
                       "11:20 limits.tiers[1].max_running", "14:16 retry.idempotency"}))
      << e.what();
  // what(): one "file:line:col: key: message" line per error; the accessors name the first.
  const std::string what = e.what();
  EXPECT_EQ(std::count(what.begin(), what.end(), '\n'), 6) << what;
  EXPECT_EQ(what.rfind("test.yaml:2:9: listen.port: ", 0), 0u) << what;
  EXPECT_NE(what.find("\ntest.yaml:14:16: retry.idempotency: must be off or inject"),
            std::string::npos)
      << what;
  EXPECT_EQ(e.line(), 2);
  EXPECT_EQ(e.keyPath(), "listen.port");
}

TEST(ConfigErrors, AFieldThatFailedCausesNoSecondError) {
  // models fails: "neither models nor routes" would only repeat it.
  const ConfigError tiers =
      parseError("limits:\n  tiers:\n    - name: a\n      models: x\n");
  EXPECT_EQ(tiers.all().size(), 1u) << tiers.what();
  // max_delay fails: its default must not be compared with base_delay.
  const ConfigError retry = parseError("retry:\n  base_delay: 40s\n  max_delay: 90s\n");
  EXPECT_EQ(retry.all().size(), 1u) << retry.what();
  EXPECT_EQ(retry.keyPath(), "retry.max_delay");
  // A key entry that fails is not "no keys" for inject mode.
  fakeEnv().erase("HIAPI_UNSET_FOR_TEST");
  const ConfigError keys = parseError(
      "auth:\n  mode: inject\nkeys:\n  - name: prod\n    key: ${HIAPI_UNSET_FOR_TEST}\n");
  EXPECT_EQ(keys.all().size(), 1u) << keys.what();
  EXPECT_EQ(keys.keyPath(), "keys[0].key");
}

TEST(ConfigErrors, YamlBooleansWhereAnOffWordIsMeant) {
  // PyYAML and Ansible templates turn `off` into `false`.
  for (const char* v : {"off", "false", "no"}) {
    SCOPED_TRACE(v);
    EXPECT_EQ(parse(std::string("retry:\n  idempotency: ") + v + "\n").retry.idempotency,
              IdempotencyMode::Off);
  }
  EXPECT_EQ(parse("retry:\n  idempotency: inject\n").retry.idempotency,
            IdempotencyMode::Inject);
  // Booleans accept YAML's words for them.
  EXPECT_FALSE(parse("admin:\n  enabled: off\n").admin.enabled);
  EXPECT_FALSE(parse("tasks:\n  reconcile: no\n").tasks.reconcile);
}

TEST(ConfigDump, EveryValueParsesBackToTheSameConfigurationAndNoKeyIsShown) {
  fakeEnv()["HIAPI_DUMP_TEST_KEY"] = "sk-dump-test-secret-0123456789";
  const Config c = parse(R"(
listen: {address: ::1, port: 0, max_body_size: 1MiB, client_timeout: 1500ms}
admin: {enabled: false}
upstream: {url: "http://127.0.0.1:8080", connect_timeout: 250ms, pool_size: 4}
auth: {mode: inject}
keys:
  - {name: prod, key: "${HIAPI_DUMP_TEST_KEY}", rate: 2/s, burst: 3}
limits:
  rate: 90/min
  burst: 2.5
  tiers:
    - {name: video, models: ["veo-*", "*@pro"], routes: [pro], max_running: 1, expected_duration: 45s}
    - {name: rest, models: ["*"]}
queue: {deadline: 20s, max_per_client: 7}
retry: {idempotency: inject, budget_ratio: 0.3}
tasks: {state_file: /var/lib/x/tasks.json, hold_near_end: 0s}
log: {format: json, level: warn}
drain_timeout: 5s
)");
  const std::string dump = c.dump();
  EXPECT_EQ(dump.find("sk-dump-test-secret"), std::string::npos) << dump;
  EXPECT_NE(dump.find(std::string("key: ") + std::string(kRedacted)), std::string::npos) << dump;
  // Parses back (the redacted key is just a string there) to a configuration that dumps the same.
  const Config again = parse(dump);
  EXPECT_EQ(again.dump(), dump);
  EXPECT_EQ(again.limits.rate.per_second, 1.5);
  EXPECT_EQ(again.limits.tiers[0].expected_duration, 45s);
  EXPECT_EQ(again.listen.client_timeout, 1500ms);
  EXPECT_EQ(again.keys[0].rate->per_second, 2);
  EXPECT_EQ(again.retry.idempotency, IdempotencyMode::Inject);
  // The defaults, too: an empty file's dump names every section.
  const std::string defaults = parse("").dump();
  for (const char* section : {"listen:", "admin:", "upstream:", "auth:", "keys:", "limits:",
                              "queue:", "retry:", "tasks:", "store:", "log:", "drain_timeout:"}) {
    EXPECT_NE(("\n" + defaults).find(std::string("\n") + section), std::string::npos) << section;
  }
  EXPECT_EQ(parse(defaults).dump(), defaults);
}

}  // namespace
}  // namespace hiapi::core
