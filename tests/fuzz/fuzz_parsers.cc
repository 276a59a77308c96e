// Fuzz target for every parser that reads network input or a state file: upstream error
// bodies, task JSON (create reply, detail, list, create body), routes, absolute URIs, bearer
// tokens, Connection tokens, Retry-After, durations/rates/sizes, the task state file, and the
// deferred journal with its detail/list rewriting. The YAML config has its own target
// (fuzz_config.cc): a YAML parse costs a hundred of these, and would set this target's pace.
// Built as a libFuzzer binary with clang (-DHIAPI_FUZZ=ON), and always as two replay tests: seeded
// pseudo-random inputs (tests/fuzz/replay_main.cc) and the checked-in seed corpus with its
// mutations (tests/fuzz/corpus/parsers, tests/fuzz/replay_corpus_main.cc).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "hiapi/core/config.h"
#include "hiapi/core/deferred.h"
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
  // The deferred journal: replayed, torn or refused, never a crash; a book rebuilt from it must
  // snapshot and replay again into the same number of records.
  {
    DeferredBook book;
    const JournalLoad load = loadJournal(in, book);
    if (load.ok) {
      DeferredBook again;
      if (!loadJournal(journalSnapshot(book), again).ok || again.size() != book.size()) {
        __builtin_trap();
      }
    }
    (void)rewriteDetail(in, "hp-tk-fuzz");
    (void)rewriteList(in, {{"tk-hiapi-1", "hp-tk-fuzz"}}, {});
  }
  // Proxy errors render valid JSON whatever the message.
  const std::string body = renderProxyError(ProxyError::BadRequest, "hp-fuzz", in);
  if (!parseUpstreamError(body).code) {
    __builtin_trap();  // our own envelope must always parse back
  }
  return 0;
}
