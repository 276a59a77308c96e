#pragma once
// The daemon's configuration: parsed from YAML, strictly validated, immutable once built.
// Exceptions are thrown only here (control plane): a ConfigError names file, line, column and the
// key path, e.g. "conf/hiapi-proxy.yaml:12:9: limits.rate: expected a rate like 60/min or 5/s".

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "hiapi/core/clock.h"
#include "hiapi/core/store_config.h"

namespace hiapi::core {

/// An API key. Has no operator<<, and its value is reachable only through reveal(), so it cannot
/// reach a log by accident.
class Secret {
public:
  Secret() = default;
  explicit Secret(std::string v) : value_(std::move(v)) {}
  bool empty() const { return value_.empty(); }
  /// @return the raw key; call only where it goes on the wire.
  const std::string& reveal() const { return value_; }
  /// @return a short, stable label (8 hex digits of a 64-bit hash, 32 bits shown): for
  ///         metrics and logs of passthrough keys.
  std::string fingerprint() const;
  bool operator==(const Secret& o) const { return value_ == o.value_; }

private:
  std::string value_;
};

/// Raised by loadConfig / parseConfig. what() is the full "file:line:col: key.path: message".
/// When the error is not tied to a line (an unreadable file) the ":line:col" part is left out, and
/// when it is not tied to a key (a YAML syntax error) the "key.path: " part is left out.
/// The message never contains an API key's value.
class ConfigError : public std::runtime_error {
public:
  ConfigError(std::string file, int line, int column, std::string key_path, std::string message);
  /// Several errors of one file: what() has one line each, in file order; the accessors
  /// describe the first. @param errors at least one.
  explicit ConfigError(std::vector<ConfigError> errors);
  /// @return every error this one reports (itself alone for a single error), in file order.
  std::vector<ConfigError> all() const { return all_.empty() ? std::vector{*this} : all_; }
  const std::string& file() const { return file_; }
  int line() const { return line_; }      ///< 1-based; 0 when not tied to a line
  int column() const { return column_; }  ///< 1-based; 0 when not tied to a line
  const std::string& keyPath() const { return key_path_; }
  const std::string& message() const { return message_; }

private:
  std::string file_;
  int line_;
  int column_;
  std::string key_path_;
  std::string message_;
  std::vector<ConfigError> all_;  ///< empty for a single error
};

/// A rate: `60/min`, `5/s`, `0.5/s`, `3600/h`.
struct Rate {
  double per_second = 1.0;
};

enum class KeyMode { Passthrough, Inject };
enum class LogFormat { Logfmt, Json };
enum class LogLevel { Debug, Info, Warn, Error };
enum class IdempotencyMode { Off, Inject };
/// limits.mode: enforce the limits, or only count what they would have held back (shadow).
enum class LimitMode { Enforce, Shadow };
/// How a key paces while the gateway has sent no X-RateLimit-Remaining (see LimitsConfig).
enum class UncountedPacing { Window, Bucket };
enum class TlsMinVersion { Tls12, Tls13 };

struct ListenConfig {
  std::string address = "127.0.0.1";  ///< IPv4 or IPv6 literal (`::1`), or `localhost`
  uint16_t port = 8787;                ///< 0 = pick a free port (tests); printed at start
  bool allow_non_loopback = false;     ///< required to bind anything but 127/8 or ::1
  uint64_t max_body_bytes = 10ull * 1024 * 1024;  ///< `10MiB`
  uint64_t max_header_bytes = 64ull * 1024;       ///< `64KiB`
  Duration client_timeout = std::chrono::seconds(65);  ///< idle/read timeout of client conns
  Duration header_timeout = std::chrono::seconds(10);  ///< request line + headers, from 1st byte
  Duration body_timeout = std::chrono::seconds(60);    ///< request body, from end of headers
  uint64_t max_connections = 4096;  ///< open client connections; accepting pauses at the cap
  /// Reply bytes held for all clients together (upstream bodies being read, replies not yet
  /// written); over it, upstream reads pause. `256MiB`.
  uint64_t max_reply_buffer_bytes = 256ull * 1024 * 1024;
};

struct AdminConfig {
  bool enabled = true;
  std::string address = "127.0.0.1";
  uint16_t port = 9787;
};

struct UpstreamConfig {
  std::string url = "https://api.hiapi.ai";  ///< scheme://host[:port], no path (normalised:
                                             ///< lower-case scheme and host, no trailing `/`)
  // Derived from url by the parser:
  std::string scheme = "https";      ///< `http` or `https`
  std::string host = "api.hiapi.ai"; ///< for connect/SNI/SSL_set1_host; IPv6 without brackets
  uint16_t port = 443;               ///< explicit, else 443 (https) / 80 (http)
  std::string authority = "api.hiapi.ai";  ///< the `Host` header: host (IPv6 in brackets), plus
                                           ///< `:port` when the port is not the scheme's default
  std::string ca_file;               ///< empty = system trust store; a relative path in the file
                                     ///< is resolved against the config file's directory
  TlsMinVersion tls_min_version = TlsMinVersion::Tls12;
  Duration connect_timeout = std::chrono::seconds(5);
  Duration response_timeout = std::chrono::seconds(30);  ///< per attempt
  uint32_t pool_size = 32;           ///< max concurrent upstream connections
  Duration idle_timeout = std::chrono::seconds(60);
};

/// One named tier: ordered patterns decide membership; first tier whose pattern matches wins.
struct TierConfig {
  std::string name;
  std::vector<std::string> models;  ///< glob patterns (`*`, `?`) on the model name (case-insensitive)
  std::vector<std::string> routes;  ///< routes (`pro`) that put a task in this tier
  uint32_t max_running = 5;
  Duration lease = std::chrono::minutes(15);  ///< slot freed if no terminal status by then
  Duration min_poll_interval = std::chrono::seconds(2);
  /// What the operator expects a task of this tier to take: the task tracker starts from it
  /// (as if two tasks had been seen) instead of learning from nothing; zero = learn only.
  Duration expected_duration{};
  /// A create of this tier that cannot get its slot within defer_after is answered at once with
  /// a proxy task id and submitted when a slot frees (DeferredConfig). Needs the journal.
  bool defer = false;
  Duration defer_after = std::chrono::seconds(2);
};

/// The built-in tiers, used when the config has no `limits.tiers`: `heavy` (video models, `*-pro`,
/// `@pro` and route `pro`; 2 running, lease 20m) then `light` (`*`; 5 running, lease 5m), both
/// with a 2 s minimum poll interval, per HiAPI's 429 guide.
std::vector<TierConfig> defaultTierConfigs();

/// A key the proxy knows by name. Inject mode uses it on every request (or the one selected by
/// the `X-HiAPI-Key` header naming it); passthrough mode matches a client's bearer to it.
struct KeyConfig {
  std::string name;
  Secret key;                         ///< from `key: ${ENV}` or `key_file: path`; never empty
  std::string key_file;               ///< resolved path when the key came from a file, else empty
  std::optional<Rate> rate;           ///< overrides limits.rate
  std::optional<double> burst;        ///< overrides limits.burst
};

struct LimitsConfig {
  /// Shadow: every request goes at once; the budget and gates still count, and what they would
  /// have held back is counted and logged (how a team tries the limiter before enforcing it).
  LimitMode mode = LimitMode::Enforce;
  Rate rate{1.0};                     ///< `60/min`: HiAPI's published per-key budget
  double burst = 5;                   ///< tokens that may be spent at once
  std::vector<TierConfig> tiers = defaultTierConfigs();  ///< ordered; never empty
  // AdaptiveRate
  double decrease_factor = 0.5;       ///< effective rate *= this on a rate 429
  double min_rate_fraction = 0.1;     ///< effective rate never below configured * this
  Duration recovery_time = std::chrono::seconds(30);  ///< back to full rate after this of success
  Duration max_cooldown = std::chrono::seconds(60);   ///< Retry-After is capped at this
  /// A rate 429 lowers the effective rate only when another came within this window (or the
  /// proxy was outside the gateway's advertised budget): a lone one is a phase error between
  /// two buckets, answered by a pause, not by a cut. 0 = every rate 429 cuts.
  Duration repeat_window = std::chrono::seconds(30);
  /// Tokens become usable this much after the bucket has them (at most a quarter of a token
  /// interval), so arrival jitter cannot land a request just before the gateway's token.
  Duration phase_margin = std::chrono::milliseconds(10);
  /// Until the gateway's counters arrive (for good, if it never sends them). Bucket: spend the
  /// bucket's refill freely, and keep to windows once a rate 429 shows the gateway counts in
  /// them (one absorbed 429 per key and process). Window: keep to at most `burst` requests in
  /// any burst / rate from the start, which no fixed or sliding window of that length and no
  /// bucket of (rate, burst) refuses, at the cost of a bucket gateway's refill.
  UncountedPacing pace_without_counters = UncountedPacing::Bucket;
};

struct QueueConfig {
  uint32_t max_size = 10000;          ///< waiting requests, all keys together
  uint32_t max_per_client = 0;        ///< 0 = no per-client bound
  Duration deadline = std::chrono::seconds(45);  ///< well under the clients' 60 s
  /// Creates that arrive together are ordered by the scheduler (bottleneck tier first, fair
  /// across clients), not by which connection won the race: a create waits until no other has
  /// arrived for a fifth of this, and at most this long after the first of them. 0 = off.
  Duration create_gather = std::chrono::milliseconds(10);
  std::string client_header = "X-HiAPI-Client";
  std::string deadline_header = "X-HiAPI-Deadline";  ///< client asks for less (e.g. `5s`)
};

struct RetryConfig {
  uint32_t max_attempts = 4;          ///< including the first
  Duration base_delay = std::chrono::seconds(1);
  Duration max_delay = std::chrono::seconds(30);
  double budget_ratio = 0.2;          ///< retries ≤ this share of recent requests
  uint32_t budget_min_retries = 10;   ///< always allowed per window
  IdempotencyMode idempotency = IdempotencyMode::Off;
};

struct TasksConfig {
  std::vector<std::string> terminal_statuses{"success", "fail"};
  std::vector<std::string> tolerated_terminal{"succeeded", "failed", "completed",
                                              "error",     "cancelled", "timeout"};
  Duration terminal_ttl = std::chrono::minutes(10);
  Duration not_found_ttl = std::chrono::seconds(2);
  uint32_t cache_max_entries = 10000;
  uint64_t cache_max_bytes = 64ull * 1024 * 1024;
  bool reconcile = true;
  Duration reconcile_interval = std::chrono::seconds(15);
  std::string state_file;             ///< empty = no persistence
  Duration state_save_interval = std::chrono::seconds(10);
  /// Hold a running task's cached detail until the task is likely done (from the durations seen
  /// for its tier), up to this long: polls mid-task cost no budget. 0 = off (plain
  /// min_poll_interval). Never shortens min_poll_interval.
  Duration max_hold = std::chrono::seconds(10);
  /// A client poll that arrives this long or less before its task's likely end waits and is
  /// answered as soon as the end is seen (at the latest two end-poll intervals past the likely
  /// end, with what a fetch then finds), rather than at once with the running detail it would
  /// get: a client that polls every few seconds sees the end when it happens, not up to a poll
  /// interval later. 5 s covers the poll intervals clients use (the guide's 2-5 s, the official
  /// SDK's 3 s): the last poll before the end is held. 0 = off; at most 10 s.
  Duration hold_near_end = std::chrono::seconds(5);
};

/// Deferred creates (TierConfig::defer): where they are kept and for how long.
struct DeferredConfig {
  /// The journal file; empty = next to tasks.state_file, else in $STATE_DIRECTORY (systemd),
  /// else deferring is off. A relative path is resolved against the config file's directory.
  std::string journal;
  uint32_t max_per_key = 1000;  ///< queued deferred creates per key; beyond, creates wait
  uint32_t max_total = 5000;    ///< queued deferred creates of all keys together
  /// A deferred create still queued after this fails with DEFERRED_EXPIRED. Below HiAPI's ~24 h
  /// idempotency window, so a create resubmitted after a crash is always recognised.
  Duration max_age = std::chrono::hours(6);
  /// How long a deferred task's id stays known once it left the queue (submitted, failed...).
  Duration keep = std::chrono::hours(24);
};

struct LogConfig {
  LogFormat format = LogFormat::Logfmt;
  LogLevel level = LogLevel::Info;
};

struct Config {
  std::string source_file;            ///< the file it came from (for messages)
  ListenConfig listen;
  AdminConfig admin;
  UpstreamConfig upstream;
  KeyMode key_mode = KeyMode::Passthrough;
  std::vector<KeyConfig> keys;
  LimitsConfig limits;
  QueueConfig queue;
  RetryConfig retry;
  TasksConfig tasks;
  DeferredConfig deferred;
  StoreConfig store;
  LogConfig log;
  Duration drain_timeout = std::chrono::seconds(30);

  /// One-line summary for --check-config (no secrets).
  std::string summary() const;
  /// The effective configuration as YAML: every setting, defaults included, in the file's own
  /// grammar (it parses back to the same configuration). Key values are printed as kRedacted;
  /// a key read from a file shows its key_file. Thread-safety: pure.
  std::string dump() const;
};

using ConfigSharedPtr = std::shared_ptr<const Config>;

/// What Config::dump() prints in place of a key.
inline constexpr std::string_view kRedacted = "<redacted>";

/// Environment lookup, injectable for tests.
using EnvLookup = std::optional<std::string> (*)(const std::string& name);

/// Parses YAML text. @param file_name used in error messages and to resolve relative key files.
/// @throws ConfigError naming file, line, column and key path.
Config parseConfig(const std::string& yaml_text, const std::string& file_name,
                   EnvLookup env = nullptr);

/// Reads and parses a file. @throws ConfigError (also for an unreadable file).
Config loadConfig(const std::string& path, EnvLookup env = nullptr);

/// Parses `250ms`, `2s`, `5m`, `1h`, `1.5s`, and sums such as `1m30s`. A bare number, a sign or
/// a space is malformed. @return nullopt when malformed (or beyond 100000 h).
std::optional<Duration> parseDuration(const std::string& text);
/// Parses `60/min`, `5/s`, `3600/h`, `0.5/s` (units s|sec|second, m|min|minute, h|hour).
/// @return nullopt when malformed or ≤ 0.
std::optional<Rate> parseRate(const std::string& text);
/// Parses `10MiB`, `64KiB`, `1GiB` (1024-based), `10MB`, `1kB` (1000-based), `1024` or `512B`
/// (bytes). @return nullopt when malformed or too large for 64 bits.
std::optional<uint64_t> parseSize(const std::string& text);

}  // namespace hiapi::core
