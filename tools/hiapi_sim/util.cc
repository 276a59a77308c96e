// Small helpers of the simulator.

#include "util.h"

#include <arpa/inet.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <strings.h>

#include <ctime>

namespace hiapi::sim {
namespace {
constexpr char kCrockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
}  // namespace

std::string makeUlid(uint64_t unix_ms, Rng& rng) {
  // 128 bits: 48 of time then 80 random, written as 26 base32 digits (first digit 3 bits).
  unsigned char bytes[16];
  for (int i = 5; i >= 0; --i) {
    bytes[i] = static_cast<unsigned char>(unix_ms & 0xff);
    unix_ms >>= 8;
  }
  uint64_t r1 = rng.bits();
  uint64_t r2 = rng.bits();
  for (int i = 0; i < 8; ++i) {
    bytes[6 + i] = static_cast<unsigned char>(r1 >> (8 * i));
  }
  for (int i = 0; i < 2; ++i) {
    bytes[14 + i] = static_cast<unsigned char>(r2 >> (8 * i));
  }
  std::string out(26, '0');
  // Walk the 130-bit space (2 leading zero bits) five bits at a time.
  for (int d = 0; d < 26; ++d) {
    int bit = d * 5 - 2;  // position of the digit's top bit in the 128-bit number
    int v = 0;
    for (int b = 0; b < 5; ++b) {
      int pos = bit + b;
      v <<= 1;
      if (pos >= 0) {
        v |= (bytes[pos / 8] >> (7 - pos % 8)) & 1;
      }
    }
    out[d] = kCrockford[v];
  }
  return out;
}

bool isUlid(const std::string& s) {
  if (s.size() != 26) {
    return false;
  }
  for (char c : s) {
    bool found = false;
    for (const char* p = kCrockford; *p != '\0'; ++p) {
      if (*p == c) {
        found = true;
        break;
      }
    }
    if (!found) {
      return false;
    }
  }
  return s[0] <= '7';
}

std::string hmacSha256Hex(const std::string& secret, const std::string& message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  if (HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
           reinterpret_cast<const unsigned char*>(message.data()), message.size(), mac,
           &mac_len) == nullptr) {
    return "";
  }
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(mac_len * 2);
  for (unsigned int i = 0; i < mac_len; ++i) {
    out += kHex[mac[i] >> 4];
    out += kHex[mac[i] & 0xf];
  }
  return out;
}

std::string httpDate(int64_t unix_s) {
  time_t t = static_cast<time_t>(unix_s);
  struct tm tm_utc {};
  if (gmtime_r(&t, &tm_utc) == nullptr) {
    return "";
  }
  char buf[64];
  size_t n = strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm_utc);
  return std::string(buf, n);
}

bool isLoopbackHost(const std::string& host_in) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (strcasecmp(host.c_str(), "localhost") == 0) {
    return true;
  }
  struct in_addr a4 {};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) {
    return (ntohl(a4.s_addr) >> 24) == 127;
  }
  struct in6_addr a6 {};
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
    return IN6_IS_ADDR_LOOPBACK(&a6);
  }
  return false;
}

}  // namespace hiapi::sim
