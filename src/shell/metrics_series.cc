// Label values to series: each family's cache of the series it has added (so an update does not
// go through prometheus-cpp's Add() and its hashing each time), and the pruning of a removed key's
// series. Kept apart from metrics.cc, which says which families and series exist and when they
// change, because this is the mechanism every update goes through, with its own invariants.

#include <string>
#include <unordered_set>
#include <vector>

#include "hiapi/shell/metrics.h"

namespace hiapi::shell {
namespace {

using prometheus::Counter;
using prometheus::Gauge;
using prometheus::Histogram;

constexpr char kSep = '\x1f';  // between label values in cache keys; never in a label value

}  // namespace

template <typename T>
const std::string& Metrics::cacheKey(const Cached<T>&,
                                    std::initializer_list<std::string_view> values) {
  scratch_.clear();
  for (std::string_view v : values) {
    scratch_.append(v);
    scratch_.push_back(kSep);
  }
  return scratch_;
}

template <typename T>
prometheus::Labels Metrics::labelsFor(const Cached<T>& c,
                                      std::initializer_list<std::string_view> values) {
  prometheus::Labels labels;
  size_t i = 0;
  for (std::string_view v : values) {
    if (i < c.label_names.size()) {
      labels.emplace(c.label_names[i], std::string(v));
    }
    ++i;
  }
  return labels;
}

template <typename T>
T* Metrics::lastIf(const Cached<T>& c, std::initializer_list<std::string_view> values) {
  if (c.last == nullptr || c.last_values.size() != values.size()) {
    return nullptr;
  }
  size_t i = 0;
  for (std::string_view v : values) {
    if (c.last_values[i++] != v) {
      return nullptr;
    }
  }
  return c.last;
}

template <typename T>
void Metrics::remember(Cached<T>& c, T* m, std::initializer_list<std::string_view> values) {
  c.last = m;
  c.last_values.resize(values.size());
  size_t i = 0;
  for (std::string_view v : values) {
    c.last_values[i++].assign(v);
  }
}

Counter& Metrics::counter(Cached<Counter>& c, std::initializer_list<std::string_view> values) {
  if (Counter* last = lastIf(c, values)) {
    return *last;
  }
  const std::string& k = cacheKey(c, values);
  auto it = c.series.find(k);
  Counter* m = it != c.series.end() ? it->second : nullptr;
  if (m == nullptr) {
    m = &c.family->Add(labelsFor(c, values));
    c.series.emplace(k, m);
  }
  remember(c, m, values);
  return *m;
}

Gauge& Metrics::gauge(Cached<Gauge>& c, std::initializer_list<std::string_view> values) {
  const std::string& k = cacheKey(c, values);
  auto it = c.series.find(k);
  if (it != c.series.end()) {
    return *it->second;
  }
  Gauge& m = c.family->Add(labelsFor(c, values));
  c.series.emplace(k, &m);
  return m;
}

Histogram& Metrics::histogram(Cached<Histogram>& c, const std::vector<double>& buckets,
                              std::initializer_list<std::string_view> values) {
  if (Histogram* last = lastIf(c, values)) {
    return *last;
  }
  const std::string& k = cacheKey(c, values);
  auto it = c.series.find(k);
  Histogram* m = it != c.series.end() ? it->second : nullptr;
  if (m == nullptr) {
    m = &c.family->Add(labelsFor(c, values), buckets);
    c.series.emplace(k, m);
  }
  remember(c, m, values);
  return *m;
}

void Metrics::retainKeys(const std::vector<std::string>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  std::unordered_set<std::string> keep;
  for (const std::string& k : keys) {
    keep.insert(std::string(keyLabelLocked(k)));
  }
  auto prune = [&](Cached<Gauge>& c) {
    for (auto it = c.series.begin(); it != c.series.end();) {
      const std::string key = it->first.substr(0, it->first.find(kSep));
      if (keep.count(key) == 0) {
        c.family->Remove(it->second);
        c.last = nullptr;  // (gauges do not use it today; never leave it dangling)
        it = c.series.erase(it);
      } else {
        ++it;
      }
    }
  };
  prune(rate_configured_);
  prune(rate_effective_);
  prune(tokens_available_);
  prune(cooldown_);
  prune(advertised_limit_);
  prune(advertised_remaining_);
  prune(queue_depth_);
  prune(tasks_running_);
  prune(tier_ceiling_);
}

}  // namespace hiapi::shell
