#pragma once
// hiapi-sim configuration: one struct, one option table shared by the command line and by
// `POST /__config` (same names without the leading dashes), so the two can never drift apart.

#include <cstdint>
#include <string>
#include <vector>

#include "sim_limits.h"

namespace hiapi::sim {

/// Format of the Retry-After header on 429 replies.
enum class RetryAfterFormat { Seconds, Decimal, Date };
/// Which error envelope the simulator writes.
enum class Envelope { Docs, Guide, Both };

/// Every setting of the simulator. Durations are in seconds (double), ratios in [0, 1].
struct SimConfig {
  // ---- start-up only (refused by /__config) ----
  std::string listen = "127.0.0.1";
  int port = 0;
  std::string port_file;
  std::string tls_cert;
  std::string tls_key;
  uint64_t seed = 1;

  // ---- keys and limits ----
  std::vector<std::string> keys;  ///< empty: any non-empty bearer key is accepted
  double rate_per_s = 1.0;        ///< token refill per second; 0 = unlimited
  double burst = 10.0;            ///< bucket capacity
  int heavy_max = 2;              ///< running heavy tasks per key; 0 = unlimited
  int light_max = 10;             ///< running light tasks per key; 0 = unlimited
  bool count_rejected = false;    ///< a 429 also costs a token (bucket may go into debt)
  LimiterShape limiter = LimiterShape::TokenBucket;  ///< the shape of the per-key rate limit
  double window_s = 0.0;          ///< windows: length; 0 = burst / rate
  std::vector<std::string> heavy_patterns = {"seedance-*",  "seedance-2.5/*", "wan2.7-video/*",
                                             "happyhorse-*", "veo-*",         "kling-*",
                                             "hailuo-*",     "*-pro"};
  double max_body_bytes = 10.0 * 1024 * 1024;

  // ---- task schedule ----
  double heavy_duration_s = 5.0;
  double light_duration_s = 2.0;
  double duration_jitter = 0.1;  ///< uniform: duration *= 1 + jitter * uniform(-1, 1)
  bool duration_lognormal = false;  ///< durations lognormal around the mean (sigma below)
  double duration_sigma = 0.3;    ///< lognormal: sigma of the log of the duration
  double fail_ratio = 0.0;
  double create_delay_s = 0.0;  ///< create reply held this long; idempotency "processing" meanwhile
  double idempotency_ttl_s = 24 * 3600.0;

  // ---- 429 shape ----
  Envelope envelope = Envelope::Both;
  double retry_after_ratio = 1.0;
  RetryAfterFormat retry_after_format = RetryAfterFormat::Seconds;
  bool ratelimit_headers = false;

  // ---- faults ----
  double fault_5xx = 0.0;
  double fault_reset = 0.0;
  double latency_s = 0.0;
  double latency_jitter_s = 0.0;
  double stall_ratio = 0.0;
  double stall_time_s = 70.0;

  // ---- callbacks ----
  std::string callback_secret;
  int callback_attempts = 5;
  double callback_backoff_s = 0.5;  ///< first redelivery delay, doubled per attempt
  double callback_timeout_s = 5.0;

  bool verbose = false;
};

/// Parses "250ms", "5s", "1.5m", "2h", "0" or a bare number (seconds).
/// @return false on a malformed or negative value.
bool parseDuration(const std::string& text, double* seconds);
/// Parses "2/s", "60/m", "60/min", "3600/h", "0", "inf" or a bare number (per second).
bool parseRate(const std::string& text, double* per_second);
/// Parses a number in [0, 1].
bool parseRatio(const std::string& text, double* ratio);
/// Parses a byte size: "10MB", "512KB", "1024", "10MiB".
bool parseBytes(const std::string& text, double* bytes);

/// Applies one option by name (without dashes). `runtime` refuses start-up-only options.
/// @return false with *error naming the option and the value when it does not parse.
bool applyOption(SimConfig& cfg, const std::string& name, const std::string& value, bool runtime,
                 std::string* error);
/// @return true when `name` is a boolean switch (may be given without a value on the command line).
bool isSwitch(const std::string& name);
/// Parses argv. Sets *help when --help/-h is given.
bool parseArgs(int argc, char** argv, SimConfig& cfg, bool* help, std::string* error);
/// The --help text, one paragraph per option.
std::string helpText();
/// The current settings as a JSON object (names as on the command line, without dashes).
std::string configJson(const SimConfig& cfg);
/// Applies a JSON object of settings (`POST /__config`). Strings use the command-line syntax;
/// numbers are taken as given (durations in seconds); booleans for switches; arrays for lists.
/// Either every key applies or none does.
bool applyConfigJson(SimConfig& cfg, const char* data, size_t len, std::string* error);

}  // namespace hiapi::sim
