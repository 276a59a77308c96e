// Foundation: the real daemon forwarding to a loopback upstream over real TLS with a CA made at
// test time. Byte-exact forwarding, hop-by-hop filtering, proxy errors, keys, logs, shutdown.

#include <csignal>

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <rapidjson/document.h>

#include "harness/harness.h"

namespace hiapi::test {
namespace {

const std::string kClientKey = "sk-client-0123456789abcdef";
const std::string kInjectKey = "hi-sk-injected-SECRET-value-42";

std::string baseYaml(const std::string& upstream_url, const std::string& ca_file,
                     const std::string& extra = {}, const std::string& listen_extra = {}) {
  std::string y = "listen:\n  address: 127.0.0.1\n  port: 0\n" + listen_extra +
                  "admin:\n  enabled: false\n"
                  "upstream:\n  url: " + upstream_url + "\n";
  if (!ca_file.empty()) {
    y += "  ca_file: " + ca_file + "\n";
  }
  y += "  connect_timeout: 2s\n  response_timeout: 5s\n";
  return y + extra;
}

class ForwardingTest : public ::testing::Test {
protected:
  void SetUp() override {
    ca_ = TestCa::create(dir_, {"localhost"}, {"127.0.0.1"});
    upstream_ = std::make_unique<TestUpstream>(ca_.server_cert, ca_.server_key);
  }
  std::string url() const { return "https://127.0.0.1:" + std::to_string(upstream_->port()); }

  TempDir dir_;
  TestCa ca_;
  std::unique_ptr<TestUpstream> upstream_;
};

TEST_F(ForwardingTest, ForwardsBytesExactlyOverVerifiedTls) {
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();

  std::string body = R"({"model":"gpt-image-2","input":{"prompt":"caf)";
  body += "\xc3\xa9 \xe2\x98\x95 \xff\xfe\x01 raw\"}}";  // UTF-8, invalid UTF-8, control byte
  const std::string target = "/v1/tasks?foo=bar%20baz&x=1&empty=&utf=%E2%98%95";
  auto r = httpRequest(proxy.port(), "POST", target,
                       {{"Authorization", "Bearer " + kClientKey},
                        {"Content-Type", "application/json"},
                        {"Idempotency-Key", "idem-123"},
                        {"X-Custom", "kept"},
                        {"Connection", "X-Secret-Hop"},
                        {"X-Secret-Hop", "drop"},
                        {"Keep-Alive", "timeout=5"},
                        {"TE", "trailers"},
                        {"Proxy-Authorization", "Basic Zm9vOmJhcg=="},
                        {"Upgrade", "h2c"}},
                       body);
  ASSERT_EQ(r.status, 200) << r.body << proxy.process().err();
  EXPECT_EQ(r.body, R"({"code":200,"message":"success","data":{"taskId":"tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"}})");
  EXPECT_EQ(r.header("X-Upstream"), "yes");
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_FALSE(r.has("X-Drop-Me")) << "named by the upstream's Connection header";
  EXPECT_FALSE(r.has("Keep-Alive"));
  EXPECT_FALSE(r.has("X-HiAPI-Proxy-Error"));

  auto reqs = upstream_->requests();
  ASSERT_EQ(reqs.size(), 1u);
  const RecordedRequest& got = reqs[0];
  EXPECT_EQ(got.method, "POST");
  EXPECT_EQ(got.uri, target);
  EXPECT_EQ(got.body, body);
  EXPECT_EQ(got.header("Idempotency-Key"), "idem-123");
  EXPECT_EQ(got.header("X-Custom"), "kept");
  EXPECT_EQ(got.header("Authorization"), "Bearer " + kClientKey);
  EXPECT_EQ(got.header("Host"), "127.0.0.1:" + std::to_string(upstream_->port()));
  for (const char* h : {"X-Secret-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "Upgrade"}) {
    EXPECT_FALSE(got.has(h)) << h << " is hop-by-hop";
  }
}

TEST_F(ForwardingTest, UpstreamErrorsComeBackUnchanged) {
  upstream_->setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    r.status = 404;
    r.headers = {{"Content-Type", "application/json"}, {"X-Trace", "abc"}};
    r.body = R"({"error":{"type":"hiapi_error","code":"not_found","request_id":"req_42"}})";
    return r;
  });
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert));
  ASSERT_TRUE(proxy.started());
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-hiapi-unknown",
                       {{"Authorization", "Bearer " + kClientKey}});
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.header("X-Trace"), "abc");
  EXPECT_FALSE(r.has("X-HiAPI-Proxy-Error"));
  EXPECT_EQ(r.body, R"({"error":{"type":"hiapi_error","code":"not_found","request_id":"req_42"}})");
  EXPECT_TRUE(waitFor([&] { return proxy.process().err().find("upstream_request_id=req_42") !=
                                   std::string::npos; },
                      3000ms))
      << "the upstream request_id is logged";
}

TEST_F(ForwardingTest, KeepAliveConnectionsAreReused) {
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert));
  ASSERT_TRUE(proxy.started());
  for (int i = 0; i < 5; ++i) {
    auto r = httpRequest(proxy.port(), "GET", "/v1/tasks?page=" + std::to_string(i + 1),
                         {{"Authorization", "Bearer " + kClientKey}});
    ASSERT_EQ(r.status, 200);
  }
  EXPECT_EQ(upstream_->count(), 5u);
}

TEST_F(ForwardingTest, WrongHostCertificateIs502TlsError) {
  TempDir other;
  TestCa wrong = TestCa::create(other, {"not-the-upstream.example"}, {"127.0.0.2"}, "wrong");
  TestUpstream bad(wrong.server_cert, wrong.server_key);
  ProxyProcess proxy(dir_, baseYaml("https://127.0.0.1:" + std::to_string(bad.port()),
                                    wrong.ca_cert));
  ASSERT_TRUE(proxy.started());
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks", {{"Authorization", "Bearer " + kClientKey}});
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "upstream_tls_error");
  EXPECT_NE(r.body.find("\"code\":\"upstream_tls_error\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("mismatch"), std::string::npos) << "OpenSSL's reason: " << r.body;
  EXPECT_EQ(bad.count(), 0u) << "nothing is sent over an unverified connection";
}

TEST_F(ForwardingTest, UntrustedCaIs502TlsError) {
  // The upstream's chain is not in the configured store (the system store does not have it).
  ProxyProcess proxy(dir_, baseYaml(url(), ""));
  ASSERT_TRUE(proxy.started());
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks", {{"Authorization", "Bearer " + kClientKey}});
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "upstream_tls_error");
  EXPECT_NE(r.body.find("certificate"), std::string::npos) << r.body;
}

TEST_F(ForwardingTest, UnreachableUpstreamIs502) {
  ProxyProcess proxy(dir_, baseYaml("http://127.0.0.1:" + std::to_string(unusedPort()), ""));
  ASSERT_TRUE(proxy.started());
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-1", {{"Authorization", "Bearer " + kClientKey}});
  EXPECT_EQ(r.status, 502);
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "upstream_unreachable");
  EXPECT_NE(r.body.find("\"error_code\":\"BAD_GATEWAY\""), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("\"type\":\"hiapi_error\""), std::string::npos);
}

TEST_F(ForwardingTest, SilentUpstreamIs504) {
  upstream_->setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    r.no_reply = true;
    return r;
  });
  // One attempt: the retry step is tested with the simulator.
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert, "retry:\n  max_attempts: 1\n"));
  ASSERT_TRUE(proxy.started());
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-1",
                       {{"Authorization", "Bearer " + kClientKey}}, {}, 20000ms);
  EXPECT_EQ(r.status, 504);
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "upstream_timeout");
  EXPECT_TRUE(r.has("Retry-After"));
}

TEST_F(ForwardingTest, ProxyMadeErrorsUseBothEnvelopes) {
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert, {},
                                    "  max_body_size: 1KiB\n  max_header_size: 1KiB\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::vector<std::pair<std::string, std::string>> auth{{"Authorization", "Bearer " + kClientKey}};

  auto connect = httpRaw(proxy.port(), "CONNECT api.hiapi.ai:443 HTTP/1.1\r\nHost: api.hiapi.ai:443\r\n\r\n");
  EXPECT_EQ(connect.status, 405);
  EXPECT_EQ(connect.header("X-HiAPI-Proxy-Error"), "method_not_allowed");
  EXPECT_NE(connect.body.find("127.0.0.1:8787"), std::string::npos) << connect.body;

  auto foreign = httpRaw(proxy.port(),
                         "GET http://evil.example.com/v1/tasks HTTP/1.1\r\nHost: evil.example.com\r\n"
                         "Authorization: Bearer " + kClientKey + "\r\nConnection: close\r\n\r\n");
  EXPECT_EQ(foreign.status, 403);
  EXPECT_EQ(foreign.header("X-HiAPI-Proxy-Error"), "not_an_open_proxy");

  auto unknown = httpRequest(proxy.port(), "GET", "/admin/secret", auth);
  EXPECT_EQ(unknown.status, 404);
  EXPECT_EQ(unknown.header("X-HiAPI-Proxy-Error"), "not_found");

  auto big = httpRequest(proxy.port(), "POST", "/v1/tasks", auth, std::string(2048, 'x'));
  EXPECT_EQ(big.status, 413);
  EXPECT_EQ(big.header("X-HiAPI-Proxy-Error"), "body_too_large");

  auto headers = httpRequest(proxy.port(), "GET", "/v1/tasks",
                             {{"Authorization", "Bearer " + kClientKey}, {"X-Big", std::string(1500, 'h')}});
  EXPECT_EQ(headers.status, 431);
  EXPECT_EQ(headers.header("X-HiAPI-Proxy-Error"), "headers_too_large");

  for (const HttpResponse* r : {&connect, &foreign, &unknown, &big, &headers}) {
    EXPECT_EQ(r->header("Content-Type"), "application/json");
    EXPECT_NE(r->body.find("\"error_code\":"), std::string::npos) << r->body;
    EXPECT_NE(r->body.find("\"error\":{\"type\":\"hiapi_error\""), std::string::npos) << r->body;
    EXPECT_NE(r->body.find("\"request_id\":\"hp-"), std::string::npos) << r->body;
  }
  EXPECT_EQ(upstream_->count(), 0u) << "none of these reach the upstream";
}

TEST_F(ForwardingTest, PassthroughWithoutKeyIs401) {
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert));
  ASSERT_TRUE(proxy.started());
  auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-1");
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), "missing_api_key");
  EXPECT_EQ(upstream_->count(), 0u);
}

TEST_F(ForwardingTest, InjectModeReplacesTheClientsKeyAndNeverLogsIt) {
  ProxyProcess proxy(dir_,
                     baseYaml(url(), ca_.ca_cert,
                              "auth:\n  mode: inject\nkeys:\n  - name: prod\n    key: ${HIAPI_TEST_KEY}\n"
                              "log:\n  level: debug\n"),
                     {"HIAPI_TEST_KEY=" + kInjectKey});
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  auto with = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-1", {{"Authorization", "Bearer " + kClientKey}});
  auto without = httpRequest(proxy.port(), "GET", "/v1/tasks/tk-2");
  EXPECT_EQ(with.status, 200);
  EXPECT_EQ(without.status, 200);
  auto reqs = upstream_->requests();
  ASSERT_EQ(reqs.size(), 2u);
  for (const auto& q : reqs) {
    EXPECT_EQ(q.header("Authorization"), "Bearer " + kInjectKey);
  }
  proxy.process().signal(SIGTERM);
  ASSERT_EQ(proxy.process().wait(10000ms), 0);
  const std::string log = proxy.process().err() + proxy.process().out();
  EXPECT_NE(log.find("key=prod"), std::string::npos) << log;
  EXPECT_EQ(log.find(kInjectKey), std::string::npos) << "the injected key leaked into the log";
  EXPECT_EQ(log.find(kClientKey), std::string::npos) << "the client's key leaked into the log";
}

TEST_F(ForwardingTest, JsonLogsAreOneObjectPerLineWithTheRequestFields) {
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert, "log:\n  format: json\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  ASSERT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks/tk-json",
                        {{"Authorization", "Bearer " + kClientKey}, {"X-HiAPI-Client", "svc \"a\""}})
                .status,
            200);
  proxy.process().signal(SIGTERM);
  ASSERT_EQ(proxy.process().wait(10000ms), 0);
  const std::string log = proxy.process().err();
  size_t lines = 0;
  bool saw_request = false;
  for (size_t pos = 0; pos < log.size();) {
    const size_t nl = log.find('\n', pos);
    const std::string line = log.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    pos = nl == std::string::npos ? log.size() : nl + 1;
    if (line.empty()) {
      continue;
    }
    ++lines;
    rapidjson::Document d;
    d.Parse(line.c_str());
    ASSERT_FALSE(d.HasParseError()) << line;
    ASSERT_TRUE(d.IsObject() && d.HasMember("ts") && d.HasMember("level") && d.HasMember("msg")) << line;
    if (std::string(d["msg"].GetString()) == "request") {
      saw_request = true;
      EXPECT_STREQ(d["route"].GetString(), "poll");
      EXPECT_EQ(d["status"].GetInt(), 200);  // a number, not "200"
      EXPECT_STREQ(d["client"].GetString(), "svc \"a\"");
      EXPECT_STREQ(d["task"].GetString(), "tk-json");
      EXPECT_TRUE(d.HasMember("queued_ms") && d.HasMember("upstream_ms") && d.HasMember("attempts"));
    }
  }
  EXPECT_GE(lines, 3u);
  EXPECT_TRUE(saw_request) << log;
  EXPECT_EQ(log.find(kClientKey), std::string::npos);
}

TEST_F(ForwardingTest, SigtermDuringAnInFlightRequestStillAnswersIt) {
  upstream_->setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    r.delay = 1500ms;
    r.headers = {{"Content-Type", "application/json"}};
    r.body = R"({"code":200,"message":"success","data":{"status":"queued"}})";
    return r;
  });
  ProxyProcess proxy(dir_, baseYaml(url(), ca_.ca_cert));
  ASSERT_TRUE(proxy.started());
  OpenRequest open(proxy.port(), "GET /v1/tasks/tk-slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                                     kClientKey + "\r\nConnection: close\r\n\r\n");
  ASSERT_TRUE(waitFor([&] { return upstream_->count() == 1; }, 5000ms));
  proxy.process().signal(SIGTERM);
  auto r = open.read(10000ms);
  EXPECT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("queued"), std::string::npos);
  EXPECT_EQ(proxy.process().wait(10000ms), 0);
  // And once draining, no new connection is accepted.
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks", {}, {}, 1000ms).status, 0);
}

TEST_F(ForwardingTest, ListensOnIpv6Loopback) {
  std::string yaml = baseYaml(url(), ca_.ca_cert);
  const std::string v4 = "address: 127.0.0.1";
  yaml.replace(yaml.find(v4), v4.size(), "address: \"::1\"");
  ProxyProcess proxy(dir_, yaml);
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in6 sa{};
  sa.sin6_family = AF_INET6;
  sa.sin6_port = htons(proxy.port());
  sa.sin6_addr = in6addr_loopback;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    ::close(fd);
    GTEST_SKIP() << "no IPv6 loopback on this machine";
  }
  const std::string req = "GET /v1/tasks HTTP/1.1\r\nHost: [::1]\r\nAuthorization: Bearer " +
                          kClientKey + "\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(fd, req.data(), req.size(), 0), static_cast<ssize_t>(req.size()));
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof buf, 0)) > 0) {
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  EXPECT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  EXPECT_EQ(upstream_->count(), 1u);
}

TEST_F(ForwardingTest, NonLoopbackListenAddressIsRefusedUnlessAllowed) {
  TempDir dir;
  dir.write("open.yaml", "listen:\n  address: 0.0.0.0\n");
  Process refused({HIAPI_PROXY_BIN, "--check-config", dir.file("open.yaml")}, dir.file("refused"));
  EXPECT_EQ(refused.wait(10000ms), 1);
  EXPECT_NE(refused.err().find("listen.address"), std::string::npos) << refused.err();
  EXPECT_NE(refused.err().find("allow_non_loopback"), std::string::npos) << refused.err();
  dir.write("allowed.yaml", "listen:\n  address: 0.0.0.0\n  allow_non_loopback: true\n");
  Process allowed({HIAPI_PROXY_BIN, "--check-config", dir.file("allowed.yaml")}, dir.file("allowed"));
  EXPECT_EQ(allowed.wait(10000ms), 0) << allowed.err();
}

TEST(CheckConfig, ShippedConfigIsValidAndABrokenOneNamesTheLine) {
  TempDir dir;
  Process ok({HIAPI_PROXY_BIN, "--check-config", std::string(HIAPI_SOURCE_DIR) + "/conf/hiapi-proxy.yaml"},
             dir.file("ok"));
  EXPECT_EQ(ok.wait(10000ms), 0) << ok.err();
  EXPECT_NE(ok.out().find("config ok"), std::string::npos) << ok.out();

  dir.write("broken.yaml", "listen:\n  port: 8787\nlimits:\n  rate: 60/fortnight\n");
  Process bad({HIAPI_PROXY_BIN, "--check-config", dir.file("broken.yaml")}, dir.file("bad"));
  EXPECT_EQ(bad.wait(10000ms), 1);
  EXPECT_NE(bad.err().find("broken.yaml:4:"), std::string::npos) << bad.err();
  EXPECT_NE(bad.err().find("limits.rate"), std::string::npos) << bad.err();
}

}  // namespace
}  // namespace hiapi::test
