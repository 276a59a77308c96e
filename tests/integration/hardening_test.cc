// The daemon under abuse and faults (issue 24): keys that must never share state, a drain that
// answers what is queued, reloads of files that are not whole, state files that cannot be
// written or are not files, dot segments, requests that are not HTTP/1.x, deadlines that
// include the wait for an upstream connection, and upstream replies the proxy must refuse.

#include <atomic>
#include <csignal>
#include <fstream>
#include <thread>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include "harness/harness.h"
#include "harness/script_server.h"
#include "harness/workload.h"
#include "hiapi/core/config.h"

namespace hiapi::test {
namespace {

const std::string kKey = "sk-hardening-0123456789abcdef";

std::string yamlFor(uint16_t upstream_port, const std::string& extra = {}) {
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: true\n  port: 0\n"
         "upstream:\n  url: http://127.0.0.1:" + std::to_string(upstream_port) + "\n"
         "  response_timeout: 10s\n"
         "log:\n  level: info\n" + extra;
}

std::vector<std::pair<std::string, std::string>> auth(const std::string& key) {
  return {{"Authorization", "Bearer " + key}, {"Content-Type", "application/json"}};
}

std::string taskIdOf(const std::string& body) {
  rapidjson::Document d;
  d.Parse(body.c_str());
  if (d.HasParseError() || !d.IsObject() || !d.HasMember("data") || !d["data"].IsObject() ||
      !d["data"].HasMember("taskId") || !d["data"]["taskId"].IsString()) {
    return {};
  }
  return d["data"]["taskId"].GetString();
}

size_t countOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) {
    ++n;
  }
  return n;
}

// Item 2: two keys whose 32-bit display fingerprints collide must not share a cached task.
TEST(Hardening, KeysWithCollidingFingerprintsNeverShareACachedTask) {
  const std::string a = "sk-test-516748", b = "sk-test-811928";
  ASSERT_EQ(core::Secret(a).fingerprint(), core::Secret(b).fingerprint())
      << "the pair must collide in the 32-bit label for this test to mean anything";
  TempDir dir;
  SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--keys", a + "," + b,
                       "--light-duration", "30s", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(dir, yamlFor(sim.port(), "limits:\n  rate: 20/s\n  burst: 10\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  auto created = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(a),
                             R"({"model":"gpt-image-2","input":{"prompt":"mine"}})");
  ASSERT_EQ(created.status, 200) << created.body;
  const std::string task = taskIdOf(created.body);
  ASSERT_FALSE(task.empty());
  auto mine = httpRequest(proxy.port(), "GET", "/v1/tasks/" + task, auth(a));
  ASSERT_EQ(mine.status, 200);
  auto theirs = httpRequest(proxy.port(), "GET", "/v1/tasks/" + task, auth(b));
  EXPECT_EQ(theirs.status, 404) << theirs.body;
  EXPECT_NE(theirs.header("X-HiAPI-Proxy-Cache"), "hit");
  // Logs and /status show a short display name, never the key.
  auto status = httpRequest(proxy.adminPort(), "GET", "/status");
  EXPECT_EQ(status.body.find(a), std::string::npos);
  EXPECT_EQ(status.body.find(b), std::string::npos);
  EXPECT_NE(status.body.find("\"name\":\"pt-"), std::string::npos) << status.body;
  proxy.process().signal(SIGTERM);
  ASSERT_EQ(proxy.process().wait(10000ms), 0);
  const std::string log = proxy.process().err();
  EXPECT_EQ(log.find(a), std::string::npos);
  EXPECT_NE(log.find("key=pt-"), std::string::npos);
}

// Item 3: after SIGTERM the queued creates are still served as tier slots free up.
TEST(Hardening, DrainKeepsFreeingTierSlotsForQueuedCreates) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "50/s", "--burst", "50", "--keys", kKey, "--light-max", "2",
                       "--light-duration", "600ms", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(
      dir, yamlFor(sim.port(),
                   "drain_timeout: 25s\n"
                   "limits:\n  rate: 50/s\n  burst: 20\n  tiers:\n"
                   "    - {name: light, models: [\"*\"], max_running: 2}\n"
                   "queue:\n  deadline: 50s\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  constexpr int kCreates = 8;
  std::vector<int> statuses(kCreates, -1);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCreates; ++i) {
    threads.emplace_back([&, i] {
      statuses[i] = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKey),
                                R"({"model":"gpt-image-2","input":{"prompt":"drain )" +
                                    std::to_string(i) + "\"}}",
                                40000ms)
                        .status;
    });
  }
  // Two run, the rest wait for the tier: then the signal.
  EXPECT_TRUE(waitFor(
      [&] {
        auto st = httpRequest(proxy.adminPort(), "GET", "/status");
        return st.body.find("\"queued\":" + std::to_string(kCreates - 2)) != std::string::npos;
      },
      10000ms));
  proxy.process().signal(SIGTERM);
  for (auto& t : threads) {
    t.join();
  }
  for (int i = 0; i < kCreates; ++i) {
    EXPECT_EQ(statuses[i], 200) << "create " << i;
  }
  EXPECT_EQ(proxy.process().wait(30000ms), 0);
}

class HardeningUpstream : public ::testing::Test {
protected:
  void SetUp() override {
    upstream_.setHandler([](const RecordedRequest& q) {
      TestUpstream::Reply r;
      r.headers = {{"Content-Type", "application/json"}};
      if (q.method == "POST") {
        r.body = R"({"code":200,"message":"success","data":{"taskId":"tk-hard-1"}})";
      } else {
        r.body = R"({"code":200,"message":"success","data":{"status":"running"}})";
      }
      return r;
    });
  }
  TempDir dir_;
  TestUpstream upstream_;
};

// Item 4: a request line without a version (HTTP/0.9) or with another major version is 400,
// never forwarded, not even with an injected key.
TEST_F(HardeningUpstream, Http09And2RequestLinesAre400AndNeverForwarded) {
  ProxyProcess proxy(dir_, yamlFor(upstream_.port(),
                                   "auth:\n  mode: inject\nkeys:\n  - name: prod\n"
                                   "    key: hi-sk-injected-value\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  for (const std::string& raw : {std::string("GET /v1/tasks?page=1&size=1\r\n\r\n"),
                                 std::string("GET /v1/tasks HTTP/2.0\r\nHost: x\r\n\r\n")}) {
    auto r = httpRaw(proxy.port(), raw);
    EXPECT_EQ(r.status, 400) << raw;
    EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "bad_request") << raw;
  }
  EXPECT_EQ(upstream_.count(), 0u);
}

// Item 6: SIGHUP with an empty or a partial file keeps the running configuration.
TEST_F(HardeningUpstream, ReloadRefusesAnEmptyOrPartialFile) {
  const std::string full = yamlFor(upstream_.port(),
                                   "auth:\n  mode: inject\nkeys:\n  - name: prod\n"
                                   "    key: hi-sk-injected-value\n");
  ProxyProcess proxy(dir_, full);
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::string path = proxy.configPath();
  auto refusedAfter = [&](const std::string& text, size_t nth) {
    {
      std::ofstream f(path, std::ios::trunc);
      f << text;
    }
    proxy.process().signal(SIGHUP);
    return waitFor([&] { return countOf(proxy.process().err(), "reload failed") >= nth; },
                   5000ms);
  };
  EXPECT_TRUE(refusedAfter("", 1)) << proxy.process().err();
  EXPECT_TRUE(refusedAfter("# nothing but a comment\n", 2)) << proxy.process().err();
  // Cut off after the listen and admin sections, as an unfinished write would leave it.
  EXPECT_TRUE(refusedAfter(full.substr(0, full.find("upstream:")), 3)) << proxy.process().err();
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-1");
  EXPECT_EQ(r.status, 200) << r.body;
  auto reqs = upstream_.requests();
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header("Authorization"), "Bearer hi-sk-injected-value");
  EXPECT_EQ(countOf(proxy.process().err(), "reload ok"), 0u);
  // A whole file still reloads.
  {
    std::ofstream f(path, std::ios::trunc);
    f << full;
  }
  proxy.process().signal(SIGHUP);
  EXPECT_TRUE(waitFor([&] { return proxy.process().err().find("reload ok") != std::string::npos; },
                      5000ms));
}

// Item 7: a state file that cannot be written is tried again later and later, and said so
// once per run rather than on every tick.
TEST_F(HardeningUpstream, FailedStateSavesBackOff) {
  const std::string state = dir_.file("no-such-dir/state.json");
  ProxyProcess proxy(dir_, yamlFor(upstream_.port(), "tasks:\n  state_file: " + state +
                                                         "\n  state_save_interval: 100ms\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  auto created = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKey),
                             R"({"model":"gpt-image-2","input":{"prompt":"x"}})");
  ASSERT_EQ(created.status, 200);
  const std::string kLine = "cannot write the task state file";
  ASSERT_TRUE(waitFor([&] { return proxy.process().err().find(kLine) != std::string::npos; },
                      5000ms));
  // At a try per 100 ms tick, ten more lines would come within the next 1.5 s.
  EXPECT_FALSE(waitFor([&] { return countOf(proxy.process().err(), kLine) >= 3; }, 1500ms))
      << proxy.process().err();
}

// Item 10: dot segments are refused before routing, never forwarded.
TEST_F(HardeningUpstream, DotSegmentsAre400) {
  ProxyProcess proxy(dir_, yamlFor(upstream_.port()));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  for (const char* target : {"/v1/../metrics", "/v1/%2e%2e/x", "/v1/tasks/./tk-1",
                             "/v1/%2E%2E%2Fmetrics", "/v1/tasks/..", "/v1/.%2e/status",
                             "/v1/..\\metrics"}) {
    auto r = httpRequest(proxy.port(), "GET", target, auth(kKey));
    EXPECT_EQ(r.status, 400) << target;
    EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "bad_request") << target;
  }
  EXPECT_EQ(upstream_.count(), 0u);
  // Dots inside a segment are names like any other.
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks/tk.1..2", auth(kKey)).status, 200);
  EXPECT_EQ(upstream_.count(), 1u);
}

// Item 12: the time a request waits for an upstream connection counts against its deadline.
TEST_F(HardeningUpstream, WaitingForAConnectionCountsAgainstTheDeadline) {
  upstream_.setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    r.no_reply = true;
    return r;
  });
  // One upstream connection: the second request can only wait for the first's.
  std::string yaml = yamlFor(upstream_.port(), "limits:\n  rate: 100/s\n  burst: 20\n");
  yaml.replace(yaml.find("  response_timeout: 10s\n"), 0, "  pool_size: 1\n");
  ProxyProcess proxy(dir_, yaml);
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  OpenRequest first(proxy.port(), "GET /v1/tasks/tk-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                      kKey + "\r\nX-HiAPI-Deadline: 2s\r\n\r\n");
  ASSERT_TRUE(waitFor([&] { return upstream_.count() == 1; }, 5000ms));
  OpenRequest second(proxy.port(), "GET /v1/tasks/tk-2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                       kKey + "\r\nX-HiAPI-Deadline: 500ms\r\n\r\n");
  // The second's deadline passes while it waits: it is answered then, and never sent (sent
  // after the first's timeout, it would have had its whole deadline again).
  auto r2 = second.read(10000ms);
  EXPECT_EQ(r2.status, 504);
  EXPECT_EQ(r2.header("X-HiAPI-Proxy-Error"), "upstream_timeout");
  auto r1 = first.read(10000ms);
  EXPECT_EQ(r1.status, 504);
  EXPECT_EQ(upstream_.count(), 1u);
}

// Resident memory of process @p pid in KiB (VmRSS), 0 when unreadable.
int64_t rssKib(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::atoll(line.c_str() + 6);
    }
  }
  return 0;
}

// A client with a small receive buffer that sends one request and never reads.
int stuckClient(uint16_t port, const std::string& raw) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  const int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  ::send(fd, raw.data(), raw.size(), MSG_NOSIGNAL);
  return fd;
}

// Item 11: clients that never read their (large) replies cannot grow the daemon without bound.
TEST_F(HardeningUpstream, RepliesNobodyReadsAreBoundedAllTogether) {
  constexpr size_t kBig = 24u << 20;
  const std::string big(kBig, 'x');
  upstream_.setHandler([&big](const RecordedRequest& q) {
    TestUpstream::Reply r;
    r.headers = {{"Content-Type", "application/octet-stream"}};
    r.body = q.uri.find("/big") != std::string::npos ? big : std::string("small");
    return r;
  });
  ProxyProcess proxy(dir_, yamlFor(upstream_.port(), "limits:\n  rate: 100/s\n  burst: 20\n")
                               .insert(std::string("listen:\n").size(),
                                       "  max_reply_buffer: 16MiB\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const int64_t rss_before = rssKib(proxy.process().pid());
  constexpr int kClients = 5;
  std::vector<int> fds;
  for (int i = 0; i < kClients; ++i) {
    fds.push_back(stuckClient(proxy.port(), "GET /v1/big/" + std::to_string(i) +
                                                " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                                kKey + "\r\n\r\n"));
    ASSERT_GE(fds.back(), 0);
  }
  ASSERT_TRUE(waitFor([&] { return upstream_.count() == kClients; }, 10000ms));
  // Held: at least the bound (every client's reply is larger than it)...
  auto buffered = [&] {
    auto st = httpRequest(proxy.adminPort(), "GET", "/status");
    rapidjson::Document d;
    d.Parse(st.body.c_str());
    return jsonInt(d, {"buffered_reply_bytes"});
  };
  EXPECT_TRUE(waitFor([&] { return buffered() >= (16 << 20); }, 10000ms));
  // ...and then not much more: one reply over the bound at most, not five.
  const int64_t held = buffered();
  EXPECT_LE(held, int64_t{16 << 20} + int64_t{kBig} + kClients * 64 * 1024);
  const int64_t grown_mib = (rssKib(proxy.process().pid()) - rss_before) / 1024;
  RecordProperty("rss_growth_mib", static_cast<int>(grown_mib));
  RecordProperty("buffered_reply_mib", static_cast<int>(held >> 20));
  EXPECT_LT(grown_mib, 80) << "five unread 24 MiB replies held whole would take 120";
  // Once they go, the daemon serves on.
  for (int fd : fds) {
    ::close(fd);
  }
  EXPECT_TRUE(waitFor([&] { return buffered() == 0; }, 10000ms)) << buffered();
  auto r = httpRequest(proxy.port(), "GET", "/v1/small", auth(kKey));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "small");
}

// Review: an upstream reply with a folded header line is refused (RFC 9112 §5.2), not passed on.
TEST(Hardening, AnUpstreamReplyWithObsFoldIs502) {
  // TestUpstream, being evhttp, cannot send a malformed reply: a scripted one sends these bytes.
  const std::string folded =
      "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Folded: a\r\n"
      " Set-Cookie: evil=1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
  std::atomic<int> requests{0};
  ScriptServer up([&](ServerConn& c) {
    if (c.readRequest()) {
      ++requests;
      c.send(folded);
    }
  });
  ASSERT_TRUE(up.ok());
  TempDir dir;
  ProxyProcess proxy(dir, yamlFor(up.port(), "retry:\n  max_attempts: 1\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  auto r = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKey),
                       R"({"model":"gpt-image-2","input":{"prompt":"x"}})");
  EXPECT_EQ(r.status, 502) << r.body;
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "upstream_unreachable");
  EXPECT_FALSE(r.has("X-Folded"));
  EXPECT_GE(requests.load(), 1);
}

// Item 13: a FIFO where the state file should be does not hold up start-up.
TEST_F(HardeningUpstream, AFifoAsTheStateFileIsRefusedWithALogLine) {
  const std::string state = dir_.file("state.json");
  ASSERT_EQ(::mkfifo(state.c_str(), 0600), 0);
  ProxyProcess proxy(dir_, yamlFor(upstream_.port(), "tasks:\n  state_file: " + state + "\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  EXPECT_NE(proxy.process().err().find("not a regular file"), std::string::npos)
      << proxy.process().err();
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks/tk-1", auth(kKey)).status, 200);
}

// Review: a HEAD reply carries the upstream's Content-Length, not 0.
TEST_F(HardeningUpstream, HeadRepliesKeepTheUpstreamsContentLength) {
  upstream_.setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    // The length a GET would have: evhttp sends none on its own for HEAD.
    r.headers = {{"Content-Type", "application/json"}, {"Content-Length", "10"}};
    return r;
  });
  ProxyProcess proxy(dir_, yamlFor(upstream_.port()));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  auto r = httpRaw(proxy.port(), "HEAD /v1/tasks/tk-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                     kKey + "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Length"), "10");
  EXPECT_TRUE(r.body.empty());
  // An upstream that states no length for HEAD: the proxy states none either (not "0").
  upstream_.setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    r.headers = {{"Content-Type", "application/json"}};
    return r;
  });
  auto none = httpRaw(proxy.port(), "HEAD /v1/tasks/tk-2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                        kKey + "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(none.status, 200);
  EXPECT_FALSE(none.has("Content-Length")) << none.header("Content-Length");
}

}  // namespace
}  // namespace hiapi::test
