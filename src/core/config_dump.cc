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

void dumpListen(YAML::Emitter& out, const ListenConfig& listen) {
  out << YAML::Key << "listen" << YAML::Value << YAML::BeginMap;
  kv(out, "address", listen.address);
  kv(out, "port", listen.port);
  kv(out, "allow_non_loopback", listen.allow_non_loopback);
  kv(out, "max_body_size", std::to_string(listen.max_body_bytes));
  kv(out, "max_header_size", std::to_string(listen.max_header_bytes));
  kv(out, "client_timeout", duration(listen.client_timeout));
  kv(out, "header_timeout", duration(listen.header_timeout));
  kv(out, "body_timeout", duration(listen.body_timeout));
  kv(out, "max_connections", listen.max_connections);
  kv(out, "max_reply_buffer", std::to_string(listen.max_reply_buffer_bytes));
  out << YAML::EndMap;
}

void dumpUpstream(YAML::Emitter& out, const UpstreamConfig& upstream) {
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
}

void dumpKeys(YAML::Emitter& out, KeyMode mode, const std::vector<KeyConfig>& keys) {
  out << YAML::Key << "auth" << YAML::Value << YAML::BeginMap;
  kv(out, "mode", mode == KeyMode::Inject ? "inject" : "passthrough");
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
}

void dumpTier(YAML::Emitter& out, const TierConfig& t) {
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
  kv(out, "defer", t.defer);
  kv(out, "defer_after", duration(t.defer_after));
  out << YAML::EndMap;
}

void dumpLimits(YAML::Emitter& out, const LimitsConfig& limits) {
  out << YAML::Key << "limits" << YAML::Value << YAML::BeginMap;
  kv(out, "mode", limits.mode == LimitMode::Shadow ? "shadow" : "enforce");
  kv(out, "rate", rate(limits.rate));
  kv(out, "burst", number(limits.burst));
  kv(out, "decrease_factor", number(limits.decrease_factor));
  kv(out, "min_rate_fraction", number(limits.min_rate_fraction));
  kv(out, "recovery_time", duration(limits.recovery_time));
  kv(out, "max_cooldown", duration(limits.max_cooldown));
  kv(out, "repeat_window", duration(limits.repeat_window));
  kv(out, "phase_margin", duration(limits.phase_margin));
  kv(out, "pace_without_counters",
     limits.pace_without_counters == UncountedPacing::Window ? "window" : "bucket");
  out << YAML::Key << "tiers" << YAML::Value << YAML::BeginSeq;
  for (const TierConfig& t : limits.tiers) {
    dumpTier(out, t);
  }
  out << YAML::EndSeq << YAML::EndMap;
}

void dumpQueueAndRetry(YAML::Emitter& out, const QueueConfig& queue, const RetryConfig& retry) {
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
}

void dumpTasks(YAML::Emitter& out, const TasksConfig& tasks, const DeferredConfig& deferred) {
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

  out << YAML::Key << "deferred" << YAML::Value << YAML::BeginMap;
  kv(out, "journal", deferred.journal);
  kv(out, "max_per_key", deferred.max_per_key);
  kv(out, "max_total", deferred.max_total);
  kv(out, "max_age", duration(deferred.max_age));
  kv(out, "keep", duration(deferred.keep));
  out << YAML::EndMap;
}

void dumpStore(YAML::Emitter& out, const StoreConfig& store) {
  out << YAML::Key << "store" << YAML::Value << YAML::BeginMap;
  kv(out, "kind", store.kind == StoreKind::Redis ? "redis" : "local");
  kv(out, "url", store.url);
  kv(out, "tls", store.tls);
  kv(out, "ca_file", store.ca_file);
  // A password is never printed: where it comes from is.
  if (!store.password_file.empty()) {
    kv(out, "password_file", store.password_file);
  } else if (!store.password_env.empty()) {
    kv(out, "password", "${" + store.password_env + "}");
  }
  kv(out, "key_prefix", store.key_prefix);
  if (!store.key_secret_file.empty()) {
    kv(out, "key_secret_file", store.key_secret_file);
  }
  kv(out, "connect_timeout", duration(store.connect_timeout));
  kv(out, "command_timeout", duration(store.command_timeout));
  kv(out, "heartbeat_interval", duration(store.heartbeat_interval));
  kv(out, "reserve_window", duration(store.reserve_window));
  out << YAML::EndMap;
}

}  // namespace

std::string Config::dump() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  dumpListen(out, listen);
  out << YAML::Key << "admin" << YAML::Value << YAML::BeginMap;
  kv(out, "enabled", admin.enabled);
  kv(out, "address", admin.address);
  kv(out, "port", admin.port);
  out << YAML::EndMap;
  dumpUpstream(out, upstream);
  dumpKeys(out, key_mode, keys);
  dumpLimits(out, limits);
  dumpQueueAndRetry(out, queue, retry);
  dumpTasks(out, tasks, deferred);
  dumpStore(out, store);
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
