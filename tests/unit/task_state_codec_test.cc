#include "hiapi/core/task_state_codec.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace hiapi::core {
namespace {

using std::chrono::seconds;

TrackedTaskInfo task(const std::string& key, const std::string& id, const std::string& tier,
                     const std::string& model, MonotonicTime created) {
  TrackedTaskInfo t;
  t.key = key;
  t.task_id = id;
  t.tier_name = tier;
  t.model = model;
  t.created = created;
  return t;
}

TEST(TaskStateCodec, SerializesEachTaskWithItsAgeAndParsesItBack) {
  const MonotonicTime t0 = MonotonicTime{} + std::chrono::hours(1);
  const std::vector<TrackedTaskInfo> tasks = {
      task("prod", "tk-a", "heavy", "seedance-2-0", t0),
      task("batch", "tk-b", "light", "flux \"2\"\n/pro", t0 + seconds(20)),
      task("prod", "tk-future", "light", "", t0 + seconds(90)),  // created after now: age 0
  };
  const std::string text = serializeTaskState(tasks, t0 + seconds(60), 1'767'225'600'000);
  EXPECT_EQ(text.rfind(R"({"version":1,"saved_at_unix_ms":1767225600000,"tasks":[)", 0), 0u);
  std::string error;
  const auto back = parseTaskState(text, &error);
  ASSERT_TRUE(back) << error;
  ASSERT_EQ(back->size(), 3u);
  EXPECT_EQ((*back)[0].key, "prod");
  EXPECT_EQ((*back)[0].tier, "heavy");
  EXPECT_EQ((*back)[0].age, seconds(60));
  EXPECT_EQ((*back)[1].model, "flux \"2\"\n/pro");
  EXPECT_EQ((*back)[1].age, seconds(40));
  EXPECT_EQ((*back)[2].age, Duration::zero());
  // Downtime since saved_at counts into every age; a wall clock behind saved_at adds nothing.
  EXPECT_EQ((*parseTaskState(text, &error, 1'767'225'600'000 + 5'000))[0].age, seconds(65));
  EXPECT_EQ((*parseTaskState(text, &error, 1'767'225'600'000 - 5'000))[0].age, seconds(60));
}

TEST(TaskStateCodec, CorruptFilesAreRejectedWithAMessage) {
  struct Case {
    const char* text;
    const char* expect;  // substring of the message
  };
  const Case cases[] = {
      {"", "not JSON"},
      {"garbage", "not JSON"},
      {R"({"version":1,"tasks":[)", "not JSON"},
      {"[]", "expected a JSON object"},
      {R"({"tasks":[]})", "version"},
      {R"({"version":"1","tasks":[]})", "version"},
      {R"({"version":2,"tasks":[]})", "unsupported version 2"},
      {R"({"version":1.5,"tasks":[]})", "version"},
      {R"({"version":1})", "tasks"},
      {R"({"version":1,"tasks":{}})", "tasks"},
      {R"({"version":1,"saved_at_unix_ms":"yesterday","tasks":[]})", "saved_at_unix_ms"},
      {R"({"version":1,"tasks":[42]})", "tasks[0]"},
      {R"({"version":1,"tasks":[{"task_id":"t","tier":"heavy","age_ms":1}]})", "tasks[0].key"},
      {R"({"version":1,"tasks":[{"key":"","task_id":"t","tier":"h","age_ms":1}]})", "tasks[0].key"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":7,"tier":"h","age_ms":1}]})",
       "tasks[0].task_id"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","age_ms":1}]})", "tasks[0].tier"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h","model":1,"age_ms":1}]})",
       "tasks[0].model"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h"}]})", "tasks[0].age_ms"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h","age_ms":-1}]})",
       "tasks[0].age_ms"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h","age_ms":"5"}]})",
       "tasks[0].age_ms"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h","age_ms":1e400}]})",
       "not JSON"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h","age_ms":99999999999999999999}]})",
       "tasks[0].age_ms"},
      {R"({"version":1,"tasks":[{"key":"k","task_id":"t","tier":"h","age_ms":1},{"key":"k"}]})",
       "tasks[1].task_id"},
  };
  for (const Case& c : cases) {
    std::string error;
    EXPECT_FALSE(parseTaskState(c.text, &error)) << c.text;
    EXPECT_NE(error.find(c.expect), std::string::npos) << c.text << " -> " << error;
  }
  EXPECT_FALSE(parseTaskState("{", nullptr));  // no error sink: still fine
}

TEST(TaskStateCodec, HugeAgesAreClampedNotOverflowed) {
  std::string error;
  auto tasks = parseTaskState(
      R"({"version":1,"saved_at_unix_ms":-9223372036854775807,"tasks":[
          {"key":"k","task_id":"t","tier":"h","model":"m","age_ms":9223372036854775807}]})",
      &error, 9'223'372'036'854'775'807);
  ASSERT_TRUE(tasks) << error;
  ASSERT_EQ(tasks->size(), 1u);
  EXPECT_EQ((*tasks)[0].age, std::chrono::hours(100000));
  // Extra fields are ignored; model is optional.
  auto extra = parseTaskState(
      R"({"version":1,"future":true,"tasks":[{"key":"k","task_id":"t","tier":"","age_ms":0,"x":[]}]})",
      &error);
  ASSERT_TRUE(extra) << error;
  EXPECT_EQ((*extra)[0].model, "");
}

}  // namespace
}  // namespace hiapi::core
