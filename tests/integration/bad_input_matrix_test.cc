// The bad-input matrix (issue 24): raw requests, one per row, each on a fresh loopback connection
// to the real daemon. Each row states the status and proxy error code expected, whether the
// connection is closed after the answer, and how many requests the upstream received (0 or 1),
// plus a header the upstream must not have received. A kept-alive connection must serve a
// follow-up request; a closed one must end at the answer.

#include <cctype>
#include <cstring>

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <gtest/gtest.h>

#include "harness/harness.h"

namespace hiapi::test {
namespace {

const std::string kKey = "sk-matrix-0123456789abcdef";
const std::string kAuth = "Authorization: Bearer " + kKey + "\r\n";

struct Row {
  const char* name;
  std::string raw;
  int status;
  const char* code;  ///< X-HiAPI-Proxy-Error, "" for none
  bool closes;
  size_t upstream;              ///< requests the upstream received
  const char* not_upstream = "";  ///< a header the upstream must not see
  const char* upstream_name = "";   ///< a header the upstream must see...
  const char* upstream_value = "";  ///< ...with this value
};

std::string get(const std::string& target, const std::string& extra = {}) {
  return "GET " + target + " HTTP/1.1\r\nHost: x\r\n" + kAuth + extra + "\r\n";
}

std::vector<Row> rows() {
  const std::string post = "POST /v1/tasks HTTP/1.1\r\nHost: x\r\n" + kAuth;
  const std::string body = R"({"model":"gpt-image-2"})";
  const std::string len = "Content-Length: " + std::to_string(body.size()) + "\r\n";
  return {
      {"plain get", get("/v1/tasks/tk-1"), 200, "", false, 1},
      {"plain post", post + len + "\r\n" + body, 200, "", false, 1},
      {"http/1.0 closes", "GET /v1/tasks?v=10 HTTP/1.0\r\n" + kAuth + "\r\n", 200, "", true, 1},
      {"http/1.0 keep-alive", "GET /v1/tasks?v=10k HTTP/1.0\r\nConnection: keep-alive\r\n" +
                                  kAuth + "\r\n", 200, "", false, 1},
      {"http/0.9", "GET /v1/tasks?page=1&size=1\r\n\r\n", 400, "bad_request", true, 0},
      {"http/2.0 line", "GET /v1/tasks HTTP/2.0\r\nHost: x\r\n" + kAuth + "\r\n", 400,
       "bad_request", true, 0},
      {"http/1.2 line", "GET /v1/tasks HTTP/1.2\r\nHost: x\r\n" + kAuth + "\r\n", 400,
       "bad_request", true, 0},
      {"h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "bad_request", true, 0},
      {"space before colon", get("/v1/tasks", "Host : evil\r\n"), 400, "bad_request", true, 0},
      {"space in name", get("/v1/tasks", "X A: b\r\n"), 400, "bad_request", true, 0},
      {"tab in name", get("/v1/tasks", "X\tA: b\r\n"), 400, "bad_request", true, 0},
      {"name without colon", get("/v1/tasks", "Garbage\r\n"), 400, "bad_request", true, 0},
      {"two hosts", get("/v1/tasks", "Host: evil\r\n"), 400, "bad_request", true, 0},
      {"cl and te", post + len + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
       "bad_request", true, 0},
      {"two lengths", post + "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400,
       "bad_request", true, 0},
      {"length not a number", post + "Content-Length: 1a\r\n\r\nab", 400, "bad_request", true, 0},
      {"negative length", post + "Content-Length: -1\r\n\r\n", 400, "bad_request", true, 0},
      {"chunked not last", post + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400,
       "bad_request", true, 0},
      {"bad chunk size", post + "Transfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n", 400,
       "bad_request", true, 0},
      {"chunked ok", post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, "",
       false, 1},
      {"chunk extension", post + "Transfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n",
       200, "", false, 1},
      {"trailer dropped",
       post + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Trailer: evil\r\n\r\n", 200,
       "", false, 1, "X-Trailer"},
      {"nul in value", get("/v1/tasks", std::string("X-A: a\0b\r\n", 10)), 400, "bad_request",
       true, 0},
      // llhttp joins a folded line to its value with the space: RFC 9112 §5.2 allows replacing
      // the fold with SP; no line break reaches the upstream.
      {"obs-fold in request", get("/v1/tasks", "X-A: a\r\n b\r\n"), 200, "", false, 1, "", "X-A",
       "a b"},
      {"dot dot", get("/v1/../metrics"), 400, "bad_request", true, 0},
      {"encoded dot dot", get("/v1/%2e%2e/x"), 400, "bad_request", true, 0},
      {"dot", get("/v1/tasks/./tk-1"), 400, "bad_request", true, 0},
      {"encoded slash dot dot", get("/v1/x%2f..%2fmetrics"), 400, "bad_request", true, 0},
      {"outside /v1", get("/metrics"), 404, "not_found", false, 0},
      {"connect", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405,
       "method_not_allowed", true, 0},
      {"trace", "TRACE /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n", 405, "method_not_allowed", true,
       0},
      {"absolute uri elsewhere", get("http://evil.example/v1/tasks"), 403, "not_an_open_proxy",
       false, 0},
      {"asterisk target", "GET * HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n", 400, "bad_request",
       true, 0},
      {"no key", "GET /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\n", 401, "missing_api_key", false, 0},
      {"headers too large", get("/v1/tasks", "X-Big: " + std::string(5000, 'a') + "\r\n"), 431,
       "headers_too_large", true, 0},
      {"target too large", get("/v1/tasks?" + std::string(100 * 1024, 'a')), 431,
       "headers_too_large", true, 0},
      {"declared body too large", post + "Content-Length: 5000\r\n\r\n", 413, "body_too_large",
       true, 0},
      {"chunked body too large",
       post + "Transfer-Encoding: chunked\r\n\r\n800\r\n" + std::string(2048, 'a') +
           "\r\n0\r\n\r\n",
       413, "body_too_large", true, 0},
      {"expect continue", post + len + "Expect: 100-continue\r\n\r\n" + body, 200, "", false, 1},
      {"lower-case method", "get /v1/tasks HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n", 400,
       "bad_request", true, 0},
      // RFC 9112 §3 lets a server split the line on whitespace: read leniently, forwarded.
      {"double space in line", "GET  /v1/tasks HTTP/1.1\r\nHost: x\r\n" + kAuth + "\r\n", 200,
       "", false, 1},
      {"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 hello\r\n\r\n", 400,
       "bad_request", true, 0},
      {"hop-by-hop named by connection", get("/v1/tasks", "Connection: X-Secret\r\nX-Secret: 1\r\n"),
       200, "", false, 1, "X-Secret"},
      {"proxy-authorization dropped", get("/v1/tasks", "Proxy-Authorization: Basic eDp5\r\n"), 200,
       "", false, 1, "Proxy-Authorization"},
      {"client deadline garbage", get("/v1/tasks", "X-HiAPI-Deadline: soon\r\n"), 200, "", false,
       1},
  };
}

// A raw client: the answer, then whether the connection ended at it.
struct Outcome {
  int status = 0;
  std::string code;
  bool closed = false;
};

class RawConn {
public:
  explicit RawConn(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~RawConn() { ::close(fd_); }
  bool ok() const { return ok_; }
  void send(const std::string& b) { ::send(fd_, b.data(), b.size(), MSG_NOSIGNAL); }
  /// Reads one answer (skipping 100 Continue). @return status 0 on EOF or timeout.
  Outcome answer() {
    Outcome o;
    for (;;) {
      size_t end;
      while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
        if (!fill()) {
          o.closed = eof_;
          return o;
        }
      }
      const std::string head = buf_.substr(0, end + 2);
      buf_.erase(0, end + 4);
      o.status = std::atoi(head.substr(9, 3).c_str());
      if (o.status == 100) {
        continue;
      }
      const std::string lower = lowerOf(head);
      o.code = valueOf(head, lower, "x-hiapi-proxy-error:");
      const size_t n = std::strtoul(valueOf(head, lower, "content-length:").c_str(), nullptr, 10);
      while (buf_.size() < n && fill()) {
      }
      buf_.erase(0, std::min(n, buf_.size()));
      return o;
    }
  }
  /// @return whether the server ended the connection (EOF or reset) with nothing more to read.
  bool endsNow() {
    while (buf_.empty() && fill()) {
    }
    return buf_.empty() && eof_;
  }

private:
  static std::string lowerOf(const std::string& s) {
    std::string l = s;
    for (char& c : l) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return l;
  }
  static std::string valueOf(const std::string& head, const std::string& lower, const char* name) {
    const size_t at = lower.find(std::string("\r\n") + name);
    if (at == std::string::npos) {
      return {};
    }
    size_t v = at + 2 + std::strlen(name);
    while (v < head.size() && head[v] == ' ') {
      ++v;
    }
    return head.substr(v, head.find("\r\n", v) - v);
  }
  bool fill() {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 5000) <= 0) {
      return false;
    }
    char b[8192];
    const ssize_t n = ::recv(fd_, b, sizeof b, 0);
    if (n <= 0) {
      eof_ = true;
      return false;
    }
    buf_.append(b, static_cast<size_t>(n));
    return true;
  }
  int fd_ = -1;
  bool ok_ = false;
  bool eof_ = false;
  std::string buf_;
};

TEST(BadInputMatrix, EveryRowGetsItsStatusCodeCloseAndUpstreamCount) {
  TempDir dir;
  TestUpstream upstream;
  ProxyProcess proxy(dir, "listen:\n  address: 127.0.0.1\n  port: 0\n"
                          "  max_header_size: 4KiB\n  max_body_size: 1KiB\n"
                          "admin:\n  enabled: false\n"
                          "upstream:\n  url: http://127.0.0.1:" +
                              std::to_string(upstream.port()) +
                              "\n  response_timeout: 5s\n"
                              "limits:\n  rate: 1000/s\n  burst: 100\n"
                              "log:\n  level: warn\n");
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::vector<Row> table = rows();
  ASSERT_GE(table.size(), 40u);
  int n = 0;
  for (const Row& row : table) {
    SCOPED_TRACE(row.name);
    ++n;
    const size_t before = upstream.count();
    RawConn c(proxy.port());
    ASSERT_TRUE(c.ok());
    c.send(row.raw);
    const Outcome o = c.answer();
    EXPECT_EQ(o.status, row.status);
    EXPECT_EQ(o.code, row.code);
    if (row.closes) {
      EXPECT_TRUE(c.endsNow()) << "the connection should close after the answer";
    } else {
      c.send(get("/v1/tasks?follow-up=" + std::to_string(n)));  // a list: never from a cache
      EXPECT_EQ(c.answer().status, 200) << "the connection should serve on";
    }
    const size_t follow_up = row.closes ? 0 : 1;
    EXPECT_TRUE(waitFor([&] { return upstream.count() >= before + row.upstream + follow_up; },
                        2000ms));
    EXPECT_EQ(upstream.count(), before + row.upstream + follow_up);
    if (row.upstream == 1) {
      const auto reqs = upstream.requests();
      ASSERT_GT(reqs.size(), before);
      if (*row.not_upstream != '\0') {
        EXPECT_FALSE(reqs[before].has(row.not_upstream)) << row.not_upstream;
      }
      if (*row.upstream_name != '\0') {
        EXPECT_EQ(reqs[before].header(row.upstream_name), row.upstream_value);
      }
    }
  }
}

}  // namespace
}  // namespace hiapi::test
