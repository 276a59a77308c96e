// Drives LLVMFuzzerTestOneInput without libFuzzer: the seed corpus, then seeded random
// mutations of it, bounded in count. Runs under ctest in every build (ASan+UBSan in CI).

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "replay_driver.h"

int main(int argc, char** argv) {
  const int iterations = argc > 1 ? std::atoi(argv[1]) : 20000;
  std::vector<std::string> seeds{
      "",
      R"({"code":200,"message":"success","data":{"taskId":"tk-hiapi-01HZTQ8BX2N3GM3YFK4Z9D7VQR"}})",
      R"({"code":200,"data":{"taskId":"tk-1","status":"handling","model":"x@pro"}})",
      R"({"code":200,"data":{"list":[{"taskId":"a","status":"success"},{"taskId":"b"}]}})",
      R"({"code":429,"message":"slow down","data":null,"error_code":"RATE_LIMIT_EXCEEDED"})",
      R"({"error":{"type":"hiapi_error","code":"rate_limit_exceeded","request_id":"req_1"}})",
      R"({"model":"seedance-2-0","input":{"prompt":"p"},"route":"pro"})",
      "/v1/tasks/tk-hiapi-%41%42%zz",
      "http://[::1]:8787/v1/tasks?x=1",
      "https://api.hiapi.ai:443/v1/tasks",
      "Bearer sk-abc",
      "close, X-Foo, keep-alive",
      "Sun, 06 Nov 1994 08:49:37 GMT",
      "Sunday, 06-Nov-94 08:49:37 GMT",
      "Sun Nov  6 08:49:37 1994",
      "561635",
      "1.5",
      "250ms",
      "60/min",
      "10MiB",
      "listen:\n  port: 8787\nlimits:\n  rate: 60/min\n  tiers:\n    - {name: a, models: [\"*\"]}\n",
      "keys:\n  - name: prod\n    key: ${HIAPI_API_KEY}\n",
      "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
      "{\"a\":{\"b\":{\"c\":[1,2,3,{\"d\":null}]}}}",
  };
  return hiapi::fuzz::replaySeedsAndMutations(
      seeds, "{}[]\":,0123456789.-eE\\/ abcxyz@%*?\n\r\t:#&=${}", iterations);
}
