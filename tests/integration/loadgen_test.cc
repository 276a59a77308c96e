// Smoke test of the load generator (tools/loadgen): tiny runs of hiapi-load against the simulator
// directly and through the daemon, and a tiny --hold. It checks that runs finish and that the
// reports add up, never how fast anything was.

#include <string>

#include <gtest/gtest.h>
#include <rapidjson/document.h>
#include <unistd.h>

#include "harness/harness.h"
#include "harness/workload.h"

namespace hiapi::test {
namespace {

// hiapi-load is built next to the simulator: <build>/tools/loadgen/hiapi-load.
std::string loadBin() {
  std::string sim = HIAPI_SIM_BIN;
  const std::string tail = "hiapi_sim/hiapi-sim";
  return sim.substr(0, sim.size() - tail.size()) + "loadgen/hiapi-load";
}

const std::vector<std::string> kSim{"--rate", "20/s", "--burst", "10", "--heavy-max", "2",
                                    "--light-max", "5", "--heavy-duration", "600ms",
                                    "--light-duration", "300ms", "--seed", "3"};

rapidjson::Document runLoad(const TempDir& dir, const std::string& name,
                            std::vector<std::string> args) {
  const std::string json = dir.file(name + ".json");
  std::vector<std::string> argv{loadBin(), "--json", json, "--max-duration", "15s",
                                "--label", name};
  argv.insert(argv.end(), args.begin(), args.end());
  Process p(argv, dir.file(name));
  const auto rc = p.wait(18000ms);
  rapidjson::Document d;
  EXPECT_TRUE(rc.has_value()) << name << ": hiapi-load did not stop at --max-duration";
  if (!rc) {
    return d;
  }
  EXPECT_EQ(*rc, 0) << name << ": " << p.err() << p.out();
  const std::string text = readFile(json);
  d.Parse(text.c_str());
  EXPECT_FALSE(d.HasParseError()) << name << ": " << text;
  return d;
}

class LoadgenTest : public ::testing::Test {
protected:
  void SetUp() override {
    if (::access(loadBin().c_str(), X_OK) != 0) {
      GTEST_SKIP() << "hiapi-load not built: " << loadBin();
    }
  }
};

TEST_F(LoadgenTest, TasksStraightToTheSimulatorAllEndAndTheUpstreamCountsMatch) {
  TempDir dir;
  SimProcess sim(dir, kSim);
  ASSERT_TRUE(sim.started()) << sim.process().err();
  const std::string url = "http://127.0.0.1:" + std::to_string(sim.port());
  rapidjson::Document d = runLoad(dir, "direct", {"--target", url, "--sim", url, "--sim-reset",
                                                  "--preset", "naive", "--clients", "2",
                                                  "--tasks", "3", "--heavy-share", "0.34"});
  ASSERT_TRUE(d.IsObject());
  EXPECT_TRUE(d["complete"].GetBool());
  EXPECT_EQ(jsonInt(d, {"tasks", "total"}), 6);
  EXPECT_EQ(jsonInt(d, {"tasks", "success"}) + jsonInt(d, {"tasks", "fail"}), 6);
  EXPECT_EQ(jsonInt(d, {"sim", "tasks_created"}), 6);
  EXPECT_EQ(jsonInt(d, {"sim", "duplicate_creations"}), 0) << "every prompt is unique";
  // Straight to the simulator, every client request is an upstream request.
  EXPECT_EQ(jsonInt(d, {"sim", "requests"}), jsonInt(d, {"requests", "total"}));
  ASSERT_TRUE(d["classes"].HasMember("svc-0"));
  ASSERT_TRUE(d["classes"].HasMember("svc-1"));
  EXPECT_GE(jsonInt(d["classes"]["svc-0"], {"latency_ms", "create", "n"}), 3);
}

TEST_F(LoadgenTest, TasksThroughTheDaemonAndAHoldRunAreAllAnswered) {
  TempDir dir;
  SimProcess sim(dir, kSim);
  ASSERT_TRUE(sim.started()) << sim.process().err();
  ProxyProcess proxy(dir,
                     "listen:\n  address: 127.0.0.1\n  port: 0\nadmin:\n  enabled: false\n"
                     "upstream:\n  url: http://127.0.0.1:" + std::to_string(sim.port()) +
                         "\nlimits:\n  rate: 20/s\n  burst: 5\nlog:\n  level: warn\n");
  ASSERT_TRUE(proxy.started()) << proxy.process().err();
  const std::string purl = "http://127.0.0.1:" + std::to_string(proxy.port());
  const std::string surl = "http://127.0.0.1:" + std::to_string(sim.port());
  rapidjson::Document d =
      runLoad(dir, "proxied", {"--target", purl, "--sim", surl, "--sim-reset", "--preset", "sdk",
                               "--clients", "2", "--tasks", "2", "--class-names", "a,b"});
  ASSERT_TRUE(d.IsObject());
  EXPECT_EQ(jsonInt(d, {"tasks", "success"}) + jsonInt(d, {"tasks", "fail"}), 4);
  EXPECT_EQ(jsonInt(d, {"sim", "tasks_created"}), 4);
  EXPECT_EQ(jsonInt(d, {"requests", "no_answer"}), 0);
  EXPECT_TRUE(d["classes"].HasMember("a"));
  EXPECT_TRUE(d["classes"].HasMember("b"));

  rapidjson::Document h = runLoad(dir, "hold", {"--target", purl, "--hold", "20"});
  ASSERT_TRUE(h.IsObject());
  EXPECT_EQ(jsonInt(h, {"answered"}), 20);
  EXPECT_TRUE(h["lossless"].GetBool());
}

}  // namespace
}  // namespace hiapi::test
