// The effective configuration as YAML (hiapi-proxy --print-config, admin GET /config): every
// setting with its value after defaults, in the file's own grammar, so that the output parses
// back to the same configuration. Key values are never printed.

#include <cmath>
#include <cstdio>
#include <string>

#include <yaml-cpp/yaml.h>

#include "hiapi/core/config.h"

namespace hiapi::core {
namespace {

/// `250ms`, `2s`, `0s`: whole milliseconds (the grammar's finest unit a config uses).
std::string duration(Duration d) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
  if (ms % 1000 == 0) {
    return std::to_string(ms / 1000) + "s";
  }
  return std::to_string(ms) + "ms";
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.10g", v);
  return buf;
}

std::string rate(const Rate& r) { return number(r.per_second) + "/s"; }

void list(YAML::Emitter& out, const char* key, const std::vector<std::string>& values) {
  out << YAML::Key << key << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const std::string& v : values) {
    out << v;
  }
  out << YAML::EndSeq;
}

template <typename T>
void kv(YAML::Emitter& out, const char* key, const T& value) {
  out << YAML::Key << key << YAML::Value << value;
}

}  // namespace

std::string Config::dump() const {
  YAML::Emitter out;
  out << YAML::BeginMap;

  out << YAML::Key << "listen" << YAML::Value << YAML::BeginMap;
  kv(out, "address", listen.address);
  kv(out, "port", listen.port);
  kv(out, "allow_non_loopback", listen.allow_non_loopback);
  kv(out, "max_body_size", std::to_string(listen.max_body_bytes));
  kv(out, "max_header_size", std::to_string(listen.max_header_bytes));
  kv(out, "client_timeout", duration(listen.client_timeout));
  out << YAML::EndMap;

  out << YAML::Key << "admin" << YAML::Value << YAML::BeginMap;
  kv(out, "enabled", admin.enabled);
  kv(out, "address", admin.address);
  kv(out, "port", admin.port);
  out << YAML::EndMap;

  out << YAML::Key << "upstream" << YAML::Value << YAML::BeginMap;
  kv(out, "url", upstream.url);
  if (!upstream.ca_file.empty()) {
    kv(out, "ca_file", upstream.ca_file);
  }
  kv(out, "tls_min_version", upstream.tls_min_version == TlsMinVersion::Tls13 ? "1.3" : "1.2");
  kv(out, "connect_timeout", duration(upstream.connect_timeout));
  kv(out, "response_timeout", duration(upstream.response_timeout));
  kv(out, "pool_size", upstream.pool_size);
  kv(out, "idle_timeout", duration(upstream.idle_timeout));
  out << YAML::EndMap;

  out << YAML::Key << "auth" << YAML::Value << YAML::BeginMap;
  kv(out, "mode", key_mode == KeyMode::Inject ? "inject" : "passthrough");
  out << YAML::EndMap;

  out << YAML::Key << "keys" << YAML::Value << YAML::BeginSeq;
  for (const KeyConfig& k : keys) {
    out << YAML::BeginMap;
    kv(out, "name", k.name);
    if (!k.key_file.empty()) {
      kv(out, "key_file", k.key_file);
    } else {
      kv(out, "key", std::string(kRedacted));
    }
    if (k.rate) {
      kv(out, "rate", rate(*k.rate));
    }
    if (k.burst) {
      kv(out, "burst", number(*k.burst));
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq;

  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  kv(out, "rate", rate(limits.rate));
  kv(out, "burst", number(limits.burst));
  kv(out, "decrease_factor", number(limits.decrease_factor));
  kv(out, "min_rate_fraction", number(limits.min_rate_fraction));
  kv(out, "recovery_time", duration(limits.recovery_time));
  kv(out, "max_cooldown", duration(limits.max_cooldown));
  out << YAML::Key << "tiers" << YAML::Value << YAML::BeginSeq;
  for (const TierConfig& t : limits.tiers) {
    out << YAML::BeginMap;
    kv(out, "name", t.name);
    if (!t.models.empty()) {
      list(out, "models", t.models);
    }
    if (!t.routes.empty()) {
      list(out, "routes", t.routes);
    }
    kv(out, "max_running", t.max_running);
    kv(out, "lease", duration(t.lease));
    kv(out, "min_poll_interval", duration(t.min_poll_interval));
    if (t.expected_duration > Duration::zero()) {
      kv(out, "expected_duration", duration(t.expected_duration));
    }
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;

  out << YAML::Key << "queue" << YAML::Value << YAML::BeginMap;
  kv(out, "max_size", queue.max_size);
  kv(out, "max_per_client", queue.max_per_client);
  kv(out, "deadline", duration(queue.deadline));
  kv(out, "create_gather", duration(queue.create_gather));
  kv(out, "client_header", queue.client_header);
  kv(out, "deadline_header", queue.deadline_header);
  out << YAML::EndMap;

  out << YAML::Key << "retry" << YAML::Value << YAML::BeginMap;
  kv(out, "max_attempts", retry.max_attempts);
  kv(out, "base_delay", duration(retry.base_delay));
  kv(out, "max_delay", duration(retry.max_delay));
  kv(out, "budget_ratio", number(retry.budget_ratio));
  kv(out, "budget_min_retries", retry.budget_min_retries);
  kv(out, "idempotency", retry.idempotency == IdempotencyMode::Inject ? "inject" : "off");
  out << YAML::EndMap;

  out << YAML::Key << "tasks" << YAML::Value << YAML::BeginMap;
  list(out, "terminal_statuses", tasks.terminal_statuses);
  list(out, "tolerated_terminal", tasks.tolerated_terminal);
  kv(out, "terminal_ttl", duration(tasks.terminal_ttl));
  kv(out, "not_found_ttl", duration(tasks.not_found_ttl));
  kv(out, "cache_max_entries", tasks.cache_max_entries);
  kv(out, "cache_max_bytes", std::to_string(tasks.cache_max_bytes));
  kv(out, "reconcile", tasks.reconcile);
  kv(out, "reconcile_interval", duration(tasks.reconcile_interval));
  kv(out, "state_file", tasks.state_file);
  kv(out, "state_save_interval", duration(tasks.state_save_interval));
  kv(out, "max_hold", duration(tasks.max_hold));
  kv(out, "hold_near_end", duration(tasks.hold_near_end));
  out << YAML::EndMap;

  out << YAML::Key << "log" << YAML::Value << YAML::BeginMap;
  kv(out, "format", log.format == LogFormat::Json ? "json" : "logfmt");
  static constexpr const char* kLevels[] = {"debug", "info", "warn", "error"};
  kv(out, "level", kLevels[static_cast<int>(log.level)]);
  out << YAML::EndMap;

  kv(out, "drain_timeout", duration(drain_timeout));
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace hiapi::core
