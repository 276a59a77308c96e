#include "hiapi/shell/state_file.h"

#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace hiapi::shell {

ReadFileResult readRegularFile(const std::string& path, std::string& out, std::string& error) {
  // O_NONBLOCK: the open of a FIFO with no writer returns at once instead of waiting for one.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return ReadFileResult::Missing;
    }
    error = std::strerror(errno);
    return ReadFileResult::Error;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    error = std::strerror(errno);
    ::close(fd);
    return ReadFileResult::Error;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    error = "not a regular file";
    return ReadFileResult::NotRegular;
  }
  out.clear();
  char buf[64 * 1024];
  for (;;) {
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      error = std::strerror(errno);
      ::close(fd);
      return ReadFileResult::Error;
    }
    break;
  }
  ::close(fd);
  return ReadFileResult::Ok;
}

}  // namespace hiapi::shell
