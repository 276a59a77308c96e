// The shared budget end to end: several client processes burst creates and poll tightly through
// the real daemon to the real simulator; the simulator's /__stats is the judge.

#include <csignal>
#include <functional>

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness/harness.h"
#include "harness/workload.h"

namespace hiapi::test {
namespace {

const std::string kKey = "sk-limiter-test-key-000000000000";

std::string proxyYaml(uint16_t sim_port, const std::string& extra = {},
                      const std::string& level = "warn", bool admin = false) {
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: " + std::string(admin ? "true\n  port: 0" : "false") + "\n"
         "upstream:\n  url: http://127.0.0.1:" + std::to_string(sim_port) + "\n"
         "  connect_timeout: 2s\n  response_timeout: 10s\n"
         "log:\n  level: " + level + "\n" + extra;
}

// The simulator's budget is the truth: 10 requests/s, burst 10, heavy 2 and light 5 running.
// The proxy runs at the same rate with a smaller burst (5): the margin absorbs network jitter.
const std::vector<std::string> kSimLimits{"--rate", "10/s", "--burst", "10",
                                          "--heavy-max", "2", "--light-max", "5",
                                          "--heavy-duration", "1s", "--light-duration", "500ms",
                                          "--duration-jitter", "0.2", "--seed", "7"};
const std::string kProxyLimits =
    "limits:\n  rate: 10/s\n  burst: 5\n"
    "  tiers:\n"
    "    - {name: heavy, models: [\"seedance-*\", \"*-pro\", \"*@pro\"], routes: [pro], "
    "max_running: 2, lease: 2m, min_poll_interval: 1s}\n"
    "    - {name: light, models: [\"*\"], max_running: 5, lease: 2m, min_poll_interval: 1s}\n"
    "queue:\n  deadline: 45s\n";

/// @param max_up429 the most upstream 429s allowed; -1: 1 % of the upstream requests.
/// @param metrics when set, called with the proxy's /metrics text after the run (admin on).
void runBurst(const std::vector<std::string>& sim_extra, const std::string& proxy_extra,
              const std::string& proxy_limits = kProxyLimits, int proxy_burst = 5,
              int max_up429 = -1,
              const std::function<void(const std::string&)>& metrics = nullptr) {
  TempDir dir;
  std::vector<std::string> flags = kSimLimits;
  flags.insert(flags.end(), sim_extra.begin(), sim_extra.end());
  SimProcess sim(dir, flags);
  ASSERT_TRUE(sim.started()) << sim.process().err();
  ProxyProcess proxy(dir, proxyYaml(sim.port(), proxy_limits + proxy_extra, "warn",
                                    metrics != nullptr));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();

  std::vector<ClientSpec> specs;
  for (int i = 0; i < 5; ++i) {
    ClientSpec s;
    s.name = "svc-" + std::to_string(i);
    s.key = kKey;
    s.tasks = 20;  // 5 × 20 = 100 creates at once
    s.heavy_every = 4;
    s.poll_interval = 200ms;
    s.give_up = 150s;
    specs.push_back(s);
  }
  const ClientTotals t = sum(runClients(proxy.port(), specs, dir));
  rapidjson::Document st = simStats(sim.port());
  ASSERT_TRUE(st.IsObject());
  const int64_t upstream = jsonInt(st, {"requests", "total"});
  const int64_t up429 = jsonInt(st, {"rejected_429", "rate"}) + jsonInt(st, {"rejected_429", "concurrency"});
  std::printf("clients: %d requests, %d creates ok, %d done, %d x 429, %d errors, %d unfinished\n"
              "upstream: %lld requests, %lld x 429, busiest 1 s %lld, heavy max %lld, light max %lld, "
              "duplicates %lld\n",
              t.requests, t.creates_ok, t.done, t.c429, t.errors, t.unfinished,
              static_cast<long long>(upstream), static_cast<long long>(up429),
              static_cast<long long>(jsonInt(st, {"keys", kKey.c_str(), "max_admitted_1s"})),
              static_cast<long long>(jsonInt(st, {"tiers", "heavy", "max_running_per_key"})),
              static_cast<long long>(jsonInt(st, {"tiers", "light", "max_running_per_key"})),
              static_cast<long long>(jsonInt(st, {"duplicate_creations"})));

  EXPECT_EQ(t.c429, 0) << "no 429 reaches a client";
  EXPECT_EQ(t.errors, 0) << t.first_error;
  EXPECT_EQ(t.creates_ok, 100);
  EXPECT_EQ(t.done, 100) << "every task is seen to its end";
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 100);
  EXPECT_EQ(jsonInt(st, {"duplicate_creations"}), 0);
  if (max_up429 < 0) {
    EXPECT_LE(up429 * 100, upstream) << "upstream 429s stay within 1% of upstream requests";
  } else {
    EXPECT_LE(up429, max_up429);
  }
  EXPECT_LE(jsonInt(st, {"keys", kKey.c_str(), "max_admitted_1s"}), 10 + proxy_burst + 1)
      << "no 1-second window above rate + burst";
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 2);
  EXPECT_LE(jsonInt(st, {"tiers", "light", "max_running_per_key"}), 5);
  // Polling every 200 ms for tasks of 2 to 5 s would be 10 to 25 polls per task straight to
  // the upstream; through the proxy a task's detail is fetched about once near its end (held
  // polls wait for it rather than coming back), plus the fault retries.
  const int64_t details = jsonInt(st, {"requests", "by_route", "detail"});
  std::printf("upstream detail requests: %lld for 100 tasks\n", static_cast<long long>(details));
  EXPECT_LE(details, 2 * 100) << "polls were coalesced, cached or held, not all forwarded";
  if (metrics) {
    metrics(httpRequest(proxy.adminPort(), "GET", "/metrics").body);
  }
}

TEST(SharedBudget, FiveClientsBurstHundredCreatesWithoutAClientSeeing429) {
  runBurst({}, {});
}

TEST(SharedBudget, SameWithTheGatewaysOwnBurstAgainstAJitteredFixedWindowThatCounts) {
  // No burst below the gateway's: a fixed window (10 per aligned second) whose X-RateLimit-*
  // the proxy keeps in phase with, 10 ms of arrival jitter that the phase margin absorbs.
  std::string limits = kProxyLimits;
  limits.replace(limits.find("burst: 5"), 8, "burst: 10");
  runBurst({"--limiter", "fixed-window", "--ratelimit-headers", "on", "--jitter", "10ms"}, {},
           limits, 10);
}

TEST(SharedBudget, SameAgainstAJitteredFixedWindowThatSendsNoCounters) {
  // Nothing says the gateway counts in windows until it answers 429 where the proxy's bucket
  // had the token: from then the key keeps to 10 in any second (the window guard). So the 429s
  // are those of that one window: the one that armed the guard and any answering requests
  // already sent (2 in each of 4 runs; without the guard, every later window could add more).
  std::string limits = kProxyLimits;
  limits.replace(limits.find("burst: 5"), 8, "burst: 10");
  runBurst({"--limiter", "fixed-window", "--ratelimit-headers", "off", "--jitter", "10ms"}, {},
           limits, 10, 3, [](const std::string& m) {
             // One event: the guard armed once, and the rate never cut (without the guard the
             // window's next 429 came as a repeat, and the rate was halved).
             EXPECT_EQ(metricSum(m, "hiapi_proxy_rate_429_reactions_total", "reaction=\"guard\""),
                       1.0);
             EXPECT_EQ(metricSum(m, "hiapi_proxy_rate_429_reactions_total",
                                 "reaction=\"decrease\""),
                       0.0);
           });
}

TEST(SharedBudget, SameWithInjected5xxAndResetsAndNoDuplicateTask) {
  // 5% of requests answered 502/503 and 2% of connections reset before processing: the proxy
  // retries what is safe; `idempotency: inject` makes its create retries safe too.
  runBurst({"--fault-5xx", "0.05", "--fault-reset", "0.02"},
           "retry:\n  max_attempts: 6\n  idempotency: inject\n");
}

TEST(SharedBudget, AClientKilledWhileQueuedCausesNoUpstreamRequest) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "10/s", "--burst", "10"});
  ASSERT_TRUE(sim.started());
  // One request per minute: the first spends the only token, the next waits in the queue.
  ProxyProcess proxy(dir, proxyYaml(sim.port(), "limits:\n  rate: 1/min\n  burst: 1\n", "info",
                                    /*admin=*/true));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::vector<std::pair<std::string, std::string>> auth{{"Authorization", "Bearer " + kKey}};
  ASSERT_EQ(httpRequest(proxy.port(), "GET", "/v1/tasks?page=1&size=1", auth).status, 200);
  const auto queued = [&] {
    return metricSum(httpRequest(proxy.adminPort(), "GET", "/metrics", {}).body,
                     "hiapi_proxy_queue_depth", "tier=\"all\"");
  };

  const pid_t child = fork();
  if (child == 0) {
    OpenRequest r(proxy.port(), "GET /v1/tasks?page=2&size=1 HTTP/1.1\r\nHost: x\r\n"
                                "Authorization: Bearer " + kKey + "\r\n\r\n");
    pause();
    _exit(0);
  }
  // The proxy holds it once the key's queue shows it.
  ASSERT_TRUE(waitFor([&] { return queued() == 1; }, 5000ms));
  ::kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  ASSERT_TRUE(waitFor([&] { return proxy.process().err().find("outcome=client_gone") != std::string::npos; },
                      5000ms))
      << proxy.process().err();
  rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"requests", "total"}), 1) << "the killed client's request was never sent";
}

TEST(SharedBudget, FullQueueAndDeadlinesAnswer429WithRetryAfterInBothEnvelopes) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "10/s", "--burst", "10"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(dir, proxyYaml(sim.port(), "limits:\n  rate: 1/min\n  burst: 1\n"
                                                 "queue:\n  max_size: 2\n  deadline: 3s\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::string req = "GET /v1/tasks?page=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                          kKey + "\r\nConnection: close\r\n";
  ASSERT_EQ(httpRaw(proxy.port(), req + "\r\n").status, 200);  // spends the only token
  OpenRequest waits_3s(proxy.port(), req + "\r\n");
  OpenRequest waits_500ms(proxy.port(), req + "X-HiAPI-Deadline: 500ms\r\n\r\n");
  // Both wait in the queue: the third is one too many.
  HttpResponse full;
  ASSERT_TRUE(waitFor([&] {
    full = httpRaw(proxy.port(), req + "\r\n", 5000ms);
    return full.status == 429;
  }, 5000ms));
  EXPECT_EQ(full.header("X-HiAPI-Proxy-Error"), "queue_full");
  const int retry_after = std::atoi(full.header("Retry-After").c_str());
  EXPECT_GE(retry_after, 1) << "an integer Retry-After the SDKs honour";
  EXPECT_NE(full.body.find("\"error_code\":\"RATE_LIMIT_EXCEEDED\""), std::string::npos) << full.body;
  EXPECT_NE(full.body.find("\"code\":\"queue_full\""), std::string::npos) << full.body;

  const auto t0 = std::chrono::steady_clock::now();
  HttpResponse quick = waits_500ms.read(10000ms);
  const auto quick_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
      std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(quick.status, 429);
  EXPECT_EQ(quick.header("X-HiAPI-Proxy-Error"), "queue_timeout");
  EXPECT_TRUE(quick.has("Retry-After"));
  HttpResponse slow = waits_3s.read(10000ms);
  EXPECT_EQ(slow.status, 429);
  EXPECT_EQ(slow.header("X-HiAPI-Proxy-Error"), "queue_timeout");
  std::printf("deadline 500ms answered after %lld ms of the test's wait\n", static_cast<long long>(quick_ms));
  EXPECT_EQ(jsonInt(simStats(sim.port()), {"requests", "total"}), 1) << "nothing else went upstream";
}

}  // namespace
}  // namespace hiapi::test
