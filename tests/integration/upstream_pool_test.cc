// UpstreamPool and its HTTP/1.1 client (UpstreamConn) on a real event_base against real loopback
// sockets: framing (Content-Length, chunked, close-delimited, HEAD, 1xx), replies cut into single
// bytes, keep-alive reuse and its limits, errors and their classes, the pool bound and its line,
// and TLS against the harness's upstream with a test-time CA.
//
// The scripted servers are plain blocking sockets, one thread per accepted connection, so a test
// says byte for byte what the upstream does. No test measures time; every wait is bounded.

#include <atomic>
#include <chrono>
#include <csignal>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <arpa/inet.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness/harness.h"
#include "harness/script_server.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/upstream_conn.h"
#include "hiapi/shell/upstream_pool.h"

namespace hiapi::test {
namespace {

using shell::Header;
using shell::UpstreamError;
using shell::UpstreamPool;
using shell::UpstreamRequest;
using shell::UpstreamResponse;

// ---- scripts (harness/script_server.h runs them) ----------------------------------------------

/// A recorder of what each request said and which connection (peer port) it came on.
struct Seen {
  std::mutex mu;
  std::vector<std::string> requests;
  std::vector<uint16_t> ports;
  void add(const std::string& req, uint16_t port) {
    std::lock_guard<std::mutex> lock(mu);
    requests.push_back(req);
    ports.push_back(port);
  }
  size_t size() {
    std::lock_guard<std::mutex> lock(mu);
    return requests.size();
  }
};

std::string okReply(const std::string& body, const std::string& extra = {}) {
  return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

/// Answers every request on every connection with 200 "ok", recording it.
ScriptServer::Handler keepAliveServer(Seen& seen) {
  return [&seen](ServerConn& c) {
    while (auto req = c.readRequest()) {
      seen.add(*req, c.peerPort());
      c.send(okReply("ok"));
    }
  };
}

/// Blocks a server handler until the test sets @p flag (bounded), so that what it does next
/// happens on an idle connection, not together with the reply before.
void awaitFlag(const std::atomic<bool>& flag) {
  for (int i = 0; i < 10'000 && !flag; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

// ---- the client side ----------------------------------------------------------------------------

struct Outcome {
  bool called = false;
  int calls = 0;
  UpstreamResponse resp;
};

UpstreamRequest get(const std::string& target) {
  UpstreamRequest r;
  r.method = http::Method::Get;
  r.target = target;
  return r;
}

class UpstreamPoolTest : public ::testing::Test {
protected:
  UpstreamPoolTest() {
    std::signal(SIGPIPE, SIG_IGN);  // as the daemon does
    base_ = event_base_new();
    // Keeps EVLOOP_ONCE from blocking for long when nothing else is due.
    tick_ = event_new(base_, -1, EV_PERSIST, [](evutil_socket_t, short, void*) {}, nullptr);
    const timeval tv{0, 10'000};
    event_add(tick_, &tv);
  }
  ~UpstreamPoolTest() override {
    pool_.reset();
    event_free(tick_);
    event_base_free(base_);
  }

  core::UpstreamConfig config(uint16_t port, const std::string& host = "127.0.0.1") {
    core::UpstreamConfig cfg;
    cfg.scheme = "http";
    cfg.host = host;
    cfg.port = port;
    cfg.url = "http://" + host + ":" + std::to_string(port);
    cfg.connect_timeout = std::chrono::seconds(5);
    cfg.response_timeout = std::chrono::seconds(10);
    cfg.pool_size = 4;
    return cfg;
  }
  UpstreamPool& makePool(const core::UpstreamConfig& cfg) {
    pool_ = std::make_unique<UpstreamPool>(base_, clock_, cfg, log_);
    return *pool_;
  }

  /// Runs the loop until @p pred holds (bounded). @return whether it did.
  bool runUntil(const std::function<bool()>& pred,
                std::chrono::milliseconds limit = std::chrono::seconds(20)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!pred()) {
      if (std::chrono::steady_clock::now() > end) {
        return false;
      }
      event_base_loop(base_, EVLOOP_ONCE);
    }
    return true;
  }
  /// A few loop turns for "nothing else happens" checks.
  void spin(int turns = 10) {
    for (int i = 0; i < turns; ++i) {
      event_base_loop(base_, EVLOOP_ONCE);
    }
  }

  /// Sends @p req and runs the loop until its callback ran.
  Outcome exchange(UpstreamRequest req) {
    auto out = std::make_shared<Outcome>();
    pool_->send(std::move(req), [out](UpstreamResponse&& r) {
      out->called = true;
      ++out->calls;
      out->resp = std::move(r);
    });
    EXPECT_FALSE(out->called) << "the callback never runs inside send()";
    EXPECT_TRUE(runUntil([&] { return out->called; }));
    return *out;
  }

  shell::Logger log_{core::LogFormat::Logfmt, core::LogLevel::Error};
  core::SteadyClock clock_;
  event_base* base_ = nullptr;
  event* tick_ = nullptr;
  std::unique_ptr<UpstreamPool> pool_;
};

// ---- framing ------------------------------------------------------------------------------------

TEST_F(UpstreamPoolTest, WritesOneWellFormedRequestWithHostAndContentLength) {
  Seen seen;
  ScriptServer server(keepAliveServer(seen));
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));

  UpstreamRequest post;
  post.method = http::Method::Post;
  post.target = "/v1/tasks?x=1&y=%20";
  post.headers = {{"Authorization", "Bearer k"}, {"X-Evil", "a\r\nInjected: yes"}, {"A", "b"}};
  post.body = R"({"a":1})";
  EXPECT_EQ(exchange(post).resp.status, 200);
  UpstreamRequest empty_post;
  empty_post.method = http::Method::Post;
  empty_post.target = "/v1/empty";
  EXPECT_EQ(exchange(empty_post).resp.status, 200);
  EXPECT_EQ(exchange(get("/v1/tasks/tk-1")).resp.status, 200);

  ASSERT_EQ(seen.size(), 3u);
  const std::string host = "Host: 127.0.0.1:" + std::to_string(server.port()) + "\r\n";
  EXPECT_EQ(seen.requests[0], "POST /v1/tasks?x=1&y=%20 HTTP/1.1\r\n" + host +
                                 "Authorization: Bearer k\r\nA: b\r\nContent-Length: 7\r\n\r\n"
                                 R"({"a":1})")
      << "a header with a bare CR LF is dropped: it could smuggle a second header upstream";
  EXPECT_EQ(seen.requests[1], "POST /v1/empty HTTP/1.1\r\n" + host + "Content-Length: 0\r\n\r\n");
  EXPECT_EQ(seen.requests[2], "GET /v1/tasks/tk-1 HTTP/1.1\r\n" + host + "\r\n");
}

TEST_F(UpstreamPoolTest, ReadsAChunkedReply) {
  ScriptServer server([](ServerConn& c) {
    while (c.readRequest()) {
      c.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
             "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n");
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  for (int i = 0; i < 2; ++i) {
    Outcome o = exchange(get("/c"));
    ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
    EXPECT_EQ(o.resp.status, 200);
    EXPECT_EQ(o.resp.body, "hello world");
    ASSERT_NE(shell::findHeader(o.resp.headers, "x-a"), nullptr);
    EXPECT_EQ(*shell::findHeader(o.resp.headers, "X-A"), "1");
  }
  EXPECT_EQ(server.accepted(), 1u) << "a chunked reply keeps the connection";
}

TEST_F(UpstreamPoolTest, JoinsAReplySplitIntoSingleBytes) {
  const std::string reply = "HTTP/1.1 201 Created\r\nX-Long-Header-Name: a value in pieces\r\n"
                            "Content-Length: 11\r\n\r\nhello world";
  ScriptServer server([&](ServerConn& c) {
    while (c.readRequest()) {
      c.sendByteByByte(reply);
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  Outcome o = exchange(get("/slow"));
  ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  EXPECT_EQ(o.resp.status, 201);
  EXPECT_EQ(o.resp.body, "hello world");
  ASSERT_EQ(o.resp.headers.size(), 2u);
  EXPECT_EQ(o.resp.headers[0].name, "X-Long-Header-Name");
  EXPECT_EQ(o.resp.headers[0].value, "a value in pieces");
  EXPECT_EQ(o.resp.headers[1].name, "Content-Length");
  EXPECT_EQ(o.resp.headers[1].value, "11");
  EXPECT_EQ(exchange(get("/again")).resp.status, 201);
  EXPECT_EQ(server.accepted(), 1u);
}

TEST_F(UpstreamPoolTest, ReadsACloseDelimitedBodyAndDoesNotReuseThatConnection) {
  ScriptServer server([](ServerConn& c) {
    if (c.readRequest()) {
      c.send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end");
      c.shutdownWrite();
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  Outcome o = exchange(get("/eof"));
  ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  EXPECT_EQ(o.resp.body, "until the end");
  EXPECT_EQ(pool_->idleConnections(), 0u);
  EXPECT_EQ(exchange(get("/eof")).resp.body, "until the end");
  EXPECT_EQ(server.accepted(), 2u);
}

TEST_F(UpstreamPoolTest, ConnectionCloseAndHttp10RepliesAreNotReused) {
  for (const std::string& reply : {okReply("bye", "Connection: close\r\n"),
                                   std::string("HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nbye"),
                                   okReply("bye", "Connection: keep-alive, close\r\n")}) {
    ScriptServer server([&](ServerConn& c) {
      if (c.readRequest()) {
        c.send(reply);
        c.waitForClose();  // the client must close it
      }
    });
    ASSERT_TRUE(server.ok());
    makePool(config(server.port()));
    for (int i = 0; i < 2; ++i) {
      Outcome o = exchange(get("/close"));
      ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
      EXPECT_EQ(o.resp.body, "bye");
    }
    EXPECT_EQ(server.accepted(), 2u) << reply;
    EXPECT_EQ(pool_->idleConnections(), 0u);
    pool_.reset();
  }
}

TEST_F(UpstreamPoolTest, Http10KeepAliveAndHttp11RepliesReuseTheConnection) {
  Seen seen;
  ScriptServer server([&](ServerConn& c) {
    bool ten = false;
    while (auto req = c.readRequest()) {
      seen.add(*req, c.peerPort());
      c.send(ten ? "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                 : okReply("ok"));
      ten = !ten;
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(exchange(get("/ka")).resp.status, 200);
    EXPECT_EQ(pool_->idleConnections(), 1u);
  }
  EXPECT_EQ(server.accepted(), 1u);
  ASSERT_EQ(seen.ports.size(), 4u);
  for (uint16_t p : seen.ports) {
    EXPECT_EQ(p, seen.ports.front()) << "the same client port: one connection";
  }
}

TEST_F(UpstreamPoolTest, AReplyOnAnOpenConnectionSaysWhenItsRequestLeft) {
  // The limiter reads the gateway's counters as of the request's send. On an open connection
  // the request leaves when its attempt starts; on a new one connecting came first, for a time
  // the pool does not know, so it says nothing rather than something too early.
  ScriptServer server([&](ServerConn& c) {
    while (c.readRequest()) {
      c.send(okReply("ok"));
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  const Outcome first = exchange(get("/new"));
  EXPECT_EQ(first.resp.status, 200);
  EXPECT_FALSE(first.resp.sent_at) << "a new connection";
  const core::MonotonicTime before = clock_.now();
  const Outcome second = exchange(get("/open"));
  const core::MonotonicTime after = clock_.now();
  EXPECT_EQ(server.accepted(), 1u);
  ASSERT_TRUE(second.resp.sent_at) << "the connection was open";
  EXPECT_GE(*second.resp.sent_at, before);
  EXPECT_LE(*second.resp.sent_at + second.resp.latency, after);
}

TEST_F(UpstreamPoolTest, HeadReplyHasNoBodyDespiteItsContentLength) {
  ScriptServer server([](ServerConn& c) {
    while (auto req = c.readRequest()) {
      if (req->rfind("HEAD ", 0) == 0) {
        c.send("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
      } else {
        c.send(okReply("after head"));
      }
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  UpstreamRequest head = get("/h");
  head.method = http::Method::Head;
  Outcome o = exchange(head);
  ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  EXPECT_EQ(o.resp.status, 200);
  EXPECT_TRUE(o.resp.body.empty());
  ASSERT_NE(shell::findHeader(o.resp.headers, "Content-Length"), nullptr);
  EXPECT_EQ(*shell::findHeader(o.resp.headers, "Content-Length"), "1234");
  EXPECT_EQ(exchange(get("/next")).resp.body, "after head") << "still in step after HEAD";
  EXPECT_EQ(server.accepted(), 1u);
}

TEST_F(UpstreamPoolTest, InterimRepliesAreSkipped) {
  ScriptServer server([](ServerConn& c) {
    while (c.readRequest()) {
      c.send("HTTP/1.1 100 Continue\r\n\r\n");
      c.send("HTTP/1.1 102 Processing\r\nX-Interim: yes\r\n\r\n");
      c.send("HTTP/1.1 201 Created\r\nX-Final: yes\r\nContent-Length: 2\r\n\r\nok");
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  for (int i = 0; i < 2; ++i) {
    Outcome o = exchange(get("/continue"));
    ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
    EXPECT_EQ(o.resp.status, 201);
    EXPECT_EQ(o.resp.body, "ok");
    EXPECT_EQ(shell::findHeader(o.resp.headers, "X-Interim"), nullptr);
    EXPECT_NE(shell::findHeader(o.resp.headers, "X-Final"), nullptr);
  }
  EXPECT_EQ(server.accepted(), 1u);
}

TEST_F(UpstreamPoolTest, LargeBodiesBothWays) {
  // A request larger than any socket buffer goes out in parts on write edges; a reply larger
  // than the read buffer comes in over many reads.
  const std::string big_reply(3 * 1024 * 1024 + 7, 'r');
  ScriptServer server([&](ServerConn& c) {
    while (auto req = c.readRequest()) {
      const size_t body = req->size() - (req->find("\r\n\r\n") + 4);
      c.send(okReply(std::to_string(body) + ":" + big_reply));
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  UpstreamRequest post = get("/big");
  post.method = http::Method::Put;
  post.body.assign(16 * 1024 * 1024, 'q');
  Outcome o = exchange(post);
  ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  EXPECT_EQ(o.resp.body.size(), std::to_string(post.body.size()).size() + 1 + big_reply.size());
  EXPECT_EQ(o.resp.body.substr(0, o.resp.body.find(':')), std::to_string(post.body.size()));
  EXPECT_EQ(exchange(get("/small")).resp.body.substr(0, 2), "0:");
  EXPECT_EQ(server.accepted(), 1u);
}

// ---- idle connections ---------------------------------------------------------------------------

TEST_F(UpstreamPoolTest, EofOnAnIdleConnectionClosesItAndTheNextRequestConnectsAfresh) {
  Seen seen;
  std::atomic<bool> idle{false};
  ScriptServer server([&](ServerConn& c) {
    while (auto req = c.readRequest()) {
      seen.add(*req, c.peerPort());
      c.send(okReply("ok"));
      if (c.index() == 0) {
        awaitFlag(idle);
        c.shutdownWrite();
      }
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  EXPECT_EQ(exchange(get("/1")).resp.status, 200);
  EXPECT_EQ(pool_->idleConnections(), 1u);
  idle = true;
  ASSERT_TRUE(runUntil([&] { return pool_->idleConnections() == 0; }))
      << "the pool notices the EOF on its idle connection";
  EXPECT_EQ(exchange(get("/2")).resp.status, 200);
  EXPECT_EQ(server.accepted(), 2u);
  ASSERT_EQ(seen.ports.size(), 2u);
  EXPECT_NE(seen.ports[0], seen.ports[1]);
}

TEST_F(UpstreamPoolTest, StrayBytesOnAnIdleConnectionCloseIt) {
  std::atomic<bool> idle{false};
  ScriptServer server([&](ServerConn& c) {
    while (c.readRequest()) {
      c.send(okReply("ok"));
      if (c.index() == 0) {
        awaitFlag(idle);
        c.send("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale");
      }
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  EXPECT_EQ(exchange(get("/1")).resp.body, "ok");
  EXPECT_EQ(pool_->idleConnections(), 1u);
  idle = true;
  ASSERT_TRUE(runUntil([&] { return pool_->idleConnections() == 0; }));
  Outcome o = exchange(get("/2"));
  EXPECT_EQ(o.resp.body, "ok") << "never the stale bytes";
  EXPECT_EQ(server.accepted(), 2u);
}

TEST_F(UpstreamPoolTest, EofOnAReusedConnectionBeforeTheReplyIsAResetThatMayHaveBeenSent) {
  ScriptServer server([](ServerConn& c) {
    if (c.readRequest()) {
      c.send(okReply("first"));
    }
    if (c.readRequest()) {
      c.shutdownWrite();  // took the request, closed without a word
      c.waitForClose();
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  EXPECT_EQ(exchange(get("/1")).resp.body, "first");
  Outcome o = exchange(get("/2"));
  EXPECT_EQ(o.resp.error, UpstreamError::Reset) << o.resp.message;
  EXPECT_TRUE(o.resp.request_maybe_sent) << "no retry here: the caller's policy decides";
  EXPECT_EQ(o.resp.status, 0);
  EXPECT_EQ(server.accepted(), 1u);
}

TEST_F(UpstreamPoolTest, ACutReplyIsAReset) {
  ScriptServer server([](ServerConn& c) {
    if (c.readRequest()) {
      c.send("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part");
      c.shutdownWrite();
      c.waitForClose();
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  Outcome o = exchange(get("/cut"));
  EXPECT_EQ(o.resp.error, UpstreamError::Reset) << o.resp.message;
  EXPECT_TRUE(o.resp.request_maybe_sent);
}

// ---- errors -------------------------------------------------------------------------------------

TEST_F(UpstreamPoolTest, SilentServerIsATimeout) {
  ScriptServer server([](ServerConn& c) {
    c.readRequest();
    c.waitForClose();
  });
  ASSERT_TRUE(server.ok());
  auto cfg = config(server.port());
  cfg.response_timeout = std::chrono::seconds(10);
  makePool(cfg);
  UpstreamRequest req = get("/silent");
  req.timeout = std::chrono::milliseconds(200);  // min(req.timeout, response_timeout)
  Outcome o = exchange(req);
  EXPECT_EQ(o.resp.error, UpstreamError::Timeout) << o.resp.message;
  EXPECT_TRUE(o.resp.request_maybe_sent);
  EXPECT_NE(o.resp.message.find("200 ms"), std::string::npos) << o.resp.message;
  EXPECT_EQ(pool_->busyConnections() + pool_->idleConnections(), 0u);
}

TEST_F(UpstreamPoolTest, RefusedPortIsAConnectErrorWithNothingSent) {
  makePool(config(unusedPort()));
  Outcome o = exchange(get("/nobody"));
  EXPECT_EQ(o.resp.error, UpstreamError::Connect) << o.resp.message;
  EXPECT_FALSE(o.resp.request_maybe_sent);
  EXPECT_NE(o.resp.message.find("refused"), std::string::npos) << o.resp.message;
  EXPECT_EQ(upstreamErrorName(o.resp.error), "connect");
}

TEST_F(UpstreamPoolTest, MalformedReplyIsAProtocolError) {
  ScriptServer server([](ServerConn& c) {
    if (c.readRequest()) {
      c.send("HTTP/1.1 2x0 Nope\r\n\r\n");
      c.waitForClose();
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  Outcome o = exchange(get("/bad"));
  EXPECT_EQ(o.resp.error, UpstreamError::Protocol) << o.resp.message;
  EXPECT_EQ(pool_->idleConnections(), 0u);
}

TEST_F(UpstreamPoolTest, BodyOverTheLimitIsAProtocolError) {
  const size_t limit = shell::UpstreamConn::kMaxResponseBody;
  ScriptServer server([&](ServerConn& c) {
    while (auto req = c.readRequest()) {
      if (req->find(" /declared ") != std::string::npos) {
        c.send("HTTP/1.1 200 OK\r\nContent-Length: " + std::to_string(limit + 1) + "\r\n\r\nx");
      } else {
        // Chunked: only the bytes tell.
        c.send("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
        const std::string chunk(1024 * 1024, 'b');
        char size[32];
        std::snprintf(size, sizeof size, "%zx\r\n", chunk.size());
        for (size_t sent = 0; sent <= limit; sent += chunk.size()) {
          c.send(size + chunk + "\r\n");
        }
      }
      c.waitForClose();
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  Outcome declared = exchange(get("/declared"));
  EXPECT_EQ(declared.resp.error, UpstreamError::Protocol) << declared.resp.message;
  Outcome streamed = exchange(get("/streamed"));
  EXPECT_EQ(streamed.resp.error, UpstreamError::Protocol) << streamed.resp.message;
  EXPECT_TRUE(streamed.resp.body.empty());
}

TEST_F(UpstreamPoolTest, HeadersOverTheLimitAreAProtocolError) {
  // The parser has no limit of its own: the connection bounds what it keeps of a reply's headers.
  const size_t limit = shell::UpstreamConn::kMaxResponseHeaders;
  ScriptServer server([&](ServerConn& c) {
    while (auto req = c.readRequest()) {
      std::string head = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n";
      for (size_t sent = 0; sent <= limit; sent += 1024) {
        head += "X-Filler: " + std::string(1024, 'f') + "\r\n";
      }
      c.send(head + "\r\nok");
      c.waitForClose();
    }
  });
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  Outcome o = exchange(get("/fat-headers"));
  EXPECT_EQ(o.resp.error, UpstreamError::Protocol) << o.resp.message;
  EXPECT_NE(o.resp.message.find("reply headers larger than"), std::string::npos) << o.resp.message;
}

TEST_F(UpstreamPoolTest, Ipv6LiteralHost) {
  Seen seen;
  ScriptServerOptions v6;
  v6.v6 = true;
  ScriptServer server(keepAliveServer(seen), v6);
  if (!server.ok()) {
    GTEST_SKIP() << "no IPv6 loopback here";
  }
  makePool(config(server.port(), "::1"));
  Outcome o = exchange(get("/v6"));
  ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_NE(seen.requests[0].find("\r\nHost: [::1]:" + std::to_string(server.port()) + "\r\n"),
            std::string::npos)
      << seen.requests[0];
}

/// The addresses @p dns gives for @p name, in its order ("127.0.0.1", ...); @p run drives the
/// loop until the lookup has answered.
std::vector<std::string> lookUp(evdns_base* dns, const std::string& name,
                                const std::function<bool(const std::function<bool()>&)>& run) {
  struct Lookup {
    bool done = false;
    std::vector<std::string> addrs;
  } lookup;
  evutil_addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  evdns_getaddrinfo(
      dns, name.c_str(), "80", &hints,
      [](int result, evutil_addrinfo* res, void* arg) {
        auto* l = static_cast<Lookup*>(arg);
        l->done = true;
        for (const evutil_addrinfo* ai = result == 0 ? res : nullptr; ai != nullptr;
             ai = ai->ai_next) {
          char text[INET6_ADDRSTRLEN] = {};
          if (ai->ai_family == AF_INET) {
            inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(ai->ai_addr)->sin_addr, text,
                      sizeof text);
          } else if (ai->ai_family == AF_INET6) {
            inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(ai->ai_addr)->sin6_addr,
                      text, sizeof text);
          }
          l->addrs.emplace_back(text);
        }
        if (res != nullptr) {
          evutil_freeaddrinfo(res);
        }
      },
      &lookup);
  if (!run([&] { return lookup.done; })) {
    ADD_FAILURE() << "the lookup of " << name << " never answered";
  }
  return lookup.addrs;
}

TEST_F(UpstreamPoolTest, HostNameIsResolvedOnTheLoop) {
  // Which address evdns gives first for "localhost" (the hosts file), so that the server listens
  // where the pool will connect.
  evdns_base* dns = evdns_base_new(base_, EVDNS_BASE_INITIALIZE_NAMESERVERS);
  ASSERT_NE(dns, nullptr);
  const auto addrs =
      lookUp(dns, "localhost", [this](const std::function<bool()>& pred) { return runUntil(pred); });
  evdns_base_free(dns, 0);
  ASSERT_FALSE(HasFailure());
  if (addrs.empty() || addrs.front().empty()) {
    GTEST_SKIP() << "localhost does not resolve here";
  }
  Seen seen;
  ScriptServerOptions family;
  family.v6 = addrs.front().find(':') != std::string::npos;
  ScriptServer server(keepAliveServer(seen), family);
  ASSERT_TRUE(server.ok());
  makePool(config(server.port(), "localhost"));
  for (int i = 0; i < 2; ++i) {
    Outcome o = exchange(get("/named"));
    ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  }
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NE(seen.requests[0].find("\r\nHost: localhost:" + std::to_string(server.port()) + "\r\n"),
            std::string::npos)
      << seen.requests[0];
  EXPECT_EQ(server.accepted(), 1u);
}

TEST_F(UpstreamPoolTest, ANameWhoseFirstAddressRefusesIsReachedThroughTheNext) {
  Seen seen;
  ScriptServer server(keepAliveServer(seen));  // 127.0.0.1 only: 127.0.0.3 at its port refuses
  ASSERT_TRUE(server.ok());
  // A resolver with no nameserver that knows the name from a hosts file of the test's own, so
  // that neither the system's resolver nor its /etc/hosts is involved.
  TempDir dir;
  dir.write("hosts", "127.0.0.3 two-addresses.test\n127.0.0.1 two-addresses.test\n");
  evdns_base* dns = evdns_base_new(base_, 0);
  ASSERT_NE(dns, nullptr);
  ASSERT_EQ(evdns_base_load_hosts(dns, dir.file("hosts").c_str()), 0);
  const auto run = [this](const std::function<bool()>& pred) { return runUntil(pred); };
  ASSERT_EQ(lookUp(dns, "two-addresses.test", run),
            (std::vector<std::string>{"127.0.0.3", "127.0.0.1"}))
      << "the refusing address must come first for this test to mean anything";

  pool_ = std::make_unique<UpstreamPool>(base_, clock_, config(server.port(), "two-addresses.test"),
                                         log_, dns);
  for (int i = 0; i < 2; ++i) {
    Outcome o = exchange(get("/two"));
    ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
    EXPECT_EQ(o.resp.status, 200);
  }
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_NE(seen.requests[0].find("\r\nHost: two-addresses.test:" +
                                  std::to_string(server.port()) + "\r\n"),
            std::string::npos)
      << seen.requests[0];
  EXPECT_EQ(server.accepted(), 1u) << "the connection made through the second address is kept";
  pool_.reset();
  // The pool does not free a resolver it was given: this would be a double free otherwise.
  evdns_base_free(dns, 0);
}

TEST_F(UpstreamPoolTest, ANameWhoseEveryAddressRefusesIsAConnectErrorWithNothingSent) {
  const uint16_t port = unusedPort();
  TempDir dir;
  dir.write("hosts", "127.0.0.3 refusing.test\n127.0.0.1 refusing.test\n");
  evdns_base* dns = evdns_base_new(base_, 0);
  ASSERT_NE(dns, nullptr);
  ASSERT_EQ(evdns_base_load_hosts(dns, dir.file("hosts").c_str()), 0);
  pool_ = std::make_unique<UpstreamPool>(base_, clock_, config(port, "refusing.test"), log_, dns);
  Outcome o = exchange(get("/none"));
  EXPECT_EQ(o.resp.error, UpstreamError::Connect) << o.resp.message;
  EXPECT_FALSE(o.resp.request_maybe_sent);
  EXPECT_NE(o.resp.message.find("refused"), std::string::npos) << o.resp.message;
  pool_.reset();
  evdns_base_free(dns, 0);
}

// ---- the pool -----------------------------------------------------------------------------------

TEST_F(UpstreamPoolTest, PoolSizeBoundsConnectionsAndTheRestWaitInLine) {
  Seen seen;
  ScriptServer server(keepAliveServer(seen));
  ASSERT_TRUE(server.ok());
  auto cfg = config(server.port());
  cfg.pool_size = 2;
  makePool(cfg);
  int done = 0;
  std::vector<int> order;
  for (int i = 0; i < 6; ++i) {
    pool_->send(get("/q" + std::to_string(i)), [&, i](UpstreamResponse&& r) {
      EXPECT_EQ(r.status, 200) << r.message;
      order.push_back(i);
      ++done;
    });
  }
  EXPECT_EQ(done, 0);
  EXPECT_EQ(pool_->busyConnections(), 2u);
  EXPECT_EQ(pool_->waiting(), 4u);
  ASSERT_TRUE(runUntil([&] { return done == 6; }));
  EXPECT_LE(server.accepted(), 2u);
  EXPECT_EQ(pool_->waiting(), 0u);
  EXPECT_EQ(pool_->busyConnections(), 0u);
  EXPECT_EQ(pool_->idleConnections(), server.accepted());
}

TEST_F(UpstreamPoolTest, CancelIfWaitingDropsOnlyAWaitingRequest) {
  Seen seen;
  ScriptServer server(keepAliveServer(seen));
  ASSERT_TRUE(server.ok());
  auto cfg = config(server.port());
  cfg.pool_size = 1;
  makePool(cfg);
  int first = 0;
  int second = 0;
  const uint64_t a = pool_->send(get("/a"), [&](UpstreamResponse&&) { ++first; });
  const uint64_t b = pool_->send(get("/b"), [&](UpstreamResponse&&) { ++second; });
  EXPECT_FALSE(pool_->isWaiting(a));
  EXPECT_TRUE(pool_->isWaiting(b));
  EXPECT_FALSE(pool_->cancelIfWaiting(a)) << "already on the wire";
  EXPECT_TRUE(pool_->cancelIfWaiting(b));
  EXPECT_FALSE(pool_->isWaiting(b));
  EXPECT_FALSE(pool_->cancelIfWaiting(b));
  ASSERT_TRUE(runUntil([&] { return first == 1; }));
  spin();
  EXPECT_EQ(second, 0);
  EXPECT_EQ(seen.size(), 1u);
}

TEST_F(UpstreamPoolTest, MostRecentlyUsedConnectionGoesFirst) {
  Seen seen;
  ScriptServer server(keepAliveServer(seen));
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  // Two connections at once, then one at a time: all on the one that finished last.
  int done = 0;
  for (int i = 0; i < 2; ++i) {
    pool_->send(get("/p"), [&](UpstreamResponse&&) { ++done; });
  }
  ASSERT_TRUE(runUntil([&] { return done == 2; }));
  ASSERT_EQ(pool_->idleConnections(), 2u);
  const size_t before = seen.size();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(exchange(get("/s")).resp.status, 200);
  }
  ASSERT_EQ(seen.size(), before + 3);
  EXPECT_EQ(seen.ports[before], seen.ports[before + 1]);
  EXPECT_EQ(seen.ports[before + 1], seen.ports[before + 2]);
}

TEST_F(UpstreamPoolTest, CallbacksMaySendAgain) {
  Seen seen;
  ScriptServer server(keepAliveServer(seen));
  ASSERT_TRUE(server.ok());
  makePool(config(server.port()));
  int done = 0;
  std::function<void(UpstreamResponse&&)> next = [&](UpstreamResponse&& r) {
    EXPECT_EQ(r.status, 200);
    if (++done < 5) {
      pool_->send(get("/chain"), next);  // from inside the callback, onto the same connection
      EXPECT_EQ(pool_->busyConnections(), 1u);
    }
  };
  pool_->send(get("/chain"), next);
  ASSERT_TRUE(runUntil([&] { return done == 5; }));
  EXPECT_EQ(server.accepted(), 1u);
}

TEST_F(UpstreamPoolTest, FailuresAreNeverReportedFromInsideSend) {
  makePool(config(unusedPort()));
  int calls = 0;
  for (int i = 0; i < 3; ++i) {
    pool_->send(get("/x"), [&](UpstreamResponse&& r) {
      EXPECT_EQ(r.error, UpstreamError::Connect);
      ++calls;
    });
    EXPECT_EQ(calls, 0);
  }
  ASSERT_TRUE(runUntil([&] { return calls == 3; }));
  spin();
  EXPECT_EQ(calls, 3) << "exactly once each";
}

// ---- TLS ----------------------------------------------------------------------------------------

class UpstreamPoolTlsTest : public UpstreamPoolTest {
protected:
  core::UpstreamConfig tlsConfig(uint16_t port, const std::string& ca_file) {
    core::UpstreamConfig cfg = config(port);
    cfg.scheme = "https";
    cfg.url = "https://127.0.0.1:" + std::to_string(port);
    cfg.ca_file = ca_file;
    return cfg;
  }
  TempDir dir_;
};

TEST_F(UpstreamPoolTlsTest, VerifiedTlsKeepsTheConnectionAndCarriesLargeBodies) {
  TestCa ca = TestCa::create(dir_, {"localhost"}, {"127.0.0.1"});
  TestUpstream up(ca.server_cert, ca.server_key);
  const std::string big(2 * 1024 * 1024 + 3, 'z');
  up.setHandler([&](const RecordedRequest& req) {
    TestUpstream::Reply r;
    r.body = req.uri == "/big" ? big : "len=" + std::to_string(req.body.size());
    return r;
  });
  makePool(tlsConfig(up.port(), ca.ca_cert));
  EXPECT_EQ(exchange(get("/small")).resp.body, "len=0");
  Outcome o = exchange(get("/big"));
  ASSERT_EQ(o.resp.error, UpstreamError::None) << o.resp.message;
  EXPECT_EQ(o.resp.body, big);
  UpstreamRequest post = get("/post");
  post.method = http::Method::Post;
  post.body.assign(4 * 1024 * 1024, 'p');
  Outcome p = exchange(post);
  ASSERT_EQ(p.resp.error, UpstreamError::None) << p.resp.message;
  EXPECT_EQ(p.resp.body, "len=" + std::to_string(post.body.size()));
  EXPECT_EQ(up.count(), 3u);
  EXPECT_EQ(pool_->idleConnections(), 1u) << "one connection for all three";
}

TEST_F(UpstreamPoolTlsTest, WrongHostCertificateIsATlsErrorWithTheReason) {
  TestCa wrong = TestCa::create(dir_, {"not-the-upstream.example"}, {"127.0.0.2"}, "wrong");
  TestUpstream up(wrong.server_cert, wrong.server_key);
  makePool(tlsConfig(up.port(), wrong.ca_cert));
  Outcome o = exchange(get("/x"));
  EXPECT_EQ(o.resp.error, UpstreamError::Tls);
  EXPECT_FALSE(o.resp.request_maybe_sent);
  EXPECT_NE(o.resp.message.find("mismatch"), std::string::npos) << o.resp.message;
  EXPECT_EQ(up.count(), 0u);
}

TEST_F(UpstreamPoolTlsTest, AHandshakeThatNeverEndsIsAConnectTimeoutWithNothingSent) {
  ScriptServer server([](ServerConn& c) { c.waitForClose(); });  // accepts, never speaks TLS
  ASSERT_TRUE(server.ok());
  TestCa ca = TestCa::create(dir_, {"localhost"}, {"127.0.0.1"});
  auto cfg = tlsConfig(server.port(), ca.ca_cert);
  cfg.connect_timeout = std::chrono::milliseconds(200);
  makePool(cfg);
  Outcome o = exchange(get("/x"));
  EXPECT_EQ(o.resp.error, UpstreamError::ConnectTimeout) << o.resp.message;
  EXPECT_FALSE(o.resp.request_maybe_sent);
  EXPECT_EQ(pool_->busyConnections() + pool_->idleConnections(), 0u);
}

TEST_F(UpstreamPoolTlsTest, PlainHttpServerIsATlsError) {
  ScriptServer server([](ServerConn& c) {
    c.send("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    c.shutdownWrite();
    c.waitForClose();
  });
  ASSERT_TRUE(server.ok());
  TestCa ca = TestCa::create(dir_, {"localhost"}, {"127.0.0.1"});
  makePool(tlsConfig(server.port(), ca.ca_cert));
  Outcome o = exchange(get("/x"));
  EXPECT_EQ(o.resp.error, UpstreamError::Tls) << o.resp.message;
  EXPECT_FALSE(o.resp.request_maybe_sent);
}

}  // namespace
}  // namespace hiapi::test
