// What the admin listener reads from the daemon: the /status document and the gauges refreshed
// before each /metrics scrape. Kept apart from the daemon's lifecycle (start-up, signals, reload,
// drain) because it only reads the running objects and its size follows the status schema.

#include <chrono>
#include <string>
#include <string_view>

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>

#include "hiapi/core/key_name.h"
#include "hiapi/shell/buffer_budget.h"
#include "hiapi/shell/daemon.h"
#include "hiapi/shell/deferred_service.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/task_service.h"
#include "hiapi/shell/upstream_pool.h"
#include "hiapi/version.h"

namespace hiapi::shell {

namespace {

using JsonWriter = rapidjson::Writer<rapidjson::StringBuffer>;

/// The "keys" array: each key's bucket and tiers, under its display name (never the key).
void writeKeysStatus(JsonWriter& w,
                     const std::vector<std::pair<std::string, core::Snapshot>>& snapshots) {
  w.Key("keys");
  w.StartArray();
  for (const auto& [key, snap] : snapshots) {
    w.StartObject();
    w.Key("name");
    const std::string_view shown = core::keyDisplayName(key);  // never the key
    w.String(shown.data(), static_cast<rapidjson::SizeType>(shown.size()));
    w.Key("configured_rate_per_s");
    w.Double(snap.configured_rate);
    w.Key("effective_rate_per_s");
    w.Double(snap.effective_rate);
    w.Key("tokens");
    w.Double(snap.tokens);
    w.Key("burst");
    w.Double(snap.burst);
    w.Key("cooldown_seconds");
    w.Double(core::toSeconds(snap.cooldown_remaining));
    w.Key("window_guard");
    w.Bool(snap.window_guard);
    w.Key("queue_depth");
    w.Uint64(snap.queue_depth);
    w.Key("tiers");
    w.StartArray();
    for (const core::TierSnapshot& t : snap.tiers) {
      w.StartObject();
      w.Key("name");
      w.String(t.name.c_str());
      w.Key("running");
      w.Uint(t.running);
      w.Key("ceiling");
      w.Uint(t.ceiling);
      w.Key("effective_ceiling");
      w.Uint(t.effective_ceiling);
      w.Key("queued");
      w.Uint64(t.queued);
      w.Key("queued_elsewhere");
      w.Uint64(t.queued_elsewhere);
      w.EndObject();
    }
    w.EndArray();
    w.EndObject();
  }
  w.EndArray();
}

/// The "tasks" object: the tracker's counts and the tasks holding a slot.
void writeTasksStatus(JsonWriter& w, const core::TaskTracker& tracker,
                      core::MonotonicTime now) {
  const core::TaskTracker::Stats ts = tracker.stats();
  w.Key("tasks");
  w.StartObject();
  w.Key("tracked");
  w.Uint64(ts.tracked);
  w.Key("holding_slots");
  w.Uint64(ts.holding_slots);
  w.Key("cache_entries");
  w.Uint64(ts.cache_entries);
  w.Key("cache_bytes");
  w.Uint64(ts.cache_bytes);
  w.Key("running");
  w.StartArray();
  for (const core::TrackedTaskInfo& t : tracker.running()) {
    w.StartObject();
    w.Key("key");
    const std::string_view key_shown = core::keyDisplayName(t.key);
    w.String(key_shown.data(), static_cast<rapidjson::SizeType>(key_shown.size()));
    w.Key("task_id");
    w.String(t.task_id.c_str());
    w.Key("tier");
    w.String(t.tier_name.c_str());
    w.Key("status");
    w.String(t.status.c_str());
    w.Key("age_seconds");
    w.Double(core::toSeconds(now - t.created));
    w.EndObject();
  }
  w.EndArray();
  // What is known of each tier's durations and where it came from: learned here, set
  // (expected_duration) or taken from another instance through the shared store. samples counts
  // ends as the estimator does (an expected_duration counts as two). The recent range says
  // where the proxy's looks at a task start (its low end) and how widely they spread.
  w.Key("durations");
  w.StartArray();
  for (const core::NamedDuration& d : tracker.knownDurations()) {
    w.StartObject();
    w.Key("tier");
    w.String(d.tier.c_str());
    w.Key("estimate_seconds");
    w.Double(core::toSeconds(d.known.estimate));
    w.Key("samples");
    w.Uint(d.known.samples);
    w.Key("source");
    w.String(core::durationSourceName(d.known.source));
    if (const auto range = tracker.durationRange(tracker.tierIndex(d.tier))) {
      w.Key("recent_low_seconds");
      w.Double(core::toSeconds(range->low));
      w.Key("recent_high_seconds");
      w.Double(core::toSeconds(range->high));
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

}  // namespace

void Daemon::refreshGauges() {
  for (const auto& [key, snap] : limiter_->snapshots()) {
    Metrics::KeyGauges kg;
    kg.key = key;
    kg.configured_rate = snap.configured_rate;
    kg.effective_rate = snap.effective_rate;
    kg.tokens = snap.tokens;
    kg.cooldown_seconds = core::toSeconds(snap.cooldown_remaining);
    kg.queue_depth = snap.queue_depth;
    kg.advertised_limit = snap.advertised_limit;
    kg.advertised_remaining = snap.advertised_remaining;
    metrics_->setKeyGauges(kg);
    std::vector<uint64_t>& seen_leases = seen_lease_expiries_[key];
    seen_leases.resize(snap.tiers.size(), 0);
    for (size_t i = 0; i < snap.tiers.size(); ++i) {
      const core::TierSnapshot& t = snap.tiers[i];
      Metrics::TierGauges tg;
      tg.key = key;
      tg.tier = t.name;
      tg.running = t.running;
      tg.ceiling = t.ceiling;
      tg.effective_ceiling = t.effective_ceiling;
      tg.queued = t.queued;
      metrics_->setTierGauges(tg);
      if (t.leases_expired > seen_leases[i]) {
        const auto n = static_cast<double>(t.leases_expired - seen_leases[i]);
        metrics_->leaseExpired(key, t.name, n);
        metrics_->taskOutcome(key, t.name, "lease_expired", n);
        seen_leases[i] = t.leases_expired;
      }
    }
    // Throttle counters live in the scheduler: turn their growth into metric increments.
    core::SchedulerCounters& seen = seen_counters_[key];
    const core::SchedulerCounters& c = snap.counters;
    using Count = void (Metrics::*)(std::string_view, std::string_view, double);
    // clang 14 cannot capture a structured binding in a lambda (C++20 allows it, gcc does).
    const std::string& name = key;
    auto bump = [&](Count count, uint64_t now_v, uint64_t& was, std::string_view reason) {
      if (now_v > was) {
        (metrics_.get()->*count)(name, reason, static_cast<double>(now_v - was));
        was = now_v;
      }
    };
    bump(&Metrics::throttle, c.throttled_rate, seen.throttled_rate, "rate");
    bump(&Metrics::throttle, c.throttled_concurrency, seen.throttled_concurrency, "concurrency");
    bump(&Metrics::throttle, c.throttled_cooldown, seen.throttled_cooldown, "cooldown");
    // Shadow mode: what would have been held back, apart from what was.
    bump(&Metrics::shadowThrottle, c.shadow_rate, seen.shadow_rate, "rate");
    bump(&Metrics::shadowThrottle, c.shadow_concurrency, seen.shadow_concurrency, "concurrency");
    bump(&Metrics::shadowThrottle, c.shadow_cooldown, seen.shadow_cooldown, "cooldown");
  }
  metrics_->setTrackedTasks(tasks_->tracker().stats().tracked);
  metrics_->setUpstreamConnections(pool_->busyConnections(), pool_->idleConnections());
  metrics_->setInflight(proxy_->active());
  metrics_->setQueueCapacity(cfg_->queue.max_size);
  metrics_->setClientConnections(proxy_->clientConnections(), proxy_->clientConnectionsAccepted());
  deferred_->refreshGauges();
}

void Daemon::writeDeferredStatus(rapidjson::Writer<rapidjson::StringBuffer>& w) const {
  // Ids, key names, tiers and ages: never a key, never a body.
  const core::DeferredBook& book = deferred_->book();
  w.Key("deferred");
  w.StartObject();
  w.Key("journal");
  w.String(deferred_->journalPath().c_str());
  w.Key("store_ready");
  w.Bool(deferred_->storeReady());
  w.Key("records");
  w.Uint64(book.size());
  w.Key("queued");
  w.StartArray();
  const int64_t now_s = std::chrono::duration_cast<std::chrono::seconds>(
                            clock_.wallNow().time_since_epoch())
                            .count();
  for (const core::DeferredRecord* r : book.all()) {
    if (r->state != core::DeferredState::Queued) {
      continue;
    }
    const size_t position = book.position(r->id).value_or(0);
    w.StartObject();
    w.Key("task");
    w.String(r->id.c_str());
    w.Key("key");
    w.String(r->key.c_str());
    w.Key("tier");
    w.String(r->tier.c_str());
    w.Key("position");
    w.Uint64(position);
    w.Key("age_seconds");
    w.Int64(now_s - r->accepted_ms / 1000);
    if (auto start = deferred_->estimatedStart(*r, position)) {
      w.Key("estimated_start");
      w.Int64(*start);
    }
    w.EndObject();
  }
  w.EndArray();
  w.EndObject();
}

std::string Daemon::statusJson() {
  refreshGauges();
  const auto now = clock_.now();
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> w(buf);
  w.StartObject();
  w.Key("version");
  w.String(HIAPI_PROXY_VERSION);
  w.Key("uptime_seconds");
  w.Double(core::toSeconds(now - started_));
  w.Key("ready");
  w.Bool(ready_);
  w.Key("draining");
  w.Bool(shutting_down_);
  w.Key("limits_mode");
  w.String(cfg_->limits.mode == core::LimitMode::Shadow ? "shadow" : "enforce");
  w.Key("in_flight");
  w.Uint64(proxy_->active());
  w.Key("buffered_reply_bytes");
  w.Uint64(reply_budget_->used());
  w.Key("upstream");
  w.StartObject();
  w.Key("url");
  w.String(cfg_->upstream.url.c_str());
  w.Key("connections_busy");
  w.Uint64(pool_->busyConnections());
  w.Key("connections_idle");
  w.Uint64(pool_->idleConnections());
  w.Key("waiting_for_connection");
  w.Uint64(pool_->waiting());
  w.EndObject();
  writeStoreStatus(w);
  writeKeysStatus(w, limiter_->snapshots());
  writeDeferredStatus(w);
  writeTasksStatus(w, tasks_->tracker(), now);
  w.EndObject();
  return std::string(buf.GetString(), buf.GetSize());
}

}  // namespace hiapi::shell
