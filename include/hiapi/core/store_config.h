#pragma once
// The `store:` section: where a key's budget and tier slots live. `local` (the default) keeps
// them in this process; `redis` shares them between every proxy that uses the same Redis, so
// several hosts with one API key send HiAPI one key's rate and one key's ceilings between them.

#include <chrono>
#include <cstdint>
#include <string>

#include "hiapi/core/clock.h"

namespace hiapi::core {

enum class StoreKind { Local, Redis };

/// A Redis password: reachable only through reveal(), no operator<<, so it cannot reach a log.
class StorePassword {
public:
  StorePassword() = default;
  explicit StorePassword(std::string v) : value_(std::move(v)) {}
  bool empty() const { return value_.empty(); }
  /// @return the password; call only where it goes on the wire (AUTH).
  const std::string& reveal() const { return value_; }

private:
  std::string value_;
};

struct StoreConfig {
  StoreKind kind = StoreKind::Local;
  /// redis://host[:port][/db], or rediss:// for TLS; derived by the parser into host, port,
  /// db and tls.
  std::string url = "redis://127.0.0.1:6379/0";
  std::string host = "127.0.0.1";
  uint16_t port = 6379;
  uint32_t db = 0;
  /// Verified TLS (rediss:// or tls: true): the chain against ca_file or the system trust
  /// store, the certificate's name or address against host; TLS 1.2 at least.
  bool tls = false;
  std::string ca_file;  ///< PEM CA certificates for tls; empty = the system trust store
  /// AUTH password (from `password: ${ENV}` or `password_file`); empty = no AUTH. Never logged.
  StorePassword password;
  std::string password_file;  ///< where the password came from (for the dump), if a file
  std::string password_env;   ///< or the environment variable it came from (for the dump)
  /// Prefix of every Redis key the proxy writes, so that several deployments can share a Redis.
  std::string key_prefix = "hiapi:";
  /// A file of 32 random bytes, the same on every host: Redis key names are an HMAC of the API
  /// key under it, so that no API key ever appears in Redis, and hosts agree on the names.
  std::string key_secret_file;
  Duration connect_timeout = std::chrono::seconds(2);
  /// A command not answered by then counts as an outage (the local share applies meanwhile).
  Duration command_timeout = std::chrono::milliseconds(500);
  /// How often an instance says it is alive and renews its slot leases; a lease lives three
  /// heartbeats, so a killed instance's slots come back within that.
  Duration heartbeat_interval = std::chrono::seconds(2);
  /// With a deep queue one round trip reserves up to rate × reserve_window tokens at once.
  Duration reserve_window = std::chrono::milliseconds(250);
};

}  // namespace hiapi::core
