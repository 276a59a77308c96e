// Tiny blocking HTTP/1.1 client for the simulator's tests.

#include "http_client.h"

#include "hiapi/http/message.h"
#include "hiapi/http/response_parser.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace hiapi::test {
namespace {

std::string lowerCase(std::string s) {
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string opensslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) {
    return "unknown TLS error";
  }
  char buf[256];
  ERR_error_string_n(e, buf, sizeof buf);
  ERR_clear_error();
  return buf;
}

}  // namespace

std::string HttpResponse::header(const std::string& name) const {
  auto it = headers.find(lowerCase(name));
  return it == headers.end() ? "" : it->second;
}

bool HttpResponse::hasHeader(const std::string& name) const {
  return headers.find(lowerCase(name)) != headers.end();
}

HeaderList authHeaders(const std::string& key) {
  return {{"Authorization", "Bearer " + key}, {"Content-Type", "application/json"}};
}

HttpClient::HttpClient(Options options) : options_(std::move(options)) {}

HttpClient::~HttpClient() {
  close();
  if (ctx_ != nullptr) {
    SSL_CTX_free(ctx_);
  }
}

void HttpClient::close() {
  if (ssl_ != nullptr) {
    SSL_free(ssl_);
    ssl_ = nullptr;
  }
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  buf_.clear();
}

std::string HttpClient::connect() {
  close();
  fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd_ < 0) {
    return std::string("socket: ") + std::strerror(errno);
  }
  timeval tv{};
  tv.tv_sec = options_.timeout_ms / 1000;
  tv.tv_usec = (options_.timeout_ms % 1000) * 1000;
  setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  int one = 1;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(options_.port));
  if (inet_pton(AF_INET, options_.host.c_str(), &addr.sin_addr) != 1) {
    return "bad host " + options_.host;
  }
  if (::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::string e = std::string("connect: ") + std::strerror(errno);
    close();
    return e;
  }
  if (!options_.tls) {
    return "";
  }
  if (ctx_ == nullptr) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    if (ctx_ == nullptr || SSL_CTX_set_min_proto_version(ctx_, TLS1_2_VERSION) != 1 ||
        SSL_CTX_load_verify_locations(ctx_, options_.ca_file.c_str(), nullptr) != 1) {
      return "TLS context: " + opensslError();
    }
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
  }
  ssl_ = SSL_new(ctx_);
  if (ssl_ == nullptr || SSL_set_fd(ssl_, fd_) != 1 ||
      SSL_set_tlsext_host_name(ssl_, options_.verify_name.c_str()) != 1 ||
      SSL_set1_host(ssl_, options_.verify_name.c_str()) != 1) {
    return "TLS set-up: " + opensslError();
  }
  if (SSL_connect(ssl_) != 1) {
    long v = SSL_get_verify_result(ssl_);
    std::string e = "TLS handshake: " + opensslError() +
                    (v != X509_V_OK ? std::string(" / ") + X509_verify_cert_error_string(v) : "");
    close();
    return e;
  }
  return "";
}

bool HttpClient::writeAll(const std::string& data, std::string* error) {
  size_t off = 0;
  while (off < data.size()) {
    long n = 0;
    if (ssl_ != nullptr) {
      n = SSL_write(ssl_, data.data() + off, static_cast<int>(std::min<size_t>(data.size() - off, 1 << 20)));
    } else {
      n = ::send(fd_, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    }
    if (n <= 0) {
      if (ssl_ == nullptr && n < 0 && errno == EINTR) {
        continue;
      }
      *error = std::string("write failed: ") + (ssl_ != nullptr ? opensslError() : std::strerror(errno));
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return true;
}

long HttpClient::readMore(std::string* error) {
  char tmp[16384];
  long n = 0;
  for (;;) {
    if (ssl_ != nullptr) {
      errno = 0;
      n = SSL_read(ssl_, tmp, sizeof tmp);
      if (n <= 0) {
        int e = SSL_get_error(ssl_, static_cast<int>(n));
        if (e == SSL_ERROR_ZERO_RETURN) {
          return 0;
        }
        if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0 && errno == 0) {
          return 0;  // EOF without close_notify
        }
        *error = "TLS read: " + opensslError() + " (" + std::strerror(errno) + ")";
        return -1;
      }
    } else {
      n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n < 0 && errno == EINTR) {
        continue;
      }
      if (n < 0) {
        *error = errno == EAGAIN || errno == EWOULDBLOCK ? std::string("read timeout")
                                                         : std::string("read: ") + std::strerror(errno);
        return -1;
      }
    }
    break;
  }
  buf_.append(tmp, static_cast<size_t>(n));
  return n;
}

std::string HttpClient::send(const std::string& method, const std::string& target,
                             const HeaderList& headers, const std::string& body) {
  if (fd_ < 0) {
    std::string e = connect();
    if (!e.empty()) {
      return e;
    }
  }
  http::Headers list;
  for (const auto& [n, v] : headers) {
    list.push_back({n, v});
  }
  if (!options_.keep_alive) {
    list.push_back({"Connection", "close"});
  }
  std::string req;
  http::writeRequest(req, method, target, options_.host + ":" + std::to_string(options_.port), list,
                     body, http::UnsafeHeaders::Keep);
  last_method_ = method;
  std::string error;
  if (!writeAll(req, &error)) {
    close();
    return error;
  }
  return "";
}

HttpResponse HttpClient::receive() {
  HttpResponse r;
  if (fd_ < 0) {
    r.error = "not connected";
    return r;
  }
  http::Response raw;
  http::ResponseParser parser;
  parser.begin(raw, last_method_ == "HEAD");
  size_t used = 0;
  bool more = parser.feed(buf_.data(), buf_.size(), &used);
  buf_.erase(0, used);
  while (more && !parser.complete()) {
    const long n = readMore(&r.error);
    if (n < 0) {
      close();
      return r;
    }
    if (n == 0) {
      parser.finish();
      break;
    }
    more = parser.feed(buf_.data(), buf_.size(), &used);
    buf_.erase(0, used);
  }
  if (!parser.complete()) {
    r.error = !parser.gotBytes() ? "connection closed before any response"
                                 : "invalid or truncated response: " + parser.describe();
    close();
    return r;
  }
  r.status = raw.status;
  for (http::Header& h : raw.headers) {
    r.headers[lowerCase(h.name)] = std::move(h.value);
  }
  r.body = std::move(raw.body);
  if (!options_.keep_alive || !parser.keepAlive()) {
    close();
  }
  return r;
}

HttpResponse HttpClient::request(const std::string& method, const std::string& target,
                                 const HeaderList& headers, const std::string& body) {
  std::string e = send(method, target, headers, body);
  if (!e.empty()) {
    HttpResponse r;
    r.error = e;
    return r;
  }
  return receive();
}

}  // namespace hiapi::test
