// Which metric families exist and which series they start with, and every update the proxy
// makes to them, each with its label values bounded. The series cache is metrics_series.cc; the
// scrape and the process metrics are metrics_process.cc.

#include "hiapi/shell/metrics.h"

#include "hiapi/core/key_name.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <iterator>

#include "hiapi/version.h"

namespace hiapi::shell {

namespace {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

// Queue waits: from "went almost at once" (1 ms) to the clients' whole budget (60 s).
const std::vector<double> kQueueWaitBuckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                            0.5,   1,      2.5,   5,    10,    20,   30,  45,
                                            60};
// Upstream attempts: tens of ms for a poll up to the 30 s response timeout (and a bit above).
const std::vector<double> kLatencyBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                          1,     2.5,  5,     10,   20,  30,   60};
// A deferred create waits for slots held by minute-long tasks, up to deferred.max_age.
const std::vector<double> kDeferredWaitBuckets{1,   2,   5,    10,   30,   60,    120,  300,
                                               600, 1200, 1800, 3600, 7200, 14400, 21600};
const std::vector<double> NoBuckets{};

constexpr size_t kMaxLabelLength = 64;

std::vector<std::string> splitLabels(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    const size_t comma = s.find(',');
    out.emplace_back(s.substr(0, comma));
    if (comma == std::string_view::npos) {
      break;
    }
    s.remove_prefix(comma + 1);
  }
  return out;
}

template <typename T>
const char* typeName();
template <>
const char* typeName<Counter>() { return "counter"; }
template <>
const char* typeName<Gauge>() { return "gauge"; }
template <>
const char* typeName<Histogram>() { return "histogram"; }

prometheus::Family<Counter>& build(prometheus::Registry& r, Counter*, const char* name,
                                   const char* help) {
  return prometheus::BuildCounter().Name(name).Help(help).Register(r);
}
prometheus::Family<Gauge>& build(prometheus::Registry& r, Gauge*, const char* name,
                                 const char* help) {
  return prometheus::BuildGauge().Name(name).Help(help).Register(r);
}
prometheus::Family<Histogram>& build(prometheus::Registry& r, Histogram*, const char* name,
                                     const char* help) {
  return prometheus::BuildHistogram().Name(name).Help(help).Register(r);
}

/// Outcomes of deferred creates; taken_over: queued at an instance whose heartbeat lapsed, now
/// held here.
constexpr std::string_view kDeferredOutcomes[] = {"accepted", "submitted", "failed",
                                                  "expired",  "cancelled", "taken_over"};

/// @return @p v when it is one of [@p begin, @p end), else @p fallback.
std::string_view oneOf(std::string_view v, const std::string_view* begin,
                       const std::string_view* end, std::string_view fallback) {
  const auto* it = std::find(begin, end, v);
  return it != end ? *it : fallback;
}
std::string_view oneOf(std::string_view v, std::initializer_list<std::string_view> allowed,
                       std::string_view fallback) {
  return oneOf(v, allowed.begin(), allowed.end(), fallback);
}
template <size_t N>
std::string_view oneOf(std::string_view v, const std::string_view (&allowed)[N],
                       std::string_view fallback) {
  return oneOf(v, std::begin(allowed), std::end(allowed), fallback);
}

/// A free word (proxy error code, retry reason, tier): [A-Za-z0-9_.-], at most 64 characters,
/// otherwise "other".
std::string_view word(std::string_view v) {
  if (v.empty() || v.size() > kMaxLabelLength) {
    return "other";
  }
  for (char c : v) {
    const auto u = static_cast<unsigned char>(c);
    if (!(std::isalnum(u) || c == '_' || c == '-' || c == '.')) {
      return "other";
    }
  }
  return v;
}

constexpr std::string_view kRoutes[] = {"create", "poll", "list", "other"};
/// Why the proxy retries an attempt (RetryPolicy's reasons for a retry).
constexpr std::string_view kRetryReasons[] = {"retry_429", "retry_503", "retry_server_error",
                                              "retry_network_error"};
constexpr std::string_view kWaitOutcomes[] = {"sent", "queue_timeout", "client_gone"};

std::string_view route(std::string_view r) {
  return oneOf(r, {"create", "poll", "list", "other"}, "other");
}

std::string code(int status) {
  if (status >= 100 && status <= 599) {
    return std::to_string(status);
  }
  return "0";
}

bool looksLikeSecret(std::string_view v) {
  auto starts = [&](std::string_view p) {
    if (v.size() < p.size()) {
      return false;
    }
    for (size_t i = 0; i < p.size(); ++i) {
      const char c = v[i] >= 'A' && v[i] <= 'Z' ? static_cast<char>(v[i] - 'A' + 'a') : v[i];
      if (c != p[i]) {
        return false;
      }
    }
    return true;
  };
  return starts("sk-") || starts("bearer") || v.size() > kMaxLabelLength;
}

}  // namespace

std::vector<MetricDoc> metricDocs() {
  std::vector<MetricDoc> out;
#define HIAPI_METRICS_DOC(member, Type, name, labels, buckets, help) \
  out.push_back({name, typeName<prometheus::Type>(), labels, help});
  HIAPI_METRICS(HIAPI_METRICS_DOC)
#undef HIAPI_METRICS_DOC
#define HIAPI_PROCESS_DOC(member, Type, name, help) \
  out.push_back({name, typeName<prometheus::Type>(), "", help});
  HIAPI_PROCESS_METRICS(HIAPI_PROCESS_DOC)
#undef HIAPI_PROCESS_DOC
  return out;
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
#define HIAPI_METRICS_REGISTER(member, Type, name, labels, buckets, help)              \
  member##_.family = &build(*registry_, static_cast<prometheus::Type*>(nullptr), name, help); \
  member##_.label_names = splitLabels(labels);
  HIAPI_METRICS(HIAPI_METRICS_REGISTER)
#undef HIAPI_METRICS_REGISTER
  gauge(build_info_, {HIAPI_PROXY_VERSION}).Set(1);
  // Fixed label sets start at zero (Prometheus' advice: no "missing" series before an event).
  for (std::string_view r : {"hit", "coalesced", "miss"}) {
    counter(poll_cache_, {r});
  }
  declareStore();
  counter(config_reloads_, {"ok"});
  counter(config_reloads_, {"failed"});
  for (int e = 0; e <= static_cast<int>(core::ProxyError::Internal); ++e) {
    counter(errors_, {core::proxyErrorInfo(static_cast<core::ProxyError>(e)).code});
  }
  for (std::string_view r : kRoutes) {
    histogram(upstream_latency_, kLatencyBuckets, {r});
    histogram(client_request_duration_, kLatencyBuckets, {r});
    counter(client_received_bytes_, {r});
    counter(client_sent_bytes_, {r});
  }
  counter(client_connections_accepted_, {});
  gauge(client_connections_, {});
  // Nothing says otherwise until the first attempt.
  upstream_up_series_ = &gauge(upstream_up_, {});
  upstream_up_series_->Set(1);
  setReady(false);
  setInflight(0);
  setQueueCapacity(0);
  setTrackedTasks(0);
  setUpstreamConnections(0, 0);
}

Metrics::~Metrics() = default;

std::string_view Metrics::keyLabelLocked(std::string_view key) {
  if (!last_key_label_.empty() && key == last_key_) {
    return last_key_label_;  // the same key as last time (the usual case): no hashing
  }
  const std::string_view label = keyLabelUncached(key);
  last_key_.assign(key);
  last_key_label_ = label;
  return label;
}

std::string_view Metrics::keyLabelUncached(std::string_view key) {
  key = core::keyDisplayName(key);
  if (key.empty()) {
    return "none";
  }
  if (looksLikeSecret(key)) {
    return "redacted";
  }
  if (auto it = keys_seen_.find(key); it != keys_seen_.end()) {
    return *it;
  }
  if (keys_seen_.size() >= kMaxKeyLabels) {
    return "overflow";
  }
  return *keys_seen_.emplace(key).first;
}

std::string Metrics::keyLabel(std::string_view key) {
  std::lock_guard<std::mutex> lock(mu_);
  return std::string(keyLabelLocked(key));
}

// ---- events ---------------------------------------------------------------------------------------

void Metrics::clientResponse(std::string_view key, std::string_view r, int status) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(client_responses_, {keyLabelLocked(key), route(r), code(status)}).Increment();
}

void Metrics::proxyError(std::string_view c) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(errors_, {word(c)}).Increment();
}

void Metrics::proxyError(core::ProxyError e) { proxyError(core::proxyErrorInfo(e).code); }

void Metrics::upstreamRequest(std::string_view key, std::string_view r, int status,
                              double latency_s) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string_view rt = route(r);
  counter(upstream_requests_, {keyLabelLocked(key), rt, code(status)}).Increment();
  upstream_up_series_->Set(status != 0 ? 1 : 0);
  histogram(upstream_latency_, kLatencyBuckets, {rt}).Observe(std::max(0.0, latency_s));
}

void Metrics::upstream429(std::string_view key, std::string_view cause) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(upstream_429_,
          {keyLabelLocked(key), oneOf(cause, {"rate", "concurrency", "unknown"}, "unknown")})
      .Increment();
}

void Metrics::rateReaction(std::string_view key, std::string_view reaction) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(rate_reactions_,
          {keyLabelLocked(key), oneOf(reaction, {"resync", "decrease", "guard"}, "decrease")})
      .Increment();
}

void Metrics::throttle(std::string_view key, std::string_view reason, double count) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(throttled_,
          {keyLabelLocked(key),
           oneOf(reason, {"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"},
                 "other")})
      .Increment(count);
}

void Metrics::shadowThrottle(std::string_view key, std::string_view reason, double count) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(shadow_throttled_,
          {keyLabelLocked(key), oneOf(reason, {"rate", "concurrency", "cooldown"}, "other")})
      .Increment(count);
}

void Metrics::retry(std::string_view key, std::string_view reason) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(retries_, {keyLabelLocked(key), word(reason)}).Increment();
}

void Metrics::queueWait(std::string_view key, std::string_view r, std::string_view outcome,
                        double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  histogram(queue_wait_, kQueueWaitBuckets,
            {keyLabelLocked(key), route(r), oneOf(outcome, kWaitOutcomes, "other")})
      .Observe(std::max(0.0, seconds));
}

void Metrics::clientRequest(std::string_view r, double seconds, uint64_t bytes_in,
                            uint64_t bytes_out) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string_view rt = route(r);
  histogram(client_request_duration_, kLatencyBuckets, {rt}).Observe(std::max(0.0, seconds));
  counter(client_received_bytes_, {rt}).Increment(static_cast<double>(bytes_in));
  counter(client_sent_bytes_, {rt}).Increment(static_cast<double>(bytes_out));
}

void Metrics::pollHeld(std::string_view key) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(polls_held_, {keyLabelLocked(key)}).Increment();
}

void Metrics::pollCache(std::string_view result) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(poll_cache_, {oneOf(result, {"hit", "coalesced", "miss"}, "other")}).Increment();
}

void Metrics::taskOutcome(std::string_view key, std::string_view tier, std::string_view outcome,
                          double count) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(tasks_, {keyLabelLocked(key), word(tier),
                   oneOf(outcome, {"success", "fail", "lease_expired", "other"}, "other")})
      .Increment(count);
}

void Metrics::leaseExpired(std::string_view key, std::string_view tier, double count) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(lease_expiries_, {keyLabelLocked(key), word(tier)}).Increment(count);
}

void Metrics::deferredOutcome(std::string_view key, std::string_view tier,
                              std::string_view outcome) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(deferred_, {keyLabelLocked(key), word(tier),
                      oneOf(outcome, kDeferredOutcomes, "other")})
      .Increment();
}

void Metrics::deferredRefused(std::string_view reason) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(deferred_refused_, {oneOf(reason, {"store", "full"}, "other")}).Increment();
}

void Metrics::deferredWait(std::string_view tier, double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  histogram(deferred_wait_, kDeferredWaitBuckets, {word(tier)}).Observe(std::max(0.0, seconds));
}

void Metrics::setDeferredQueued(std::string_view key, std::string_view tier, size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(deferred_tasks_, {keyLabelLocked(key), word(tier)}).Set(static_cast<double>(n));
}

void Metrics::setDeferredStoreReady(bool ready) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(deferred_store_ready_, {}).Set(ready ? 1 : 0);
  for (std::string_view r : {"store", "full"}) {
    counter(deferred_refused_, {r});
  }
}

void Metrics::configReload(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  counter(config_reloads_, {ok ? "ok" : "failed"}).Increment();
}

void Metrics::declareKey(std::string_view key, const std::vector<std::string>& tiers) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string k(keyLabelLocked(key));
  for (std::string_view r : {"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"}) {
    counter(throttled_, {k, r});
  }
  for (std::string_view r : {"rate", "concurrency", "cooldown"}) {
    counter(shadow_throttled_, {k, r});
  }
  for (std::string_view c : {"rate", "concurrency", "unknown"}) {
    counter(upstream_429_, {k, c});
  }
  for (std::string_view r : {"resync", "decrease"}) {
    counter(rate_reactions_, {k, r});
  }
  for (std::string_view r : kRetryReasons) {
    counter(retries_, {k, r});
  }
  // The code label's set is open; its usual value stands for the family until others appear.
  for (std::string_view r : kRoutes) {
    counter(client_responses_, {k, r, "200"});
    counter(upstream_requests_, {k, r, "200"});
  }
  for (std::string_view r : {"create", "poll"}) {
    for (std::string_view o : kWaitOutcomes) {
      histogram(queue_wait_, kQueueWaitBuckets, {k, r, o});
    }
  }
  counter(polls_held_, {k});
  for (std::string_view o : kStoreTokenOutcomes) {
    counter(store_tokens_, {k, o});
  }
  for (const std::string& tier : tiers) {
    const std::string_view t = word(tier);
    for (std::string_view o : {"success", "fail", "lease_expired"}) {
      counter(tasks_, {k, t, o});
    }
    counter(lease_expiries_, {k, t});
    gauge(deferred_tasks_, {k, t});
    histogram(deferred_wait_, kDeferredWaitBuckets, {t});
    for (std::string_view o : kDeferredOutcomes) {
      counter(deferred_, {k, t, o});
    }
  }
}

// ---- gauges -------------------------------------------------------------------------------------

void Metrics::setKeyGauges(const KeyGauges& g) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string k(keyLabelLocked(g.key));
  gauge(rate_configured_, {k}).Set(g.configured_rate);
  gauge(rate_effective_, {k}).Set(g.effective_rate);
  gauge(tokens_available_, {k}).Set(g.tokens);
  gauge(cooldown_, {k}).Set(std::max(0.0, g.cooldown_seconds));
  gauge(queue_depth_, {k, "all"}).Set(static_cast<double>(g.queue_depth));
  if (g.advertised_limit) {
    gauge(advertised_limit_, {k}).Set(*g.advertised_limit);
  }
  if (g.advertised_remaining) {
    gauge(advertised_remaining_, {k}).Set(*g.advertised_remaining);
  }
}

void Metrics::setTierGauges(const TierGauges& g) {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string k(keyLabelLocked(g.key));
  const std::string_view t = word(g.tier);
  gauge(tasks_running_, {k, t}).Set(g.running);
  gauge(tier_ceiling_, {k, t, "configured"}).Set(g.ceiling);
  gauge(tier_ceiling_, {k, t, "effective"}).Set(g.effective_ceiling);
  gauge(queue_depth_, {k, t}).Set(static_cast<double>(g.queued));
}

void Metrics::setTrackedTasks(size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(tracked_tasks_, {}).Set(static_cast<double>(n));
}

void Metrics::setUpstreamConnections(size_t busy, size_t idle) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(upstream_connections_, {"busy"}).Set(static_cast<double>(busy));
  gauge(upstream_connections_, {"idle"}).Set(static_cast<double>(idle));
}

void Metrics::setReady(bool ready) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(ready_, {}).Set(ready ? 1 : 0);
}

void Metrics::setClientConnections(size_t open, uint64_t accepted) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(client_connections_, {}).Set(static_cast<double>(open));
  Counter& c = counter(client_connections_accepted_, {});
  const auto total = static_cast<double>(accepted);
  if (total > c.Value()) {
    c.Increment(total - c.Value());
  }
}

void Metrics::setQueueCapacity(size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(queue_capacity_, {}).Set(static_cast<double>(n));
}

void Metrics::setInflight(size_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(inflight_, {}).Set(static_cast<double>(n));
}


}  // namespace hiapi::shell
