// Tasks, not requests: poll coalescing and caching, slots held by running tasks, reconcile, and
// the state file across a restart — the real daemon against the real simulator.

#include <atomic>
#include <csignal>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "harness/harness.h"
#include "harness/workload.h"

namespace hiapi::test {
namespace {

const std::string kKeyA = "sk-tasks-test-key-aaaaaaaaaaaaaaaa";
const std::string kKeyB = "sk-tasks-test-key-bbbbbbbbbbbbbbbb";

std::string yamlFor(uint16_t sim_port, const std::string& extra) {
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: true\n  port: 0\n"
         "upstream:\n  url: http://127.0.0.1:" + std::to_string(sim_port) + "\n"
         "  response_timeout: 10s\n"
         "log:\n  level: info\n" + extra;
}

// limits: with a heavy tier (seedance-*, @p heavy_max running, plus @p heavy_extra settings)
// and a light one for every other model.
std::string twoTiers(const std::string& rate, int burst, int heavy_max,
                     const std::string& heavy_extra, int light_max = 5) {
  return "limits:\n  rate: " + rate + "\n  burst: " + std::to_string(burst) + "\n  tiers:\n"
         "    - {name: heavy, models: [\"seedance-*\"], max_running: " +
         std::to_string(heavy_max) + ", " + heavy_extra + "}\n"
         "    - {name: light, models: [\"*\"], max_running: " + std::to_string(light_max) + "}\n";
}

std::vector<std::pair<std::string, std::string>> auth(const std::string& key) {
  return {{"Authorization", "Bearer " + key}, {"Content-Type", "application/json"}};
}

std::string createBody(const std::string& model, const std::string& prompt,
                       const std::string& extra = {}) {
  return R"({"model":")" + model + R"(","input":{"prompt":")" + prompt + "\"}" + extra + "}";
}

int64_t detailRequests(const rapidjson::Document& st) {
  return jsonInt(st, {"requests", "by_route", "detail"});
}

TEST(Tasks, FiftyClientsPollingOneTaskShareUpstreamPollsAndSeeEveryStatus) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--keys", kKeyA + "," + kKeyB,
                       "--light-duration", "18s", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(dir, yamlFor(sim.port(), "limits:\n  rate: 20/s\n  burst: 10\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();

  auto created = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKeyA),
                             createBody("gpt-image-2", "one task, fifty pollers"));
  ASSERT_EQ(created.status, 200) << created.body;
  const std::string task = dataField(created.body, "taskId");
  ASSERT_FALSE(task.empty());
  const int64_t detail_before = detailRequests(simStats(sim.port()));

  constexpr int kClients = 50;
  const auto poll_for = 22s;  // the task runs 18 s: every status and the end are in the window
  std::vector<std::vector<std::string>> seen(kClients);
  std::atomic<int> errors{0}, hits{0}, coalesced{0}, misses{0};
  std::vector<std::thread> threads;
  const auto stop = std::chrono::steady_clock::now() + poll_for;
  for (int c = 0; c < kClients; ++c) {
    threads.emplace_back([&, c] {
      while (std::chrono::steady_clock::now() < stop) {
        auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/" + task, auth(kKeyA), {}, 10000ms);
        if (r.status != 200) {
          ++errors;
        } else {
          const std::string st = dataField(r.body, "status");
          if (seen[c].empty() || seen[c].back() != st) {
            seen[c].push_back(st);
          }
          const std::string cache = r.header("X-HiAPI-Proxy-Cache");
          hits += cache == "hit";
          coalesced += cache == "coalesced";
          misses += cache == "miss";
        }
        std::this_thread::sleep_for(100ms);
      }
    });
  }
  // Meanwhile, a client of another key asks for the same task: the upstream says 404, and the
  // proxy must not hand it key A's cached detail.
  auto foreign = httpRequest(proxy.port(), "GET", "/v1/tasks/" + task, auth(kKeyB));
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(foreign.status, 404) << foreign.body;
  EXPECT_EQ(dataField(foreign.body, "status"), "");

  const int64_t upstream_polls = detailRequests(simStats(sim.port())) - detail_before - 1;  // minus key B's
  std::printf("upstream polls of the task: %lld; client answers: %d hit, %d coalesced, %d miss\n",
              static_cast<long long>(upstream_polls), hits.load(), coalesced.load(), misses.load());
  EXPECT_EQ(errors.load(), 0);
  EXPECT_LE(upstream_polls, 22 / 2 + 2) << "at most one upstream poll per min_poll_interval (2 s)";
  EXPECT_GT(hits.load(), 0);
  const std::vector<std::string> expected{"queued", "handling", "archiving", "success"};
  for (int c = 0; c < kClients; ++c) {
    EXPECT_EQ(seen[c], expected) << "client " << c;
  }
}

TEST(Tasks, HeavyCeilingHoldsAndEveryTaskFinishesWithoutAClient429) {
  TempDir dir;
  // The simulator would allow 10 heavy tasks: only the proxy's ceiling of 2 holds them back.
  SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--heavy-max", "10",
                       "--heavy-duration", "1s"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(dir, yamlFor(sim.port(),
                                  twoTiers("20/s", 10, 2, "lease: 5m, min_poll_interval: 500ms")));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  std::vector<ClientSpec> specs;
  for (int i = 0; i < 3; ++i) {
    ClientSpec s;
    s.name = "svc-" + std::to_string(i);
    s.key = kKeyA;
    s.tasks = i == 0 ? 4 : 3;  // 10 heavy creates
    s.heavy_every = 1;
    s.poll_interval = 200ms;
    s.give_up = 60s;
    specs.push_back(s);
  }
  int done = 0, c429 = 0, errors = 0;
  for (const auto& r : runClients(proxy.port(), specs, dir)) {
    done += r.done_success + r.done_fail;
    c429 += r.status_429;
    errors += r.other_errors;
  }
  rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(done, 10);
  EXPECT_EQ(c429, 0);
  EXPECT_EQ(errors, 0);
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 10);
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 2);
  EXPECT_EQ(jsonInt(st, {"rejected_429", "concurrency"}), 0);
}

TEST(Tasks, ARestartWithTwoHeavyTasksRunningAdmitsNoThirdUntilOneEnds) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--heavy-max", "10",
                       "--heavy-duration", "4s", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started());
  const std::string yaml = yamlFor(
      sim.port(), "auth:\n  mode: inject\nkeys:\n  - name: prod\n    key: " + kKeyA + "\n" +
                  twoTiers("20/s", 10, 2, "lease: 5m") +
                  "tasks:\n  state_file: " + dir.file("tasks.json") + "\n"
                  "  reconcile_interval: 1s\n  state_save_interval: 1s\n");
  {
    ProxyProcess first(dir, yaml, {}, "first");
    ASSERT_TRUE(first.started()) << first.process().err();
    for (int i = 0; i < 2; ++i) {
      auto r = httpRequest(first.port(), "POST", "/v1/tasks", {{"Content-Type", "application/json"}},
                           createBody("seedance-2-0", "before restart " + std::to_string(i)));
      ASSERT_EQ(r.status, 200) << r.body;
    }
    first.process().signal(SIGTERM);
    ASSERT_EQ(first.process().wait(10000ms), 0);
  }
  ASSERT_NE(readFile(dir.file("tasks.json")).find("seedance-2-0"), std::string::npos)
      << readFile(dir.file("tasks.json"));

  ProxyProcess second(dir, yaml, {}, "second");
  ASSERT_TRUE(second.started()) << second.process().err();
  auto third = httpRequest(second.port(), "POST", "/v1/tasks", {{"Content-Type", "application/json"}},
                           createBody("seedance-2-0", "after restart"), 30000ms);
  ASSERT_EQ(third.status, 200) << third.body;
  // The third may be deferred (heavy tiers defer by default, and the state file's directory
  // holds the journal): it exists at HiAPI once a slot frees.
  ASSERT_TRUE(waitFor([&] { return jsonInt(simStats(sim.port()), {"tasks_created"}) >= 3; },
                      30000ms));

  rapidjson::Document st = simStats(sim.port());
  ASSERT_TRUE(st.HasMember("tasks") && st["tasks"].IsArray() && st["tasks"].Size() == 3);
  const auto& tasks = st["tasks"];
  int64_t first_end = INT64_MAX;
  for (rapidjson::SizeType i = 0; i < 2; ++i) {
    ASSERT_TRUE(tasks[i]["terminal_ms"].IsInt64()) << "the first two ended before the third began";
    first_end = std::min(first_end, tasks[i]["terminal_ms"].GetInt64());
  }
  EXPECT_GE(tasks[2]["created_ms"].GetInt64(), first_end)
      << "the third heavy task was created only after one of the first two ended";
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 2);
  EXPECT_NE(second.process().err().find("task state restored"), std::string::npos);
}

TEST(Tasks, CallbackTasksNeverPolledFreeTheirSlotThroughReconcile) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--heavy-max", "10",
                       "--heavy-duration", "1s", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(dir, yamlFor(sim.port(),
                                  twoTiers("20/s", 10, 1, "lease: 5m") +
                                  "tasks:\n  reconcile_interval: 1s\n"));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  // Three heavy creates with a callback and no polls: the second and third wait for the first's
  // slot, which only the proxy's own reconcile poll can free.
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto r = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKeyA),
                           createBody("seedance-2-0", "callback " + std::to_string(i),
                                      R"(,"callback":{"url":"http://127.0.0.1:9/hook","when":"final"})"),
                           40000ms);
      ok += r.status == 200;
    });
  }
  for (auto& t : threads) {
    t.join();
  }
  EXPECT_EQ(ok.load(), 3);
  rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 3);
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 1);
  EXPECT_GE(detailRequests(st), 2) << "the proxy polled the tasks itself";
}

// A client that polls every few seconds sees its task's end when it happens: a poll that
// arrives 1.5 s before the likely end (tasks of 3 s, the tier's expected_duration) is held and
// answered at the end with what a look there finds. With hold_near_end off, the same poll is
// answered at once with the running status.
TEST(Tasks, APollJustBeforeItsTasksLikelyEndIsAnsweredAtThatEnd) {
  for (const bool hold : {true, false}) {
    SCOPED_TRACE(hold ? "hold_near_end 2s" : "hold_near_end 0s");
    TempDir dir;
    SimProcess sim(dir, {"--rate", "20/s", "--burst", "20", "--light-duration", "3s",
                         "--duration-jitter", "0"});
    ASSERT_TRUE(sim.started());
    ProxyProcess proxy(
        dir, yamlFor(sim.port(),
                     "limits:\n  rate: 20/s\n  burst: 10\n  tiers:\n"
                     // A little over the real 3 s: the proxy's own look at the likely end
                     // (made while a poll is held) lands after the end, not on it.
                     "    - {name: light, models: [\"*\"], max_running: 5, "
                     "expected_duration: 3100ms}\n"
                     "tasks:\n  hold_near_end: " + std::string(hold ? "2s" : "0s") + "\n"));
    ASSERT_TRUE(proxy.started()) << proxy.process().err();
    auto created = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKeyA),
                               createBody("gpt-image-2", "held poll"));
    ASSERT_EQ(created.status, 200) << created.body;
    const std::string task = dataField(created.body, "taskId");
    std::this_thread::sleep_for(1500ms);
    auto polled = httpRequest(proxy.port(), "GET", "/v1/tasks/" + task, auth(kKeyA), {}, 10000ms);
    ASSERT_EQ(polled.status, 200) << polled.body;
    if (hold) {
      EXPECT_EQ(dataField(polled.body, "status"), "success") << "answered at the task's end";
    } else {
      EXPECT_NE(dataField(polled.body, "status"), "success") << "answered at once, mid-task";
      EXPECT_FALSE(dataField(polled.body, "status").empty()) << polled.body;
    }
    // One upstream detail request served the poll, held or not (held: the proxy's look).
    EXPECT_EQ(detailRequests(simStats(sim.port())), 1);
    // The held poll is counted (hiapi_proxy_polls_held_total, the key's pt- name).
    const double held = metricSum(httpRequest(proxy.adminPort(), "GET", "/metrics").body,
                                  "hiapi_proxy_polls_held_total", "key=\"pt-");
    EXPECT_EQ(held, hold ? 1.0 : 0.0);
  }
}

// Where the request budget binds, a heavy task behind its tier's oldest, before any heavy task
// has been seen to end, is not looked at until the oldest is: by then nothing says when it ends,
// and a look that finds it running costs a waiting create its token. Its client's poll waits
// (it is not answered "running" a poll interval on), then gets the end.
TEST(Tasks, WhileTheBudgetBindsATaskBehindItsTiersUnlearnedOldestWaitsForTheOldestsEnd) {
  TempDir dir;
  SimProcess sim(dir, {"--rate", "4/s", "--burst", "4", "--heavy-max", "2", "--heavy-duration",
                       "2s", "--light-duration", "1s", "--duration-jitter", "0"});
  ASSERT_TRUE(sim.started());
  ProxyProcess proxy(dir, yamlFor(sim.port(),
                                  twoTiers("4/s", 3, 2, "min_poll_interval: 500ms", 100)));
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  std::string ids[2];
  for (int i = 0; i < 2; ++i) {
    auto r = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKeyA),
                         createBody("seedance-2-0", "heavy " + std::to_string(i)));
    ASSERT_EQ(r.status, 200) << r.body;
    ids[i] = dataField(r.body, "taskId");
  }
  // The budget binds: 2 heavy creates wait for the full gate, 24 light ones for tokens (6 s).
  std::atomic<int> created{0};
  std::vector<std::thread> creators;
  for (int i = 0; i < 26; ++i) {
    creators.emplace_back([&, i] {
      auto r = httpRequest(proxy.port(), "POST", "/v1/tasks", auth(kKeyA),
                           createBody(i < 2 ? "seedance-2-0" : "gpt-image-2",
                                      "waiting " + std::to_string(i)),
                           30000ms);
      created += r.status == 200 ? 1 : 0;
    });
  }
  // The oldest's client polls it every 200 ms (a bounded loop) until it has ended.
  std::thread oldest([&] {
    for (int i = 0; i < 100; ++i) {
      auto r = httpRequest(proxy.port(), "GET", "/v1/tasks/" + ids[0], auth(kKeyA), {}, 30000ms);
      if (dataField(r.body, "status") == "success") {
        return;
      }
      std::this_thread::sleep_for(200ms);
    }
  });
  // Once the creates wait (the budget binds), the younger task's client polls.
  ASSERT_TRUE(waitFor(
      [&] {
        return metricSum(httpRequest(proxy.adminPort(), "GET", "/metrics").body,
                         "hiapi_proxy_queue_depth", "tier=\"all\"") >= 20;
      },
      10000ms));
  auto behind = httpRequest(proxy.port(), "GET", "/v1/tasks/" + ids[1], auth(kKeyA), {}, 30000ms);
  oldest.join();
  for (auto& t : creators) {
    t.join();
  }
  ASSERT_EQ(behind.status, 200) << behind.body;
  EXPECT_EQ(dataField(behind.body, "status"), "success")
      << "the younger task's poll was not sent before the oldest's end was seen";
  EXPECT_EQ(created.load(), 26);
  const rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"rejected_429", "rate"}) + jsonInt(st, {"rejected_429", "concurrency"}),
            0);
}

}  // namespace
}  // namespace hiapi::test
