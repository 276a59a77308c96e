// The shared store's metrics (store.kind: redis), kept apart from metrics.cc.

#include <algorithm>

#include "hiapi/shell/metrics.h"

namespace hiapi::shell {
namespace {
constexpr std::string_view kStoreErrorReasons[] = {"connect",    "auth",  "timeout",
                                                   "wrong_type", "reply", "disconnect"};
}  // namespace

void Metrics::declareStore() {
  // mu_ is not needed yet (the constructor), but the helpers expect it held.
  std::lock_guard<std::mutex> lock(mu_);
  gauge(store_instances_, {}).Set(1);
  gauge(store_degraded_, {}).Set(0);
  for (std::string_view r : kStoreErrorReasons) {
    counter(store_errors_, {r});
  }
  histogram(store_round_trip_, kStoreRttBuckets, {});
}

void Metrics::storeError(std::string_view reason) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string_view r = "reply";
  for (std::string_view known : kStoreErrorReasons) {
    if (reason == known) {
      r = known;
    }
  }
  counter(store_errors_, {r}).Increment();
}

void Metrics::storeRoundTrip(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  histogram(store_round_trip_, kStoreRttBuckets, {}).Observe(std::max(0.0, seconds));
}

void Metrics::storeTokens(std::string_view key, std::string_view outcome, double n) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string_view o = "local";
  for (std::string_view known : kStoreTokenOutcomes) {
    if (outcome == known) {
      o = known;
    }
  }
  counter(store_tokens_, {keyLabelLocked(key), o}).Increment(std::max(0.0, n));
}

void Metrics::setStoreState(uint32_t instances, bool degraded) {
  std::lock_guard<std::mutex> lock(mu_);
  gauge(store_instances_, {}).Set(static_cast<double>(instances));
  gauge(store_degraded_, {}).Set(degraded ? 1 : 0);
}

}  // namespace hiapi::shell
