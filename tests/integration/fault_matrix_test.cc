// The fault matrix (issue 24): the real daemon in front of a scripted upstream (ScriptServer) that
// fails in one way per row, over plain HTTP and over TLS, for a task poll (GET) and a task create
// (POST). Each row states what the client gets (status and X-HiAPI-Proxy-Error), how many
// attempts the proxy makes (counted by the upstream and by the proxy's own metric), whether the
// request reached the upstream at all, and the time bound its configuration promises; then a
// request through the same proxy to the upstream, good again, must succeed.
//
// The retry rules the rows follow (README, "How it keeps a key under its limits"): a failure that
// may have reached the upstream is retried for the GET but never for the POST (it may have made a
// task); a failure before any byte was sent (connect refused, TLS refused or stalled) is retried
// for both; 503 is retried for both and 500 for the GET only, and then the upstream's own reply
// reaches the client.
//
// Timings are short (connect 500 ms, response 1 s, 3 attempts, backoff under 100 ms) so that the
// whole matrix takes seconds; the bound each row is held to is what its configuration promises
// (attempts times the per-attempt timeout, plus the backoffs) and a generous slack: it checks that
// the answer comes within the promise, not how fast.

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "harness/harness.h"
#include "harness/script_server.h"

namespace hiapi::test {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

const std::string kKey = "sk-fault-matrix-0123456789abcdef";

// The configuration's timings (the YAML below says the same).
constexpr milliseconds kConnectTimeout{500};
constexpr milliseconds kResponseTimeout{1000};
constexpr int kMaxAttempts = 3;
constexpr milliseconds kMaxDelay{100};  // retry.max_delay: no backoff waits longer
constexpr milliseconds kSlack{3000};    // a loaded 2-core machine, process and TLS set-up

enum class Transport { Plain, Tls };
enum class Method { GetPoll, PostCreate };

/// What a failure is, as far as retrying goes.
enum class Sent {
  Maybe,    ///< the request may have reached the upstream: GET retried, POST not
  Nothing,  ///< failed before a byte was sent: retried for both
  Status,   ///< an HTTP reply: 503 retried for both, 500 for the GET only
};

struct Kind {
  const char* name;
  std::optional<Fault> fault;  ///< nullopt: nothing listens (upstream down)
  int reply_status;            ///< the upstream's status for Fault::Good
  bool tls_only;
  int status;                  ///< what the client gets
  const char* code;            ///< its X-HiAPI-Proxy-Error ("" for none: the upstream's reply)
  Sent sent;
  bool reaches_upstream;       ///< the upstream reads the request (not: TCP or TLS failed first)
  milliseconds waits;          ///< each attempt ends at this timeout (0: as soon as it fails)
};

const std::vector<Kind>& kinds() {
  static const std::vector<Kind> k = {
      {"Reset", Fault::Reset, 200, false, 502, "upstream_unreachable", Sent::Maybe, true, {}},
      {"TruncatedHeaders", Fault::TruncatedHeaders, 200, false, 502, "upstream_unreachable",
       Sent::Maybe, true, {}},
      {"MidBodyClose", Fault::MidBodyClose, 200, false, 502, "upstream_unreachable", Sent::Maybe,
       true, {}},
      {"Slow", Fault::Slow, 200, false, 504, "upstream_timeout", Sent::Maybe, true,
       kResponseTimeout},
      {"Hang", Fault::Hang, 200, false, 504, "upstream_timeout", Sent::Maybe, true,
       kResponseTimeout},
      {"Garbage", Fault::Garbage, 200, false, 502, "upstream_unreachable", Sent::Maybe, true, {}},
      {"OversizedHeaders", Fault::OversizedHeaders, 200, false, 502, "upstream_unreachable",
       Sent::Maybe, true, {}},
      {"OversizedBody", Fault::OversizedBody, 200, false, 502, "upstream_unreachable",
       Sent::Maybe, true, {}},
      {"Status500", Fault::Good, 500, false, 500, "", Sent::Status, true, {}},
      {"Status503", Fault::Good, 503, false, 503, "", Sent::Status, true, {}},
      {"UpstreamDown", std::nullopt, 200, false, 502, "upstream_unreachable", Sent::Nothing,
       false, {}},
      {"TlsWrongCa", Fault::WrongCa, 200, true, 502, "upstream_tls_error", Sent::Nothing, false,
       {}},
      {"TlsWrongName", Fault::WrongName, 200, true, 502, "upstream_tls_error", Sent::Nothing,
       false, {}},
      {"PlaintextServer", Fault::PlainText, 200, true, 502, "upstream_tls_error", Sent::Nothing,
       false, {}},
      {"HandshakeReset", Fault::HandshakeReset, 200, true, 502, "upstream_tls_error",
       Sent::Nothing, false, {}},
      {"HandshakeStall", Fault::HandshakeStall, 200, true, 504, "upstream_timeout", Sent::Nothing,
       false, kConnectTimeout},
  };
  return k;
}

struct Row {
  const Kind* kind;
  Transport transport;
  Method method;

  int attempts() const {
    switch (kind->sent) {
    case Sent::Nothing:
      return kMaxAttempts;
    case Sent::Maybe:
      return method == Method::GetPoll ? kMaxAttempts : 1;
    case Sent::Status:
      return kind->reply_status == 503 || method == Method::GetPoll ? kMaxAttempts : 1;
    }
    return 0;
  }
  /// What the configuration promises: every attempt ends by the response timeout (it covers the
  /// connect and the handshake too), and no backoff is longer than retry.max_delay.
  milliseconds bound() const {
    return attempts() * kResponseTimeout + (attempts() - 1) * kMaxDelay + kSlack;
  }
  std::string name() const {
    return std::string(transport == Transport::Plain ? "Plain" : "Tls") + "_" +
           (method == Method::GetPoll ? "GetPoll" : "PostCreate") + "_" + kind->name;
  }
};

std::vector<Row> rows() {
  std::vector<Row> out;
  for (const Kind& k : kinds()) {
    for (Transport t : {Transport::Plain, Transport::Tls}) {
      if (k.tls_only && t == Transport::Plain) {
        continue;
      }
      for (Method m : {Method::GetPoll, Method::PostCreate}) {
        out.push_back({&k, t, m});
      }
    }
  }
  return out;
}

/// A proxy in front of a ScriptServer, kept for every row of one transport that runs in this
/// process: the rows also show that one fault leaves the proxy fit for the next.
struct Stack {
  TempDir dir;
  std::optional<ScriptTls> tls;
  std::unique_ptr<ScriptServer> server;
  uint16_t port = 0;
  std::unique_ptr<ProxyProcess> proxy;

  explicit Stack(Transport t) {
    if (t == Transport::Tls) {
      tls = ScriptTls::create(dir);
    }
    startServer();
    port = server->port();
    const std::string scheme = t == Transport::Tls ? "https" : "http";
    std::string yaml = "listen:\n  address: 127.0.0.1\n  port: 0\n"
                       "admin:\n  enabled: true\n  port: 0\n"
                       "upstream:\n  url: " + scheme + "://127.0.0.1:" + std::to_string(port) +
                       "\n  connect_timeout: 500ms\n  response_timeout: 1s\n";
    if (tls) {
      yaml += "  ca_file: " + tls->ca_cert + "\n";
    }
    yaml += "limits:\n  rate: 1000/s\n  burst: 100\n  tiers:\n"
            "    - {name: all, models: [\"*\"], max_running: 1000}\n"
            // Every retry the rules allow, so that the attempt counts are exact.
            "retry:\n  max_attempts: 3\n  base_delay: 20ms\n  max_delay: 100ms\n"
            "  budget_min_retries: 100000\n"
            // No request of the proxy's own reaches the upstream between the rows' requests.
            "tasks:\n  reconcile: false\n  max_hold: 0s\n  hold_near_end: 0s\n"
            "log:\n  level: warn\n";
    proxy = std::make_unique<ProxyProcess>(dir, yaml);
  }
  /// Starts the upstream (again, on the same port once it had one).
  void startServer() {
    ScriptServerOptions o;
    o.port = port;
    o.tls = tls ? &*tls : nullptr;
    server = std::make_unique<ScriptServer>(o);
  }
  double upstreamAttempts() const {
    const HttpResponse m = httpRequest(proxy->adminPort(), "GET", "/metrics");
    return metricSum(m.body, "hiapi_proxy_upstream_requests_total");
  }
};

HttpResponse send(const Stack& s, Method m, const std::string& tag) {
  const std::vector<std::pair<std::string, std::string>> headers = {
      {"Authorization", "Bearer " + kKey}, {"Content-Type", "application/json"}};
  if (m == Method::GetPoll) {
    // A task id of its own per request: never answered from the poll cache.
    return httpRequest(s.proxy->port(), "GET", "/v1/tasks/tk-" + tag, headers, {}, 30s);
  }
  return httpRequest(s.proxy->port(), "POST", "/v1/tasks", headers,
                     R"({"model":"gpt-image-2","input":{"prompt":")" + tag + R"("}})", 30s);
}

class FaultMatrix : public ::testing::TestWithParam<Row> {
protected:
  static void TearDownTestSuite() { stacks().clear(); }
  static std::map<Transport, std::unique_ptr<Stack>>& stacks() {
    static std::map<Transport, std::unique_ptr<Stack>> s;
    return s;
  }
  static Stack& stack(Transport t) {
    auto& s = stacks()[t];
    if (!s) {
      s = std::make_unique<Stack>(t);
    }
    return *s;
  }
};

TEST(FaultMatrixTable, HasEnoughRowsAndDistinctNames) {
  const std::vector<Row> table = rows();
  EXPECT_GE(table.size(), 40u);
  std::set<std::string> names;
  for (const Row& r : table) {
    EXPECT_TRUE(names.insert(r.name()).second) << r.name();
  }
}

TEST_P(FaultMatrix, ClientGetsItsAnswerInTimeAndTheNextRequestSucceeds) {
  const Row& row = GetParam();
  const Kind& k = *row.kind;
  Stack& s = stack(row.transport);
  ASSERT_TRUE(s.server->ok());
  ASSERT_TRUE(s.proxy->started()) << s.proxy->process().err();

  if (k.fault) {
    s.server->setFault(*k.fault);
    if (k.reply_status != 200) {
      s.server->setReply(k.reply_status, R"({"code":)" + std::to_string(k.reply_status) +
                                             R"(,"message":"scripted","data":null})");
    }
  } else {
    s.server.reset();  // nothing listens on the upstream's port now
  }
  const size_t accepted_before = s.server ? s.server->accepted() : 0;
  const size_t requests_before = s.server ? s.server->requests() : 0;
  const double attempts_before = s.upstreamAttempts();

  const auto start = Clock::now();
  const HttpResponse r = send(s, row.method, "row-" + row.name());
  const auto elapsed = std::chrono::duration_cast<milliseconds>(Clock::now() - start);

  EXPECT_EQ(r.status, k.status) << r.body;
  EXPECT_EQ(r.header("X-HiAPI-Proxy-Error"), k.code) << r.body;
  if (*k.code != '\0') {
    EXPECT_NE(r.body.find(std::string("\"code\":\"") + k.code + "\""), std::string::npos)
        << r.body;
  } else {
    EXPECT_NE(r.body.find("scripted"), std::string::npos) << "the upstream's own reply: " << r.body;
  }
  EXPECT_LE(elapsed.count(), row.bound().count()) << "ms: answered after the configured bound";
  if (k.waits > milliseconds::zero()) {
    // Each attempt ran into its timeout (measured from the client, so never shorter; 10 % off for
    // a coarse clock in the daemon).
    EXPECT_GE(elapsed.count(), (row.attempts() * k.waits * 9 / 10).count())
        << "ms: answered before the timeout";
  }
  EXPECT_EQ(s.upstreamAttempts() - attempts_before, row.attempts())
      << "attempts the proxy made (hiapi_proxy_upstream_requests_total)";
  if (s.server) {
    const size_t want = static_cast<size_t>(row.attempts());
    EXPECT_TRUE(waitFor([&] { return s.server->accepted() - accepted_before >= want; }, 2000ms));
    EXPECT_EQ(s.server->accepted() - accepted_before, want) << "one connection per attempt";
    EXPECT_EQ(s.server->requests() - requests_before, k.reaches_upstream ? want : 0u)
        << "requests the upstream read";
  }

  // The upstream is good again: the next request through the same proxy goes through.
  if (s.server) {
    s.server->setFault(Fault::Good);
    s.server->clearReply();
  } else {
    s.startServer();
    ASSERT_TRUE(s.server->ok()) << "port " << s.port << " taken meanwhile";
  }
  const HttpResponse next = send(s, Method::GetPoll, "next-" + row.name());
  EXPECT_EQ(next.status, 200) << next.body;
  EXPECT_FALSE(next.has("X-HiAPI-Proxy-Error")) << next.body;
  EXPECT_NE(next.body.find("tk-script-"), std::string::npos) << next.body;
  EXPECT_TRUE(s.proxy->process().running());
}

INSTANTIATE_TEST_SUITE_P(Rows, FaultMatrix, ::testing::ValuesIn(rows()),
                         [](const ::testing::TestParamInfo<Row>& info) {
                           return info.param.name();
                         });

}  // namespace
}  // namespace hiapi::test
