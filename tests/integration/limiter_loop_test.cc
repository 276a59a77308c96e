// The limiter's shell on its timers (a manual clock: the test moves time, nothing sleeps): what
// its callbacks may do, and the timers themselves.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "hiapi/core/config.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/proxy_server.h"
#include "hiapi/shell/timers.h"

namespace hiapi::shell {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<RequestCtx> poll(uint64_t id, const std::string& task, core::MonotonicTime now) {
  auto ctx = std::make_unique<RequestCtx>();
  ctx->id = id;
  ctx->method = "GET";
  ctx->key_name = "k";
  ctx->client = "svc";
  ctx->route.kind = core::RouteKind::Poll;
  ctx->route.task_id = task;
  ctx->received = now;
  ctx->deadline = ctx->received + 50s;
  return ctx;
}

std::unique_ptr<RequestCtx> create(uint64_t id, core::MonotonicTime now) {
  auto ctx = poll(id, "", now);
  ctx->method = "POST";
  ctx->route.kind = core::RouteKind::Create;
  ctx->upstream.body = R"({"model":"seedance-2-0","input":{"prompt":"p"}})";
  return ctx;
}

// Admission's decisions, handed to a function per test.
struct Decisions final : AdmissionSink {
  std::function<void(const AdmissionDecision&)> on;
  void decided(const AdmissionDecision& d) override { on(d); }
};

// A Limiter on ManualTimers, configured by @p yaml (rate, retry), its decisions to `decisions`.
struct LimiterOnAClock {
  explicit LimiterOnAClock(const std::string& yaml)
      : cfg(std::make_shared<core::Config>(core::parseConfig(
            "upstream: {url: 'http://127.0.0.1:9'}\n" + yaml, "limiter_loop_test.yaml"))) {
    log.setLevel(core::LogLevel::Error);
    limiter.setSink(&decisions);
  }
  std::shared_ptr<core::Config> cfg;
  Logger log;
  core::ManualClock clock;
  ManualTimers timers{clock};
  core::SeededRandom random{7};
  Decisions decisions;
  Limiter limiter{timers, random, cfg, log};
};

TEST(ManualTimers, FireInDueOrderAtTheirDueTimes) {
  core::ManualClock clock;
  ManualTimers timers(clock);
  const auto t0 = clock.now();
  std::vector<std::pair<int, core::Duration>> fired;
  auto a = timers.make([&] { fired.emplace_back(1, clock.now() - t0); });
  auto b = timers.make([&] { fired.emplace_back(2, clock.now() - t0); });
  auto c = timers.make([&] { fired.emplace_back(3, clock.now() - t0); });
  a->armAt(t0 + 300ms);
  b->armAt(t0 + 100ms);
  c->armAt(t0 + 200ms);
  c->cancel();
  EXPECT_EQ(timers.nextDue(), t0 + 100ms);
  EXPECT_EQ(timers.advance(250ms), 1u);
  EXPECT_EQ(clock.now() - t0, 250ms);
  a->armAt(t0 + 260ms);  // moved earlier
  EXPECT_EQ(timers.advance(1s), 1u);
  ASSERT_EQ(fired.size(), 2u);
  EXPECT_EQ(fired[0], std::make_pair(2, core::Duration(100ms)));
  EXPECT_EQ(fired[1], std::make_pair(1, core::Duration(260ms)));
  EXPECT_FALSE(a->armed());
  EXPECT_FALSE(timers.nextDue());
}

TEST(ManualTimers, ATimerMayRearmOrDestroyItselfWhenItFires) {
  core::ManualClock clock;
  ManualTimers timers(clock);
  int ticks = 0;
  std::unique_ptr<Timer> periodic;
  periodic = timers.make([&] {
    ++ticks;
    periodic->armAt(clock.now() + 100ms);
  });
  periodic->armAt(clock.now() + 100ms);
  std::unique_ptr<Timer> once;
  once = timers.make([&] { once.reset(); });
  once->armAt(clock.now() + 50ms);
  timers.advance(1s);
  EXPECT_EQ(ticks, 10);
  EXPECT_EQ(once, nullptr);
}

// A request rejected while the limiter dispatches (its wait ran out) whose reject handler
// submits another request of the same key (as the proxy's own look does for the client polls
// that joined it): that request must still be sent when its token comes, so the key's timer
// must be armed for that token even though the submission happened inside a dispatch.
TEST(LimiterLoop, ARequestSubmittedFromARejectHandlerIsSentWhenItsTokenComes) {
  LimiterOnAClock on("limits: {rate: 2/s, burst: 1}\n");
  core::ManualClock& clock = on.clock;
  ManualTimers& timers = on.timers;
  Limiter& limiter = on.limiter;
  {
    const auto t0 = clock.now();
    auto a = poll(1, "a", t0);
    auto b = poll(2, "b", t0);
    auto c = poll(3, "c", t0);
    b->deadline = b->received + 100ms;  // gives up before the next token (500 ms)
    bool a_sent = false, b_sent = false, b_rejected = false, c_sent = false;
    std::optional<core::MonotonicTime> c_sent_at;
    on.decisions.on = [&](const AdmissionDecision& d) {
      if (d.id == 1) {
        a_sent = !d.refuse;
      } else if (d.id == 2) {
        b_sent = !d.refuse;
        b_rejected = d.refuse.has_value();
        EXPECT_EQ(d.refuse, core::ProxyError::QueueTimeout);
        if (d.refuse) {
          limiter.admit(*c);
        }
      } else if (d.id == 3 && !d.refuse) {
        c_sent = true;
        c_sent_at = clock.now();
      }
    };
    limiter.admit(*a);
    limiter.admit(*b);
    EXPECT_TRUE(a_sent) << "the burst's one token";
    // Time moves in steps well past the next token; only the limiter's own timers can send c.
    for (int i = 0; i < 30 && !c_sent; ++i) {
      timers.advance(100ms);
    }
    EXPECT_FALSE(b_sent);
    EXPECT_TRUE(b_rejected);
    EXPECT_TRUE(c_sent) << "c waited with no timer";
    ASSERT_TRUE(c_sent_at);
    EXPECT_GE(*c_sent_at - t0, 500ms) << "not before the next token";
    EXPECT_LT(*c_sent_at - t0, 502ms) << "sent by the timer armed for its token";
  }
}

// A retry delay is a timer too: the request goes back into the queue when it ends, not before.
TEST(LimiterLoop, ARetriedRequestWaitsOutItsDelayOnTheClock) {
  LimiterOnAClock on("limits: {rate: 100/s, burst: 10}\nretry: {base_delay: 2s, max_delay: 2s}\n");
  core::ManualClock& clock = on.clock;
  ManualTimers& timers = on.timers;
  Limiter& limiter = on.limiter;
  const auto t0 = clock.now();
  auto ctx = poll(1, "a", t0);
  std::vector<core::MonotonicTime> sent;
  on.decisions.on = [&](const AdmissionDecision& d) {
    EXPECT_FALSE(d.refuse);
    sent.push_back(clock.now());
  };
  limiter.admit(*ctx);
  ASSERT_EQ(sent.size(), 1u);
  UpstreamResponse busy;
  busy.status = 503;
  ASSERT_TRUE(limiter.completed(*ctx, busy)) << "a 503 of a poll is retried";
  EXPECT_EQ(sent.size(), 1u) << "not at once";
  const std::optional<core::MonotonicTime> retry_due = timers.nextDue();
  ASSERT_TRUE(retry_due);
  EXPECT_LE(*retry_due - t0, 2s) << "jittered within base_delay";
  for (int i = 0; i < 400 && sent.size() < 2; ++i) {
    timers.advance(10ms);
  }
  ASSERT_EQ(sent.size(), 2u);
  EXPECT_GE(sent[1], *retry_due) << "not before its delay";
  EXPECT_LT(sent[1] - *retry_due, 10ms) << "sent when its delay ended";
}

// A create holds its tier slot through a GatePermit: a request that ends without handing the
// slot on (here: dropped before its answer) frees it, and the next create of the tier goes on
// the limiter's next timer turn. A created task keeps its slot; a failed create frees it.
class LimiterSlots : public ::testing::Test {
protected:
  LimiterSlots() {
    on.decisions.on = [this](const AdmissionDecision& d) {
      EXPECT_FALSE(d.refuse) << d.id;
      sent.push_back(d.id);
    };
    on.limiter.on_task_created = [this](const RequestCtx& ctx, const std::string& task) {
      ASSERT_TRUE(ctx.slot.id()) << "the slot is still the request's when the task is told";
      created.emplace_back(task, *ctx.slot.id());
    };
  }
  // Both creates are admitted or waiting; the first holds the tier's one slot.
  void admitTwo() {
    a = create(1, on.clock.now());
    b = create(2, on.clock.now());
    on.limiter.admit(*a);
    on.limiter.admit(*b);
    advance(20ms);  // creates arriving together are gathered for a moment (queue.create_gather)
    ASSERT_EQ(sent, std::vector<uint64_t>{1});
    ASSERT_TRUE(a->slot.id());
  }
  void advance(core::Duration d) { on.timers.advance(d); }

  LimiterOnAClock on{"limits:\n  rate: 100/s\n  burst: 10\n  tiers:\n"
                     "    - {name: heavy, models: [\"*\"], max_running: 1}\n"
                     "retry: {max_attempts: 1}\n"};
  std::vector<uint64_t> sent;
  std::vector<std::pair<std::string, uint64_t>> created;
  std::unique_ptr<RequestCtx> a, b;
};

TEST_F(LimiterSlots, ACreateDroppedWhileHoldingItsSlotFreesIt) {
  admitTwo();
  advance(1s);
  EXPECT_EQ(sent.size(), 1u) << "the tier is full";
  a.reset();
  EXPECT_EQ(sent.size(), 1u) << "not from inside the drop";
  advance(20ms);
  EXPECT_EQ(sent, (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE(b->slot.id());
}

TEST_F(LimiterSlots, ACreatedTaskKeepsItsSlotAndAFailedCreateFreesIt) {
  admitTwo();
  UpstreamResponse ok;
  ok.status = 200;
  ok.body = R"({"code":200,"data":{"taskId":"tk-1"}})";
  EXPECT_FALSE(on.limiter.completed(*a, ok));
  ASSERT_EQ(created.size(), 1u);
  EXPECT_EQ(created[0].first, "tk-1");
  EXPECT_FALSE(a->slot) << "handed to task tracking";
  a.reset();
  advance(1s);
  EXPECT_EQ(sent.size(), 1u) << "the task still runs: its slot is not freed";
  on.limiter.releaseSlot("k", created[0].second, core::ReleaseReason::TaskFinished);
  advance(20ms);
  EXPECT_EQ(sent, (std::vector<uint64_t>{1, 2}));
  auto c = create(3, on.clock.now());
  on.limiter.admit(*c);
  UpstreamResponse refused;
  refused.status = 400;
  refused.body = R"({"error":{"type":"hiapi_error","code":"invalid_request"}})";
  EXPECT_FALSE(on.limiter.completed(*b, refused));
  EXPECT_FALSE(b->slot) << "freed with the answer";
  advance(20ms);
  EXPECT_EQ(sent, (std::vector<uint64_t>{1, 2, 3}));
}

}  // namespace
}  // namespace hiapi::shell
