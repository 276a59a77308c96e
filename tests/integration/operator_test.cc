// What an operator sees of the real daemon: every metric family from the first scrape, one count
// per event across the families that count it, and the access log's schema (typed JSON values,
// client address, path without its query, bytes, user agent, outcome words, the proxy's own polls
// marked as its own).

#include <sys/stat.h>

#include <atomic>
#include <csignal>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <set>

#include <gtest/gtest.h>
#include <rapidjson/document.h>

#include "harness/harness.h"
#include "hiapi/core/config.h"
#include "hiapi/core/key_name.h"
#include "hiapi/shell/key_identity.h"
#include "hiapi/shell/metrics.h"

namespace hiapi::test {
namespace {

using namespace std::chrono_literals;

const std::string kKey = "sk-operator-test-key-0123456789";

std::string proxyYaml(const std::string& upstream_url, const std::string& extra) {
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: true\n  address: 127.0.0.1\n  port: 0\n"
         "upstream:\n  url: " + upstream_url + "\n  connect_timeout: 2s\n  response_timeout: 10s\n"
         "auth:\n  mode: inject\n"
         "keys:\n  - name: main\n    key: " + kKey + "\n" + extra;
}

/// The value of the sample named exactly @p series (name and labels as exposed), or -1.
double sample(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return -1;
}

bool hasSeries(const std::string& text, const std::string& name) {
  return text.find("\n" + name + "{") != std::string::npos ||
         text.find("\n" + name + " ") != std::string::npos;
}

TEST(OperatorMetrics, EveryFamilyHasASampleAtTheFirstScrape) {
  TempDir dir;
  ProxyProcess proxy(dir, proxyYaml("http://127.0.0.1:9", "log:\n  level: warn\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const HttpResponse r = httpRequest(proxy.adminPort(), "GET", "/metrics");
  ASSERT_EQ(r.status, 200);
  const std::string text = "\n" + r.body;
  // What the gateway advertises has no value until it advertises one: a 0 there would read as
  // "no requests left", so those gauges appear with the first reply that carries the headers.
  const std::set<std::string> advertised{"hiapi_proxy_upstream_ratelimit_limit",
                                         "hiapi_proxy_upstream_ratelimit_remaining"};
  for (const shell::MetricDoc& d : shell::metricDocs()) {
    if (advertised.count(d.name) != 0) {
      EXPECT_FALSE(hasSeries(text, d.name)) << d.name << " before anything was advertised";
      continue;
    }
    const std::string series = d.type == "histogram" ? d.name + "_count" : d.name;
    EXPECT_TRUE(hasSeries(text, series)) << d.name << " has no sample before the first request";
  }
  // The configured key's families, at zero, with no request made.
  for (const char* s :
       {R"(hiapi_proxy_errors_total{code="queue_timeout"})",
        R"(hiapi_proxy_retries_total{key="main",reason="retry_429"})",
        R"(hiapi_proxy_upstream_429_total{cause="rate",key="main"})",
        R"(hiapi_proxy_lease_expiries_total{key="main",tier="heavy"})",
        R"(hiapi_proxy_polls_held_total{key="main"})",
        R"(hiapi_proxy_throttled_total{key="main",reason="queue_timeout"})",
        R"(hiapi_proxy_queue_wait_seconds_count{key="main",outcome="queue_timeout",route="create"})",
        R"(hiapi_proxy_client_request_duration_seconds_count{route="create"})",
        "hiapi_proxy_client_connections_accepted_total"}) {
    EXPECT_EQ(sample(text, s), 0) << s;
  }
  EXPECT_GT(sample(text, R"(hiapi_proxy_rate_configured_requests_per_second{key="main"})"), 0);
  EXPECT_EQ(sample(text, "hiapi_proxy_upstream_up"), 1);
}

TEST(OperatorMetrics, AQueueTimeoutCountsOnceInEveryFamilyThatCountsIt) {
  TempDir dir;
  TestUpstream upstream;
  upstream.setHandler([](const RecordedRequest&) {
    TestUpstream::Reply r;
    r.body = R"({"code":200,"data":{"list":[],"total":0}})";
    r.headers = {{"Content-Type", "application/json"}};
    return r;
  });
  // One request per 10 s and a 1 s queue deadline: of a burst of lists, one goes and the rest
  // time out in the queue.
  ProxyProcess proxy(dir, proxyYaml("http://127.0.0.1:" + std::to_string(upstream.port()),
                                    "limits:\n  rate: 6/m\n  burst: 1\n"
                                    "queue:\n  deadline: 1s\n"
                                    "log:\n  level: info\n  format: json\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  constexpr int kClients = 5;
  std::vector<std::thread> clients;
  std::atomic<int> timeouts{0}, ok{0};
  for (int i = 0; i < kClients; ++i) {
    clients.emplace_back([&] {
      const HttpResponse r = httpRequest(proxy.port(), "GET", "/v1/tasks?page=1&size=10", {}, {},
                                         15s);
      if (r.status == 429 && r.header("X-HiAPI-Proxy-Error") == "queue_timeout") {
        ++timeouts;
      } else if (r.status == 200) {
        ++ok;
      }
    });
  }
  for (std::thread& t : clients) {
    t.join();
  }
  ASSERT_EQ(ok.load() + timeouts.load(), kClients);
  ASSERT_GE(timeouts.load(), 1);
  const std::string text = "\n" + httpRequest(proxy.adminPort(), "GET", "/metrics").body;
  const double n = timeouts.load();
  EXPECT_EQ(sample(text, R"(hiapi_proxy_throttled_total{key="main",reason="queue_timeout"})"), n)
      << text;
  EXPECT_EQ(sample(text, R"(hiapi_proxy_errors_total{code="queue_timeout"})"), n);
  EXPECT_EQ(sample(text, R"(hiapi_proxy_client_responses_total{code="429",key="main",route="list"})"),
            n);
  // Every wait is observed, those that ended in a timeout under their own outcome.
  EXPECT_EQ(sample(text,
                   R"(hiapi_proxy_queue_wait_seconds_count{key="main",outcome="queue_timeout",route="list"})"),
            n);
  EXPECT_GE(sample(text,
                   R"(hiapi_proxy_queue_wait_seconds_sum{key="main",outcome="queue_timeout",route="list"})"),
            n * 1.0)
      << "each waited its whole 1 s deadline";
  EXPECT_EQ(sample(text, R"(hiapi_proxy_client_request_duration_seconds_count{route="list"})"),
            kClients);
  EXPECT_GE(sample(text, "hiapi_proxy_client_connections_accepted_total"), kClients);

  // The log says the same: each timeout waited its deadline (1000 ms) in the queue.
  int logged = 0;
  std::istringstream err(proxy.process().err());
  for (std::string line; std::getline(err, line);) {
    rapidjson::Document d;
    if (d.Parse(line.c_str()).HasParseError() || !d.IsObject() || !d.HasMember("outcome") ||
        std::string(d["outcome"].GetString()) != "queue_timeout") {
      continue;
    }
    ++logged;
    ASSERT_TRUE(d["queued_ms"].IsInt64()) << line;
    EXPECT_GE(d["queued_ms"].GetInt64(), 1000) << line;
    EXPECT_EQ(d["status"].GetInt(), 429) << line;
  }
  EXPECT_EQ(logged, timeouts.load());
}

/// The JSON access log lines ("msg":"request") of a daemon's stderr.
std::vector<std::string> requestLines(const std::string& err) {
  std::vector<std::string> out;
  std::istringstream in(err);
  for (std::string line; std::getline(in, line);) {
    if (line.find(R"("msg":"request")") != std::string::npos) {
      out.push_back(line);
    }
  }
  return out;
}

TEST(OperatorLog, JsonAccessLinesCarryTypedValuesAndTheirOwnOutcomes) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--keys", kKey, "--light-duration",
                       "30s", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started()) << sim.process().err();
  ProxyProcess proxy(dir, proxyYaml("http://127.0.0.1:" + std::to_string(sim.port()),
                                    "limits:\n  rate: 20/s\n  burst: 10\n"
                                    "tasks:\n  reconcile_interval: 1s\n"
                                    "log:\n  level: info\n  format: json\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::vector<std::pair<std::string, std::string>> headers{
      {"Content-Type", "application/json"}, {"User-Agent", "operator-test/1.0"}};
  const std::string body = R"({"model":"gpt-image-2","input":{"prompt":"log schema"}})";
  const HttpResponse created = httpRequest(proxy.port(), "POST", "/v1/tasks", headers, body);
  ASSERT_EQ(created.status, 200) << created.body;
  rapidjson::Document c;
  c.Parse(created.body.c_str());
  ASSERT_TRUE(c.IsObject() && c.HasMember("data") && c["data"].HasMember("taskId"));
  const std::string task = c["data"]["taskId"].GetString();
  // A poll, then the same poll again at once: the second is answered from the cache.
  ASSERT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks/" + task + "?secret=hidden", headers)
                .status,
            200);
  ASSERT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks/" + task, headers).status, 200);
  // Nobody polls the running task now: the proxy's reconcile poll comes after 1 s (bounded).
  ASSERT_TRUE(waitFor(
      [&] {
        return proxy.process().err().find(R"("client":"hiapi-proxy")") != std::string::npos;
      },
      20s))
      << proxy.process().err();

  std::map<std::string, rapidjson::Document> by_outcome;
  std::vector<std::string> request_ids;
  for (const std::string& line : requestLines(proxy.process().err())) {
    rapidjson::Document d;
    ASSERT_FALSE(d.Parse(line.c_str()).HasParseError()) << line;
    SCOPED_TRACE(line);
    // Typed: numbers are numbers.
    for (const char* n : {"status", "queued_ms", "upstream_ms", "attempts", "total_ms",
                          "bytes_in", "bytes_out"}) {
      ASSERT_TRUE(d.HasMember(n) && d[n].IsNumber()) << n;
    }
    for (const char* s : {"request_id", "client_addr", "method", "route", "path", "outcome"}) {
      ASSERT_TRUE(d.HasMember(s) && d[s].IsString()) << s;
    }
    EXPECT_EQ(std::string(d["path"].GetString()).find('?'), std::string::npos);
    EXPECT_EQ(line.find("hidden"), std::string::npos) << "a query reached the log";
    EXPECT_EQ(line.find(kKey), std::string::npos) << "a key reached the log";
    request_ids.push_back(d["request_id"].GetString());
    const bool own = d.HasMember("client") && std::string(d["client"].GetString()) == "hiapi-proxy";
    const std::string outcome = own ? "own_poll" : d["outcome"].GetString();
    if (by_outcome.count(outcome) == 0) {
      by_outcome.emplace(outcome, std::move(d));
    }
  }
  ASSERT_TRUE(by_outcome.count("forwarded")) << proxy.process().err();
  ASSERT_TRUE(by_outcome.count("cache_hit")) << proxy.process().err();
  ASSERT_TRUE(by_outcome.count("own_poll")) << proxy.process().err();

  const rapidjson::Document& fwd = by_outcome["forwarded"];
  EXPECT_EQ(std::string(fwd["client_addr"].GetString()).rfind("127.0.0.1:", 0), 0u);
  EXPECT_EQ(std::string(fwd["user_agent"].GetString()), "operator-test/1.0");
  const rapidjson::Document& hit = by_outcome["cache_hit"];
  EXPECT_EQ(hit["attempts"].GetInt(), 0);
  EXPECT_EQ(std::string(hit["path"].GetString()), "/v1/tasks/" + task);
  EXPECT_GT(hit["bytes_out"].GetInt64(), 0);
  // The create's line counts its body.
  bool create_seen = false;
  for (const std::string& line : requestLines(proxy.process().err())) {
    rapidjson::Document d;
    d.Parse(line.c_str());
    if (std::string(d["route"].GetString()) == "create") {
      create_seen = true;
      EXPECT_EQ(d["bytes_in"].GetUint64(), body.size());
    }
  }
  EXPECT_TRUE(create_seen);
  const rapidjson::Document& own = by_outcome["own_poll"];
  EXPECT_EQ(std::string(own["client_addr"].GetString()), "hiapi-proxy");
  EXPECT_EQ(std::string(own["route"].GetString()), "poll");
  // Every line has its own request id: the proxy's polls do not reuse a client's.
  std::sort(request_ids.begin(), request_ids.end());
  EXPECT_EQ(std::adjacent_find(request_ids.begin(), request_ids.end()), request_ids.end());
}

// ---- the configuration, as the operator sees it -----------------------------------------------

// Shadow mode: nothing waits; what enforcing would have held back is counted and logged.
TEST(OperatorShadow, EveryRequestGoesAtOnceAndWhatWouldHaveWaitedIsCounted) {
  TempDir dir;
  TestUpstream upstream;
  std::atomic<int> created{0};
  upstream.setHandler([&](const RecordedRequest& req) {
    TestUpstream::Reply r;
    r.headers = {{"Content-Type", "application/json"}};
    r.body = req.method == "POST"
                 ? R"({"code":200,"data":{"taskId":"tk-shadow-)" + std::to_string(++created) +
                       R"(","status":"queued"}})"
                 : R"({"code":200,"data":{"list":[],"total":0}})";
    return r;
  });
  // One request per 10 s, one heavy task at a time, a 1 s queue deadline: enforcing, the
  // second request would time out in the queue.
  ProxyProcess proxy(dir, proxyYaml("http://127.0.0.1:" + std::to_string(upstream.port()),
                                    "limits:\n  mode: shadow\n  rate: 6/m\n  burst: 1\n"
                                    "  tiers:\n    - {name: heavy, models: [seedance-*], "
                                    "max_running: 1}\n    - {name: light, models: [\"*\"]}\n"
                                    "queue:\n  deadline: 1s\n"
                                    "log:\n  level: info\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks?page=1&size=10").status, 200);
  }
  for (int i = 0; i < 2; ++i) {
    const HttpResponse r = httpRequest(proxy.port(), "POST", "/v1/tasks",
                                       {{"Content-Type", "application/json"}},
                                       R"({"model":"seedance-2-0","input":{"prompt":"p"}})");
    EXPECT_EQ(r.status, 200) << r.body;
  }
  EXPECT_EQ(upstream.count(), 5u) << "every request reached the upstream";
  const std::string text = "\n" + httpRequest(proxy.adminPort(), "GET", "/metrics").body;
  // list 1 took the token; lists 2-3 and the first create found none; the second create
  // found the heavy tier full (its task runs anyway and holds a slot above the ceiling).
  EXPECT_EQ(sample(text, R"(hiapi_proxy_shadow_throttled_total{key="main",reason="rate"})"), 3)
      << text;
  EXPECT_EQ(sample(text, R"(hiapi_proxy_shadow_throttled_total{key="main",reason="concurrency"})"),
            1);
  for (const char* reason : {"rate", "concurrency", "cooldown", "queue_full", "queue_timeout"}) {
    EXPECT_EQ(sample(text, std::string(R"(hiapi_proxy_throttled_total{key="main",reason=")") +
                               reason + "\"}"),
              0)
        << reason;
  }
  EXPECT_EQ(sample(text, R"(hiapi_proxy_tasks_running{key="main",tier="heavy"})"), 2);
  EXPECT_TRUE(waitFor([&] { return proxy.process().err().find("shadow=concurrency") !=
                                   std::string::npos; },
                      5000ms))
      << proxy.process().err();
  EXPECT_NE(httpRequest(proxy.adminPort(), "GET", "/status").body.find(R"("limits_mode":"shadow")"),
            std::string::npos);
}

TEST(OperatorConfig, CheckConfigReportsEveryErrorOfTheFileInOneRun) {
  TempDir dir;
  dir.write("three.yaml", "listen:\n  port: eighty\nlimits:\n  rate: 60/fortnight\n"
                          "retry:\n  idempotency: false\n  max_atempts: 3\n");
  Process bad({HIAPI_PROXY_BIN, "-t", dir.file("three.yaml")}, dir.file("bad"));
  EXPECT_EQ(bad.wait(10000ms), 1);
  const std::string err = bad.err();
  // Three mistakes, three lines, each with file:line:col and key; `idempotency: false` (what
  // PyYAML writes for off) is not one of them.
  for (const char* where : {"three.yaml:2:9: listen.port: ", "three.yaml:4:9: limits.rate: ",
                            "three.yaml:7:3: retry.max_atempts: unknown key"}) {
    EXPECT_NE(err.find(std::string("hiapi-proxy: ") + dir.file(where)), std::string::npos)
        << where << "\n" << err;
  }
  EXPECT_EQ(err.find("idempotency"), std::string::npos) << err;
  EXPECT_NE(err.find("did you mean 'max_attempts'"), std::string::npos) << err;
}

TEST(OperatorConfig, HelpListsEveryFlagTheParserTakes) {
  TempDir dir;
  Process help({HIAPI_PROXY_BIN, "--help"}, dir.file("help"));
  EXPECT_EQ(help.wait(10000ms), 0);
  for (const char* flag : {"-c, --config PATH", "--config=PATH", "-t, --check-config",
                           "--print-config", "--port-file PATH", "--version", "-h, --help"}) {
    EXPECT_NE(help.out().find(flag), std::string::npos) << flag << "\n" << help.out();
  }
}

TEST(OperatorConfig, PrintConfigAndAdminConfigShowTheEffectiveConfigurationRedacted) {
  TempDir dir;
  const std::string yaml = proxyYaml("http://127.0.0.1:9", "limits:\n  rate: 90/min\n"
                                                           "log:\n  level: warn\n");
  dir.write("effective.yaml", yaml);
  Process print({HIAPI_PROXY_BIN, "--print-config", "--config", dir.file("effective.yaml")},
                dir.file("print"));
  EXPECT_EQ(print.wait(10000ms), 0) << print.err();
  const std::string printed = print.out();
  EXPECT_EQ(printed.find(kKey), std::string::npos) << "a key was printed";
  for (const char* line : {"\n  rate: 1.5/s\n", "\n  mode: inject\n", "\n  - name: main\n",
                           "\n    key: <redacted>\n", "\n  deadline: 45s\n"}) {
    EXPECT_NE(printed.find(line), std::string::npos) << line << "\n" << printed;
  }
  // The running daemon's admin listener says the same.
  ProxyProcess proxy(dir, yaml);
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const HttpResponse r = httpRequest(proxy.adminPort(), "GET", "/config");
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.header("Content-Type"), "application/yaml; charset=utf-8");
  EXPECT_EQ(r.body.find(kKey), std::string::npos);
  // (Ports differ: the file asks for port 0, which the printout shows as asked.)
  EXPECT_EQ(r.body, printed.substr(printed.find('\n') + 1));
}

// ---- runtime limits ------------------------------------------------------------------------------

TEST(OperatorLimits, APutChangesAKeysRateForTheNextRequestUntilTheNextReload) {
  TempDir dir;
  TestUpstream upstream;
  // One request per minute, burst 1: after the first, a request waits about a minute.
  const std::string yaml =
      proxyYaml("http://127.0.0.1:" + std::to_string(upstream.port()),
                "limits:\n  rate: 1/min\n  burst: 1\n"
                "  tiers:\n    - {name: heavy, models: [\"veo-*\"], max_running: 1}\n"
                "    - {name: light, models: [\"*\"], max_running: 5}\n"
                "log:\n  level: info\n");
  ProxyProcess proxy(dir, yaml);
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::vector<std::pair<std::string, std::string>> short_deadline{{"X-HiAPI-Deadline", "1s"}};
  ASSERT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks?page=1").status, 200);
  const HttpResponse waited = httpRequest(proxy.port(), "GET", "/v1/tasks?page=1", short_deadline);
  ASSERT_EQ(waited.status, 429);
  ASSERT_EQ(waited.header("X-HiAPI-Proxy-Error"), "queue_timeout");

  // Refused: unknown key, unknown field, a bad value, a method other than PUT/POST.
  EXPECT_EQ(httpRequest(proxy.adminPort(), "PUT", "/limits/keys/nope", {}, R"({"rate":"5/s"})")
                .status,
            404);
  EXPECT_EQ(httpRequest(proxy.adminPort(), "PUT", "/limits/keys/main", {}, R"({"speed":5})")
                .status,
            400);
  EXPECT_EQ(httpRequest(proxy.adminPort(), "PUT", "/limits/keys/main", {}, R"({"burst":0})")
                .status,
            400);
  EXPECT_EQ(httpRequest(proxy.adminPort(), "GET", "/limits/keys/main").status, 405);

  const HttpResponse changed = httpRequest(proxy.adminPort(), "PUT", "/limits/keys/main", {},
                                           R"({"rate":"50/s","burst":5})");
  ASSERT_EQ(changed.status, 200) << changed.body;
  // The next request goes at once (the same 1 s deadline that timed out above).
  EXPECT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks?page=1", short_deadline).status, 200);
  // The effective configuration and the metrics say so; the log has an audit line.
  const std::string config = httpRequest(proxy.adminPort(), "GET", "/config").body;
  EXPECT_NE(config.find("\n    rate: 50/s\n    burst: 5\n"), std::string::npos) << config;
  const std::string metrics = "\n" + httpRequest(proxy.adminPort(), "GET", "/metrics").body;
  EXPECT_EQ(sample(metrics, R"(hiapi_proxy_rate_configured_requests_per_second{key="main"})"), 50);
  EXPECT_NE(proxy.process().err().find("limits changed at runtime"), std::string::npos);
  EXPECT_NE(proxy.process().err().find("peer=127.0.0.1:"), std::string::npos)
      << proxy.process().err();

  // A tier's ceiling, too.
  EXPECT_EQ(httpRequest(proxy.adminPort(), "PUT", "/limits/tiers/heavy", {},
                        R"({"max_running":3})")
                .status,
            200);
  EXPECT_NE(httpRequest(proxy.adminPort(), "GET", "/config").body.find("max_running: 3"),
            std::string::npos);
  EXPECT_EQ(httpRequest(proxy.adminPort(), "PUT", "/limits/tiers/heavy", {},
                        R"({"max_running":0})")
                .status,
            400);

  // A reload goes back to the file.
  proxy.process().signal(SIGHUP);
  ASSERT_TRUE(waitFor(
      [&] {
        return httpRequest(proxy.adminPort(), "GET", "/config").body.find("rate: 50/s") ==
               std::string::npos;
      },
      10s));
  EXPECT_NE(httpRequest(proxy.adminPort(), "GET", "/config").body.find("  rate: 0.01666666667/s"),
            std::string::npos);
}

// ---- passthrough key labels ---------------------------------------------------------------------

TEST(OperatorKeys, PassthroughLabelsAreKeyedAndUnrelatedForKeysOneCharacterApart) {
  const shell::KeyIdentity a;  // two installations: two secrets
  const shell::KeyIdentity b;
  const std::string k1 = "sk-label-test-0000000000000001";
  const std::string k2 = "sk-label-test-0000000000000002";
  const std::string l1(core::keyDisplayName(a.nameOf(k1)));
  ASSERT_EQ(l1.size(), 15u);
  EXPECT_EQ(l1.rfind("pt-", 0), 0u);
  EXPECT_EQ(l1.find_first_not_of("0123456789abcdef", 3), std::string::npos) << l1;
  EXPECT_EQ(std::string(core::keyDisplayName(a.nameOf(k1))), l1) << "stable for one secret";
  EXPECT_NE(std::string(core::keyDisplayName(b.nameOf(k1))), l1)
      << "another installation, another label";
  // One character apart: matching hex digits in place are expected by chance for 1 in 16; an
  // unkeyed prefix hash gave near-identical labels.
  const std::string l2(core::keyDisplayName(a.nameOf(k2)));
  int same = 0;
  for (size_t i = 3; i < l1.size(); ++i) {
    same += l1[i] == l2[i] ? 1 : 0;
  }
  EXPECT_LE(same, 5) << l1 << " " << l2;
}

TEST(OperatorKeys, TheLabelSecretIsKeptBesideTheStateFileAcrossRestarts) {
  TempDir dir;
  TestUpstream upstream;
  const std::string yaml = "listen:\n  address: 127.0.0.1\n  port: 0\n"
                           "admin:\n  enabled: true\n  address: 127.0.0.1\n  port: 0\n"
                           "upstream:\n  url: http://127.0.0.1:" + std::to_string(upstream.port()) +
                           "\ntasks:\n  state_file: " + dir.file("tasks.json") +
                           "\nlog:\n  level: warn\n";
  const std::string key = "sk-passthrough-label-test-000000001";
  auto labelSeen = [&](ProxyProcess& proxy) {
    EXPECT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks?page=1",
                          {{"Authorization", "Bearer " + key}})
                  .status,
              200);
    const std::string metrics = httpRequest(proxy.adminPort(), "GET", "/metrics").body;
    const std::string prefix = R"(hiapi_proxy_client_responses_total{code="200",key="pt-)";
    const size_t at = metrics.find(prefix);
    return at == std::string::npos ? std::string() : metrics.substr(at + prefix.size() - 3, 15);
  };
  std::string first;
  {
    ProxyProcess proxy(dir, yaml);
    ASSERT_TRUE(proxy.started()) << proxy.process().err();
    first = labelSeen(proxy);
  }
  ASSERT_EQ(first.size(), 15u) << first;
  struct stat st {};
  ASSERT_EQ(::stat(dir.file("tasks.json.secret").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the secret is readable by the daemon alone";
  EXPECT_EQ(readFile(dir.file("tasks.json.secret")).find(key), std::string::npos);
  ProxyProcess again(dir, yaml, {}, "again");
  ASSERT_TRUE(again.started()) << again.process().err();
  EXPECT_EQ(labelSeen(again), first) << "the same key keeps its label across a restart";
}

}  // namespace
}  // namespace hiapi::test
