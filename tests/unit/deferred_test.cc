// The deferred book, its journal format and the JSON clients see for deferred tasks.

#include "hiapi/core/deferred.h"

#include <gtest/gtest.h>
#include <rapidjson/document.h>

namespace hiapi::core {
namespace {

using namespace std::chrono_literals;

DeferredRecord record(std::string id, std::string key = "prod", std::string tier = "heavy",
                      int64_t at_ms = 1'800'000'000'000) {
  DeferredRecord r;
  r.id = std::move(id);
  r.key = std::move(key);
  r.tier = std::move(tier);
  r.model = "seedance-2-0";
  r.target = "/v1/tasks";
  r.headers = {{"Content-Type", "application/json"}, {"Idempotency-Key", "hiapi-proxy-x"}};
  // Bytes a JSON string could not hold as they are: the journal must give them back untouched.
  r.body = std::string("{\"model\":\"seedance-2-0\",\"input\":{\"p\":\"\xff\x00\n\"}}", 43);
  r.accepted_ms = at_ms;
  return r;
}

rapidjson::Document parse(const std::string& s) {
  rapidjson::Document d;
  d.Parse(s.c_str(), s.size());
  return d;
}

TEST(DeferredId, HasThePrefixAndAUlidAndNeverLooksLikeHiApis) {
  SeededRandom random(7);
  const std::string a = makeDeferredId(1'800'000'000'000, random);
  const std::string b = makeDeferredId(1'800'000'000'000, random);
  EXPECT_TRUE(isDeferredId(a));
  EXPECT_NE(a, b);
  EXPECT_EQ(a.size(), 6u + 26u);
  EXPECT_EQ(a.rfind("hp-tk-", 0), 0u);
  // Later ids sort after earlier ones (the time part leads).
  EXPECT_LT(a.substr(0, 16), makeDeferredId(1'800'000'100'000, random).substr(0, 16));
  for (const char* bad : {"tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR", "hp-tk-", "hp-tk-short",
                          "hp-tk-01HZTQ8BX2N3GM3YFK4Z9D7VQ!",
                          "hp-tk-01HZTQ8BX2N3GM3YFK4Z9D7VQRR"}) {
    EXPECT_FALSE(isDeferredId(bad)) << bad;
  }
  EXPECT_TRUE(looksDeferred("hp-tk-anything"));
  EXPECT_FALSE(looksDeferred("tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"));
}

TEST(DeferredBook, PositionsCountOnlyTheSameKeyAndTierInAcceptanceOrder) {
  DeferredBook book;
  ASSERT_TRUE(book.add(record("a")));
  ASSERT_TRUE(book.add(record("b", "prod", "light")));
  ASSERT_TRUE(book.add(record("c", "staging")));
  ASSERT_TRUE(book.add(record("d")));
  EXPECT_FALSE(book.add(record("a")));
  EXPECT_EQ(book.position("a"), 1u);
  EXPECT_EQ(book.position("d"), 2u);
  EXPECT_EQ(book.position("b"), 1u);
  EXPECT_EQ(book.position("c"), 1u);
  EXPECT_EQ(book.queued(), 4u);
  EXPECT_EQ(book.queuedFor("prod"), 3u);

  ASSERT_TRUE(book.markSubmitted("a", "tk-hiapi-1", 1'800'000'010'000));
  EXPECT_FALSE(book.position("a"));
  EXPECT_EQ(book.position("d"), 1u);
  EXPECT_EQ(book.byTask("prod", "tk-hiapi-1")->id, "a");
  EXPECT_EQ(book.byTask("staging", "tk-hiapi-1"), nullptr);  // another key's task
  EXPECT_FALSE(book.markSubmitted("a", "tk-hiapi-2", 0));    // once only
  EXPECT_EQ(book.queuedFor("prod"), 2u);

  ASSERT_TRUE(book.markCancelled("d", 1));
  EXPECT_FALSE(book.markCancelled("d", 1));
  const auto all = book.all();  // acceptance order
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0]->id, "a");
  EXPECT_EQ(all[3]->id, "d");
  EXPECT_EQ(book.find("d")->state, DeferredState::Cancelled);
}

TEST(DeferredBook, TimeExpiresTheQueuedAndForgetsTheEnded) {
  DeferredBook book;
  const int64_t t0 = 1'800'000'000'000;
  book.add(record("old", "prod", "heavy", t0));
  book.add(record("new", "prod", "heavy", t0 + 3'600'000));
  book.add(record("done", "prod", "heavy", t0));
  book.markSubmitted("done", "tk-hiapi-9", t0 + 1000);
  const int64_t now = t0 + 6 * 3'600'000;
  auto due = book.due(now, std::chrono::hours(6), std::chrono::hours(24));
  EXPECT_EQ(due.expire, std::vector<std::string>{"old"});
  EXPECT_TRUE(due.forget.empty());
  book.markExpired("old", now);
  EXPECT_EQ(book.find("old")->fail_code, "DEFERRED_EXPIRED");
  due = book.due(t0 + 25 * 3'600'000, std::chrono::hours(6), std::chrono::hours(24));
  EXPECT_EQ(due.forget, std::vector<std::string>{"done"});
  EXPECT_TRUE(book.forget("done"));
  EXPECT_EQ(book.byTask("prod", "tk-hiapi-9"), nullptr);
}

TEST(DeferredJournal, ReplaysEveryStateAndTheBodyByteForByte) {
  DeferredBook book;
  std::string text = journalHeader();
  DeferredRecord a = record("a");
  a.auth = "Bearer sk-passthrough";
  text += journalAccept(a) + journalAccept(record("b")) + journalAccept(record("c")) +
          journalAccept(record("d")) + journalAccept(record("e"));
  text += journalSubmitted("a", "tk-hiapi-1", 5) + journalEnded("a");
  text += journalFailed("b", 400, "INVALID_REQUEST", "'input' is required", 6);
  text += journalCancelled("c", 7) + journalExpired("d", 8);
  const JournalLoad load = loadJournal(text, book);
  ASSERT_TRUE(load.ok) << load.error;
  EXPECT_EQ(load.skipped, 0u);
  EXPECT_FALSE(load.torn_tail);
  EXPECT_EQ(book.find("a")->state, DeferredState::Submitted);
  EXPECT_TRUE(book.find("a")->task_ended);
  EXPECT_EQ(book.find("a")->auth, "Bearer sk-passthrough");
  EXPECT_EQ(book.find("a")->body, record("x").body);
  EXPECT_EQ(book.find("a")->headers, record("x").headers);
  EXPECT_EQ(book.find("b")->state, DeferredState::Failed);
  EXPECT_EQ(book.find("b")->fail_status, 400);
  EXPECT_EQ(book.find("c")->state, DeferredState::Cancelled);
  EXPECT_EQ(book.find("d")->state, DeferredState::Expired);
  EXPECT_EQ(book.find("e")->state, DeferredState::Queued);

  // A snapshot of the book replays to the same book.
  DeferredBook again;
  ASSERT_TRUE(loadJournal(journalSnapshot(book), again).ok);
  for (const char* id : {"a", "b", "c", "d", "e"}) {
    EXPECT_EQ(again.find(id)->state, book.find(id)->state) << id;
    EXPECT_EQ(again.find(id)->task_id, book.find(id)->task_id) << id;
    EXPECT_EQ(again.find(id)->body, book.find(id)->body) << id;
  }
  EXPECT_EQ(again.find("a")->task_ended, true);
  EXPECT_EQ(again.queued(), 1u);

  // Forgotten records stay forgotten.
  DeferredBook forgot;
  ASSERT_TRUE(loadJournal(text + journalForget("a"), forgot).ok);
  EXPECT_EQ(forgot.find("a"), nullptr);
}

// A record's text in the shared store is its journal lines: each state reads back whole, and
// text that is not exactly one record reads back as nothing.
TEST(DeferredJournal, OneRecordsLinesReadBackAsThatRecord) {
  DeferredBook book;
  for (const char* id : {"q", "s", "f", "c", "x"}) {
    book.add(record(id));
  }
  book.markSubmitted("s", "tk-hiapi-9", 11);
  book.markTaskEnded("s");
  book.markFailed("f", 400, "INVALID_REQUEST", "'input' is required", 12);
  book.markCancelled("c", 13);
  book.markExpired("x", 14);
  for (const DeferredRecord* r : book.all()) {
    const std::optional<DeferredRecord> back = parseRecord(journalRecord(*r));
    ASSERT_TRUE(back) << r->id;
    EXPECT_EQ(back->id, r->id);
    EXPECT_EQ(back->state, r->state) << r->id;
    EXPECT_EQ(back->task_id, r->task_id) << r->id;
    EXPECT_EQ(back->task_ended, r->task_ended) << r->id;
    EXPECT_EQ(back->ended_ms, r->ended_ms) << r->id;
    EXPECT_EQ(back->fail_status, r->fail_status) << r->id;
    EXPECT_EQ(back->fail_code, r->fail_code) << r->id;
    EXPECT_EQ(back->body, r->body) << r->id;
    EXPECT_EQ(back->headers, r->headers) << r->id;
    EXPECT_EQ(back->accepted_ms, r->accepted_ms) << r->id;
  }
  const std::string q = journalRecord(*book.find("q"));
  EXPECT_FALSE(parseRecord(""));
  EXPECT_FALSE(parseRecord(q.substr(0, q.size() - 1)));  // torn
  EXPECT_FALSE(parseRecord(q + journalRecord(*book.find("s"))));  // two records
  EXPECT_FALSE(parseRecord("{\"op\":\"accept\"}\n"));
  EXPECT_FALSE(parseRecord(q + "not json\n"));
}

TEST(DeferredJournal, ATornLastLineIsIgnoredAndABadLineSkipped) {
  DeferredBook book;
  const std::string whole = journalHeader() + journalAccept(record("a")) + "not json\n";
  const std::string torn = journalAccept(record("b"));
  const JournalLoad load = loadJournal(whole + torn.substr(0, torn.size() / 2), book);
  ASSERT_TRUE(load.ok);
  EXPECT_TRUE(load.torn_tail);
  EXPECT_EQ(load.skipped, 1u);
  EXPECT_NE(book.find("a"), nullptr);
  EXPECT_EQ(book.find("b"), nullptr);  // never acknowledged: its client never heard "queued"
}

TEST(DeferredJournal, ANewerVersionOrAForeignFileIsRefused) {
  DeferredBook book;
  JournalLoad load = loadJournal("{\"hiapi_proxy_deferred\":2}\n", book);
  EXPECT_FALSE(load.ok);
  EXPECT_NE(load.error.find("newer"), std::string::npos);
  load = loadJournal("{\"tasks\":[]}\n", book);
  EXPECT_FALSE(load.ok);
  load = loadJournal("hello\n", book);
  EXPECT_FALSE(load.ok);
  EXPECT_TRUE(loadJournal("", book).ok);  // a new, empty journal
}

TEST(DeferredJson, TheCreateReplyAndADetailHaveHiApisShape) {
  const auto create = parse(renderDeferredCreate("hp-tk-X"));
  ASSERT_TRUE(create.IsObject());
  EXPECT_EQ(create["code"].GetInt(), 200);
  EXPECT_STREQ(create["data"]["taskId"].GetString(), "hp-tk-X");
  EXPECT_STREQ(create["data"]["status"].GetString(), "queued");

  DeferredRecord r = record("hp-tk-X");
  auto d = parse(renderDeferredDetail(r, 3, 1'800'000'100));
  EXPECT_STREQ(d["data"]["status"].GetString(), "queued");
  EXPECT_EQ(d["data"]["completed"].GetInt(), 0);
  EXPECT_EQ(d["data"]["created"].GetInt64(), 1'800'000'000);
  EXPECT_EQ(d["data"]["deferred"]["position"].GetInt(), 3);
  EXPECT_EQ(d["data"]["deferred"]["estimatedStart"].GetInt64(), 1'800'000'100);
  EXPECT_FALSE(d["data"].HasMember("error"));

  DeferredBook book;
  book.add(r);
  book.markFailed("hp-tk-X", 402, "INSUFFICIENT_BALANCE", "top up", 1'800'000'005'000);
  d = parse(renderDeferredDetail(*book.find("hp-tk-X"), std::nullopt, std::nullopt));
  EXPECT_STREQ(d["data"]["status"].GetString(), "fail");
  EXPECT_STREQ(d["data"]["error"]["code"].GetString(), "INSUFFICIENT_BALANCE");
  EXPECT_EQ(d["data"]["completed"].GetInt64(), 1'800'000'005);
  EXPECT_EQ(d["data"]["deferred"]["upstreamStatus"].GetInt(), 402);
}

TEST(DeferredJson, HiApisDetailIsShownUnderTheClientsIdWithHiApisBeside) {
  const std::string body =
      R"({"code":200,"message":"success",)"
      R"("data":{"taskId":"tk-hiapi-1","status":"success","output":[]}})";
  const auto out = rewriteDetail(body, "hp-tk-X");
  ASSERT_TRUE(out);
  const auto d = parse(*out);
  EXPECT_STREQ(d["data"]["taskId"].GetString(), "hp-tk-X");
  EXPECT_STREQ(d["data"]["upstreamTaskId"].GetString(), "tk-hiapi-1");
  EXPECT_STREQ(d["data"]["status"].GetString(), "success");
  EXPECT_FALSE(rewriteDetail("not json", "hp-tk-X"));
}

TEST(DeferredJson, ListsMapIdsAndShowQueuedTasksFirst) {
  const std::string body =
      R"({"code":200,"data":{"page":1,"tasks":[{"taskId":"tk-hiapi-2","status":"handling"},)"
      R"({"taskId":"tk-hiapi-1","status":"success"}]}})";
  const std::map<std::string, std::string, std::less<>> alias{{"tk-hiapi-1", "hp-tk-A"}};
  const DeferredRecord queued = record("hp-tk-B");
  const auto out = rewriteList(body, alias, {&queued});
  ASSERT_TRUE(out);
  const auto d = parse(*out);
  const auto& tasks = d["data"]["tasks"];
  ASSERT_EQ(tasks.Size(), 3u);
  EXPECT_STREQ(tasks[0]["taskId"].GetString(), "hp-tk-B");
  EXPECT_STREQ(tasks[0]["status"].GetString(), "queued");
  EXPECT_STREQ(tasks[1]["taskId"].GetString(), "tk-hiapi-2");
  EXPECT_FALSE(tasks[1].HasMember("upstreamTaskId"));
  EXPECT_STREQ(tasks[2]["taskId"].GetString(), "hp-tk-A");
  EXPECT_STREQ(tasks[2]["upstreamTaskId"].GetString(), "tk-hiapi-1");
  // data as a bare array works too; a body that is not a list is left alone.
  EXPECT_TRUE(rewriteList(R"({"data":[{"taskId":"tk-hiapi-1"}]})", alias, {}));
  EXPECT_FALSE(rewriteList(R"({"data":{"taskId":"tk-hiapi-1"}})", alias, {}));
}

}  // namespace
}  // namespace hiapi::core
