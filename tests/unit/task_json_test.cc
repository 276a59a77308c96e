#include "hiapi/core/task_json.h"

#include <gtest/gtest.h>

#include <string>

namespace hiapi::core {
namespace {

constexpr const char* kId = "tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR";

// ---- parseCreatedTaskId ---------------------------------------------------------------------

TEST(TaskJson, CreatedTaskIdFromTheDocumentedReply) {
  auto id = parseCreatedTaskId(
      R"({"code":200,"message":"success","data":{"taskId":"tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"}})");
  ASSERT_TRUE(id);
  EXPECT_EQ(*id, kId);
}

TEST(TaskJson, CreatedTaskIdAlternativeSpellings) {
  EXPECT_EQ(parseCreatedTaskId(R"({"code":200,"data":{"task_id":"tk-1"}})"), "tk-1");
  EXPECT_EQ(parseCreatedTaskId(R"({"taskId":"tk-2"})"), "tk-2");
  EXPECT_EQ(parseCreatedTaskId(R"({"task_id":"tk-3","status":"queued"})"), "tk-3");
  // data.taskId wins over a top-level one.
  EXPECT_EQ(parseCreatedTaskId(R"({"taskId":"top","data":{"taskId":"inner"}})"), "inner");
  // A wrong-typed data.taskId falls back to data.task_id.
  EXPECT_EQ(parseCreatedTaskId(R"({"data":{"taskId":7,"task_id":"tk-4"}})"), "tk-4");
}

TEST(TaskJson, CreatedTaskIdAbsentOnErrorsAndJunk) {
  EXPECT_FALSE(parseCreatedTaskId(""));
  EXPECT_FALSE(parseCreatedTaskId("not json"));
  EXPECT_FALSE(parseCreatedTaskId("<html>502 Bad Gateway</html>"));
  EXPECT_FALSE(parseCreatedTaskId("[]"));
  EXPECT_FALSE(parseCreatedTaskId("null"));
  EXPECT_FALSE(parseCreatedTaskId(R"("tk-1")"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200,"data":{"taskId":""}})"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200,"data":{"taskId":12345}})"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200,"data":{"taskId":null}})"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200,"data":["tk-1"]})"));
  EXPECT_FALSE(parseCreatedTaskId(
      R"({"code":429,"message":"slow down","data":null,"error_code":"RATE_LIMIT_EXCEEDED"})"));
  EXPECT_FALSE(
      parseCreatedTaskId(R"({"code":429,"message":"x","data":{"taskId":"tk-should-not-count"}})"));
  EXPECT_FALSE(parseCreatedTaskId(
      R"({"error":{"type":"hiapi_error","code":"rate_limit_exceeded","request_id":"req_1"}})"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200,"data":{"taskId":"tk-1"})"));  // truncated
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200,"data":{"taskId":"tk-1"}} trailing)"));
  EXPECT_FALSE(parseCreatedTaskId(
      std::string(kMaxTaskIdBytes + 1, 'a').insert(0, "{\"taskId\":\"").append("\"}")));
}

TEST(TaskJson, HugeAndOddNumbersDoNotCrash) {
  // A code too large for int64 is no success code; a number too big for a double is not JSON.
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":99999999999999999999999,"data":{"taskId":"a"}})"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":1e400,"data":{"taskId":"a"}})"));
  EXPECT_FALSE(parseCreatedTaskId(R"({"code":200.5,"data":{"taskId":"a"}})"));
  EXPECT_EQ(parseCreatedTaskId(R"({"code":"200","data":{"taskId":"a"}})"), "a");
  EXPECT_EQ(
      parseCreatedTaskId(R"({"code":200,"created":18446744073709551616,"data":{"taskId":"a"}})"),
      "a");
  auto d = parseTaskDetail(R"({"data":{"taskId":"a","status":"success","completed":1e308}})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->status, "success");
}

TEST(TaskJson, DeepNestingIsNotAStackOverflow) {
  const std::string deep = std::string(200000, '[') + std::string(200000, ']');
  EXPECT_FALSE(parseCreatedTaskId(deep));
  EXPECT_FALSE(parseTaskDetail(deep));
  EXPECT_TRUE(parseTaskList(deep).empty());
  EXPECT_FALSE(parseCreateBody(deep));
  const std::string deep_obj =
      "{\"data\":" + std::string(100000, '[') + std::string(100000, ']') + "}";
  EXPECT_FALSE(parseTaskDetail(deep_obj));
}

TEST(TaskJson, EmbeddedNulInBodyIsHandled) {
  const std::string body("{\"taskId\":\"a\\u0000b\"}");
  auto id = parseCreatedTaskId(body);
  ASSERT_TRUE(id);
  EXPECT_EQ(*id, std::string("a\0b", 3));
  // A raw NUL inside the document is not JSON (RapidJSON reads one only as the end).
  EXPECT_FALSE(parseCreatedTaskId(std::string("{\"taskId\":\0\"a\"}", 15)));
}

// ---- parseTaskDetail ------------------------------------------------------------------------

TEST(TaskJson, DetailEnveloped) {
  auto d = parseTaskDetail(R"({"code":200,"message":"success","data":{
      "taskId":"tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR","model":"base@pro","status":"handling",
      "created":1767225600,"completed":0,"output":[],"error":null,"storage":"temp","route":"pro"}})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->task_id, kId);
  EXPECT_EQ(d->status, "handling");
  EXPECT_EQ(d->model, "base@pro");
}

TEST(TaskJson, DetailSuccessWithOutput) {
  auto d = parseTaskDetail(R"({"code":200,"message":"success","data":{"taskId":"tk-9",
      "model":"seedance-2-0","status":"success","created":1767225600,"completed":1767225700,
      "output":[{"url":"https://cdn.example/v.mp4","type":"video","expireAt":1767830500}]}})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->task_id, "tk-9");
  EXPECT_EQ(d->status, "success");
}

TEST(TaskJson, DetailBareCallbackObject) {
  auto d = parseTaskDetail(R"({"taskId":"tk-5","model":"flux-2/pro","status":"fail",
      "error":{"code":"CONTENT_POLICY","message":"no"}})");
  ASSERT_TRUE(d);
  EXPECT_EQ(d->task_id, "tk-5");
  EXPECT_EQ(d->status, "fail");
  EXPECT_EQ(d->model, "flux-2/pro");
  auto snake = parseTaskDetail(R"({"task_id":"tk-6","status":"succeeded"})");
  ASSERT_TRUE(snake);
  EXPECT_EQ(snake->task_id, "tk-6");
}

TEST(TaskJson, DetailWrongTypesReadAsAbsent) {
  auto d = parseTaskDetail(R"({"data":{"taskId":"tk-1","status":3,"model":["m"]}})");
  ASSERT_TRUE(d);  // has an id
  EXPECT_EQ(d->task_id, "tk-1");
  EXPECT_EQ(d->status, "");
  EXPECT_EQ(d->model, "");
  auto s = parseTaskDetail(R"({"data":{"taskId":{"x":1},"status":"queued"}})");
  ASSERT_TRUE(s);  // has a status
  EXPECT_EQ(s->task_id, "");
  EXPECT_EQ(s->status, "queued");
}

TEST(TaskJson, DetailNotParseable) {
  EXPECT_FALSE(parseTaskDetail(""));
  EXPECT_FALSE(parseTaskDetail("{"));
  EXPECT_FALSE(parseTaskDetail("Service Unavailable"));
  EXPECT_FALSE(parseTaskDetail("42"));
  EXPECT_FALSE(parseTaskDetail("[{\"taskId\":\"a\",\"status\":\"success\"}]"));
  EXPECT_FALSE(parseTaskDetail(R"({"code":404,"message":"task not found","data":null,
      "error_code":"TASK_NOT_FOUND"})"));
  EXPECT_FALSE(parseTaskDetail(R"({"code":500,"data":{"taskId":"a","status":"success"}})"));
  EXPECT_FALSE(parseTaskDetail(R"({"code":200,"data":"tk-1"})"));
  EXPECT_FALSE(parseTaskDetail(R"({"code":200,"data":{}})"));
  EXPECT_FALSE(parseTaskDetail(R"({"message":"hello"})"));
  EXPECT_FALSE(parseTaskDetail(R"({"error":{"type":"hiapi_error","code":"x"}})"));
}

// ---- parseTaskList --------------------------------------------------------------------------

TEST(TaskJson, ListShapes) {
  for (
      const char* body : {
          R"({"code":200,"data":[{"taskId":"a","status":"success"},{"taskId":"b","status":"queued"}]})",
          R"({"code":200,"data":{"list":[{"taskId":"a","status":"success"},{"task_id":"b","status":"queued"}],"total":2}})",
          R"({"code":200,"data":{"items":[{"taskId":"a","status":"success"},{"taskId":"b","status":"queued"}]}})",
          R"({"code":200,"data":{"tasks":[{"taskId":"a","status":"success"},{"taskId":"b","status":"queued"}]}})",
          R"({"code":200,"data":{"records":[{"taskId":"a","status":"success"},{"taskId":"b","status":"queued"}],"page":1,"size":20}})",
          R"([{"taskId":"a","status":"success"},{"taskId":"b","status":"queued"}])",
      }) {
    SCOPED_TRACE(body);
    auto list = parseTaskList(body);
    ASSERT_EQ(list.size(), 2u);
    EXPECT_EQ(list[0].task_id, "a");
    EXPECT_EQ(list[0].status, "success");
    EXPECT_EQ(list[1].task_id, "b");
    EXPECT_EQ(list[1].status, "queued");
  }
}

TEST(TaskJson, ListSkipsJunkElements) {
  auto list = parseTaskList(R"({"code":200,"data":{"list":[1,"x",null,[],{"status":"success"},
      {"taskId":5,"status":"fail"},{"taskId":"ok","status":7,"model":"m"},{"taskId":"z"}]}})");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].task_id, "ok");
  EXPECT_EQ(list[0].status, "");
  EXPECT_EQ(list[0].model, "m");
  EXPECT_EQ(list[1].task_id, "z");
}

TEST(TaskJson, ListNotParseable) {
  EXPECT_TRUE(parseTaskList("").empty());
  EXPECT_TRUE(parseTaskList("nope").empty());
  EXPECT_TRUE(parseTaskList(R"({"code":200,"data":null})").empty());
  EXPECT_TRUE(parseTaskList(R"({"code":200,"data":{"list":{"taskId":"a"}}})").empty());
  EXPECT_TRUE(parseTaskList(R"({"code":200,"data":{"taskId":"a","status":"success"}})").empty());
  EXPECT_TRUE(parseTaskList(R"({"code":429,"data":[{"taskId":"a","status":"success"}]})").empty());
  EXPECT_TRUE(parseTaskList(R"({"list":[{"taskId":"a"}]})").empty());
}

// ---- parseCreateBody ------------------------------------------------------------------------

TEST(TaskJson, CreateBody) {
  auto b = parseCreateBody(R"({"model":"gpt-image-2.5-flare/text-to-image","route":"pro",
      "input":{"prompt":"a red fox","size":"1024x1024"},
      "callback":{"url":"https://example.com/cb","when":"final"},"storage":"temp"})");
  ASSERT_TRUE(b);
  EXPECT_EQ(b->model, "gpt-image-2.5-flare/text-to-image");
  EXPECT_EQ(b->route, "pro");
  EXPECT_EQ(b->prompt, "a red fox");

  auto legacy = parseCreateBody(R"({"model":"x@pro","input":{}})");
  ASSERT_TRUE(legacy);
  EXPECT_EQ(legacy->model, "x@pro");
  EXPECT_FALSE(legacy->route);
  EXPECT_FALSE(legacy->prompt);

  auto top = parseCreateBody(R"({"model":"m","prompt":"top","input":{"prompt":"inner"}})");
  ASSERT_TRUE(top);
  EXPECT_EQ(top->prompt, "top");
}

TEST(TaskJson, CreateBodyWrongTypes) {
  EXPECT_FALSE(parseCreateBody(""));
  EXPECT_FALSE(parseCreateBody("model=x"));
  EXPECT_FALSE(parseCreateBody("[]"));
  EXPECT_FALSE(parseCreateBody(R"({"input":{}})"));
  EXPECT_FALSE(parseCreateBody(R"({"model":42})"));
  EXPECT_FALSE(parseCreateBody(R"({"model":null})"));
  auto b = parseCreateBody(R"({"model":"m","route":["pro"],"input":"not an object"})");
  ASSERT_TRUE(b);
  EXPECT_FALSE(b->route);
  EXPECT_FALSE(b->prompt);
  auto c = parseCreateBody(R"({"model":"m","input":{"prompt":{"text":"x"}},"route":null})");
  ASSERT_TRUE(c);
  EXPECT_FALSE(c->route);
  EXPECT_FALSE(c->prompt);
}

TEST(TaskJson, CreateBodyLarge) {
  std::string body = R"({"model":"seedance-2-0","input":{"image":")";
  body.append(5 * 1024 * 1024, 'A');
  body += R"("}})";
  auto b = parseCreateBody(body);
  ASSERT_TRUE(b);
  EXPECT_EQ(b->model, "seedance-2-0");
}

}  // namespace
}  // namespace hiapi::core
