// Fuzz target for every parser that reads network input or configuration: upstream error
// bodies, task JSON (create reply, detail, list, create body), routes, absolute URIs, bearer
// tokens, Connection tokens, Retry-After, durations/rates/sizes, and the YAML config loader.
// Built as a libFuzzer binary with clang (-DHIAPI_FUZZ=ON), and always as a replay test that
// feeds it seeded pseudo-random and mutated inputs (tests/fuzz/replay_main.cc).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "hiapi/core/config.h"
#include "hiapi/core/config_reload.h"
#include "hiapi/core/http_rules.h"
#include "hiapi/core/proxy_error.h"
#include "hiapi/core/retry_policy.h"
#include "hiapi/core/task_json.h"
#include "hiapi/core/task_tracker.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace hiapi::core;
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const std::string owned(in);

  (void)parseUpstreamError(in);
  (void)parseCreatedTaskId(in);
  (void)parseTaskDetail(in);
  (void)parseTaskList(in);
  (void)parseCreateBody(in);

  (void)matchRoute("GET", in);
  (void)matchRoute("POST", in);
  (void)parseAbsoluteUri(in);
  (void)bearerToken(in);
  (void)hasDotSegment(in);
  (void)isHopByHop(in, std::string_view("x-a, close"));
  (void)isHopByHop("x-a", std::string_view(in));
  (void)parseRetryAfter(in, std::chrono::system_clock::time_point{} + std::chrono::hours(500000));

  (void)parseDuration(owned);
  (void)parseRate(owned);
  (void)parseSize(owned);

  // The task state file: parsed or refused with a reason, never a crash.
  {
    std::string error;
    (void)TaskTracker::parseState(owned, &error, 1'700'000'000'000);
  }
  // What a reload refuses: anything is judged, nothing throws but ConfigError.
  (void)configSections(owned);
  try {
    checkReloadable(owned, "fuzz.yaml", {"listen", "upstream"});
  } catch (const ConfigError&) {
  }

  // The config loader must turn anything into a Config or a ConfigError, never crash.
  try {
    (void)parseConfig(owned, "fuzz.yaml", [](const std::string&) -> std::optional<std::string> {
      return std::string("sk-fuzz");
    });
  } catch (const ConfigError&) {
  }

  // Proxy errors render valid JSON whatever the message.
  const std::string body = renderProxyError(ProxyError::BadRequest, "hp-fuzz", in);
  if (!parseUpstreamError(body).code) {
    __builtin_trap();  // our own envelope must always parse back
  }
  return 0;
}
