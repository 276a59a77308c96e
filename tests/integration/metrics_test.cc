// Metrics and AdminServer, in process: every listed family is exposed, labels stay bounded and
// never carry a key, the exposition passes `promtool check metrics`, docs/metrics.md (and the
// README, once it has a metrics section) match metricDocs(), and the admin endpoints answer.

#include <atomic>
#include <cctype>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <event2/event.h>
#include <gtest/gtest.h>

#include "harness/admin_loop.h"
#include "harness/harness.h"
#include "hiapi/shell/admin_server.h"
#include "hiapi/shell/metrics.h"
#include "hiapi/version.h"

namespace hiapi::test {
namespace {

using shell::AdminServer;
using shell::MetricDoc;
using shell::Metrics;

/// Calls every event and gauge method once or more, with key NAMES only.
void exerciseAll(Metrics& m) {
  m.clientResponse("main", "create", 200);
  m.clientResponse("main", "poll", 429);
  m.clientResponse("backup", "list", 502);
  m.proxyError("queue_full");
  m.proxyError(core::ProxyError::UpstreamTimeout);
  m.upstreamRequest("main", "create", 200, 0.120);
  m.upstreamRequest("main", "poll", 429, 0.030);
  m.upstreamRequest("backup", "other", 0, 5.0);
  m.upstream429("main", "rate");
  m.upstream429("main", "concurrency");
  m.rateReaction("main", "resync");
  m.rateReaction("main", "decrease");
  for (const char* r : {"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"}) {
    m.throttle("main", r);
  }
  m.retry("main", "status_429");
  m.retry("backup", "network");
  m.queueWait("main", "create", "sent", 0.002);
  m.queueWait("main", "poll", "sent", 12.5);
  m.queueWait("main", "poll", "queue_timeout", 45);
  m.queueWait("main", "create", "client_gone", 3);
  m.clientRequest("create", 0.25, 300, 120);
  m.clientRequest("poll", 0.002, 0, 800);
  for (const char* r : {"hit", "coalesced", "miss"}) {
    m.pollCache(r);
  }
  m.pollHeld("main");
  m.shadowThrottle("main", "concurrency");
  m.taskOutcome("main", "heavy", "success");
  m.taskOutcome("main", "light", "fail");
  m.taskOutcome("main", "heavy", "lease_expired");
  m.leaseExpired("main", "heavy");
  m.configReload(true);
  m.configReload(false);
  m.setKeyGauges({"main", 1.0, 0.5, 3.5, 12.0, 7, 60.0, 12.0});
  m.setKeyGauges({"backup", 2.0, 2.0, 5, 0, 0});
  m.setTierGauges({"main", "heavy", 2, 2, 1, 4});
  m.setTierGauges({"main", "light", 3, 5, 5, 3});
  m.setTrackedTasks(42);
  m.setUpstreamConnections(3, 5);
  m.setReady(true);
  m.setInflight(9);
  m.setDeferredQueued("main", "heavy", 3);
  m.deferredOutcome("main", "heavy", "accepted");
  m.deferredRefused("store");
  m.deferredWait("heavy", 95);
  m.setDeferredStoreReady(true);
  m.setClientConnections(4, 17);
  m.setQueueCapacity(500);
  m.storeTokens("main", "granted", 4);
  m.storeTokens("main", "returned", 1);
  m.storeError("timeout");
  m.storeRoundTrip(0.0004);
  m.setStoreState(3, false);
}

/// Lines of the exposition that are samples (not comments).
std::vector<std::string> sampleLines(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] != '#') {
      out.push_back(line);
    }
  }
  return out;
}

bool hasSample(const std::string& text, const std::string& series_prefix) {
  for (const std::string& l : sampleLines(text)) {
    if (l.rfind(series_prefix, 0) == 0) {
      return true;
    }
  }
  return false;
}

TEST(Metrics, EveryListedFamilyIsExposedWithItsTypeAndLabels) {
  Metrics m;
  exerciseAll(m);
  const std::string text = m.serialize();
  const std::vector<MetricDoc> docs = shell::metricDocs();
  ASSERT_GE(docs.size(), 30u);
  std::set<std::string> names;
  for (const MetricDoc& d : docs) {
    SCOPED_TRACE(d.name);
    EXPECT_TRUE(names.insert(d.name).second) << "listed twice";
    EXPECT_NE(text.find("# TYPE " + d.name + " " + d.type + "\n"), std::string::npos);
    EXPECT_NE(text.find("# HELP " + d.name + " " + d.help + "\n"), std::string::npos);
    const std::string series = d.type == "histogram" ? d.name + "_bucket" : d.name;
    EXPECT_TRUE(hasSample(text, series + "{") || hasSample(text, series + " "));
    if (d.name.rfind("hiapi_proxy_", 0) == 0) {
      EXPECT_TRUE(d.type != "counter" || d.name.ends_with("_total"));
      EXPECT_TRUE(d.type == "counter" || !d.name.ends_with("_total"));
    }
    // Each listed label shows up on a sample of the family.
    std::istringstream labels(d.labels);
    std::string label;
    while (std::getline(labels, label, ',')) {
      EXPECT_TRUE(hasSample(text, series + "{" + label + "=\"") ||
                  text.find("," + label + "=\"") != std::string::npos)
          << label;
    }
  }
}

TEST(Metrics, ValuesAndLabelsAreWhatTheCallsSaid) {
  Metrics m;
  exerciseAll(m);
  m.clientResponse("main", "create", 200);
  const std::string text = m.serialize();
  EXPECT_NE(text.find(
                R"(hiapi_proxy_client_responses_total{code="200",key="main",route="create"} 2)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_requests_total{code="0",key="backup",route="other"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_errors_total{code="upstream_timeout"} 1)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_depth{key="main",tier="all"} 7)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_depth{key="main",tier="heavy"} 4)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_tier_ceiling{key="main",kind="effective",tier="heavy"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_tier_ceiling{key="main",kind="configured",tier="heavy"} 2)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_rate_effective_requests_per_second{key="main"} 0.5)"),
            std::string::npos);
  EXPECT_NE(text.find("hiapi_proxy_client_connections 4\n"), std::string::npos);
  EXPECT_NE(text.find("hiapi_proxy_client_connections_accepted_total 17\n"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_client_received_bytes_total{route="create"} 300)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_client_sent_bytes_total{route="poll"} 800)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_client_request_duration_seconds_count{route="create"} 1)"),
            std::string::npos);
  // The last attempt (backup's) got no HTTP answer.
  EXPECT_NE(text.find("hiapi_proxy_upstream_up 0\n"), std::string::npos);
  // A wait that ended in a timeout is observed too, apart from those that were sent.
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_wait_seconds_count{key="main",outcome="queue_timeout",route="poll"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_wait_seconds_sum{key="main",outcome="queue_timeout",route="poll"} 45)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_ratelimit_limit{key="main"} 60)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_ratelimit_remaining{key="main"} 12)"),
            std::string::npos);
  // Not advertised yet: no series rather than a made-up 0.
  EXPECT_EQ(text.find(R"(hiapi_proxy_upstream_ratelimit_limit{key="backup"})"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_rate_429_reactions_total{key="main",reaction="resync"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_connections{state="idle"} 5)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_config_reloads_total{result="failed"} 1)"), std::string::npos);
  EXPECT_NE(text.find(std::string(R"(hiapi_proxy_build_info{version=")") + HIAPI_PROXY_VERSION +
                      "\"} 1"),
            std::string::npos);
  // 2 ms lands in the 2.5 ms bucket and above, not in the 1 ms one.
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_wait_seconds_bucket{key="main",outcome="sent",route="create",le="0.001"} 0)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_wait_seconds_bucket{key="main",outcome="sent",route="create",le="0.0025"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_queue_wait_seconds_bucket{key="main",outcome="sent",route="poll",le="60"} 1)"),
            std::string::npos);
  // Process metrics: plausible values.
  for (const char* p : {"process_resident_memory_bytes ", "process_virtual_memory_bytes ",
                        "process_open_fds ", "process_max_fds ", "process_start_time_seconds ",
                        "process_cpu_seconds_total "}) {
    EXPECT_TRUE(hasSample(text, p)) << p;
  }
  for (const std::string& l : sampleLines(text)) {
    if (l.rfind("process_resident_memory_bytes ", 0) == 0 ||
        l.rfind("process_start_time_seconds ", 0) == 0 || l.rfind("process_open_fds ", 0) == 0) {
      EXPECT_GT(std::stod(l.substr(l.find(' ') + 1)), 0.0) << l;
    }
  }
}

TEST(Metrics, LabelsStayBoundedAndNeverCarryAKey) {
  Metrics m;
  exerciseAll(m);
  // A caller mistake: a key value where a name belongs. It must not reach the exposition.
  m.clientResponse("sk-live-0123456789abcdef", "create", 200);
  m.throttle("Bearer sk-abc", "rate");
  m.setKeyGauges({"sk-test-xyz", 1, 1, 1, 0, 0});
  m.upstream429(std::string(100, 'a'), "rate");
  // Unknown words fall back to a fixed one.
  m.clientResponse("main", "/v1/tasks/abc123", 700);
  m.throttle("main", "something new");
  m.pollCache("weird");
  m.taskOutcome("main", "tier with spaces", "exploded");
  m.upstream429("main", "because");
  const std::string text = m.serialize();
  EXPECT_EQ(text.find("sk-"), std::string::npos);
  EXPECT_EQ(text.find("Bearer"), std::string::npos);
  EXPECT_EQ(text.find("abc123"), std::string::npos);
  EXPECT_EQ(text.find(std::string(100, 'a')), std::string::npos);
  EXPECT_NE(text.find(R"(key="redacted")"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_client_responses_total{code="0",key="main",route="other"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_throttled_total{key="main",reason="other"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_poll_cache_total{result="other"} 1)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_tasks_total{key="main",outcome="other",tier="other"} 1)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_429_total{cause="unknown",key="main"} 1)"),
            std::string::npos);
  for (const std::string& l : sampleLines(text)) {
    EXPECT_LT(l.size(), 300u) << l;
  }
}

TEST(Metrics, DeclaredKeysAndFixedLabelSetsStartAtZero) {
  Metrics m;
  m.declareKey("main", {"heavy", "light"});
  const std::string text = m.serialize();
  for (const char* r : {"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"}) {
    EXPECT_NE(text.find(std::string(R"(hiapi_proxy_throttled_total{key="main",reason=")") + r +
                        "\"} 0"),
              std::string::npos)
        << r;
  }
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_429_total{cause="concurrency",key="main"} 0)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_tasks_total{key="main",outcome="lease_expired",tier="light"} 0)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_lease_expiries_total{key="main",tier="heavy"} 0)"),
            std::string::npos);
  for (const char* o : {"sent", "queue_timeout", "client_gone"}) {
    EXPECT_NE(text.find(std::string(R"(hiapi_proxy_queue_wait_seconds_count{key="main",outcome=")") +
                        o + R"(",route="poll"} 0)"),
              std::string::npos)
        << o;
  }
  for (const char* r : {"retry_429", "retry_503", "retry_server_error", "retry_network_error"}) {
    EXPECT_NE(text.find(std::string(R"(hiapi_proxy_retries_total{key="main",reason=")") + r +
                        "\"} 0"),
              std::string::npos)
        << r;
  }
  EXPECT_NE(text.find(R"(hiapi_proxy_upstream_429_total{cause="unknown",key="main"} 0)"),
            std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_poll_cache_total{result="coalesced"} 0)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_polls_held_total{key="main"} 0)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_config_reloads_total{result="failed"} 0)"), std::string::npos);
  EXPECT_NE(text.find("hiapi_proxy_ready 0"), std::string::npos);
  // Families without a key label: every value of their fixed set.
  for (const char* code : {"queue_full", "queue_timeout", "upstream_timeout", "missing_api_key",
                           "upstream_unreachable", "shutting_down"}) {
    EXPECT_NE(text.find(std::string(R"(hiapi_proxy_errors_total{code=")") + code + "\"} 0"),
              std::string::npos)
        << code;
  }
  for (const char* r : {"create", "poll", "list", "other"}) {
    EXPECT_NE(text.find(std::string(R"(hiapi_proxy_client_request_duration_seconds_count{route=")") +
                        r + "\"} 0"),
              std::string::npos)
        << r;
  }
  EXPECT_NE(text.find("hiapi_proxy_client_connections_accepted_total 0\n"), std::string::npos);
  EXPECT_NE(text.find("hiapi_proxy_upstream_up 1\n"), std::string::npos);
}

TEST(Metrics, DistinctKeyLabelsAreCapped) {
  Metrics m;
  for (size_t i = 0; i < Metrics::kMaxKeyLabels + 50; ++i) {
    m.clientResponse("pt-" + std::to_string(i), "poll", 200);
  }
  EXPECT_EQ(m.keyLabel("pt-0"), "pt-0");
  EXPECT_EQ(m.keyLabel("pt-" + std::to_string(Metrics::kMaxKeyLabels + 10)), "overflow");
  const std::string text = m.serialize();
  EXPECT_NE(text.find(R"(hiapi_proxy_client_responses_total{code="200",key="overflow",route="poll"} 50)"),
            std::string::npos);
}

TEST(Metrics, RetainKeysDropsGaugesOfRemovedKeysButKeepsCounters) {
  Metrics m;
  exerciseAll(m);
  m.retainKeys({"backup"});
  const std::string text = m.serialize();
  EXPECT_EQ(text.find(R"(hiapi_proxy_rate_configured_requests_per_second{key="main"})"), std::string::npos);
  EXPECT_EQ(text.find(R"(hiapi_proxy_tasks_running{key="main")"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_rate_configured_requests_per_second{key="backup"} 2)"), std::string::npos);
  EXPECT_NE(text.find(R"(hiapi_proxy_client_responses_total{code="200",key="main")"),
            std::string::npos);
  // Setting them again brings the series back.
  m.setKeyGauges({"main", 1.0, 1.0, 1, 0, 0});
  EXPECT_NE(m.serialize().find(R"(hiapi_proxy_rate_configured_requests_per_second{key="main"} 1)"), std::string::npos);
}

TEST(Metrics, ExpositionPassesPromtoolCheckMetrics) {
  if (runCommand("command -v promtool >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "promtool is not installed";
  }
  Metrics m;
  exerciseAll(m);
  TempDir dir;
  dir.write("metrics.txt", m.serialize());
  const int rc = runCommand("promtool check metrics < " + dir.file("metrics.txt") + " > " +
                            dir.file("promtool.out") + " 2>&1");
  const std::string out = readFile(dir.file("promtool.out"));
  // No lint finding is tolerated: promtool prints nothing and exits 0 on a clean exposition.
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out, "") << out;
}

// ---- docs ------------------------------------------------------------------------------------

std::string labelsCell(const std::string& labels) {
  if (labels.empty()) {
    return "—";
  }
  std::string out;
  std::istringstream in(labels);
  std::string l;
  while (std::getline(in, l, ',')) {
    out += (out.empty() ? "`" : ", `") + l + "`";
  }
  return out;
}

std::string docRow(const MetricDoc& d) {
  return "| `" + d.name + "` | " + d.type + " | " + labelsCell(d.labels) + " | " + d.help + " |";
}

/// The metric table rows of a markdown file: lines whose first cell is a backticked metric name.
std::vector<std::string> tableRows(const std::string& text) {
  auto isMetricRow = [](const std::string& line) {
    if (line.rfind("| `", 0) != 0) {
      return false;
    }
    const size_t end = line.find('`', 3);
    if (end == std::string::npos || end == 3) {
      return false;
    }
    for (size_t i = 3; i < end; ++i) {
      const char c = line[i];
      if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':')) {
        return false;
      }
    }
    return true;
  };
  std::vector<std::string> rows;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
      line.pop_back();
    }
    if (isMetricRow(line)) {
      rows.push_back(line);
    }
  }
  return rows;
}

TEST(MetricsDocs, DocsTableMatchesMetricDocsExactly) {
  const std::string path = std::string(HIAPI_SOURCE_DIR) + "/docs/metrics.md";
  const std::string text = readFile(path);
  ASSERT_FALSE(text.empty()) << path;
  std::vector<std::string> expected;
  std::string table = "| Name | Type | Labels | Meaning |\n|---|---|---|---|\n";
  for (const MetricDoc& d : shell::metricDocs()) {
    expected.push_back(docRow(d));
    table += docRow(d) + "\n";
  }
  EXPECT_EQ(tableRows(text), expected) << "docs/metrics.md is out of date; its table should be:\n"
                                       << table;
}

TEST(MetricsDocs, ReadmeMetricsSectionNamesEveryMetric) {
  const std::string text = readFile(std::string(HIAPI_SOURCE_DIR) + "/README.md");
  const size_t section = text.find("\n## Metrics");
  if (section == std::string::npos) {
    GTEST_SKIP() << "README.md has no \"## Metrics\" section yet";
  }
  // The section runs to the next level-2 heading.
  const size_t end = text.find("\n## ", section + 1);
  const std::string body = text.substr(section, end == std::string::npos ? end : end - section);
  for (const MetricDoc& d : shell::metricDocs()) {
    EXPECT_NE(body.find("`" + d.name + "`"), std::string::npos)
        << d.name << " is missing from README.md's Metrics section";
  }
  // And nothing listed there that the daemon does not export.
  std::set<std::string> known;
  for (const MetricDoc& d : shell::metricDocs()) {
    known.insert(d.name);
  }
  for (const std::string& row : tableRows(body)) {
    const std::string name = row.substr(3, row.find('`', 3) - 3);
    if (name.rfind("hiapi_proxy_", 0) == 0 || name.rfind("process_", 0) == 0) {
      EXPECT_TRUE(known.count(name)) << name << " is in README.md but not exported";
    }
  }
}

TEST(MetricsDocs, AlertRulesNameOnlyExportedMetrics) {
  const std::string text = readFile(std::string(HIAPI_SOURCE_DIR) + "/tools/grafana/alerts.yml");
  ASSERT_FALSE(text.empty());
  std::set<std::string> known;
  for (const MetricDoc& d : shell::metricDocs()) {
    known.insert(d.name);
  }
  size_t used = 0;
  const std::string prefix = "hiapi_proxy_";
  for (size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix, at + 1)) {
    size_t end = at;
    while (end < text.size() && (std::isalnum(static_cast<unsigned char>(text[end])) ||
                                 text[end] == '_')) {
      ++end;
    }
    std::string name = text.substr(at, end - at);
    if (name == prefix) {
      continue;  // "hiapi_proxy_*" in a comment
    }
    for (const char* suffix : {"_bucket", "_count", "_sum"}) {
      if (known.count(name) == 0 && name.ends_with(suffix)) {
        name.resize(name.size() - std::string_view(suffix).size());
      }
    }
    ++used;
    EXPECT_TRUE(known.count(name)) << name << " is in alerts.yml but not exported";
  }
  EXPECT_GE(used, 8u);
}

// ---- AdminServer -------------------------------------------------------------------------------


TEST(AdminServerTest, ServesMetricsHealthReadinessStatusAnd404) {
  Metrics m;
  exerciseAll(m);
  std::atomic<bool> ready{false};
  std::atomic<int> scrapes{0};
  AdminLoop loop(
      m, [] { return std::string(R"({"keys":[{"name":"main","effective_rate":0.5}]})"); },
      [&] { return ready.load(); },
      [&] {
        ++scrapes;
        m.setTrackedTasks(1234);  // what the daemon does: refresh gauges at scrape time
      });
  ASSERT_TRUE(loop.ok());
  ASSERT_NE(loop.port(), 0);

  HttpResponse r = httpRequest(loop.port(), "GET", "/metrics");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  EXPECT_NE(r.body.find("# TYPE hiapi_proxy_client_responses_total counter"), std::string::npos);
  EXPECT_NE(r.body.find("hiapi_proxy_tracked_tasks 1234"), std::string::npos);
  EXPECT_NE(r.body.find("process_resident_memory_bytes"), std::string::npos);
  EXPECT_EQ(scrapes.load(), 1);
  EXPECT_EQ(httpRequest(loop.port(), "GET", "/metrics?name[]=x").status, 200);
  EXPECT_EQ(scrapes.load(), 2);

  r = httpRequest(loop.port(), "GET", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body, "ok\n");

  EXPECT_EQ(httpRequest(loop.port(), "GET", "/readyz").status, 503);
  ready = true;
  r = httpRequest(loop.port(), "GET", "/readyz");
  EXPECT_EQ(r.status, 200);

  r = httpRequest(loop.port(), "GET", "/status");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type"), "application/json");
  EXPECT_EQ(r.body, R"({"keys":[{"name":"main","effective_rate":0.5}]})");

  EXPECT_EQ(httpRequest(loop.port(), "GET", "/nope").status, 404);
  EXPECT_EQ(httpRequest(loop.port(), "GET", "/").status, 404);
  EXPECT_EQ(httpRequest(loop.port(), "GET", "/metricsx").status, 404);
  r = httpRequest(loop.port(), "POST", "/metrics", {}, "x");
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.header("Allow"), "GET, HEAD");
  r = httpRequest(loop.port(), "HEAD", "/healthz");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(scrapes.load(), 2);
}

TEST(AdminServerTest, ACallbackThatThrowsGets500AndTheServerStaysUp) {
  Metrics m;
  AdminLoop loop(
      m, []() -> std::string { throw std::runtime_error("boom"); }, [] { return true; }, [] {});
  ASSERT_TRUE(loop.ok());
  EXPECT_EQ(httpRequest(loop.port(), "GET", "/status").status, 500);
  EXPECT_EQ(httpRequest(loop.port(), "GET", "/healthz").status, 200);
}

TEST(AdminServerTest, ListenFailsCleanlyOnABusyPort) {
  Metrics m;
  AdminLoop first(m, {}, {}, {});
  ASSERT_TRUE(first.ok());
  event_base* base = event_base_new();
  {
    AdminServer second(base, m, {}, {}, {});
    EXPECT_FALSE(second.listen("127.0.0.1", first.port()));
    EXPECT_FALSE(second.lastError().empty());
    EXPECT_EQ(second.port(), 0);
  }
  event_base_free(base);
}

}  // namespace
}  // namespace hiapi::test
