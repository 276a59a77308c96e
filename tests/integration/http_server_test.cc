// HttpServer, the client-facing HTTP/1.1 server, on a real event loop and real loopback sockets:
// keep-alive and pipelining, bodies (chunked, Expect: 100-continue, oversize), unreadable
// requests, HTTP/1.0, HEAD, clients that leave while their request is open, and idle timeouts.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <event2/event.h>
#include <gtest/gtest.h>

#include "harness/harness.h"
#include "harness/loop_thread.h"
#include "hiapi/shell/http_server.h"
#include "hiapi/shell/log.h"

using namespace std::chrono_literals;

namespace hiapi::test {
namespace {

struct Seen {
  std::string method, target, body;
  shell::Headers headers;
  shell::InboundProblem problem = shell::InboundProblem::None;
  uint64_t body_bytes_seen = 0;
  unsigned short minor = 1;
};

// Echo handler: answers every request with "<method> <target> <body size>" (status 200), or,
// with hold set, keeps it open (for client-gone tests), or answers after a delay on the loop.
class Recorder : public shell::HttpServer::Handler {
public:
  shell::HttpServer* server = nullptr;
  event_base* base = nullptr;
  std::atomic<bool> hold{false};
  std::atomic<bool> delay{false};

  void onRequest(uint64_t exchange, shell::InboundRequest& req) override {
    Seen s{req.method, req.target, req.body, req.headers, req.problem, req.body_bytes_seen,
           req.http_minor};
    {
      std::lock_guard<std::mutex> l(mu_);
      seen_.push_back(s);
    }
    if (req.problem != shell::InboundProblem::None) {
      server->reply(exchange, 400, {{"Content-Type", "text/plain"}}, "problem", true);
      return;
    }
    if (hold) {
      return;
    }
    if (delay) {
      auto* arg = new std::pair<Recorder*, uint64_t>(this, exchange);
      const timeval tv{0, 30'000};
      event_base_once(
          base, -1, EV_TIMEOUT,
          [](evutil_socket_t, short, void* a) {
            auto* p = static_cast<std::pair<Recorder*, uint64_t>*>(a);
            p->first->answer(p->second, "late");
            delete p;
          },
          arg, &tv);
      return;
    }
    answer(exchange, s.method + " " + s.target + " " + std::to_string(s.body.size()));
  }
  void onClientGone(uint64_t exchange) override {
    std::lock_guard<std::mutex> l(mu_);
    gone_.push_back(exchange);
    still_open_after_gone_ = still_open_after_gone_ || server->isOpen(exchange);
  }
  void answer(uint64_t exchange, const std::string& body) {
    server->reply(exchange, 200, {{"Content-Type", "text/plain"}, {"X-Test", "1"}}, body);
  }
  std::vector<Seen> seen() {
    std::lock_guard<std::mutex> l(mu_);
    return seen_;
  }
  size_t goneCount() {
    std::lock_guard<std::mutex> l(mu_);
    return gone_.size();
  }
  bool stillOpenAfterGone() {
    std::lock_guard<std::mutex> l(mu_);
    return still_open_after_gone_;
  }

private:
  std::mutex mu_;
  std::vector<Seen> seen_;
  std::vector<uint64_t> gone_;
  bool still_open_after_gone_ = false;
};

// The server on an event loop of its own thread (LoopThread).
class ServerLoop {
public:
  explicit ServerLoop(shell::HttpServerLimits limits, FILE* log_to = stderr,
                      core::LogLevel level = core::LogLevel::Error)
      : log_(core::LogFormat::Logfmt, level, log_to) {
    rec_.base = loop_.base();
    server_ = std::make_unique<shell::HttpServer>(loop_.base(), rec_, log_, limits);
    rec_.server = server_.get();
    std::string error;
    ok_ = server_->listen("127.0.0.1", 0, error);
    loop_.start();
  }
  ~ServerLoop() {
    loop_.stop();
    server_.reset();
  }
  bool ok() const { return ok_; }
  uint16_t port() const { return server_->port(); }
  Recorder& rec() { return rec_; }

private:
  LoopThread loop_;  // first: freed last, after the server
  shell::Logger log_;
  Recorder rec_;
  std::unique_ptr<shell::HttpServer> server_;
  bool ok_ = false;
};

// A client connection that keeps what it read past one response for the next.
class Client {
public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  }
  ~Client() { close(); }
  bool connected() const { return connected_; }
  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  void shutdownWrite() { ::shutdown(fd_, SHUT_WR); }
  void send(const std::string& bytes) {
    size_t off = 0;
    while (off < bytes.size()) {
      const ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n <= 0) {
        return;
      }
      off += static_cast<size_t>(n);
    }
  }
  /// Reads one response (Content-Length bodies; @p head: none). status 0 on close or timeout.
  HttpResponse read(bool head = false, std::chrono::milliseconds timeout = 5s) {
    HttpResponse r;
    const auto until = std::chrono::steady_clock::now() + timeout;
    size_t end = std::string::npos;
    while ((end = buf_.find("\r\n\r\n")) == std::string::npos) {
      if (!fill(until)) {
        return r;
      }
    }
    const std::string head_text = buf_.substr(0, end);
    size_t pos = head_text.find("\r\n");
    const std::string status_line = head_text.substr(0, pos);
    r.status = std::atoi(status_line.substr(9, 3).c_str());
    while (pos != std::string::npos && pos < head_text.size()) {
      const size_t next = head_text.find("\r\n", pos + 2);
      const std::string line =
          head_text.substr(pos + 2, next == std::string::npos ? std::string::npos : next - pos - 2);
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t v = colon + 1;
        while (v < line.size() && line[v] == ' ') {
          ++v;
        }
        r.headers.emplace_back(line.substr(0, colon), line.substr(v));
      }
      pos = next;
    }
    buf_.erase(0, end + 4);
    size_t len = head || r.status < 200 ? 0 : std::stoul("0" + r.header("Content-Length"));
    while (buf_.size() < len) {
      if (!fill(until)) {
        r.status = 0;
        return r;
      }
    }
    r.body = buf_.substr(0, len);
    buf_.erase(0, len);
    return r;
  }
  /// @return whether the server closed the connection (EOF) within @p timeout.
  bool closedByServer(std::chrono::milliseconds timeout = 5s) {
    const auto until = std::chrono::steady_clock::now() + timeout;
    Read r;
    while ((r = readSome(until)) == Read::Data) {
    }
    return r == Read::Closed;
  }

private:
  enum class Read { Data, Closed, TimedOut };
  /// Appends what one recv() gives to buf_, waiting for it until @p until.
  Read readSome(std::chrono::steady_clock::time_point until) {
    while (std::chrono::steady_clock::now() < until) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        char b[4096];
        const ssize_t n = ::recv(fd_, b, sizeof b, 0);
        if (n <= 0) {
          return Read::Closed;
        }
        buf_.append(b, static_cast<size_t>(n));
        return Read::Data;
      }
    }
    return Read::TimedOut;
  }
  bool fill(std::chrono::steady_clock::time_point until) { return readSome(until) == Read::Data; }
  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

shell::HttpServerLimits smallLimits() {
  shell::HttpServerLimits l;
  l.max_header_bytes = 1024;
  l.max_body_bytes = 1024;
  l.idle_timeout = 10s;
  return l;
}

TEST(HttpServer, PipelinedRequestsAreAnsweredInOrderOnOneConnection) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  ASSERT_TRUE(c.connected());
  std::string three;
  for (int i = 1; i <= 3; ++i) {
    three += "GET /v1/tasks/t" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\n\r\n";
  }
  c.send(three);
  for (int i = 1; i <= 3; ++i) {
    const HttpResponse r = c.read();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.body, "GET /v1/tasks/t" + std::to_string(i) + " 0");
    EXPECT_EQ(r.header("X-Test"), "1");
    EXPECT_FALSE(r.header("Date").empty());
    EXPECT_NE(r.header("Connection"), "close");
  }
  // The same connection still serves, also when the replies come later than the requests.
  loop.rec().delay = true;
  c.send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(c.read().body, "late");
  EXPECT_EQ(c.read().body, "late");
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 5u);
  EXPECT_EQ(seen[3].target, "/a");
  EXPECT_EQ(seen[4].target, "/b");
}

TEST(HttpServer, ARequestSplitByteByByteIsReadWhole) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  const std::string req =
      "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Long-Header: abc\r\nContent-Length: 11\r\n\r\n"
      "hello world";
  for (char ch : req) {
    c.send(std::string(1, ch));
  }
  const HttpResponse r = c.read();
  EXPECT_EQ(r.body, "POST /v1/tasks 11");
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].body, "hello world");
  ASSERT_EQ(seen[0].headers.size(), 3u);
  EXPECT_EQ(seen[0].headers[1].name, "X-Long-Header");
  EXPECT_EQ(seen[0].headers[1].value, "abc");
}

TEST(HttpServer, ChunkedBodiesAreDechunkedAndExpectContinueIsAnswered) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  c.send("POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
         "Expect: 100-continue\r\n\r\n");
  const HttpResponse cont = c.read();
  EXPECT_EQ(cont.status, 100) << "the client waits for 100 Continue before sending the body";
  c.send("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  const HttpResponse r = c.read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /v1/tasks 11");
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].body, "hello world");
}

TEST(HttpServer, AnOversizedBodyIsRefusedFromItsLengthAndTheAnswerArrivesWhole) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  // The client sends all of it without waiting; the server answers after the headers and
  // closes without reading the rest: the answer must still arrive (no reset before it).
  c.send("POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n" +
         std::string(200000, 'x'));
  const HttpResponse r = c.read();
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, "problem");
  EXPECT_EQ(r.header("Connection"), "close");
  EXPECT_TRUE(c.closedByServer());
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].problem, shell::InboundProblem::BodyTooLarge);
  EXPECT_EQ(seen[0].body_bytes_seen, 200000u);

  Client chunked(loop.port());
  chunked.send("POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               "800\r\n" + std::string(0x800, 'y') + "\r\n0\r\n\r\n");
  EXPECT_EQ(chunked.read().status, 400);
  const auto seen2 = loop.rec().seen();
  ASSERT_EQ(seen2.size(), 2u);
  EXPECT_EQ(seen2[1].problem, shell::InboundProblem::BodyTooLarge);
}

TEST(HttpServer, OversizedHeadersAndGarbageAreProblemsAnsweredThenClosed) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  {
    Client c(loop.port());
    c.send("GET /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(2000, 'h') + "\r\n\r\n");
    const HttpResponse r = c.read();
    EXPECT_EQ(r.status, 400);
    EXPECT_TRUE(c.closedByServer());
  }
  {
    Client c(loop.port());
    c.send("NOT HTTP AT ALL\r\n\r\n");
    EXPECT_EQ(c.read().status, 400);
    EXPECT_TRUE(c.closedByServer());
  }
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[0].problem, shell::InboundProblem::HeadersTooLarge);
  EXPECT_EQ(seen[1].problem, shell::InboundProblem::Malformed);
}

TEST(HttpServer, HeadersUpToTheConfiguredLimitPassEvenAbove80KiB) {
  // The parser has no limit of its own (http-parser's was 80 KiB for the start line and
  // headers): a configured listen.max_header_size decides, also above that.
  shell::HttpServerLimits l = smallLimits();
  l.max_header_bytes = 200 * 1024;
  ServerLoop loop(l);
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  c.send("GET /v1/tasks HTTP/1.1\r\nHost: x\r\nX-Big: " + std::string(120 * 1024, 'h') +
         "\r\n\r\n");
  const HttpResponse r = c.read();
  EXPECT_EQ(r.status, 200);
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].problem, shell::InboundProblem::None);
  ASSERT_EQ(seen[0].headers.size(), 2u);
  EXPECT_EQ(seen[0].headers[1].value.size(), 120u * 1024);
}

TEST(HttpServer, AnOversizedTargetIsAHeadersProblemAnsweredThenClosed) {
  // The target's own bound: at least 80 KiB, twice max_header_bytes.
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  c.send("GET /v1/tasks?q=" + std::string(100 * 1024, 'q') + " HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(c.read().status, 400);
  EXPECT_TRUE(c.closedByServer());
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].problem, shell::InboundProblem::HeadersTooLarge);
  EXPECT_EQ(seen[0].method, "GET");
}

TEST(HttpServer, Http10ClosesUnlessItAsksForKeepAlive) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  {
    Client c(loop.port());
    c.send("GET /v1/tasks HTTP/1.0\r\n\r\n");
    const HttpResponse r = c.read();
    EXPECT_EQ(r.status, 200);
    EXPECT_EQ(r.header("Connection"), "close");
    EXPECT_TRUE(c.closedByServer());
  }
  {
    Client c(loop.port());
    c.send("GET /v1/one HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    const HttpResponse r = c.read();
    EXPECT_EQ(r.header("Connection"), "keep-alive");
    c.send("GET /v1/two HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    EXPECT_EQ(c.read().body, "GET /v1/two 0");
  }
  {
    Client c(loop.port());
    c.send("GET /v1/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    EXPECT_EQ(c.read().header("Connection"), "close");
    EXPECT_TRUE(c.closedByServer());
  }
}

TEST(HttpServer, HeadRepliesCarryNoBody) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  c.send("HEAD /v1/tasks HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/after HTTP/1.1\r\nHost: x\r\n\r\n");
  const HttpResponse h = c.read(/*head=*/true);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.header("Content-Length"), std::to_string(std::string("HEAD /v1/tasks 0").size()));
  // Had the HEAD reply carried a body, this would read it as the next response.
  EXPECT_EQ(c.read().body, "GET /v1/after 0");
}

TEST(HttpServer, AClientLeavingWhileItsRequestIsOpenIsReportedAtOnce) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  loop.rec().hold = true;
  Client c(loop.port());
  c.send("GET /v1/tasks/t1 HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(waitFor([&] { return loop.rec().seen().size() == 1; }, 5s));
  EXPECT_EQ(loop.rec().goneCount(), 0u);
  c.close();
  EXPECT_TRUE(waitFor([&] { return loop.rec().goneCount() == 1; }, 5s));
  EXPECT_FALSE(loop.rec().stillOpenAfterGone()) << "reply() to a gone exchange must be a no-op";

  // A client that sends its request and its end together (as nginx, it counts as leaving): the
  // server closes, and if the request was handed on at all, it was reported gone as well.
  Client d(loop.port());
  d.send("GET /v1/tasks/t2 HTTP/1.1\r\nHost: x\r\n\r\n");
  d.shutdownWrite();
  EXPECT_TRUE(d.closedByServer());
  EXPECT_EQ(loop.rec().seen().size(), loop.rec().goneCount());
}

TEST(HttpServer, IdleConnectionsAreClosedAfterTheTimeoutButOpenRequestsAreNot) {
  shell::HttpServerLimits l = smallLimits();
  l.idle_timeout = 200ms;
  ServerLoop loop(l);
  ASSERT_TRUE(loop.ok());
  Client idle(loop.port());
  idle.send("GET /v1/a HTTP/1.1\r\nHost: x\r\n\r\n");
  EXPECT_EQ(idle.read().status, 200);
  EXPECT_TRUE(idle.closedByServer(5s));

  loop.rec().hold = true;
  Client waiting(loop.port());
  waiting.send("GET /v1/b HTTP/1.1\r\nHost: x\r\n\r\n");
  // Several idle timeouts pass: a request waiting for its answer keeps its connection.
  EXPECT_FALSE(waiting.closedByServer(800ms));
  EXPECT_EQ(loop.rec().goneCount(), 0u);
}

}  // namespace
}  // namespace hiapi::test

namespace hiapi::test {
namespace {

// What a log written to a temporary file holds so far.
std::string logText(FILE* f) {
  std::fflush(f);
  const long end = std::ftell(f);
  std::string out(static_cast<size_t>(std::max(end, 0L)), '\0');
  std::rewind(f);
  out.resize(std::fread(out.data(), 1, out.size(), f));
  std::fseek(f, 0, SEEK_END);
  return out;
}

size_t countOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) {
    ++n;
  }
  return n;
}

// A round trip on a kept-alive connection: the server's loop turns several times meanwhile.
void roundTrips(Client& c, int n) {
  for (int i = 0; i < n; ++i) {
    c.send("GET /v1/ping HTTP/1.1\r\nHost: x\r\n\r\n");
    ASSERT_EQ(c.read().status, 200);
  }
}

TEST(HttpServerAbuse, OutOfDescriptorsPausesAcceptingLogsOnceAndResumes) {
  FILE* log = std::tmpfile();
  ASSERT_NE(log, nullptr);
  ServerLoop loop(smallLimits(), log, core::LogLevel::Warn);
  ASSERT_TRUE(loop.ok());
  Client first(loop.port());
  roundTrips(first, 1);
  // Sockets for the connections the server cannot accept, made while there are descriptors.
  std::vector<int> late;
  for (int i = 0; i < 3; ++i) {
    late.push_back(::socket(AF_INET, SOCK_STREAM, 0));
    ASSERT_GE(late.back(), 0);
  }
  // No descriptor left for the process: a limit at the highest one open, holes filled.
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  int highest = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    highest = std::max(highest, std::atoi(e.path().filename().c_str()));
  }
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(highest + 1);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> fillers;
  for (int fd; (fd = ::dup(fileno(log))) >= 0;) {
    fillers.push_back(fd);
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(loop.port());
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  for (int fd : late) {
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);  // the backlog's
    const std::string req = "GET /v1/late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    ASSERT_EQ(::send(fd, req.data(), req.size(), MSG_NOSIGNAL), static_cast<ssize_t>(req.size()));
  }
  EXPECT_TRUE(waitFor([&] { return logText(log).find("accept failed") != std::string::npos; },
                      5000ms));
  // The loop goes on serving; a listener left on would fail accept() on every one of its turns.
  roundTrips(first, 20);
  const std::string during = logText(log);
  EXPECT_EQ(countOf(during, "accept failed"), 1u) << during;
  EXPECT_NE(during.find("accepting paused"), std::string::npos) << during;

  for (int fd : fillers) {
    ::close(fd);
  }
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  // Accepting resumes by itself: each waiting client is answered.
  for (int fd : late) {
    std::string got;
    const auto until = std::chrono::steady_clock::now() + 5s;
    while (got.find("\r\n\r\n") == std::string::npos && std::chrono::steady_clock::now() < until) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, 50) > 0) {
        char b[512];
        const ssize_t n = ::recv(fd, b, sizeof b, 0);
        if (n <= 0) {
          break;
        }
        got.append(b, static_cast<size_t>(n));
      }
    }
    EXPECT_EQ(got.substr(0, 12), "HTTP/1.1 200") << got;
    ::close(fd);
  }
  EXPECT_EQ(countOf(logText(log), "accept failed"), 1u);
  std::fclose(log);
}

TEST(HttpServerAbuse, AtTheConnectionCapAcceptingWaitsForAConnectionToClose) {
  shell::HttpServerLimits limits = smallLimits();
  limits.max_connections = 2;
  ServerLoop loop(limits);
  ASSERT_TRUE(loop.ok());
  Client a(loop.port()), b(loop.port());
  roundTrips(a, 1);
  roundTrips(b, 1);
  Client c(loop.port());  // connected by the kernel (backlog), not accepted
  ASSERT_TRUE(c.connected());
  c.send("GET /v1/third HTTP/1.1\r\nHost: x\r\n\r\n");
  roundTrips(a, 10);
  EXPECT_EQ(c.read(false, 300ms).status, 0) << "served beyond the cap";
  a.close();
  const HttpResponse r = c.read(false, 5s);
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "GET /v1/third 0");
}

// Sends @p head then @p drip one byte at a time, 20 ms apart, until the server answers.
// @return the answer (status 0 when the whole drip went in unanswered).
HttpResponse drip(Client& c, const std::string& head, const std::string& drip_bytes) {
  c.send(head);
  for (char ch : drip_bytes) {
    c.send(std::string(1, ch));
    HttpResponse r = c.read(false, 20ms);
    if (r.status != 0) {
      return r;
    }
  }
  return c.read(false, 20ms);
}

TEST(HttpServerAbuse, HeadersTricklingInPastTheHeaderDeadlineAre408AndClosed) {
  shell::HttpServerLimits limits = smallLimits();
  limits.header_timeout = 300ms;
  ServerLoop loop(limits);
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  // Every byte is progress, so the idle timeout (10 s) never fires: only the deadline can.
  std::string lines;
  for (int i = 0; i < 40; ++i) {
    lines += "X-" + std::to_string(i) + ": y\r\n";
  }
  const HttpResponse r = drip(c, "GET /v1/slow HTTP/1.1\r\nHost: x\r\n", lines);
  EXPECT_EQ(r.status, 400) << "the Recorder answers every problem 400";
  EXPECT_TRUE(c.closedByServer());
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].problem, shell::InboundProblem::Timeout);
}

TEST(HttpServerAbuse, ABodyTricklingInPastTheBodyDeadlineIs408AndClosed) {
  shell::HttpServerLimits limits = smallLimits();
  limits.body_timeout = 300ms;
  ServerLoop loop(limits);
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  const HttpResponse r = drip(
      c, "POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n", std::string(999, 'b'));
  EXPECT_EQ(r.status, 400);
  EXPECT_TRUE(c.closedByServer());
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].problem, shell::InboundProblem::Timeout);
}

TEST(HttpServerAbuse, OnlyHttp10And11RequestLinesAreServed) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  const std::vector<std::string> refused = {
      "GET /v1/tasks?page=1&size=1\r\n\r\n",                // HTTP/0.9: no version, no headers
      "GET /v1/tasks HTTP/2.0\r\nHost: x\r\n\r\n",          // HTTP/2 has no request line
      "GET /v1/tasks HTTP/1.2\r\nHost: x\r\n\r\n",
      "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                     // the HTTP/2 connection preface
  };
  for (const std::string& raw : refused) {
    Client c(loop.port());
    c.send(raw);
    const HttpResponse r = c.read();
    EXPECT_TRUE(r.status == 400 || r.status == 0) << raw;
    EXPECT_TRUE(c.closedByServer()) << raw;
  }
  for (const Seen& s : loop.rec().seen()) {
    EXPECT_EQ(s.problem, shell::InboundProblem::Malformed) << s.target;
  }
}

TEST(HttpServerAbuse, AFieldNameThatIsNotATokenIs400) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  for (const std::string& line : {std::string("Host : evil"), std::string("X A: b"),
                                  std::string("X\tA: b"), std::string("X(A): b")}) {
    Client c(loop.port());
    c.send("GET /v1/tasks HTTP/1.1\r\nHost: x\r\n" + line + "\r\n\r\n");
    const HttpResponse r = c.read();
    EXPECT_EQ(r.status, 400) << line;
    EXPECT_TRUE(c.closedByServer()) << line;
  }
  for (const Seen& s : loop.rec().seen()) {
    EXPECT_EQ(s.problem, shell::InboundProblem::Malformed);
  }
}

TEST(HttpServerAbuse, ChunkedTrailerFieldsAreNotHeaders) {
  ServerLoop loop(smallLimits());
  ASSERT_TRUE(loop.ok());
  Client c(loop.port());
  c.send("POST /v1/tasks HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
         "5\r\nhello\r\n0\r\nX-Trailer: evil\r\nAuthorization: Bearer sk-smuggled\r\n\r\n");
  const HttpResponse r = c.read();
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "POST /v1/tasks 5");
  const auto seen = loop.rec().seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].body, "hello");
  for (const shell::Header& h : seen[0].headers) {
    EXPECT_NE(h.name, "X-Trailer");
    EXPECT_NE(h.name, "Authorization");
  }
  // The connection serves on.
  roundTrips(c, 1);
}

}  // namespace
}  // namespace hiapi::test
