// The `store:` section: defaults, every key, and errors that name file, line, column and key.

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "hiapi/core/config.h"
#include "config_test_support.h"

namespace hiapi::core {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

using config_testing::fakeEnv;
using config_testing::testEnv;

class StoreConfigTest : public ::testing::Test {
protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("store_config_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    std::ofstream(dir_ / "secret", std::ios::binary) << std::string(32, 'x');
    std::ofstream(dir_ / "short", std::ios::binary) << "abc";
    std::ofstream(dir_ / "pw") << "s3cr3t-from-file\n";
    std::ofstream(dir_ / "empty");
  }
  void TearDown() override { fs::remove_all(dir_); }

  Config parse(const std::string& yaml) {
    return parseConfig(yaml, (dir_ / "test.yaml").string(), &testEnv);
  }
  /// Asserts an error at @p line:@p col on @p path whose message contains @p part.
  void expectError(const std::string& yaml, int line, int col, const std::string& path,
                   const std::string& part) {
    config_testing::expectErrorIn((dir_ / "test.yaml").string(), yaml, line, col, path, part);
  }

  fs::path dir_;
};

TEST_F(StoreConfigTest, LocalIsTheDefault) {
  const Config c = parse("");
  EXPECT_EQ(c.store.kind, StoreKind::Local);
  EXPECT_EQ(c.store.port, 6379);
  EXPECT_EQ(c.store.key_prefix, "hiapi:");
  EXPECT_TRUE(c.store.password.empty());
}

TEST_F(StoreConfigTest, EveryKeyIsRead) {
  fakeEnv()["REDIS_PW"] = "pw-from-env";
  const Config c = parse(
      "store:\n"
      "  kind: redis\n"
      "  url: redis://redis.internal:6380/3\n"
      "  password: ${REDIS_PW}\n"
      "  key_prefix: 'team-a:'\n"
      "  key_secret_file: secret\n"
      "  connect_timeout: 1s\n"
      "  command_timeout: 200ms\n"
      "  heartbeat_interval: 500ms\n"
      "  reserve_window: 100ms\n"
      "  tls: false\n");
  EXPECT_EQ(c.store.kind, StoreKind::Redis);
  EXPECT_EQ(c.store.host, "redis.internal");
  EXPECT_EQ(c.store.port, 6380);
  EXPECT_EQ(c.store.db, 3u);
  EXPECT_EQ(c.store.password.reveal(), "pw-from-env");
  EXPECT_EQ(c.store.key_prefix, "team-a:");
  EXPECT_EQ(c.store.key_secret_file, (dir_ / "secret").string());
  EXPECT_EQ(c.store.connect_timeout, 1s);
  EXPECT_EQ(c.store.command_timeout, 200ms);
  EXPECT_EQ(c.store.heartbeat_interval, 500ms);
  EXPECT_EQ(c.store.reserve_window, 100ms);
}

TEST_F(StoreConfigTest, PasswordFileIsReadWithoutItsNewline) {
  const Config c =
      parse("store:\n  kind: redis\n  key_secret_file: secret\n  password_file: pw\n");
  EXPECT_EQ(c.store.password.reveal(), "s3cr3t-from-file");
  EXPECT_EQ(c.store.password_file, (dir_ / "pw").string());
}

TEST_F(StoreConfigTest, TlsFromTheUrlOrTheKeyWithItsCaFile) {
  EXPECT_FALSE(parse("store:\n  url: redis://r\n").store.tls);
  const Config c = parse("store:\n  url: rediss://r:6380/2\n  ca_file: pw\n");
  EXPECT_TRUE(c.store.tls);
  EXPECT_EQ(c.store.host, "r");
  EXPECT_EQ(c.store.port, 6380);
  EXPECT_EQ(c.store.db, 2u);
  EXPECT_EQ(c.store.ca_file, (dir_ / "pw").string()) << "relative to the config file";
  EXPECT_TRUE(parse("store:\n  url: redis://r\n  tls: true\n").store.tls);
  EXPECT_TRUE(parse("store:\n  tls: true\n  url: rediss://r\n").store.tls);
  EXPECT_TRUE(parse("store:\n  ca_file: ''\n").store.ca_file.empty()) << "the system store";
  expectError("store:\n  url: rediss://r\n  tls: false\n", 3, 8, "store.tls",
              "contradicts the rediss:// url");
  expectError("store:\n  tls: false\n  url: rediss://r\n", 2, 8, "store.tls",
              "contradicts the rediss:// url");
  expectError("store:\n  tls: maybe\n", 2, 8, "store.tls", "expected true or false");
  expectError("store:\n  ca_file: nowhere.pem\n", 2, 12, "store.ca_file", "cannot read CA file");
  expectError("store:\n  ca_file: empty\n", 2, 12, "store.ca_file", "PEM certificates");
}

TEST_F(StoreConfigTest, TheDumpShowsEverySettingButNoPasswordAndParsesBack) {
  fakeEnv()["HIAPI_STORE_DUMP_PW"] = "redis-dump-test-password";
  const Config c = parse("store:\n  kind: redis\n  url: rediss://r:6380/1\n  ca_file: pw\n"
                         "  password: ${HIAPI_STORE_DUMP_PW}\n  key_secret_file: secret\n"
                         "  key_prefix: 'hp:'\n  reserve_window: 100ms\n");
  const std::string dump = c.dump();
  EXPECT_EQ(dump.find("redis-dump-test-password"), std::string::npos) << dump;
  for (const char* line : {"kind: redis", "url: rediss://r:6380/1", "tls: true",
                           "key_prefix: \"hp:\"", "reserve_window: 100ms",
                           "password: ${HIAPI_STORE_DUMP_PW}"}) {
    EXPECT_NE(dump.find(line), std::string::npos) << line << "\n" << dump;
  }
  const Config again = parse(dump);
  EXPECT_EQ(again.store.ca_file, c.store.ca_file);
  EXPECT_EQ(again.store.key_secret_file, c.store.key_secret_file);
  EXPECT_EQ(again.store.password.reveal(), "redis-dump-test-password") << "read from the same place";
  EXPECT_EQ(again.dump(), dump);
  const Config from_file = parse("store:\n  password_file: pw\n");
  EXPECT_NE(from_file.dump().find("password_file: " + (dir_ / "pw").string()), std::string::npos);
  EXPECT_EQ(from_file.dump().find("s3cr3t"), std::string::npos);
}

TEST_F(StoreConfigTest, ErrorsNameFileLineAndKey) {
  expectError("store:\n  kind: memcached\n", 2, 9, "store.kind", "must be local or redis");
  expectError("store:\n  url: http://r\n", 2, 8, "store.url", "expected redis://");
  expectError("store:\n  url: redis://r:0\n", 2, 8, "store.url", "port must be between");
  expectError("store:\n  url: redis://r/99\n", 2, 8, "store.url", "database");
  expectError("store:\n  url: redis://u:p@r\n", 2, 8, "store.url", "must not contain a user");
  expectError("store:\n  command_timeout: soon\n", 2, 20, "store.command_timeout",
              "invalid duration");
  expectError("store:\n  heartbeat_interval: 10ms\n", 2, 23, "store.heartbeat_interval",
              "must be between");
  expectError("store:\n  kind: redis\n", 2, 9, "store.kind", "needs key_secret_file");
  expectError("store:\n  key_secret_file: short\n", 2, 20, "store.key_secret_file",
              "32 random bytes");
  expectError("store:\n  key_prefix: 'a b'\n", 2, 15, "store.key_prefix", "without spaces");
  expectError("store:\n  colour: red\n", 2, 3, "store.colour", "unknown key");
  expectError("store:\n  password_file: empty\n", 2, 18, "store.password_file", "is empty");
  expectError("store:\n  password_file: pw\n  password: ${X}\n", 2, 18, "store.password_file",
              "not both");
}

TEST_F(StoreConfigTest, PasswordErrorsNeverQuoteIt) {
  fakeEnv().erase("MISSING_PW");
  expectError("store:\n  password: hunter2\n", 2, 13, "store.password", "${ENV_VAR}");
  expectError("store:\n  password: ${MISSING_PW}\n", 2, 13, "store.password", "is not set");
  try {
    parse("store:\n  password: hunter2\n");
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace hiapi::core
