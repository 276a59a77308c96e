#pragma once
// Small helpers of the simulator: ids, HMAC, HTTP-date, loopback checks.

#include <cstdint>
#include <random>
#include <string>

namespace hiapi::sim {

/// The simulator's one source of randomness, seeded from --seed.
class Rng {
public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  /// @return uniform in [0, 1).
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(engine_); }
  /// A standard normal draw (mean 0, sigma 1).
  double normal() { return std::normal_distribution<double>(0.0, 1.0)(engine_); }
  /// @return 64 random bits.
  uint64_t bits() { return engine_(); }
  void reseed(uint64_t seed) { engine_.seed(seed); }

private:
  std::mt19937_64 engine_;
};

/// A ULID: 48-bit Unix ms + 80 random bits, 26 Crockford base32 characters.
std::string makeUlid(uint64_t unix_ms, Rng& rng);
/// @return true for 26 Crockford base32 characters (uppercase, no I L O U).
bool isUlid(const std::string& s);

/// @return lowercase hex HMAC-SHA256(secret, message), or "" when OpenSSL fails.
std::string hmacSha256Hex(const std::string& secret, const std::string& message);

/// @return an IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") for Unix seconds.
std::string httpDate(int64_t unix_s);

/// @return true for "localhost", 127.0.0.0/8 and ::1 (with or without brackets).
bool isLoopbackHost(const std::string& host);

}  // namespace hiapi::sim
