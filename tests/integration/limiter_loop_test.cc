// The limiter's shell on a real event loop (timers, no sockets): what its callbacks may do.

#include <chrono>
#include <memory>
#include <optional>
#include <thread>

#include <event2/event.h>
#include <gtest/gtest.h>

#include "hiapi/core/config.h"
#include "hiapi/shell/limiter.h"
#include "hiapi/shell/log.h"
#include "hiapi/shell/proxy_server.h"

namespace hiapi::shell {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<RequestCtx> poll(uint64_t id, const std::string& task) {
  auto ctx = std::make_unique<RequestCtx>();
  ctx->id = id;
  ctx->method = "GET";
  ctx->key_name = "k";
  ctx->client = "svc";
  ctx->route.kind = core::RouteKind::Poll;
  ctx->route.task_id = task;
  ctx->received = core::MonotonicClock::now();
  ctx->deadline = ctx->received + 50s;
  return ctx;
}

// A request rejected while the limiter dispatches (its wait ran out) whose reject handler
// submits another request of the same key (as the proxy's own look does for the client polls
// that joined it): that request must still be sent when its token comes. It used to be
// submitted from inside the dispatch, whose timer was then armed as if the queue were empty:
// the request waited with no timer until something else happened on its key.
TEST(LimiterLoop, ARequestSubmittedFromARejectHandlerIsSentWhenItsTokenComes) {
  event_base* base = event_base_new();
  ASSERT_NE(base, nullptr);
  auto cfg = std::make_shared<core::Config>(core::parseConfig(
      "upstream: {url: 'http://127.0.0.1:9'}\n"
      "limits: {rate: 2/s, burst: 1}\n",
      "limiter_loop_test.yaml"));
  Logger log;
  log.setLevel(core::LogLevel::Error);
  {
    Limiter limiter(base, cfg, log);
    auto a = poll(1, "a");
    auto b = poll(2, "b");
    auto c = poll(3, "c");
    b->deadline = b->received + 100ms;  // gives up before the next token (500 ms)
    bool a_sent = false, b_sent = false, b_rejected = false, c_sent = false;
    std::optional<core::MonotonicTime> c_sent_at;
    limiter.admit(*a, [&] { a_sent = true; }, [](core::ProxyError, int) {});
    limiter.admit(
        *b, [&] { b_sent = true; },
        [&](core::ProxyError e, int) {
          EXPECT_EQ(e, core::ProxyError::QueueTimeout);
          b_rejected = true;
          limiter.admit(*c, [&] {
            c_sent = true;
            c_sent_at = core::MonotonicClock::now();
          }, [](core::ProxyError, int) {});
        });
    EXPECT_TRUE(a_sent) << "the burst's one token";
    const auto start = std::chrono::steady_clock::now();
    while (!c_sent && std::chrono::steady_clock::now() - start < 3s) {
      event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
      std::this_thread::sleep_for(2ms);
    }
    EXPECT_FALSE(b_sent);
    EXPECT_TRUE(b_rejected);
    EXPECT_TRUE(c_sent) << "c waited with no timer";
    if (c_sent_at) {
      EXPECT_GE(*c_sent_at - a->received, 400ms) << "not before the next token";
    }
  }
  event_base_free(base);
}

}  // namespace
}  // namespace hiapi::shell
