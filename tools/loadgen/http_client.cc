#include "http_client.h"

#include <cerrno>
#include <cstring>
#include <strings.h>

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace hiapi::load {
namespace {

int msLeft(Clock::time_point deadline) {
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left <= 0 ? 0 : static_cast<int>(std::min<long long>(left, 1 << 30));
}

// Waits for @p events on @p fd until @p deadline. @return false on timeout or error.
bool waitFd(int fd, short events, Clock::time_point deadline, bool* timed_out) {
  for (;;) {
    const int ms = msLeft(deadline);
    if (ms == 0) {
      *timed_out = true;
      return false;
    }
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, ms);
    if (n > 0) {
      return true;
    }
    if (n == 0) {
      *timed_out = true;
      return false;
    }
    if (errno != EINTR) {
      return false;
    }
  }
}

std::string lower(std::string s) {
  for (char& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (s[b] == ' ' || s[b] == '\t')) {
    ++b;
  }
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\r')) {
    --e;
  }
  return s.substr(b, e - b);
}

}  // namespace

bool Endpoint::parse(const std::string& url, Endpoint* out, std::string* error) {
  const std::string prefix = "http://";
  if (url.compare(0, prefix.size(), prefix) != 0) {
    *error = "only http:// URLs are supported: " + url;
    return false;
  }
  std::string rest = url.substr(prefix.size());
  rest = rest.substr(0, rest.find('/'));
  std::string host = rest;
  std::string port = "80";
  if (!rest.empty() && rest[0] == '[') {
    const size_t close = rest.find(']');
    if (close == std::string::npos) {
      *error = "bad IPv6 address in " + url;
      return false;
    }
    host = rest.substr(1, close - 1);
    if (close + 1 < rest.size() && rest[close + 1] == ':') {
      port = rest.substr(close + 2);
    }
  } else if (const size_t colon = rest.rfind(':'); colon != std::string::npos) {
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  char* end = nullptr;
  const long p = std::strtol(port.c_str(), &end, 10);
  if (host.empty() || end == port.c_str() || *end != '\0' || p <= 0 || p > 65535) {
    *error = "bad host or port in " + url;
    return false;
  }
  out->host = host;
  out->port = static_cast<uint16_t>(p);
  return true;
}

std::string Response::header(const std::string& name) const {
  for (const auto& [k, v] : headers) {
    if (strcasecmp(k.c_str(), name.c_str()) == 0) {
      return v;
    }
  }
  return {};
}

HttpClient::~HttpClient() { close(); }

void HttpClient::close() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
}

bool HttpClient::connect(Clock::time_point deadline, std::string* error) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(ep_.port);
  if (const int rc = ::getaddrinfo(ep_.host.c_str(), port.c_str(), &hints, &res); rc != 0) {
    *error = std::string("resolve: ") + gai_strerror(rc);
    return false;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      continue;
    }
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      bool to = false;
      if (waitFd(fd, POLLOUT, deadline, &to)) {
        int err = 0;
        socklen_t len = sizeof err;
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        rc = err == 0 ? 0 : -1;
        errno = err;
      } else {
        errno = to ? ETIMEDOUT : errno;
        rc = -1;
      }
    }
    if (rc == 0) {
      break;
    }
    *error = std::string("connect: ") + std::strerror(errno);
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  if (fd < 0) {
    return false;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  fd_ = fd;
  return true;
}

Response HttpClient::request(const std::string& method, const std::string& target,
                             const Headers& headers, const std::string& body,
                             Clock::time_point deadline) {
  std::string raw = method + " " + target + " HTTP/1.1\r\nHost: " + ep_.host + ":" +
                    std::to_string(ep_.port) + "\r\n";
  for (const auto& [k, v] : headers) {
    raw += k + ": " + v + "\r\n";
  }
  if (!body.empty() || method == "POST" || method == "PUT") {
    raw += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  }
  raw += "\r\n";
  raw += body;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const bool reused = fd_ >= 0;
    if (!reused) {
      Response r;
      if (!connect(deadline, &r.error)) {
        r.timed_out = Clock::now() >= deadline;
        return r;
      }
    }
    bool nothing = false;
    Response r = once(raw, method, deadline, &nothing);
    if (r.status != 0 || !reused || !nothing || r.timed_out) {
      return r;
    }
    // A keep-alive connection the server had already closed: once more on a fresh one.
  }
  Response r;
  r.error = "connection closed twice";
  return r;
}

Response HttpClient::once(const std::string& raw, const std::string& method,
                          Clock::time_point deadline, bool* nothing_received) {
  Response r;
  auto fail = [&](const std::string& why) {
    r.status = 0;
    r.error = why;
    close();
    return r;
  };
  size_t sent = 0;
  while (sent < raw.size()) {
    const ssize_t n = ::send(fd_, raw.data() + sent, raw.size() - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
      if (!waitFd(fd_, POLLOUT, deadline, &r.timed_out)) {
        return fail(r.timed_out ? "timeout sending" : "poll error");
      }
      continue;
    }
    *nothing_received = true;
    return fail(std::string("send: ") + std::strerror(errno));
  }

  std::string buf;
  size_t header_end = std::string::npos;
  bool eof = false;
  auto readMore = [&]() -> bool {
    char tmp[16384];
    for (;;) {
      const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n > 0) {
        buf.append(tmp, static_cast<size_t>(n));
        return true;
      }
      if (n == 0) {
        eof = true;
        return false;
      }
      if (errno == EINTR) {
        continue;
      }
      if (errno != EAGAIN) {
        r.error = std::string("recv: ") + std::strerror(errno);
        return false;
      }
      if (!waitFd(fd_, POLLIN, deadline, &r.timed_out)) {
        r.error = r.timed_out ? "timeout" : "poll error";
        return false;
      }
    }
  };
  while ((header_end = buf.find("\r\n\r\n")) == std::string::npos) {
    if (!readMore()) {
      *nothing_received = buf.empty() && !r.timed_out;
      return fail(r.error.empty() ? (buf.empty() ? "closed before reply" : "closed in headers")
                                  : r.error);
    }
    if (buf.size() > (1 << 20)) {
      return fail("headers too large");
    }
  }
  // Status line and headers.
  size_t line_end = buf.find("\r\n");
  const std::string status_line = buf.substr(0, line_end);
  if (status_line.compare(0, 5, "HTTP/") != 0 || status_line.size() < 12) {
    return fail("bad status line");
  }
  const int status = std::atoi(status_line.c_str() + 9);
  bool chunked = false, close_after = status_line.compare(0, 8, "HTTP/1.0") == 0;
  long long length = -1;
  size_t pos = line_end + 2;
  while (pos < header_end) {
    const size_t e = buf.find("\r\n", pos);
    const std::string line = buf.substr(pos, e - pos);
    pos = e + 2;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) {
      continue;
    }
    std::string name = trim(line.substr(0, colon));
    std::string value = trim(line.substr(colon + 1));
    const std::string lname = lower(name);
    if (lname == "content-length") {
      length = std::atoll(value.c_str());
    } else if (lname == "transfer-encoding" && lower(value).find("chunked") != std::string::npos) {
      chunked = true;
    } else if (lname == "connection") {
      const std::string lv = lower(value);
      close_after = lv.find("close") != std::string::npos
                        ? true
                        : (lv.find("keep-alive") != std::string::npos ? false : close_after);
    }
    r.headers.emplace_back(std::move(name), std::move(value));
  }
  buf.erase(0, header_end + 4);
  const bool no_body = method == "HEAD" || status == 204 || status == 304 || status / 100 == 1;
  if (no_body) {
    length = 0;
    chunked = false;
  }
  if (chunked) {
    std::string out;
    for (;;) {
      size_t le;
      while ((le = buf.find("\r\n")) == std::string::npos) {
        if (!readMore()) {
          return fail("closed in chunk size");
        }
      }
      const long long size = std::strtoll(buf.c_str(), nullptr, 16);
      buf.erase(0, le + 2);
      if (size < 0) {
        return fail("bad chunk size");
      }
      if (size == 0) {
        // Trailers end with an empty line.
        while ((le = buf.find("\r\n")) != 0) {
          if (le != std::string::npos) {
            buf.erase(0, le + 2);
            continue;
          }
          if (!readMore()) {
            return fail("closed in trailers");
          }
        }
        buf.erase(0, 2);
        break;
      }
      while (buf.size() < static_cast<size_t>(size) + 2) {
        if (!readMore()) {
          return fail("closed in chunk");
        }
      }
      out.append(buf, 0, static_cast<size_t>(size));
      buf.erase(0, static_cast<size_t>(size) + 2);
    }
    r.body = std::move(out);
  } else if (length >= 0) {
    while (buf.size() < static_cast<size_t>(length)) {
      if (!readMore()) {
        return fail("closed in body");
      }
    }
    r.body = buf.substr(0, static_cast<size_t>(length));
  } else {
    while (readMore()) {
    }
    if (!eof) {
      return fail(r.error);
    }
    r.body = std::move(buf);
    close_after = true;
  }
  r.status = status;
  if (close_after) {
    close();
  }
  return r;
}

}  // namespace hiapi::load
