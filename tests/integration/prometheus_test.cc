// The Grafana dashboard against a real Prometheus: a Prometheus server (Debian package) scrapes an
// AdminServer every second; once it has a few scrapes, every PromQL expression of
// tools/grafana/hiapi-proxy.json must parse and return a non-empty result.
//
// The admin server runs in process here, with events generated at each scrape so that every
// series exists and every counter moves between two scrapes. Loopback only; every wait bounded.

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <cctype>
#include <functional>
#include <memory>
#include <csignal>
#include <cstdio>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <event2/event.h>
#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include "harness/admin_loop.h"
#include "harness/harness.h"
#include "hiapi/shell/admin_server.h"
#include "hiapi/shell/metrics.h"

namespace hiapi::test {
namespace {

using shell::AdminServer;
using shell::Metrics;

constexpr const char* kPrometheusBin = "/usr/bin/prometheus";


/// One round of every event and gauge, as the daemon would produce them under throttling.
void generateTraffic(Metrics& m, int round) {
  for (const char* key : {"main", "backup"}) {
    m.clientResponse(key, "create", 200);
    m.clientResponse(key, "poll", 200);
    m.clientResponse(key, "create", 429);
    m.upstreamRequest(key, "create", 200, 0.08 + 0.01 * (round % 5));
    m.upstreamRequest(key, "poll", 200, 0.02);
    m.upstreamRequest(key, "create", 429, 0.05);
    m.upstreamRequest(key, "poll", 0, 30.0);
    m.upstream429(key, "rate");
    m.upstream429(key, "concurrency");
    for (const char* r : {"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"}) {
      m.throttle(key, r);
    }
    m.retry(key, "status_429");
    m.queueWait(key, "create", "sent", 0.5 + (round % 7));
    m.queueWait(key, "poll", "sent", 0.003);
    m.queueWait(key, "create", "queue_timeout", 45);
    m.taskOutcome(key, "heavy", "success");
    m.taskOutcome(key, "light", "fail");
    m.leaseExpired(key, "heavy");
    m.setKeyGauges({key, 1.0, 0.5 + 0.05 * (round % 10), 2.0, 3.0, static_cast<size_t>(round % 9)});
    m.setTierGauges({key, "heavy", 2, 2, 1, 3});
    m.setTierGauges({key, "light", 3, 5, 5, 1});
    m.setDeferredQueued(key, "heavy", static_cast<size_t>(round % 4));
    m.deferredOutcome(key, "heavy", "accepted");
    m.deferredOutcome(key, "heavy", "submitted");
  }
  m.deferredWait("heavy", 60.0 + 30.0 * (round % 3));
  m.deferredRefused("full");
  m.setDeferredStoreReady(true);
  m.proxyError(core::ProxyError::QueueTimeout);
  m.proxyError(core::ProxyError::QueueFull);
  for (const char* r : {"hit", "coalesced", "miss"}) {
    m.pollCache(r);
  }
  m.pollCache("hit");
  m.configReload(true);
  m.setTrackedTasks(10 + static_cast<size_t>(round));
  m.setUpstreamConnections(2, 4);
  m.setReady(true);
  m.setInflight(3);
  m.clientRequest("create", 0.2 + 0.1 * (round % 5), 200, 90);
  m.clientRequest("poll", 0.004, 0, 600);
  m.setClientConnections(5, 10 * static_cast<uint64_t>(round + 1));
  m.setQueueCapacity(100);
}

uint16_t freeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  uint16_t port = 0;
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

std::string urlEncode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

/// The PromQL expressions of a Grafana dashboard: every "expr" member, at any depth.
void collectExprs(const rapidjson::Value& v, std::vector<std::string>& out) {
  if (v.IsObject()) {
    for (auto it = v.MemberBegin(); it != v.MemberEnd(); ++it) {
      if (std::string_view(it->name.GetString()) == "expr" && it->value.IsString()) {
        out.emplace_back(it->value.GetString(), it->value.GetStringLength());
      } else {
        collectExprs(it->value, out);
      }
    }
  } else if (v.IsArray()) {
    for (const auto& e : v.GetArray()) {
      collectExprs(e, out);
    }
  }
}

/// Grafana variables as Grafana would expand them with "All" selected: every query variable
/// has allValue ".*" and is used with =~; interval macros become a 1 minute window.
std::string expandVariables(const std::string& expr) {
  // (std::regex is avoided: GCC 12 warns inside it under the sanitizer build.)
  auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  std::string out;
  for (size_t i = 0; i < expr.size();) {
    if (expr[i] != '$') {
      out.push_back(expr[i++]);
      continue;
    }
    size_t j = i + 1;
    const bool braced = j < expr.size() && expr[j] == '{';
    j += braced ? 1 : 0;
    const size_t name_start = j;
    while (j < expr.size() && ident(expr[j])) {
      ++j;
    }
    const std::string name = expr.substr(name_start, j - name_start);
    if (braced && j < expr.size() && expr[j] == '}') {
      ++j;
    }
    if (name.empty()) {
      out.push_back(expr[i++]);
      continue;
    }
    out += name.rfind("__", 0) == 0 ? "1m" : ".*";
    i = j;
  }
  return out;
}

/// Splits Grafana's `label_values(<selector>, <label>)`. @return false for other definitions.
bool splitLabelValues(const std::string& def, std::string& selector, std::string& label) {
  const std::string prefix = "label_values(";
  if (def.rfind(prefix, 0) != 0 || def.empty() || def.back() != ')') {
    return false;
  }
  const size_t comma = def.rfind(',');
  if (comma == std::string::npos || comma < prefix.size()) {
    return false;
  }
  selector = def.substr(prefix.size(), comma - prefix.size());
  label = def.substr(comma + 1, def.size() - comma - 2);
  label.erase(0, label.find_first_not_of(' '));
  return !selector.empty() && !label.empty();
}

struct QueryResult {
  std::string status;        ///< "success" or "error" ("" when there was no JSON answer)
  std::string error;
  size_t series = 0;
  std::set<std::string> label_values;  ///< values of the label asked for by label_of
  std::string raw;
};

QueryResult query(uint16_t prom_port, const std::string& promql,
                  const std::string& label_of = {}) {
  QueryResult out;
  const HttpResponse r =
      httpRequest(prom_port, "GET", "/api/v1/query?query=" + urlEncode(promql), {}, {}, 10s);
  out.raw = r.body;
  rapidjson::Document d;
  if (r.status == 0 || d.Parse(r.body.c_str()).HasParseError() || !d.IsObject()) {
    return out;
  }
  if (auto s = d.FindMember("status"); s != d.MemberEnd() && s->value.IsString()) {
    out.status = s->value.GetString();
  }
  if (auto e = d.FindMember("error"); e != d.MemberEnd() && e->value.IsString()) {
    out.error = e->value.GetString();
  }
  auto data = d.FindMember("data");
  if (data == d.MemberEnd() || !data->value.IsObject()) {
    return out;
  }
  auto result = data->value.FindMember("result");
  if (result == data->value.MemberEnd()) {
    return out;
  }
  if (result->value.IsArray()) {
    out.series = result->value.Size();
    for (const auto& s : result->value.GetArray()) {
      if (!label_of.empty() && s.IsObject()) {
        auto metric = s.FindMember("metric");
        if (metric != s.MemberEnd() && metric->value.IsObject()) {
          auto l = metric->value.FindMember(label_of.c_str());
          if (l != metric->value.MemberEnd() && l->value.IsString()) {
            out.label_values.insert(l->value.GetString());
          }
        }
      }
    }
  } else {
    out.series = 1;  // scalar / string result
  }
  return out;
}

/// A Prometheus server on a free loopback port, its TSDB in @p dir.
class PrometheusServer {
public:
  PrometheusServer(const TempDir& dir, uint16_t target_port) {
    port_ = freeLoopbackPort();
    dir.write("prometheus.yml", "global:\n"
                                "  scrape_interval: 1s\n"
                                "  scrape_timeout: 1s\n"
                                "  evaluation_interval: 1s\n"
                                "scrape_configs:\n"
                                "  - job_name: hiapi-proxy\n"
                                "    static_configs:\n"
                                "      - targets: [\"127.0.0.1:" +
                                    std::to_string(target_port) + "\"]\n");
    proc_ = std::make_unique<Process>(
        std::vector<std::string>{kPrometheusBin, "--config.file=" + dir.file("prometheus.yml"),
                                 "--storage.tsdb.path=" + dir.file("tsdb"),
                                 "--web.listen-address=127.0.0.1:" + std::to_string(port_),
                                 "--log.level=warn"},
        dir.file("prometheus"));
  }
  ~PrometheusServer() {
    if (proc_->running()) {
      proc_->signal(SIGTERM);
      if (!proc_->wait(10s)) {
        proc_->signal(SIGKILL);
        proc_->wait(5s);
      }
    }
  }
  uint16_t port() const { return port_; }
  Process& process() { return *proc_; }

private:
  uint16_t port_ = 0;
  std::unique_ptr<Process> proc_;
};

/// Every expression must parse (status "success") and return at least one series.
void checkEveryExpression(uint16_t prom_port, const std::vector<std::string>& exprs) {
  for (const std::string& raw : exprs) {
    const std::string e = expandVariables(raw);
    SCOPED_TRACE(e);
    const QueryResult r = query(prom_port, e);
    EXPECT_EQ(r.status, "success") << r.error << "\n" << r.raw;
    EXPECT_GT(r.series, 0u) << "empty result: " << r.raw;
  }
}

std::vector<std::string> dashboardExprs(rapidjson::Document& dashboard) {
  const std::string path = std::string(HIAPI_SOURCE_DIR) + "/tools/grafana/hiapi-proxy.json";
  const std::string text = readFile(path);
  std::vector<std::string> exprs;
  if (dashboard.Parse(text.c_str()).HasParseError()) {
    ADD_FAILURE() << path << " is not valid JSON";
    return exprs;
  }
  collectExprs(dashboard, exprs);
  return exprs;
}

/// Waits (bounded) until Prometheus is ready and has at least 4 samples of the target.
::testing::AssertionResult waitForScrapes(PrometheusServer& prom) {
  if (!waitFor(
          [&] {
            return !prom.process().running() ||
                   httpRequest(prom.port(), "GET", "/-/ready", {}, {}, 2s).status == 200;
          },
          30s) ||
      !prom.process().running()) {
    return ::testing::AssertionFailure() << "prometheus did not start: " << prom.process().err();
  }
  if (!waitFor(
          [&] {
            return query(prom.port(),
                         R"(count_over_time(hiapi_proxy_ready{job="hiapi-proxy"}[1m]) >= 4)")
                       .series > 0;
          },
          30s)) {
    return ::testing::AssertionFailure() << "no scrapes: " << query(prom.port(), "up").raw << "\n"
                                         << prom.process().err();
  }
  return ::testing::AssertionSuccess();
}

TEST(Dashboard, ImportAsksForTheDataSourceAndEveryQueryFiltersByInstance) {
  rapidjson::Document dashboard;
  const std::vector<std::string> exprs = dashboardExprs(dashboard);
  ASSERT_TRUE(dashboard.IsObject());
  // Grafana's import asks for each __inputs entry; the panels name it as ${DS_PROMETHEUS}.
  ASSERT_TRUE(dashboard.HasMember("__inputs") && dashboard["__inputs"].IsArray());
  const auto& inputs = dashboard["__inputs"].GetArray();
  ASSERT_EQ(inputs.Size(), 1u);
  EXPECT_EQ(std::string(inputs[0]["name"].GetString()), "DS_PROMETHEUS");
  EXPECT_EQ(std::string(inputs[0]["pluginId"].GetString()), "prometheus");
  std::set<std::string> variables;
  for (const auto& v : dashboard["templating"]["list"].GetArray()) {
    variables.insert(v["name"].GetString());
  }
  EXPECT_EQ(variables, (std::set<std::string>{"DS_PROMETHEUS", "job", "instance", "key"}));
  for (const std::string& e : exprs) {
    if (e.find("job=~\"$job\"") != std::string::npos) {
      EXPECT_NE(e.find("job=~\"$job\",instance=~\"$instance\""), std::string::npos) << e;
    }
  }
  // Every family of the client side and upstream health has a panel.
  for (const char* name :
       {"hiapi_proxy_client_request_duration_seconds_bucket", "hiapi_proxy_client_connections{",
        "hiapi_proxy_client_connections_accepted_total", "hiapi_proxy_client_received_bytes_total",
        "hiapi_proxy_client_sent_bytes_total", "hiapi_proxy_upstream_up"}) {
    bool found = false;
    for (const std::string& e : exprs) {
      found = found || e.find(name) != std::string::npos;
    }
    EXPECT_TRUE(found) << name;
  }
}

TEST(Prometheus, EveryDashboardQueryParsesAndReturnsData) {
  if (::access(kPrometheusBin, X_OK) != 0) {
    GTEST_SKIP() << kPrometheusBin << " is not installed";
  }
  rapidjson::Document dashboard;
  const std::vector<std::string> exprs = dashboardExprs(dashboard);
  ASSERT_GE(exprs.size(), 20u);

  // The admin endpoint, with traffic at every scrape.
  Metrics m;
  std::atomic<int> scrapes{0};
  AdminLoop admin(
      m, [] { return std::string("{}"); }, [] { return true; },
      [&] { generateTraffic(m, scrapes++); });
  ASSERT_TRUE(admin.ok());

  TempDir dir;
  PrometheusServer prom(dir, admin.port());
  ASSERT_NE(prom.port(), 0);
  ASSERT_TRUE(waitForScrapes(prom)) << "scrapes seen by the admin server: " << scrapes.load();
  EXPECT_EQ(query(prom.port(), R"(up{job="hiapi-proxy"} == 1)").series, 1u);

  checkEveryExpression(prom.port(), exprs);

  // The template variables' label_values() queries find their series too.
  const auto& templating = dashboard["templating"]["list"];
  size_t variables_checked = 0;
  for (const auto& v : templating.GetArray()) {
    if (v.HasMember("definition") && v["definition"].IsString()) {
      std::string selector, label;
      const std::string def = v["definition"].GetString();
      if (splitLabelValues(def, selector, label)) {
        ++variables_checked;
        const QueryResult r = query(prom.port(), expandVariables(selector), label);
        EXPECT_EQ(r.status, "success") << def;
        EXPECT_FALSE(r.label_values.empty()) << def << ": " << r.raw;
      }
    }
  }

  EXPECT_EQ(variables_checked, 3u) << "the job, instance and key variables";

  // Spot checks on what the panels show: all five throttle reasons, both keys, per-tier depth.
  const QueryResult reasons =
      query(prom.port(), "sum by (reason) (rate(hiapi_proxy_throttled_total[1m]))", "reason");
  EXPECT_EQ(reasons.label_values,
            (std::set<std::string>{"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"}));
  const QueryResult keys = query(prom.port(), "hiapi_proxy_rate_effective_requests_per_second", "key");
  EXPECT_EQ(keys.label_values, (std::set<std::string>{"main", "backup"}));
  const QueryResult moving =
      query(prom.port(), "sum(rate(hiapi_proxy_client_responses_total[1m])) > 0");
  EXPECT_EQ(moving.series, 1u) << moving.raw;
}

}  // namespace
}  // namespace hiapi::test

namespace hiapi::test {
namespace {

/// The issue's end-to-end check: the real daemon in front of the simulator, under enough load that
/// it throttles (its own limits above the simulator's, so upstream 429s happen too), scraped by a
/// real Prometheus; then every dashboard query. Skipped until the daemon serves its admin port.
TEST(Prometheus, RealDaemonUnderThrottlingFeedsEveryDashboardQuery) {
  if (::access(kPrometheusBin, X_OK) != 0) {
    GTEST_SKIP() << kPrometheusBin << " is not installed";
  }
  if (::access(HIAPI_SIM_BIN, X_OK) != 0) {
    GTEST_SKIP() << HIAPI_SIM_BIN << " is not built";
  }
  rapidjson::Document dashboard;
  const std::vector<std::string> exprs = dashboardExprs(dashboard);
  ASSERT_GE(exprs.size(), 20u);

  const std::string secret = "sk-metrics-test-0123456789";
  TempDir dir;
  SimProcess sim(dir, {"--keys", secret, "--rate", "4/s", "--burst", "4", "--heavy-max", "1",
                       "--light-max", "2", "--heavy-duration", "2s", "--light-duration", "1s",
                       "--fault-5xx", "0.05"});
  ASSERT_TRUE(sim.started()) << sim.process().err();
  const std::string yaml =
      "listen:\n  address: 127.0.0.1\n  port: 0\n"
      "admin:\n  enabled: true\n  address: 127.0.0.1\n  port: 0\n"
      "upstream:\n  url: http://127.0.0.1:" + std::to_string(sim.port()) + "\n"
      "  connect_timeout: 2s\n  response_timeout: 5s\n"
      "auth:\n  mode: inject\n"
      "keys:\n  - name: main\n    key: ${HIAPI_METRICS_TEST_KEY}\n"
      "limits:\n  rate: 8/s\n  burst: 8\n  recovery_time: 5s\n  max_cooldown: 2s\n"
      "  tiers:\n"
      "    - name: heavy\n      models: [\"veo-*\"]\n      max_running: 2\n      lease: 3s\n"
      "      min_poll_interval: 1s\n"
      "    - name: light\n      models: [\"*\"]\n      max_running: 4\n      lease: 3s\n"
      "      min_poll_interval: 1s\n"
      "queue:\n  max_size: 12\n  deadline: 3s\n"
      "retry:\n  max_attempts: 3\n  base_delay: 200ms\n  max_delay: 1s\n"
      "log:\n  level: warn\n";
  ProxyProcess proxy(dir, yaml, {"HIAPI_METRICS_TEST_KEY=" + secret});
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  if (proxy.adminPort() == 0) {
    GTEST_SKIP() << "the daemon does not serve its admin listener yet (port file says admin=0)";
  }

  PrometheusServer prom(dir, proxy.adminPort());
  ASSERT_NE(prom.port(), 0);

  // Load: creates on both tiers and polls of what was created, from several clients, until the
  // daemon has throttled for every reason the dashboard shows (bounded).
  std::atomic<bool> stop{false};
  std::mutex ids_mu;
  std::vector<std::string> ids;
  std::vector<std::thread> clients;
  for (int c = 0; c < 6; ++c) {
    clients.emplace_back([&, c] {
      const std::string client = "client-" + std::to_string(c);
      int n = 0;
      while (!stop) {
        ++n;
        if (n % 3 != 0) {
          const std::string model = (n + c) % 2 == 0 ? "veo-3" : "gpt-image-1";
          const HttpResponse r = httpRequest(
              proxy.port(), "POST", "/v1/tasks",
              {{"Content-Type", "application/json"}, {"X-HiAPI-Client", client}},
              R"({"model":")" + model + R"(","input":{"prompt":"p"}})", 10s);
          const size_t at = r.body.find("\"taskId\":\"");
          if (r.status == 200 && at != std::string::npos) {
            const size_t start = at + 10;
            std::lock_guard<std::mutex> lock(ids_mu);
            ids.push_back(r.body.substr(start, r.body.find('"', start) - start));
          }
        } else {
          std::string id;
          {
            std::lock_guard<std::mutex> lock(ids_mu);
            if (!ids.empty()) {
              id = ids[static_cast<size_t>(n) % ids.size()];
            }
          }
          if (!id.empty()) {
            httpRequest(proxy.port(), "GET", "/v1/tasks/" + id, {{"X-HiAPI-Client", client}}, {},
                        10s);
          }
        }
      }
    });
  }
  const auto stopClients = [&] {
    stop = true;
    for (std::thread& t : clients) {
      t.join();
    }
    clients.clear();
  };

  const ::testing::AssertionResult scraped = waitForScrapes(prom);
  if (!scraped) {
    stopClients();
    FAIL() << scraped.message();
  }
  // Until every dashboard query has data, or 45 s have passed.
  waitFor(
      [&] {
        for (const std::string& e : exprs) {
          if (query(prom.port(), expandVariables(e)).series == 0) {
            return false;
          }
        }
        return true;
      },
      45s);
  stopClients();

  checkEveryExpression(prom.port(), exprs);
  const HttpResponse metrics = httpRequest(proxy.adminPort(), "GET", "/metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_EQ(metrics.body.find(secret), std::string::npos) << "a key value reached /metrics";
  EXPECT_EQ(metrics.body.find("sk-"), std::string::npos);
}

}  // namespace
}  // namespace hiapi::test
