#include "http_client.h"

#include "hiapi/http/message.h"
#include "hiapi/http/response_parser.h"

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
  http::Headers list;
  for (const auto& [k, v] : headers) {
    list.push_back({k, v});
  }
  std::string raw;
  http::writeRequest(raw, method, target, ep_.host + ":" + std::to_string(ep_.port), list, body,
                     http::UnsafeHeaders::Keep);
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

  http::Response reply;
  http::ResponseParser parser;
  parser.begin(reply, method == "HEAD");
  bool more = true;
  char tmp[16384];
  while (more && !parser.complete()) {
    const ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
    if (n > 0) {
      more = parser.feed(tmp, static_cast<size_t>(n));
      continue;
    }
    if (n == 0) {
      parser.finish();
      break;
    }
    if (errno == EINTR) {
      continue;
    }
    if (errno != EAGAIN) {
      *nothing_received = !parser.gotBytes();
      return fail(std::string("recv: ") + std::strerror(errno));
    }
    if (!waitFd(fd_, POLLIN, deadline, &r.timed_out)) {
      return fail(r.timed_out ? "timeout" : "poll error");
    }
  }
  if (!parser.complete()) {
    *nothing_received = !parser.gotBytes();
    return fail(parser.gotBytes() ? "bad or cut reply: " + parser.describe() : "closed before reply");
  }
  r.status = reply.status;
  for (http::Header& h : reply.headers) {
    r.headers.emplace_back(std::move(h.name), std::move(h.value));
  }
  r.body = std::move(reply.body);
  if (!parser.keepAlive() || parser.trailing()) {
    close();
  }
  return r;
}

}  // namespace hiapi::load
