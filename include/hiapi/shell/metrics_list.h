#pragma once
// Every metric the daemon exposes, in one list. metrics.cc expands it to register the families,
// metricDocs() expands it for the README table, and a test keeps docs/metrics.md in sync with it.
//
// HIAPI_METRICS(X): X(member, Type, "name", "labels", Buckets, "help")
//   member   the Metrics data member holding the family (family_<member>)
//   Type     Counter | Gauge | Histogram (prometheus-cpp class)
//   labels   comma-separated label names, "" for none; every value comes from a bounded set
//   Buckets  a kBuckets… constant in metrics.cc for histograms, NoBuckets otherwise
//   help     one line, no backslash, no newline (the 0.0.4 serializer does not escape help)
//
// Units: seconds, bytes, requests per second; counters end in _total.

// clang-format off
#define HIAPI_METRICS(X)                                                                          \
  X(client_request_duration, Histogram, "hiapi_proxy_client_request_duration_seconds", "route",    \
    kLatencyBuckets,                                                                              \
    "Time from a client request's arrival to its answer, queueing and retries included")         \
  X(client_received_bytes, Counter, "hiapi_proxy_client_received_bytes_total", "route",           \
    NoBuckets, "Request body bytes received from clients, by route")                              \
  X(client_sent_bytes, Counter, "hiapi_proxy_client_sent_bytes_total", "route", NoBuckets,        \
    "Response body bytes sent to clients, by route")                                              \
  X(client_connections_accepted, Counter, "hiapi_proxy_client_connections_accepted_total", "",    \
    NoBuckets, "Client connections accepted")                                                     \
  X(client_connections, Gauge, "hiapi_proxy_client_connections", "", NoBuckets,                  \
    "Client connections open")                                                                    \
  X(client_responses, Counter, "hiapi_proxy_client_responses_total", "key,route,code", NoBuckets, \
    "Responses sent to clients, by key name, route and HTTP status code")                        \
  X(errors, Counter, "hiapi_proxy_errors_total", "code", NoBuckets,                              \
    "Errors the proxy answered itself (not the upstream's), by proxy error code")                 \
  X(upstream_requests, Counter, "hiapi_proxy_upstream_requests_total", "key,route,code",          \
    NoBuckets,                                                                                    \
    "Attempts sent upstream, by key name, route and HTTP status code (0 = no HTTP answer)")        \
  X(upstream_latency, Histogram, "hiapi_proxy_upstream_latency_seconds", "route",                 \
    kLatencyBuckets, "Time from sending an attempt upstream to its complete answer")             \
  X(upstream_429, Counter, "hiapi_proxy_upstream_429_total", "key,cause", NoBuckets,              \
    "Upstream 429 answers, by key name and cause (rate, concurrency, unknown)")                   \
  X(throttled, Counter, "hiapi_proxy_throttled_total", "key,reason", NoBuckets,                   \
    "Requests the proxy held back or refused, by key name and reason (rate, concurrency, "        \
    "cooldown, queue_full, queue_timeout)")                                                       \
  X(shadow_throttled, Counter, "hiapi_proxy_shadow_throttled_total", "key,reason", NoBuckets,    \
    "Requests sent at once in shadow mode (limits.mode: shadow) that enforcing would have held "  \
    "back, by key name and reason (rate, concurrency, cooldown)")                                 \
  X(rate_reactions, Counter, "hiapi_proxy_rate_429_reactions_total", "key,reaction", NoBuckets,     \
    "How the proxy answered upstream rate 429s, by key name and reaction (resync = pause only, "  \
    "decrease = rate cut, guard = from now on at most `burst` per `burst / rate`, for an "        \
    "upstream without counters)")                                                                 \
  X(retries, Counter, "hiapi_proxy_retries_total", "key,reason", NoBuckets,                       \
    "Upstream attempts retried by the proxy, by key name and reason")                             \
  X(queue_wait, Histogram, "hiapi_proxy_queue_wait_seconds", "key,route,outcome",                \
    kQueueWaitBuckets,                                                                            \
    "Time a request waited in the admission queue, by how the wait ended (sent, queue_timeout, "  \
    "client_gone)")                                                                               \
  X(poll_cache, Counter, "hiapi_proxy_poll_cache_total", "result", NoBuckets,                     \
    "Task polls by how they were answered (hit = cached, coalesced = joined a fetch, miss)")      \
  X(polls_held, Counter, "hiapi_proxy_polls_held_total", "key", NoBuckets,                        \
    "Client polls held until their task's likely end (tasks.hold_near_end), by key name")         \
  X(tasks, Counter, "hiapi_proxy_tasks_total", "key,tier,outcome", NoBuckets,                    \
    "Tasks that left the tracker, by key name, tier and outcome (success, fail, lease_expired, "  \
    "other)")                                                                                     \
  X(lease_expiries, Counter, "hiapi_proxy_lease_expiries_total", "key,tier", NoBuckets,          \
    "Tier slots freed because no terminal status was seen before the lease ran out")              \
  X(deferred_tasks, Gauge, "hiapi_proxy_deferred_tasks", "key,tier", NoBuckets,                 \
    "Deferred creates the proxy holds that wait for a slot, by key name and tier")                \
  X(deferred, Counter, "hiapi_proxy_deferred_total", "key,tier,outcome", NoBuckets,              \
    "Deferred creates by key name, tier and outcome (accepted, submitted, failed, expired, "      \
    "cancelled; taken_over: queued at an instance whose heartbeat lapsed, now held here)")        \
  X(deferred_refused, Counter, "hiapi_proxy_deferred_refused_total", "reason", NoBuckets,        \
    "Creates that could have been deferred but kept waiting, by reason (store, full)")            \
  X(deferred_wait, Histogram, "hiapi_proxy_deferred_wait_seconds", "tier", kDeferredWaitBuckets,  \
    "Time from a deferred create's acceptance to HiAPI's task (1 s to 6 h buckets)")              \
  X(deferred_store_ready, Gauge, "hiapi_proxy_deferred_store_ready", "", NoBuckets,               \
    "1 when the deferred journal is writable and creates may be deferred, else 0")                \
  X(store_instances, Gauge, "hiapi_proxy_store_instances", "", NoBuckets,                       \
    "Live proxy instances sharing the store, counted from heartbeats (1 with a local store)")    \
  X(store_degraded, Gauge, "hiapi_proxy_store_degraded", "", NoBuckets,                           \
    "1 while the shared store cannot be used and this instance runs on its local share, else 0") \
  X(store_errors, Counter, "hiapi_proxy_store_errors_total", "reason", NoBuckets,                 \
    "Shared store failures, by reason (connect, auth, timeout, wrong_type, reply, disconnect)")   \
  X(store_round_trip, Histogram, "hiapi_proxy_store_round_trip_seconds", "", kStoreRttBuckets,    \
    "Time from sending a command to the shared store to its reply")                              \
  X(store_tokens, Counter, "hiapi_proxy_store_tokens_total", "key,outcome", NoBuckets,            \
    "Tokens of the shared budget, by key name and outcome (granted, returned, local)")           \
  X(config_reloads, Counter, "hiapi_proxy_config_reloads_total", "result", NoBuckets,            \
    "Configuration reloads (SIGHUP), by result (ok, failed)")                                     \
  X(rate_configured, Gauge, "hiapi_proxy_rate_configured_requests_per_second", "key", NoBuckets, \
    "Configured request rate of a key")                                                           \
  X(rate_effective, Gauge, "hiapi_proxy_rate_effective_requests_per_second", "key", NoBuckets,   \
    "Effective request rate of a key after adaptive decreases")                                   \
  X(tokens_available, Gauge, "hiapi_proxy_tokens_available", "key", NoBuckets,                    \
    "Tokens in the key's bucket (negative while requests are borrowed ahead)")                    \
  X(advertised_limit, Gauge, "hiapi_proxy_upstream_ratelimit_limit", "key", NoBuckets,            \
    "Last X-RateLimit-Limit the upstream advertised for a key (absent until one is seen)")        \
  X(advertised_remaining, Gauge, "hiapi_proxy_upstream_ratelimit_remaining", "key", NoBuckets,    \
    "Last X-RateLimit-Remaining the upstream advertised for a key (absent until one is seen)")    \
  X(cooldown, Gauge, "hiapi_proxy_cooldown_seconds", "key", NoBuckets,                            \
    "Seconds left in the key's cool-down after an upstream 429 (0 = none)")                       \
  X(queue_depth, Gauge, "hiapi_proxy_queue_depth", "key,tier", NoBuckets,                         \
    "Requests waiting in the admission queue, per key and tier (tier=all: the whole key)")        \
  X(queue_capacity, Gauge, "hiapi_proxy_queue_capacity", "", NoBuckets,                         \
    "Requests the admission queue holds at most, all keys together (queue.max_size)")            \
  X(tasks_running, Gauge, "hiapi_proxy_tasks_running", "key,tier", NoBuckets,                     \
    "Tasks holding a slot of the tier's concurrency gate")                                        \
  X(tier_ceiling, Gauge, "hiapi_proxy_tier_ceiling", "key,tier,kind", NoBuckets,                  \
    "Concurrency ceiling of a tier (kind=configured, or effective after upstream 429s)")          \
  X(tracked_tasks, Gauge, "hiapi_proxy_tracked_tasks", "", NoBuckets,                             \
    "Tasks held by the task tracker")                                                             \
  X(upstream_up, Gauge, "hiapi_proxy_upstream_up", "", NoBuckets,                                 \
    "1 while the upstream answers (the last attempt got an HTTP reply, whatever its status), 0 "  \
    "after one got none (connect error, TLS error, reset, timeout)")                              \
  X(upstream_connections, Gauge, "hiapi_proxy_upstream_connections", "state", NoBuckets,          \
    "Upstream connections by state (busy, idle)")                                                 \
  X(inflight, Gauge, "hiapi_proxy_inflight_requests", "", NoBuckets,                              \
    "Client requests received and not yet answered")                                              \
  X(ready, Gauge, "hiapi_proxy_ready", "", NoBuckets,                                             \
    "1 when the configuration is loaded and the listener is up, else 0")                          \
  X(build_info, Gauge, "hiapi_proxy_build_info", "version", NoBuckets,                            \
    "Always 1; the version label is the daemon's version")

// Process metrics, read from /proc/self at scrape time (not in the registry).
// HIAPI_PROCESS_METRICS(X): X(member, Type, "name", "help")
#define HIAPI_PROCESS_METRICS(X)                                                                  \
  X(cpu, Counter, "process_cpu_seconds_total", "Total user and system CPU time spent in seconds") \
  X(resident, Gauge, "process_resident_memory_bytes", "Resident memory size in bytes")            \
  X(virtual_mem, Gauge, "process_virtual_memory_bytes", "Virtual memory size in bytes")           \
  X(open_fds, Gauge, "process_open_fds", "Number of open file descriptors")                       \
  X(max_fds, Gauge, "process_max_fds", "Maximum number of open file descriptors")                 \
  X(start_time, Gauge, "process_start_time_seconds",                                              \
    "Start time of the process since unix epoch in seconds")
// clang-format on
