#include "hiapi/shell/key_identity.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hiapi/core/key_name.h"

namespace hiapi::shell {

KeyIdentity::KeyIdentity() {
  if (RAND_bytes(secret_.data(), static_cast<int>(secret_.size())) != 1) {
    // OpenSSL's generator failing is not something to run on: a zero secret would make the
    // names guessable.
    std::abort();
  }
}

std::optional<KeyIdentity> KeyIdentity::fromFile(const std::string& path, std::string& error) {
  KeyIdentity id;  // a fresh secret, written when the file is missing
  int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0 && errno == ENOENT) {
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
      error = std::string("cannot create: ") + std::strerror(errno);
      return std::nullopt;
    }
    const ssize_t n = ::write(fd, id.secret_.data(), id.secret_.size());
    const bool ok = n == static_cast<ssize_t>(id.secret_.size()) && ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) {
      error = "cannot write the key-name secret";
      ::unlink(path.c_str());
      return std::nullopt;
    }
    return id;
  }
  if (fd < 0) {
    error = std::string("cannot open: ") + std::strerror(errno);
    return std::nullopt;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      st.st_size != static_cast<off_t>(id.secret_.size())) {
    ::close(fd);
    error = "not a regular file of 32 bytes";
    return std::nullopt;
  }
  const ssize_t n = ::read(fd, id.secret_.data(), id.secret_.size());
  ::close(fd);
  if (n != static_cast<ssize_t>(id.secret_.size())) {
    error = "short read";
    return std::nullopt;
  }
  return id;
}

std::string KeyIdentity::nameOf(std::string_view key) const {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret_.data(), static_cast<int>(secret_.size()),
       reinterpret_cast<const unsigned char*>(key.data()), key.size(), mac, &len);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(core::kPassthroughPrefix);
  out.reserve(out.size() + 2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(kHex[mac[i] >> 4]);
    out.push_back(kHex[mac[i] & 0xF]);
  }
  return out;
}

}  // namespace hiapi::shell
