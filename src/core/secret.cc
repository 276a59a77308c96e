#include <cstdint>
#include <cstdio>

#include "hiapi/core/config.h"

namespace hiapi::core {

std::string Secret::fingerprint() const {
  // FNV-1a 64: short, stable and enough to tell keys apart in a metric label. It is not a
  // cryptographic hash; only 32 of its bits are shown, which cannot identify a key.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : value_) {
    h ^= c;
    h *= 1099511628211ull;
  }
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(h >> 32));
  return buf;
}

}  // namespace hiapi::core
