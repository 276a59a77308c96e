// Pure rules behind issue 24's fixes: dot segments, save backoff, what a reload refuses, and
// the display name of a passthrough key.

#include <gtest/gtest.h>

#include "hiapi/core/config.h"
#include "hiapi/core/config_reload.h"
#include "hiapi/core/http_rules.h"
#include "hiapi/core/key_name.h"
#include "hiapi/core/save_backoff.h"

namespace hiapi::core {
namespace {

using namespace std::chrono_literals;

TEST(DotSegments, AreFoundPlainEncodedAndBehindEncodedSeparators) {
  for (const char* p : {"/v1/../metrics", "/v1/..", "/v1/./x", "/v1/%2e%2e/x", "/v1/%2E%2e/x",
                        "/v1/.%2E/x", "/v1/%2e/x", "/v1/x%2f..%2fy", "/v1/..\\metrics",
                        "/v1/x%5c..%5cy", "/..", "/v1/tasks/.."}) {
    EXPECT_TRUE(hasDotSegment(p)) << p;
  }
  for (const char* p : {"/v1/tasks", "/v1/tasks/tk.1", "/v1/tasks/tk..1", "/v1/...", "/v1/.x",
                        "/v1/x.", "/v1/%2e%2e%2e", "/v1/tasks/%41", "/v1/", "/"}) {
    EXPECT_FALSE(hasDotSegment(p)) << p;
  }
}

TEST(SaveBackoff, DoublesUpToTheCapAndLogsOncePerRunAndCap) {
  SaveBackoff b(1s, 8s);
  const MonotonicTime t0{};
  EXPECT_TRUE(b.due(t0));
  EXPECT_TRUE(b.failed(t0 + 1ms));  // the first of a run is logged
  EXPECT_EQ(b.delay(), 1s);
  EXPECT_FALSE(b.due(t0 + 500ms));
  EXPECT_TRUE(b.due(t0 + 1001ms));
  EXPECT_FALSE(b.failed(t0 + 1001ms));
  EXPECT_EQ(b.delay(), 2s);
  EXPECT_FALSE(b.failed(t0 + 3001ms));
  EXPECT_EQ(b.delay(), 4s);
  EXPECT_FALSE(b.failed(t0 + 7001ms));
  EXPECT_EQ(b.delay(), 8s);
  EXPECT_TRUE(b.failed(t0 + 15001ms));  // a cap interval after the last line
  EXPECT_EQ(b.delay(), 8s);             // capped
  EXPECT_EQ(b.failures(), 5u);
  EXPECT_EQ(b.succeeded(), 5u);
  EXPECT_TRUE(b.due(t0 + 15002ms));
  EXPECT_EQ(b.succeeded(), 0u);
  EXPECT_TRUE(b.failed(t0 + 16s));  // a new run
  EXPECT_EQ(b.delay(), 1s);
}

TEST(ConfigReload, RefusesEmptyCommentOnlyAndPartialFiles) {
  const std::vector<std::string> running = {"listen", "upstream", "auth", "keys"};
  const std::string whole = "listen:\n  port: 0\nupstream:\n  url: http://127.0.0.1:1\n"
                            "auth:\n  mode: inject\nkeys:\n  - {name: a, key: k}\n";
  EXPECT_EQ(configSections(whole), running);
  EXPECT_NO_THROW(checkReloadable(whole, "c.yaml", running));
  EXPECT_NO_THROW(checkReloadable(whole + "log:\n  level: debug\n", "c.yaml", running));
  for (const std::string& bad : {std::string(), std::string("\n  \n"), std::string("# x\n"),
                                 whole.substr(0, whole.find("auth:"))}) {
    try {
      checkReloadable(bad, "c.yaml", running);
      ADD_FAILURE() << "accepted: " << bad;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.file(), "c.yaml");
      EXPECT_NE(std::string(e.what()).find("not reloaded"), std::string::npos) << e.what();
    }
  }
  // The missing section is named.
  try {
    checkReloadable(whole.substr(0, whole.find("keys:")), "c.yaml", running);
    ADD_FAILURE();
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.keyPath(), "keys");
  }
  // A first file with nothing in it sets no section a reload must keep.
  EXPECT_NO_THROW(checkReloadable("log:\n  level: info\n", "c.yaml", {}));
}

TEST(ListenConfig, DeadlinesCapAndReplyBufferAreReadAndChecked) {
  const Config c = parseConfig("listen:\n  header_timeout: 3s\n  body_timeout: 20s\n"
                               "  max_connections: 100\n  max_reply_buffer: 32MiB\n",
                               "c.yaml");
  EXPECT_EQ(c.listen.header_timeout, 3s);
  EXPECT_EQ(c.listen.body_timeout, 20s);
  EXPECT_EQ(c.listen.max_connections, 100u);
  EXPECT_EQ(c.listen.max_reply_buffer_bytes, 32u << 20);
  const Config d = parseConfig("", "d.yaml");
  EXPECT_EQ(d.listen.header_timeout, 10s);
  EXPECT_EQ(d.listen.body_timeout, 60s);
  EXPECT_EQ(d.listen.max_connections, 4096u);
  for (const char* bad : {"listen:\n  header_timeout: 0s\n", "listen:\n  max_connections: 0\n",
                          "listen:\n  body_timeout: soon\n"}) {
    try {
      (void)parseConfig(bad, "b.yaml");
      ADD_FAILURE() << bad;
    } catch (const ConfigError& e) {
      EXPECT_EQ(e.line(), 2) << e.what();
      EXPECT_EQ(e.keyPath().rfind("listen.", 0), 0u) << e.what();
    }
  }
}

TEST(KeyDisplayName, CutsPassthroughIdentitiesOnly) {
  const std::string id = "pt-" + std::string(64, 'a');
  EXPECT_EQ(keyDisplayName(id), "pt-aaaaaaaaaaaa");
  EXPECT_EQ(keyDisplayName("prod"), "prod");
  EXPECT_EQ(keyDisplayName("pt-1234"), "pt-1234");
  EXPECT_EQ(keyDisplayName(""), "");
}

}  // namespace
}  // namespace hiapi::core
