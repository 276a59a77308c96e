// Several proxies, one key, one Redis (store.kind: redis): the simulator is the judge of what
// reached "HiAPI" from all of them together. Each test starts its own redis-server on a free
// loopback port; nothing is mocked.

#include <csignal>
#include <cstdio>
#include <optional>
#include <utility>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <unistd.h>

#include "harness/harness.h"
#include "harness/redis_server.h"
#include "harness/workload.h"
#include "hiapi/shell/key_identity.h"
#include "../../src/shell/redis_internal.h"  // the Lua scripts, run here against a real Redis

namespace hiapi::test {
namespace {

const std::string kKey = "sk-shared-store-test-key-0000000";

// The simulator's limits are the truth: 10 requests/s, burst 10; heavy 2 and light 5 running.
const std::vector<std::string> kSimLimits{"--rate", "10/s", "--burst", "10",
                                          "--heavy-max", "2", "--light-max", "5",
                                          "--heavy-duration", "1s", "--light-duration", "500ms",
                                          "--duration-jitter", "0.2", "--seed", "11"};

std::string proxyYaml(uint16_t sim_port, uint16_t redis_port, const std::string& secret,
                      const std::string& store_extra = {}, const std::string& scheme = "redis") {
  return "listen:\n  address: 127.0.0.1\n  port: 0\n"
         "admin:\n  enabled: true\n  port: 0\n"
         "upstream:\n  url: http://127.0.0.1:" + std::to_string(sim_port) + "\n"
         "  connect_timeout: 2s\n  response_timeout: 10s\n"
         "limits:\n  rate: 10/s\n  burst: 5\n"
         "  tiers:\n"
         "    - {name: heavy, models: [\"seedance-*\", \"*-pro\"], max_running: 2, lease: 2m, "
         "min_poll_interval: 1s}\n"
         "    - {name: light, models: [\"*\"], max_running: 5, lease: 2m, "
         "min_poll_interval: 1s}\n"
         "queue:\n  deadline: 45s\n"
         "store:\n  kind: redis\n  url: " + scheme + "://127.0.0.1:" + std::to_string(redis_port) +
         "/0\n  key_secret_file: " + secret + "\n  heartbeat_interval: 500ms\n" + store_extra +
         "log:\n  level: info\n";
}

rapidjson::Document status(uint16_t admin_port) {
  rapidjson::Document d;
  const HttpResponse r = httpRequest(admin_port, "GET", "/status");
  d.Parse(r.body.c_str());
  return d;
}

bool storeFlag(uint16_t admin_port, const char* flag) {
  rapidjson::Document d = status(admin_port);
  return d.IsObject() && d.HasMember("store") && d["store"].HasMember(flag) &&
         d["store"][flag].IsBool() && d["store"][flag].GetBool();
}

/// @return the name the proxies give kKey in Redis (an HMAC under the shared secret).
std::string redisId(const std::string& secret_file) {
  std::string error;
  const std::optional<shell::KeyIdentity> id = shell::KeyIdentity::fromFile(secret_file, error);
  EXPECT_TRUE(id) << error;
  return id ? id->nameOf(kKey) : std::string();
}

/// Naive fleets: @p per_proxy clients of @p tasks creates each, on every proxy at once.
std::vector<ClientSpec> fleets(const std::vector<uint16_t>& ports, int per_proxy, int tasks) {
  std::vector<ClientSpec> specs;
  for (size_t p = 0; p < ports.size(); ++p) {
    for (int i = 0; i < per_proxy; ++i) {
      ClientSpec s;
      s.name = "svc-" + std::to_string(p) + "-" + std::to_string(i);
      s.key = kKey;
      s.tasks = tasks;
      s.heavy_every = 4;
      s.poll_interval = 200ms;
      s.give_up = 170s;
      s.port = ports[p];
      specs.push_back(s);
    }
  }
  return specs;
}

void expectInsideTheKeysLimits(uint16_t sim_port, const ClientTotals& t, int tasks) {
  rapidjson::Document st = simStats(sim_port);
  ASSERT_TRUE(st.IsObject());
  std::printf("clients: %d creates ok, %d done, %d x 429, %d errors; upstream: %lld requests, "
              "%lld x 429, busiest 1 s %lld, heavy max %lld, light max %lld, duplicates %lld\n",
              t.creates_ok, t.done, t.c429, t.errors,
              static_cast<long long>(jsonInt(st, {"requests", "total"})),
              static_cast<long long>(jsonInt(st, {"rejected_429", "rate"}) +
                                     jsonInt(st, {"rejected_429", "concurrency"})),
              static_cast<long long>(jsonInt(st, {"keys", kKey.c_str(), "max_admitted_1s"})),
              static_cast<long long>(jsonInt(st, {"tiers", "heavy", "max_running_per_key"})),
              static_cast<long long>(jsonInt(st, {"tiers", "light", "max_running_per_key"})),
              static_cast<long long>(jsonInt(st, {"duplicate_creations"})));
  // Known gap, open in issue 23: under a shared budget a client's poll of a task likely still
  // running can wait for a spare token until its queue deadline (about one run in three: one
  // poll answered 429 queue_timeout; its client polls again and sees the end). Every create,
  // every task's end and every other request are still checked exactly.
  EXPECT_LE(t.c429, 1) << "no 429 reaches a client but at most one starved poll";
  EXPECT_EQ(t.errors, 0) << t.first_error;
  EXPECT_EQ(t.creates_ok, tasks);
  EXPECT_EQ(t.done, tasks);
  EXPECT_EQ(jsonInt(st, {"duplicate_creations"}), 0);
  EXPECT_LE(jsonInt(st, {"keys", kKey.c_str(), "max_admitted_1s"}), 10 + 5 + 1)
      << "the three proxies together stay inside one key's rate + burst";
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 2);
  EXPECT_LE(jsonInt(st, {"tiers", "light", "max_running_per_key"}), 5);
}

TEST(SharedStore, ThreeProxiesOneKeyStayInsideTheKeysLimits) {
  TempDir dir;
  RedisServer redis(dir, unusedPort());
  ASSERT_TRUE(redis.up());
  SimProcess sim(dir, kSimLimits);
  ASSERT_TRUE(sim.started()) << sim.process().err();
  const std::string secret = secretFile(dir);
  std::vector<std::unique_ptr<ProxyProcess>> proxies;
  std::vector<uint16_t> ports;
  for (int i = 0; i < 3; ++i) {
    proxies.push_back(std::make_unique<ProxyProcess>(
        dir, proxyYaml(sim.port(), redis.port(), secret), std::vector<std::string>{},
        "proxy" + std::to_string(i)));
    ASSERT_TRUE(proxies.back()->started()) << proxies.back()->process().err();
    ports.push_back(proxies.back()->port());
  }
  for (auto& p : proxies) {
    EXPECT_TRUE(waitFor([&] { return storeFlag(p->adminPort(), "connected"); }, 10000ms));
  }
  const ClientTotals t = sum(runClients(0, fleets(ports, 2, 10), dir));
  expectInsideTheKeysLimits(sim.port(), t, 60);
  if (t.c429 != 0) {
    for (auto& p : proxies) {  // which request waited so long, and for what
      std::istringstream log(p->process().err() + p->process().out());
      for (std::string line; std::getline(log, line);) {
        if (line.find("status=429") != std::string::npos ||
            line.find("level=warn") != std::string::npos) {
          std::printf("%s\n", line.substr(0, 400).c_str());
        }
      }
    }
  }
  rapidjson::Document s = status(proxies[0]->adminPort());
  EXPECT_EQ(jsonInt(s, {"store", "instances"}), 3) << "counted from heartbeats";
  EXPECT_EQ(redis.cli("KEYS '*" + kKey + "*'"), "") << "no API key in a Redis key name";
}

/// Runs the budget script on @p c as instance @p id holding @p held tokens: rate 2/s, burst 2,
/// no margin. @return the tokens granted (-1: no usable reply).
double budgetCall(redisContext* c, const std::string& bucket, const std::string& id, double want,
                  double held) {
  const std::vector<std::string> argv{"EVAL", shell::kBudgetScript, "1", bucket, "2", "2",
                                      std::to_string(want), "0", "0", "60000", "0", "2", id,
                                      std::to_string(held), "60000"};
  std::vector<const char*> args;
  std::vector<size_t> lens;
  for (const std::string& a : argv) {
    args.push_back(a.c_str());
    lens.push_back(a.size());
  }
  auto* r = static_cast<redisReply*>(
      redisCommandArgv(c, static_cast<int>(args.size()), args.data(), lens.data()));
  double granted = -1;
  if (r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 3) {
    granted = static_cast<double>(r->element[0]->integer) / 1e6;
  }
  freeReplyObject(r);
  return granted;
}

// The gateway sees a held token spent only when it is sent: while one instance holds tokens,
// the store's bucket refills only up to the burst less them, as the gateway's bucket (capped at
// the burst, with those tokens still in it) does. The bucket's clock is moved back rather than
// waited for.
TEST(SharedStore, TheBudgetBucketKeepsRoomForTokensHeldElsewhere) {
  TempDir dir;
  RedisServer redis(dir, unusedPort());
  ASSERT_TRUE(redis.up());
  redisContext* c = redisConnect("127.0.0.1", redis.port());
  ASSERT_TRUE(c != nullptr && c->err == 0);
  const std::string bucket = "hiapi:b:test";
  const auto age_bucket = [&] {  // ten seconds of refill, as if it had sat that long
    auto* t = static_cast<redisReply*>(redisCommand(c, "TIME"));
    ASSERT_TRUE(t != nullptr && t->type == REDIS_REPLY_ARRAY);
    const long long now_us = std::stoll(t->element[0]->str) * 1000000 +
                             std::stoll(t->element[1]->str);
    freeReplyObject(t);
    freeReplyObject(redisCommand(c, "HSET %s ts %lld", bucket.c_str(), now_us - 10'000'000));
  };
  EXPECT_DOUBLE_EQ(budgetCall(c, bucket, "a", 2, 0), 2) << "a full bucket";
  age_bucket();
  EXPECT_DOUBLE_EQ(budgetCall(c, bucket, "b", 2, 0), 0)
      << "a holds the whole burst: none of the refill is the gateway's";
  EXPECT_DOUBLE_EQ(budgetCall(c, bucket, "a", 0, 1), 0) << "a spent one of them (a report)";
  age_bucket();
  EXPECT_DOUBLE_EQ(budgetCall(c, bucket, "b", 2, 0), 1) << "room for one";
  EXPECT_DOUBLE_EQ(budgetCall(c, bucket, "a", 0, 0), 0) << "a spent the other";
  freeReplyObject(redisCommand(c, "HSET %s h:b %s", bucket.c_str(), "1.000000 1"));
  age_bucket();
  EXPECT_DOUBLE_EQ(budgetCall(c, bucket, "a", 2, 0), 2)
      << "b's figure expired long ago (a killed instance): it keeps no room";
  redisFree(c);
}

// A redis-server, the simulator and two proxies, a and b, sharing kKey through that Redis.
struct TwoProxies {
  /// @param extra more top-level YAML for both proxies' configuration
  explicit TwoProxies(const TempDir& dir, const std::string& extra = {})
      : redis(dir, unusedPort()), sim(dir, kSimLimits), secret(secretFile(dir)),
        a(dir, proxyYaml(sim.port(), redis.port(), secret) + extra, {}, "a"),
        b(dir, proxyYaml(sim.port(), redis.port(), secret) + extra, {}, "b") {}
  /// @return whether all four run and both proxies are connected to Redis.
  bool up() {
    return redis.up() && sim.started() && a.started() && b.started() &&
           waitFor([&] { return storeFlag(a.adminPort(), "connected") &&
                                storeFlag(b.adminPort(), "connected"); }, 10000ms);
  }
  std::string err() { return sim.process().err() + a.process().err() + b.process().err(); }

  RedisServer redis;
  SimProcess sim;
  std::string secret;
  ProxyProcess a;
  ProxyProcess b;
  const std::vector<std::pair<std::string, std::string>> hdrs{
      {"Authorization", "Bearer " + kKey}, {"Content-Type", "application/json"}};
};

TEST(SharedStore, AKilledInstancesLeasesExpireAndTheOthersUseThem) {
  TempDir dir;
  TwoProxies two(dir);
  ASSERT_TRUE(two.up()) << two.err();
  auto& [redis, sim, secret, a, b, hdrs] = two;
  for (int i = 0; i < 2; ++i) {
    const HttpResponse r = httpRequest(a.port(), "POST", "/v1/tasks", hdrs,
                                       R"({"model":"seedance-1","input":{"prompt":"a)" +
                                           std::to_string(i) + R"("}})");
    ASSERT_EQ(r.status, 200) << r.body;
  }
  const std::string id = redisId(secret);
  const std::string heavy_set = "hiapi:s:" + id + ":heavy";
  EXPECT_EQ(redis.cli("ZCARD " + heavy_set), "2") << "a holds both heavy leases";
  a.process().signal(SIGKILL);  // never releases, never renews
  a.process().wait(5000ms);
  // b's creates wait for a's leases to expire (three heartbeats), then take them.
  for (int i = 0; i < 2; ++i) {
    const HttpResponse r = httpRequest(b.port(), "POST", "/v1/tasks", hdrs,
                                       R"({"model":"seedance-1","input":{"prompt":"b)" +
                                           std::to_string(i) + R"("}})",
                                       20000ms);
    EXPECT_EQ(r.status, 200) << r.body;
  }
  rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 4);
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 2);
  EXPECT_EQ(jsonInt(st, {"rejected_429", "concurrency"}), 0);
  const std::string dead = ":" + std::to_string(a.process().pid()) + ":";
  EXPECT_EQ(redis.cli("ZRANGE " + heavy_set + " 0 -1").find(dead), std::string::npos)
      << "none of the killed instance's leases is left";
}

// A create waiting on one instance for the heavy slots another instance's tasks hold: the holder
// looks for its tasks' ends itself, as it would for a create waiting in its own queue. Its
// client never polls (a callback user) and reconcile polls come only every 10 minutes, so
// nothing else would free the slots: the waiting create would time out.
TEST(SharedStore, ACreateWaitingOnAnotherInstanceHurriesTheSlotsHolder) {
  TempDir dir;
  TwoProxies two(dir, "tasks:\n  reconcile_interval: 10m\n");
  ASSERT_TRUE(two.up()) << two.err();
  // References, not a structured binding: lambdas below capture them.
  RedisServer& redis = two.redis;
  SimProcess& sim = two.sim;
  ProxyProcess& a = two.a;
  ProxyProcess& b = two.b;
  const auto& hdrs = two.hdrs;
  const auto create = [&](uint16_t port, const std::string& prompt) {
    return httpRequest(port, "POST", "/v1/tasks", hdrs,
                       R"({"model":"seedance-1","input":{"prompt":")" + prompt + R"("}})",
                       30000ms);
  };
  ASSERT_EQ(create(a.port(), "a0").status, 200);
  ASSERT_EQ(create(a.port(), "a1").status, 200);
  const std::string waiting_hash = "hiapi:w:" + redisId(two.secret);
  // a's heavy tier, as a's /status shows it: creates waiting there, and on other instances.
  const auto heavy_queued = [&](const char* field) -> int64_t {
    rapidjson::Document d = status(a.adminPort());
    if (!d.IsObject() || !d.HasMember("keys") || !d["keys"].IsArray()) {
      return -1;
    }
    for (const auto& k : d["keys"].GetArray()) {
      for (const auto& t : k["tiers"].GetArray()) {
        if (std::string(t["name"].GetString()) == "heavy") {
          return t[field].GetInt64();
        }
      }
    }
    return -1;
  };
  std::thread probe([&] {
    // b's waiting create is in Redis, and a has read it.
    EXPECT_TRUE(waitFor([&] { return redis.cli("HLEN " + waiting_hash) == "1"; }, 10000ms));
    EXPECT_TRUE(waitFor([&] { return heavy_queued("queued_elsewhere") == 1; }, 10000ms));
    EXPECT_EQ(heavy_queued("queued"), 0);
  });
  const HttpResponse r = create(b.port(), "b0");
  probe.join();
  EXPECT_EQ(r.status, 200) << r.body;
  rapidjson::Document st = simStats(sim.port());
  EXPECT_EQ(jsonInt(st, {"tasks_created"}), 3);
  EXPECT_LE(jsonInt(st, {"tiers", "heavy", "max_running_per_key"}), 2);
  EXPECT_EQ(jsonInt(st, {"rejected_429", "concurrency"}), 0);
  EXPECT_TRUE(waitFor([&] { return redis.cli("HLEN " + waiting_hash) == "0"; }, 10000ms))
      << "nothing waits any more: b's field is gone";
}

TEST(SharedStore, RedisKilledMidRunAndRestartedNoClientErrorsLeasesConsistent) {
  TempDir dir;
  const uint16_t redis_port = unusedPort();
  auto redis = std::make_unique<RedisServer>(dir, redis_port);
  ASSERT_TRUE(redis->up());
  SimProcess sim(dir, kSimLimits);
  ASSERT_TRUE(sim.started()) << sim.process().err();
  const std::string secret = secretFile(dir);
  ProxyProcess a(dir, proxyYaml(sim.port(), redis_port, secret), {}, "a");
  ProxyProcess b(dir, proxyYaml(sim.port(), redis_port, secret), {}, "b");
  ASSERT_TRUE(a.started() && b.started());
  ASSERT_TRUE(waitFor([&] { return storeFlag(a.adminPort(), "connected") &&
                                   storeFlag(b.adminPort(), "connected"); }, 10000ms));
  std::vector<ClientResult> results;
  std::thread clients([&] { results = runClients(0, fleets({a.port(), b.port()}, 2, 10), dir); });
  EXPECT_TRUE(waitFor([&] { return jsonInt(simStats(sim.port()), {"tasks_created"}) >= 10; },
                      60000ms));
  redis->kill(SIGKILL);
  EXPECT_TRUE(waitFor([&] { return storeFlag(a.adminPort(), "degraded") &&
                                   storeFlag(b.adminPort(), "degraded"); }, 10000ms));
  const int64_t created_at_kill = jsonInt(simStats(sim.port()), {"tasks_created"});
  // Work goes on on the local shares while Redis is away.
  EXPECT_TRUE(waitFor([&] {
    return jsonInt(simStats(sim.port()), {"tasks_created"}) >= created_at_kill + 3;
  }, 30000ms));
  redis = std::make_unique<RedisServer>(dir, redis_port);
  ASSERT_TRUE(redis->up());
  EXPECT_TRUE(waitFor([&] { return storeFlag(a.adminPort(), "connected") &&
                                   storeFlag(b.adminPort(), "connected"); }, 40000ms));
  clients.join();
  const ClientTotals t = sum(results);
  rapidjson::Document st = simStats(sim.port());
  const int64_t upstream = jsonInt(st, {"requests", "total"});
  const int64_t up429 = jsonInt(st, {"rejected_429", "rate"}) +
                        jsonInt(st, {"rejected_429", "concurrency"});
  std::printf("redis restart: %d done, %d errors, upstream %lld requests, %lld x 429 (rate %lld), "
              "busiest 1 s %lld, heavy max %lld, light max %lld\n",
              t.done, t.errors, static_cast<long long>(upstream), static_cast<long long>(up429),
              static_cast<long long>(jsonInt(st, {"rejected_429", "rate"})),
              static_cast<long long>(jsonInt(st, {"keys", kKey.c_str(), "max_admitted_1s"})),
              static_cast<long long>(jsonInt(st, {"tiers", "heavy", "max_running_per_key"})),
              static_cast<long long>(jsonInt(st, {"tiers", "light", "max_running_per_key"})));
  // Known gap, open in issue 23: under a shared budget a client's poll of a task likely still
  // running can wait for a spare token until its queue deadline (about one run in three: one
  // poll answered 429 queue_timeout; its client polls again and sees the end). Every create,
  // every task's end and every other request are still checked exactly.
  EXPECT_LE(t.c429, 1);
  EXPECT_EQ(t.errors, 0) << t.first_error;
  EXPECT_EQ(t.done, 40);
  EXPECT_EQ(jsonInt(st, {"duplicate_creations"}), 0);
  // While Redis is away each instance runs its local share of a tier (at least one slot) not
  // knowing the tasks the other one started before: HiAPI may refuse a create for concurrency
  // then, which the proxy absorbs (retried, never shown to a client). Bounded: at most each
  // instance's share of both ceilings, twice (around the kill and the restart).
  EXPECT_EQ(jsonInt(st, {"rejected_429", "rate"}), 0) << "the rate is never exceeded";
  EXPECT_LE(up429, 2 * 2 * (1 + 2)) << "concurrency 429s bounded by the local shares";
  // Every task ended: the leases written again after the restart are all given back.
  const std::string id = redisId(secret);
  EXPECT_TRUE(waitFor([&] {
    return redis->cli("ZCARD hiapi:s:" + id + ":heavy") == "0" &&
           redis->cli("ZCARD hiapi:s:" + id + ":light") == "0";
  }, 10000ms)) << redis->cli("ZRANGE hiapi:s:" + id + ":light 0 -1");
}

TEST(SharedStore, UnreachableOrWrongPasswordStartsDegradedWithAClearLine) {
  TempDir dir;
  SimProcess sim(dir, kSimLimits);
  ASSERT_TRUE(sim.started());
  const std::string secret = secretFile(dir);
  ProxyProcess nowhere(dir, proxyYaml(sim.port(), unusedPort(), secret), {}, "nowhere");
  ASSERT_TRUE(nowhere.started()) << nowhere.process().err();
  EXPECT_TRUE(waitFor([&] { return storeFlag(nowhere.adminPort(), "degraded"); }, 5000ms));
  const std::vector<std::pair<std::string, std::string>> hdrs{
      {"Authorization", "Bearer " + kKey}, {"Content-Type", "application/json"}};
  EXPECT_EQ(httpRequest(nowhere.port(), "POST", "/v1/tasks", hdrs,
                        R"({"model":"flux","input":{"prompt":"n"}})").status, 200)
      << "served on the local share";
  EXPECT_TRUE(waitFor([&] {
    return nowhere.process().err().find("shared store unusable") != std::string::npos ||
           nowhere.process().out().find("shared store unusable") != std::string::npos;
  }, 5000ms));

  RedisServer redis(dir, unusedPort(), "right-password");
  ProxyProcess wrong(dir, proxyYaml(sim.port(), redis.port(), secret,
                                    "  password: ${HIAPI_TEST_REDIS_PW}\n"),
                     {"HIAPI_TEST_REDIS_PW=wrong-password"}, "wrong");
  ASSERT_TRUE(wrong.started()) << wrong.process().err();
  EXPECT_TRUE(waitFor([&] {
    const std::string log = wrong.process().err() + wrong.process().out();
    return log.find("authentication refused") != std::string::npos;
  }, 5000ms)) << wrong.process().err();
  EXPECT_TRUE(storeFlag(wrong.adminPort(), "degraded"));
  const std::string log = wrong.process().err() + wrong.process().out();
  EXPECT_EQ(log.find("wrong-password"), std::string::npos) << "the password is never logged";
  EXPECT_EQ(httpRequest(wrong.port(), "POST", "/v1/tasks", hdrs,
                        R"({"model":"flux","input":{"prompt":"w"}})").status, 200);
}

TEST(SharedStore, AKeyOfTheWrongTypeIsCountedLoggedAndTheLocalShareUsed) {
  TempDir dir;
  RedisServer redis(dir, unusedPort());
  ASSERT_TRUE(redis.up());
  SimProcess sim(dir, kSimLimits);
  ASSERT_TRUE(sim.started());
  const std::string secret = secretFile(dir);
  const std::string id = redisId(secret);
  ASSERT_EQ(redis.cli("SET hiapi:b:" + id + " not-a-bucket"), "OK");
  ProxyProcess p(dir, proxyYaml(sim.port(), redis.port(), secret), {}, "p");
  ASSERT_TRUE(p.started());
  ASSERT_TRUE(waitFor([&] { return storeFlag(p.adminPort(), "connected"); }, 10000ms));
  const std::vector<std::pair<std::string, std::string>> hdrs{
      {"Authorization", "Bearer " + kKey}, {"Content-Type", "application/json"}};
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(httpRequest(p.port(), "POST", "/v1/tasks", hdrs,
                          R"({"model":"flux","input":{"prompt":"t)" + std::to_string(i) +
                              R"("}})").status,
              200);
  }
  const std::string metrics = httpRequest(p.adminPort(), "GET", "/metrics").body;
  EXPECT_NE(metrics.find("hiapi_proxy_store_errors_total{reason=\"wrong_type\"} "),
            std::string::npos);
  EXPECT_EQ(metrics.find("hiapi_proxy_store_errors_total{reason=\"wrong_type\"} 0"),
            std::string::npos) << "counted";
  EXPECT_TRUE(waitFor([&] {
    return (p.process().err() + p.process().out()).find("unusable answer for a key") !=
           std::string::npos;
  }, 5000ms));
  EXPECT_NE(metrics.find("outcome=\"local\""), std::string::npos);
}

// A tier's duration as /status shows it.
struct KnownDuration {
  double estimate_s = 0;
  int samples = 0;
  std::string source;
  double recent_low_s = 0;
  double recent_high_s = 0;
};

/// @return the tier's duration as /status shows it on @p admin_port.
std::optional<KnownDuration> knownDuration(uint16_t admin_port, const std::string& tier) {
  const rapidjson::Document d = status(admin_port);
  if (!d.IsObject() || !d.HasMember("tasks") || !d["tasks"].HasMember("durations")) {
    return std::nullopt;
  }
  for (const auto& t : d["tasks"]["durations"].GetArray()) {
    if (t["tier"].GetString() == tier) {
      return KnownDuration{t["estimate_seconds"].GetDouble(), t["samples"].GetInt(),
                           t["source"].GetString(), t["recent_low_seconds"].GetDouble(),
                           t["recent_high_seconds"].GetDouble()};
    }
  }
  return std::nullopt;
}

// One instance learns the light tier's durations from its own tasks' ends; another, which has
// seen no light task end, takes them through Redis (and shows them in /status) instead of
// learning the first wave again. A tier nobody has learned stays unknown on both.
TEST(SharedStore, LearnedDurationsReachAnInstanceThatHasSeenNoEnd) {
  TempDir dir;
  TwoProxies two(dir);
  ASSERT_TRUE(two.up()) << two.err();
  auto& [redis, sim, secret, a, b, hdrs] = two;
  EXPECT_FALSE(knownDuration(b.adminPort(), "light"));
  for (int i = 0; i < 2; ++i) {
    const HttpResponse r = httpRequest(a.port(), "POST", "/v1/tasks", hdrs,
                                       R"({"model":"flux","input":{"prompt":"d)" +
                                           std::to_string(i) + R"("}})");
    ASSERT_EQ(r.status, 200) << r.body;
    const std::string task = dataField(r.body, "taskId");
    // Its client polls until the end (a bounded loop; light tasks run about 500 ms).
    bool ended = false;
    for (int n = 0; n < 40 && !ended; ++n) {
      const HttpResponse p = httpRequest(a.port(), "GET", "/v1/tasks/" + task, hdrs, {}, 10000ms);
      ended = dataField(p.body, "status") == "success";
      if (!ended) {
        std::this_thread::sleep_for(100ms);
      }
    }
    ASSERT_TRUE(ended) << task;
  }
  const std::optional<KnownDuration> learned = knownDuration(a.adminPort(), "light");
  ASSERT_TRUE(learned);
  EXPECT_EQ(learned->samples, 2) << "both ends seen by a";
  EXPECT_EQ(learned->source, "learned");
  EXPECT_GT(learned->estimate_s, 0.0);
  // Where looks at the next task start, and how widely they spread: around the estimate.
  EXPECT_GT(learned->recent_low_s, 0.0);
  EXPECT_LE(learned->recent_low_s, learned->estimate_s);
  EXPECT_GE(learned->recent_high_s, learned->estimate_s);
  // b may have taken a's first end already; it takes the typical estimate once a has it.
  ASSERT_TRUE(waitFor([&] {
    // (Not b: a lambda may not capture a structured binding in C++17.)
    const std::optional<KnownDuration> d = knownDuration(two.b.adminPort(), "light");
    return d && d->samples == 2;
  }, 10000ms)) << "b never took a's estimate";
  const std::optional<KnownDuration> taken = knownDuration(b.adminPort(), "light");
  ASSERT_TRUE(taken);
  EXPECT_EQ(taken->source, "shared");
  EXPECT_NEAR(taken->estimate_s, knownDuration(a.adminPort(), "light")->estimate_s, 1e-5)
      << "a's estimate, in the store's whole microseconds";
  // b has seen no end of its own: its recent range is the estimate alone.
  EXPECT_EQ(taken->recent_low_s, taken->estimate_s);
  EXPECT_EQ(taken->recent_high_s, taken->estimate_s);
  EXPECT_FALSE(knownDuration(b.adminPort(), "heavy")) << "nobody learned the heavy tier";
  EXPECT_EQ(jsonInt(simStats(sim.port()), {"tasks_created"}), 2) << "b created nothing";
}

// rediss://: the proxies reach Redis over TLS, verified against store.ca_file, and share the
// key as over plain TCP. A certificate from another CA, or plain TCP to the TLS port, leaves an
// instance degraded on its local share with the reason in /status: never a crash, never a
// client error.
TEST(SharedStore, TlsToRedisIsVerifiedAgainstTheConfiguredCa) {
  TempDir dir;
  const TestCa ca = TestCa::create(dir, {"localhost"}, {"127.0.0.1"}, "redis");
  const TestCa other = TestCa::create(dir, {"localhost"}, {"127.0.0.1"}, "other");
  RedisServer redis(dir, unusedPort(), {}, RedisTls{ca.server_cert, ca.server_key, ca.ca_cert});
  ASSERT_TRUE(redis.up());
  SimProcess sim(dir, kSimLimits);
  ASSERT_TRUE(sim.started());
  const std::string secret = secretFile(dir);
  const auto tlsProxy = [&](const std::string& ca_file, const std::string& name) {
    return std::make_unique<ProxyProcess>(
        dir, proxyYaml(sim.port(), redis.port(), secret, "  ca_file: " + ca_file + "\n", "rediss"),
        std::vector<std::string>{}, name);
  };
  auto a = tlsProxy(ca.ca_cert, "a");
  auto b = tlsProxy(ca.ca_cert, "b");
  auto untrusted = tlsProxy(other.ca_cert, "untrusted");
  ProxyProcess plain(dir, proxyYaml(sim.port(), redis.port(), secret), {}, "plain");
  ASSERT_TRUE(a->started() && b->started() && untrusted->started() && plain.started())
      << a->process().err() << untrusted->process().err();
  const uint16_t a_admin = a->adminPort();
  const uint16_t b_admin = b->adminPort();
  ASSERT_TRUE(waitFor([&] { return storeFlag(a_admin, "connected") &&
                                   storeFlag(b_admin, "connected"); }, 10000ms))
      << a->process().err();
  EXPECT_TRUE(waitFor([&] { return jsonInt(status(a_admin), {"store", "instances"}) == 2; },
                      5000ms)) << "both heartbeats, over TLS";
  const std::vector<std::pair<std::string, std::string>> hdrs{
      {"Authorization", "Bearer " + kKey}, {"Content-Type", "application/json"}};
  for (ProxyProcess* p : {a.get(), b.get(), untrusted.get(), &plain}) {
    EXPECT_EQ(httpRequest(p->port(), "POST", "/v1/tasks", hdrs,
                          R"({"model":"flux","input":{"prompt":"t"}})").status, 200)
        << "served, shared or on the local share";
  }
  EXPECT_NE(redis.cli("EXISTS hiapi:b:" + redisId(secret)), "0") << "the shared bucket is there";
  const uint16_t untrusted_admin = untrusted->adminPort();
  EXPECT_TRUE(storeFlag(untrusted_admin, "degraded"));
  const rapidjson::Document st = status(untrusted_admin);
  ASSERT_TRUE(st["store"].HasMember("error"));
  EXPECT_NE(std::string(st["store"]["error"].GetString()).find("certificate verify failed"),
            std::string::npos)
      << st["store"]["error"].GetString();
  EXPECT_TRUE(storeFlag(plain.adminPort(), "degraded")) << "plain TCP to a TLS port";
  EXPECT_TRUE(a->process().running() && untrusted->process().running() && plain.process().running());
}

}  // namespace
}  // namespace hiapi::test
