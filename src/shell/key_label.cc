#include "hiapi/shell/key_label.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

namespace hiapi::shell {
namespace {

constexpr size_t kSecretBytes = 32;

std::string hex(const unsigned char* p, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 0xF]);
  }
  return out;
}

std::optional<std::string> unhex(const std::string& s) {
  if (s.size() != 2 * kSecretBytes) {
    return std::nullopt;
  }
  std::string out;
  for (size_t i = 0; i < s.size(); i += 2) {
    unsigned v = 0;
    if (std::sscanf(s.c_str() + i, "%2x", &v) != 1) {
      return std::nullopt;
    }
    out.push_back(static_cast<char>(v));
  }
  return out;
}

std::string randomSecret() {
  unsigned char buf[kSecretBytes];
  if (RAND_bytes(buf, sizeof buf) != 1) {
    // RAND_bytes fails only without an entropy source; /dev/urandom is the same source.
    std::ifstream("/dev/urandom", std::ios::binary).read(reinterpret_cast<char*>(buf), sizeof buf);
  }
  return std::string(reinterpret_cast<const char*>(buf), sizeof buf);
}

}  // namespace

std::string KeyLabeler::label(const core::Secret& key) const {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  const std::string& k = key.reveal();  // hashed here, never stored or shown
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(k.data()), k.size(), mac, &len);
  return "pt-" + hex(mac, 4);
}

std::string KeyLabeler::loadOrCreateSecret(const std::string& path, Logger& log) {
  if (path.empty()) {
    return randomSecret();
  }
  std::ifstream in(path);
  if (in) {
    std::string text;
    std::getline(in, text);
    if (std::optional<std::string> s = unhex(text)) {
      return *s;
    }
    log.warn("the key label secret file is malformed: passthrough key labels will change at "
             "the next restart",
             {{"path", path}});
    return randomSecret();
  }
  const std::string secret = randomSecret();
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  const std::string line = hex(reinterpret_cast<const unsigned char*>(secret.data()),
                               secret.size()) + "\n";
  const bool written = fd >= 0 && ::write(fd, line.data(), line.size()) ==
                                      static_cast<ssize_t>(line.size()) &&
                       ::fsync(fd) == 0;
  const int saved = errno;
  if (fd >= 0) {
    ::close(fd);
  }
  if (!written || std::rename(tmp.c_str(), path.c_str()) != 0) {
    ::unlink(tmp.c_str());
    log.warn("cannot keep the key label secret: passthrough key labels will change at the next "
             "restart",
             {{"path", path}, {"error", std::strerror(written ? errno : saved)}});
  }
  return secret;
}

}  // namespace hiapi::shell
