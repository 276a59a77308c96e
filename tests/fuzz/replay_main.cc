// Drives LLVMFuzzerTestOneInput without libFuzzer: the seed corpus, then seeded random
// mutations of it, bounded in count. Runs under ctest in every build (ASan+UBSan in CI).

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

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
  std::mt19937_64 rng(0x5eedf00d);
  auto run = [](const std::string& s) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  for (const auto& s : seeds) {
    run(s);
  }
  const std::string alphabet = "{}[]\":,0123456789.-eE\\/ abcxyz@%*?\n\r\t:#&=${}";
  for (int i = 0; i < iterations; ++i) {
    std::string s = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 4) {
      case 0:  // insert a structural character
        s.insert(pos, 1, alphabet[rng() % alphabet.size()]);
        break;
      case 1:  // insert a random byte
        s.insert(pos, 1, static_cast<char>(rng() & 0xff));
        break;
      case 2:  // delete
        if (!s.empty() && pos < s.size()) {
          s.erase(pos, 1 + rng() % 4);
        }
        break;
      case 3:  // splice another seed
        s.insert(pos, seeds[rng() % seeds.size()].substr(0, 1 + rng() % 32));
        break;
      }
    }
    run(s);
  }
  std::printf("replayed %zu seeds and %d mutated inputs\n", seeds.size(), iterations);
  return 0;
}
