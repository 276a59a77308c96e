// Loopback callback receiver for the simulator's tests.

#include "callback_receiver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>

namespace hiapi::test {
namespace {
std::string lowerTrim(std::string s) {
  size_t b = s.find_first_not_of(" \t");
  size_t e = s.find_last_not_of(" \t\r");
  s = b == std::string::npos ? "" : s.substr(b, e - b + 1);
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}
}  // namespace

CallbackReceiver::CallbackReceiver(std::vector<int> statuses) : statuses_(std::move(statuses)) {
  if (statuses_.empty()) {
    statuses_.push_back(200);
  }
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof addr;
  if (listen_fd_ < 0 || ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(listen_fd_, 16) != 0 ||
      getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return;  // port_ stays 0: the test fails on it
  }
  port_ = ntohs(addr.sin_port);
  thread_ = std::thread([this] { run(); });
}

CallbackReceiver::~CallbackReceiver() {
  stop_ = true;
  if (thread_.joinable()) {
    thread_.join();
  }
  if (listen_fd_ >= 0) {
    ::close(listen_fd_);
  }
}

void CallbackReceiver::run() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) {
      continue;
    }
    int fd = ::accept(listen_fd_, nullptr, nullptr);
    if (fd < 0) {
      continue;
    }
    serve(fd);
    ::close(fd);
  }
}

void CallbackReceiver::serve(int fd) {
  timeval tv{2, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string buf;
  char tmp[8192];
  size_t head_end = std::string::npos;
  while ((head_end = buf.find("\r\n\r\n")) == std::string::npos) {
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) {
      return;
    }
    buf.append(tmp, static_cast<size_t>(n));
  }
  ReceivedRequest r;
  std::string head = buf.substr(0, head_end);
  size_t line_end = head.find("\r\n");
  std::string first = head.substr(0, line_end);
  size_t sp1 = first.find(' ');
  size_t sp2 = first.find(' ', sp1 + 1);
  r.method = first.substr(0, sp1);
  r.target = first.substr(sp1 + 1, sp2 - sp1 - 1);
  size_t pos = line_end == std::string::npos ? head.size() : line_end + 2;
  while (pos < head.size()) {
    size_t e = head.find("\r\n", pos);
    if (e == std::string::npos) {
      e = head.size();
    }
    std::string line = head.substr(pos, e - pos);
    size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string value = line.substr(colon + 1);
      size_t b = value.find_first_not_of(" \t");
      r.headers[lowerTrim(line.substr(0, colon))] = b == std::string::npos ? "" : value.substr(b);
    }
    pos = e + 2;
  }
  size_t len = std::strtoul(r.headers["content-length"].c_str(), nullptr, 10);
  std::string body = buf.substr(head_end + 4);
  while (body.size() < len) {
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) {
      return;
    }
    body.append(tmp, static_cast<size_t>(n));
  }
  r.body = body.substr(0, len);
  int status = 200;
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t i = received_.size();
    status = statuses_[std::min(i, statuses_.size() - 1)];
    received_.push_back(std::move(r));
  }
  cv_.notify_all();
  std::string reply = "HTTP/1.1 " + std::to_string(status) +
                      " X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
  ::send(fd, reply.data(), reply.size(), MSG_NOSIGNAL);
}

std::vector<ReceivedRequest> CallbackReceiver::waitFor(size_t n, int timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return received_.size() >= n; });
  return received_;
}

}  // namespace hiapi::test
