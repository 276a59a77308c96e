#pragma once
// Prometheus metrics of the daemon: one prometheus-cpp registry with every family listed in
// metrics_list.h, plus process metrics read from /proc/self at scrape time.
//
// Labels come from bounded sets only: key = the key's NAME from the config (or "pt-<fingerprint>"
// for passthrough keys), never a key; tier = tier name; route = create|poll|list|other;
// code = HTTP status; reason/cause/outcome/result = fixed words. Values outside a fixed set are
// mapped to "other"; a key label that looks like a secret becomes "redacted"; after kMaxKeyLabels
// distinct key names, further ones are counted under "overflow".

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "hiapi/core/proxy_error.h"
#include "hiapi/core/string_hash.h"
#include "hiapi/shell/metrics_list.h"

namespace hiapi::shell {

/// Round trips to the shared store: loopback is sub-millisecond, a cross-zone Redis a few ms.
inline const std::vector<double> kStoreRttBuckets{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                                  0.01,   0.025,   0.05,   0.1,   0.25,   0.5};
/// hiapi_proxy_store_tokens_total's outcomes: reserved from the store, given back to it, and
/// spent from the local share while the store was unusable.
inline constexpr std::string_view kStoreTokenOutcomes[] = {"granted", "returned", "local"};

/// One row of the metric list (README / docs/metrics.md table).
struct MetricDoc {
  std::string name;
  std::string type;    ///< counter | gauge | histogram
  std::string labels;  ///< comma-separated, "" for none
  std::string help;
};

/// Every metric the daemon exposes (registry families, then process metrics), in list order.
/// Thread-safety: pure.
std::vector<MetricDoc> metricDocs();

/// Thread-safety: every method is safe to call from any thread (one internal mutex guards the
/// label caches; prometheus-cpp metrics are atomic). In the daemon all calls come from the loop.
class Metrics {
public:
  /// Distinct key label values kept; further key names are reported as "overflow".
  static constexpr size_t kMaxKeyLabels = 256;

  Metrics();
  ~Metrics();
  Metrics(const Metrics&) = delete;
  Metrics& operator=(const Metrics&) = delete;

  std::shared_ptr<prometheus::Registry> registry() { return registry_; }

  /// @return the text exposition format 0.0.4 of the registry plus the process metrics.
  std::string serialize();

  // ---- events (counters, histograms) --------------------------------------------------------
  /// A response went to a client. @param status HTTP status sent.
  void clientResponse(std::string_view key, std::string_view route, int status);
  /// The proxy answered an error itself. @param code the lower-case proxy error code.
  void proxyError(std::string_view code);
  void proxyError(core::ProxyError e);
  /// One upstream attempt finished (and hiapi_proxy_upstream_up follows it).
  /// @param status 0 = no HTTP answer (connect error, timeout).
  void upstreamRequest(std::string_view key, std::string_view route, int status, double latency_s);
  /// @param cause rate | concurrency | unknown
  void upstream429(std::string_view key, std::string_view cause);
  /// A rate 429 answered by a pause only (@p reaction "resync") or by a rate cut ("decrease").
  void rateReaction(std::string_view key, std::string_view reaction);
  /// @param reason rate | concurrency | cooldown | queue_full | queue_timeout
  /// @param count how many (the daemon adds up the scheduler's counters since the last scrape)
  void throttle(std::string_view key, std::string_view reason, double count = 1);
  /// Shadow mode: requests sent that enforcing would have held back (rate, concurrency,
  /// cooldown).
  void shadowThrottle(std::string_view key, std::string_view reason, double count = 1);
  /// @param reason a fixed word: status_429, status_5xx, network, timeout, … (sanitised)
  void retry(std::string_view key, std::string_view reason);
  /// Time a request spent queued. @param outcome how the wait ended: sent | queue_timeout |
  /// client_gone.
  void queueWait(std::string_view key, std::string_view route, std::string_view outcome,
                 double seconds);
  /// A client request was answered (or its client left): its whole time and body bytes.
  void clientRequest(std::string_view route, double seconds, uint64_t bytes_in,
                     uint64_t bytes_out);
  /// @param result hit | coalesced | miss
  void pollCache(std::string_view result);
  /// A client poll was held until its task's likely end (tasks.hold_near_end).
  void pollHeld(std::string_view key);
  /// @param outcome success | fail | lease_expired | other
  void taskOutcome(std::string_view key, std::string_view tier, std::string_view outcome,
                   double count = 1);
  void leaseExpired(std::string_view key, std::string_view tier, double count = 1);
  void configReload(bool ok);
  /// Deferred creates: @p outcome is accepted, submitted, failed, expired or cancelled.
  void deferredOutcome(std::string_view key, std::string_view tier, std::string_view outcome);
  /// A create that could have been deferred kept waiting: @p reason is store or full.
  void deferredRefused(std::string_view reason);
  void deferredWait(std::string_view tier, double seconds);
  void setDeferredQueued(std::string_view key, std::string_view tier, size_t n);
  void setDeferredStoreReady(bool ready);
  // The shared store (metrics_store.cc).
  void storeError(std::string_view reason);
  void storeRoundTrip(double seconds);
  void storeTokens(std::string_view key, std::string_view outcome, double n);
  void setStoreState(uint32_t instances, bool degraded);

  // ---- gauges ---------------------------------------------------------------------------------
  struct KeyGauges {
    std::string key;
    double configured_rate = 0;  ///< requests per second
    double effective_rate = 0;   ///< requests per second
    double tokens = 0;
    double cooldown_seconds = 0;
    size_t queue_depth = 0;
    std::optional<double> advertised_limit;      ///< X-RateLimit-Limit, once seen
    std::optional<double> advertised_remaining;  ///< X-RateLimit-Remaining, once seen
  };
  struct TierGauges {
    std::string key, tier;
    double running = 0, ceiling = 0, effective_ceiling = 0;
    size_t queued = 0;
  };
  void setKeyGauges(const KeyGauges& g);
  void setTierGauges(const TierGauges& g);
  void setTrackedTasks(size_t n);
  void setUpstreamConnections(size_t busy, size_t idle);
  void setReady(bool ready);
  void setInflight(size_t n);
  void setQueueCapacity(size_t n);
  /// @param open client connections open now; @param accepted accepted since the start.
  void setClientConnections(size_t open, uint64_t accepted);
  /// Removes the per-key gauge series (rate, tokens, cooldown, queue depth, tiers) of keys not in
  /// @p keys, e.g. after a reload dropped a key. Counters are kept (they must stay monotonic).
  void retainKeys(const std::vector<std::string>& keys);

  /// Creates at zero the reason/cause/outcome series of a configured key (throttles, upstream
  /// 429s, retries, tasks, lease expiries, held polls, queue waits), so that dashboards show 0
  /// instead of "no data" before the first event. Call for every configured key at start and
  /// after a reload.
  void declareKey(std::string_view key, const std::vector<std::string>& tiers);

  /// @return the label value used for @p key (sanitised as described in the file comment).
  /// Exposed for tests.
  std::string keyLabel(std::string_view key);

private:
  void declareStore();
  template <typename T>
  struct Cached {
    prometheus::Family<T>* family = nullptr;
    std::vector<std::string> label_names;
    std::unordered_map<std::string, T*> series;
    /// The series used last and its label values: consecutive observations mostly hit the
    /// same series, and comparing a few short strings is cheaper than building and hashing a key.
    T* last = nullptr;
    std::vector<std::string> last_values;
  };
  /// @return c.last when @p values are c.last_values.
  template <typename T>
  static T* lastIf(const Cached<T>& c, std::initializer_list<std::string_view> values);
  template <typename T>
  static void remember(Cached<T>& c, T* m, std::initializer_list<std::string_view> values);

  prometheus::Counter& counter(Cached<prometheus::Counter>& c,
                               std::initializer_list<std::string_view> values);
  prometheus::Gauge& gauge(Cached<prometheus::Gauge>& c,
                           std::initializer_list<std::string_view> values);
  prometheus::Histogram& histogram(Cached<prometheus::Histogram>& c,
                                   const std::vector<double>& buckets,
                                   std::initializer_list<std::string_view> values);
  /// @return a literal or a string kept in keys_seen_ (valid while the lock is held).
  std::string_view keyLabelLocked(std::string_view key);
  std::string_view keyLabelUncached(std::string_view key);
  template <typename T>
  static prometheus::Labels labelsFor(const Cached<T>& c,
                                      std::initializer_list<std::string_view> values);
  /// Builds the series' cache key in scratch_ (no allocation once it has grown). Needs the lock.
  template <typename T>
  const std::string& cacheKey(const Cached<T>& c, std::initializer_list<std::string_view> values);

  std::shared_ptr<prometheus::Registry> registry_;
  std::mutex mu_;
  std::unordered_set<std::string, core::StringHash, std::equal_to<>> keys_seen_;
  std::string scratch_;
  std::string last_key_;              ///< keyLabelLocked()'s last input...
  std::string_view last_key_label_;   ///< ...and answer (a literal or a keys_seen_ entry)
  prometheus::Gauge* upstream_up_series_ = nullptr;

#define HIAPI_METRICS_MEMBER(member, Type, name, labels, buckets, help) \
  Cached<prometheus::Type> member##_;
  HIAPI_METRICS(HIAPI_METRICS_MEMBER)
#undef HIAPI_METRICS_MEMBER
};

}  // namespace hiapi::shell
