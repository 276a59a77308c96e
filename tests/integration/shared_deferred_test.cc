// Deferred creates kept in Redis (store.kind: redis): any instance answers polls and cancels of a
// proxy task id another accepted, and a killed instance's queued creates are submitted by
// another. Real daemons, a real redis-server and the simulator as the judge; nothing is mocked.

#include <atomic>
#include <csignal>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "harness/harness.h"
#include "harness/redis_server.h"
#include "harness/workload.h"

namespace hiapi::test {
namespace {

const std::string kKey = "sk-shared-deferred-key-000000000";

// One heavy task of @p duration running at a time: every heavy create beyond the first waits.
std::vector<std::string> oneHeavySlot(const std::string& duration) {
  return {"--rate", "20/s", "--burst", "20", "--keys", kKey, "--heavy-max", "1",
          "--heavy-duration", duration, "--duration-jitter", "0"};
}

// Instance @p name: its own journal, the shared Redis and key secret.
std::string yamlFor(const TempDir& dir, const SimProcess& sim, const RedisServer& redis,
                    const std::string& name) {
  const std::string secret = secretFile(dir);
  const std::string journal = dir.file(name + ".journal");
  const uint16_t sim_port = sim.port();
  const uint16_t redis_port = redis.port();
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: true\n  port: 0\n"
         "upstream:\n  url: http://127.0.0.1:" + std::to_string(sim_port) + "\n"
         "  response_timeout: 10s\n"
         "keys:\n  - name: main\n    key: " + kKey + "\n"
         "limits:\n  rate: 20/s\n  burst: 10\n  tiers:\n"
         "    - {name: heavy, models: [\"seedance-*\"], max_running: 1, defer_after: 1s}\n"
         "    - {name: light, models: [\"*\"], max_running: 5}\n"
         "deferred:\n  journal: " + journal + "\n"
         "store:\n  kind: redis\n  url: redis://127.0.0.1:" + std::to_string(redis_port) +
         "/0\n  key_secret_file: " + secret + "\n  heartbeat_interval: 500ms\n";
}

std::vector<std::pair<std::string, std::string>> auth() {
  return {{"Authorization", "Bearer " + kKey}, {"Content-Type", "application/json"}};
}

// Sends @p n heavy creates at once through @p port; @return their task ids, HiAPI's first.
std::vector<std::string> createHeavy(uint16_t port, int n, const std::string& prefix) {
  std::vector<HttpResponse> out(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      out[static_cast<size_t>(i)] = httpRequest(
          port, "POST", "/v1/tasks", auth(),
          R"({"model":"seedance-2-0","input":{"prompt":")" + prefix + std::to_string(i) + R"("}})",
          60s);
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  std::vector<std::string> ids;
  for (const HttpResponse& r : out) {
    EXPECT_EQ(r.status, 200) << r.body;
    ids.push_back(dataField(r.body, "taskId"));
  }
  std::sort(ids.begin(), ids.end(), [](const std::string& a, const std::string& b) {
    return (a.rfind("hp-tk-", 0) == 0) < (b.rfind("hp-tk-", 0) == 0);
  });
  return ids;
}

// Polls @p id through @p port every @p interval until it ends. @return its final status ("" if
// @p give_up passed); counts answers other than 200.
std::string waitTerminal(uint16_t port, const std::string& id, std::chrono::milliseconds interval,
                         std::chrono::milliseconds give_up, std::atomic<int>& not_ok) {
  const auto deadline = std::chrono::steady_clock::now() + give_up;
  while (std::chrono::steady_clock::now() < deadline) {
    const HttpResponse r = httpRequest(port, "GET", "/v1/tasks/" + id, auth(), {}, 60s);
    if (r.status != 200) {
      ++not_ok;
    } else if (const std::string s = dataField(r.body, "status"); s == "success" || s == "fail") {
      return s;
    }
    std::this_thread::sleep_for(interval);  // the client's own poll interval
  }
  return {};
}

int64_t takenOver(uint16_t admin_port) {
  const HttpResponse m = httpRequest(admin_port, "GET", "/metrics");
  const std::string series =
      "hiapi_proxy_deferred_total{key=\"main\",outcome=\"taken_over\",tier=\"heavy\"} ";
  const size_t at = m.body.find(series);
  return at == std::string::npos ? -1 : std::atoll(m.body.c_str() + at + series.size());
}

// A create deferred at A is polled and cancelled through B, which never held it.
TEST(SharedDeferred, AnyInstanceAnswersForATaskDeferredAtAnother) {
  TempDir dir;
  RedisServer redis(dir, unusedPort());
  ASSERT_TRUE(redis.up());
  SimProcess sim(dir, oneHeavySlot("4s"));
  ASSERT_TRUE(sim.started());
  ProxyProcess a(dir, yamlFor(dir, sim, redis, "a"), {}, "a");
  ProxyProcess b(dir, yamlFor(dir, sim, redis, "b"), {}, "b");
  ASSERT_TRUE(a.started()) << a.process().err();
  ASSERT_TRUE(b.started()) << b.process().err();

  const std::vector<std::string> ids = createHeavy(a.port(), 3, "shared-");
  ASSERT_EQ(ids.size(), 3u);
  ASSERT_EQ(ids[0].rfind("tk-hiapi-", 0), 0u) << ids[0];
  ASSERT_EQ(ids[1].rfind("hp-tk-", 0), 0u) << ids[1];
  ASSERT_EQ(ids[2].rfind("hp-tk-", 0), 0u) << ids[2];

  // B answers for a queued task it never held, from the store (once A's write has landed: A
  // answers its client when its journal holds the create, and writes to Redis after).
  HttpResponse poll;
  ASSERT_TRUE(waitFor(
      [&] {
        poll = httpRequest(b.port(), "GET", "/v1/tasks/" + ids[1], auth());
        return poll.status == 200 &&
               httpRequest(b.port(), "GET", "/v1/tasks/" + ids[2], auth()).status == 200;
      },
      30000ms))
      << poll.status << " " << poll.body;
  EXPECT_EQ(dataField(poll.body, "taskId"), ids[1]);
  EXPECT_EQ(dataField(poll.body, "status"), "queued");
  EXPECT_EQ(poll.header("X-HiAPI-Proxy-Deferred"), "queued");
  const HttpResponse unknown =
      httpRequest(b.port(), "GET", "/v1/tasks/hp-tk-01M90ZANEQVGMHJV4JCCGZ2BPX", auth());
  EXPECT_EQ(unknown.status, 404) << unknown.body;
  EXPECT_EQ(unknown.header("X-HiAPI-Proxy-Error"), "task_not_found");

  // A cancel through B is carried to A, which holds the task: it never reaches HiAPI.
  const HttpResponse cancel = httpRequest(b.port(), "DELETE", "/v1/tasks/" + ids[2], auth());
  ASSERT_EQ(cancel.status, 200) << cancel.body;
  EXPECT_EQ(dataField(cancel.body, "status"), "cancelled");
  for (uint16_t port : {a.port(), b.port()}) {
    ASSERT_TRUE(waitFor(
        [&] {
          const HttpResponse r = httpRequest(port, "GET", "/v1/tasks/" + ids[2], auth());
          return r.status == 200 && dataField(r.body, "status") == "fail" &&
                 r.body.find("CANCELLED") != std::string::npos;
        },
        5000ms))
        << port;
  }

  // The other one is submitted by A when the slot frees; B shows HiAPI's task under its id.
  std::atomic<int> not_ok{0};
  EXPECT_EQ(waitTerminal(b.port(), ids[1], 500ms, 60s, not_ok), "success");
  EXPECT_EQ(not_ok.load(), 0);
  poll = httpRequest(b.port(), "GET", "/v1/tasks/" + ids[1], auth());
  ASSERT_EQ(poll.status, 200);
  EXPECT_EQ(dataField(poll.body, "taskId"), ids[1]);
  EXPECT_EQ(dataField(poll.body, "upstreamTaskId").rfind("tk-hiapi-", 0), 0u) << poll.body;
  const HttpResponse late = httpRequest(b.port(), "DELETE", "/v1/tasks/" + ids[1], auth());
  EXPECT_EQ(late.status, 409) << late.body;
  EXPECT_EQ(late.header("X-HiAPI-Proxy-Error"), "task_not_queued");

  const rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 2);
  EXPECT_EQ(jsonInt(st, {"duplicate_creations"}), 0);

  // Without the store, B cannot know: it says so, and that asking again helps.
  redis.kill(SIGKILL);
  ASSERT_TRUE(waitFor([&] {
    const HttpResponse r = httpRequest(b.port(), "GET", "/v1/tasks/" + ids[1], auth());
    return r.status == 503 && r.header("X-HiAPI-Proxy-Error") == "store_unavailable" &&
           !r.header("Retry-After").empty();
  }, 10000ms));
}

// kill -9 of the instance that accepted queued deferred creates: another takes them over once
// its heartbeat lapses and submits each exactly once.
TEST(SharedDeferred, AKilledInstancesQueuedCreatesAreSubmittedByAnother) {
  TempDir dir;
  RedisServer redis(dir, unusedPort());
  ASSERT_TRUE(redis.up());
  SimProcess sim(dir, oneHeavySlot("2s"));
  ASSERT_TRUE(sim.started());
  ProxyProcess b(dir, yamlFor(dir, sim, redis, "b"), {}, "b");
  ASSERT_TRUE(b.started()) << b.process().err();
  std::vector<std::string> ids;
  {
    ProxyProcess a(dir, yamlFor(dir, sim, redis, "a"), {}, "a");
    ASSERT_TRUE(a.started()) << a.process().err();
    ids = createHeavy(a.port(), 4, "taken-");
    ASSERT_EQ(ids.size(), 4u);
    // A answers "queued" once its journal holds a create, and writes it to Redis in the next
    // round trip: kill it once B can see them there.
    for (size_t i = 1; i < ids.size(); ++i) {
      ASSERT_TRUE(waitFor(
          [&] {
            return httpRequest(b.port(), "GET", "/v1/tasks/" + ids[i], auth()).status == 200;
          },
          30000ms))
          << ids[i] << " " << httpRequest(b.port(), "GET", "/v1/tasks/" + ids[i], auth()).body;
    }
    a.process().signal(SIGKILL);
    ASSERT_TRUE(a.process().wait(5000ms));
  }
  std::atomic<int> not_ok{0};
  for (size_t i = 1; i < ids.size(); ++i) {
    ASSERT_EQ(ids[i].rfind("hp-tk-", 0), 0u) << ids[i];
    EXPECT_EQ(waitTerminal(b.port(), ids[i], 500ms, 90s, not_ok), "success") << ids[i];
  }
  EXPECT_EQ(not_ok.load(), 0);
  const rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 4);
  EXPECT_EQ(jsonInt(st, {"duplicate_creations"}), 0);
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 1);
  // Whatever A had not sent when it died, B sent: taken over, counted.
  EXPECT_GE(takenOver(b.adminPort()), 1);
}

// Redis lost everything (killed, restarted empty) while creates were deferred, one of them during
// the outage: the instance holding them writes them again, and the other answers for them.
TEST(SharedDeferred, RecordsComeBackToARedisThatLostThem) {
  TempDir dir;
  const uint16_t redis_port = unusedPort();
  auto redis = std::make_unique<RedisServer>(dir, redis_port);
  ASSERT_TRUE(redis->up());
  SimProcess sim(dir, oneHeavySlot("3s"));
  ASSERT_TRUE(sim.started());
  ProxyProcess a(dir, yamlFor(dir, sim, *redis, "a"), {}, "a");
  ProxyProcess b(dir, yamlFor(dir, sim, *redis, "b"), {}, "b");
  ASSERT_TRUE(a.started()) << a.process().err();
  ASSERT_TRUE(b.started()) << b.process().err();
  std::vector<std::string> ids = createHeavy(a.port(), 3, "before-");
  ASSERT_EQ(ids.size(), 3u);

  redis->kill(SIGKILL);
  const std::vector<std::string> during = createHeavy(a.port(), 1, "during-");
  ASSERT_EQ(during.size(), 1u);
  ASSERT_EQ(during[0].rfind("hp-tk-", 0), 0u) << during[0];  // deferred from the journal alone
  ids.push_back(during[0]);
  redis = std::make_unique<RedisServer>(dir, redis_port);
  ASSERT_TRUE(redis->up());

  for (size_t i = 1; i < ids.size(); ++i) {
    ASSERT_EQ(ids[i].rfind("hp-tk-", 0), 0u) << ids[i];
    ASSERT_TRUE(waitFor(
        [&] { return httpRequest(b.port(), "GET", "/v1/tasks/" + ids[i], auth()).status == 200; },
        30000ms))
        << ids[i];
  }
  std::atomic<int> not_ok{0};
  for (size_t i = 1; i < ids.size(); ++i) {
    EXPECT_EQ(waitTerminal(b.port(), ids[i], 500ms, 90s, not_ok), "success") << ids[i];
  }
  EXPECT_EQ(not_ok.load(), 0);
  const rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 4);
  EXPECT_EQ(jsonInt(st, {"duplicate_creations"}), 0);
}

}  // namespace
}  // namespace hiapi::test
