#pragma once
// What the two replay drivers share: run every seed through LLVMFuzzerTestOneInput, then
// seeded random mutations of them (insert a character of the target's alphabet or any byte,
// delete a few bytes, splice in a piece of another seed), bounded in count. The seed is fixed so
// a failure in CI replays the same way on a developer's machine.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace hiapi::fuzz {

/// @param alphabet the characters that matter to the target's grammar: inserting them makes
///        mutations that reach past the first syntax check.
/// @return 0, for main() to return.
inline int replaySeedsAndMutations(const std::vector<std::string>& seeds,
                                   const std::string& alphabet, int iterations) {
  auto run = [](const std::string& s) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  for (const auto& s : seeds) {
    run(s);
  }
  std::mt19937_64 rng(0x5eedf00d);
  for (int i = 0; i < iterations; ++i) {
    std::string s = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 8);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = s.empty() ? 0 : rng() % (s.size() + 1);
      switch (rng() % 4) {
      case 0:
        s.insert(pos, 1, alphabet[rng() % alphabet.size()]);
        break;
      case 1:
        s.insert(pos, 1, static_cast<char>(rng() & 0xff));
        break;
      case 2:
        if (!s.empty() && pos < s.size()) {
          s.erase(pos, 1 + rng() % 4);
        }
        break;
      case 3: {
        const std::string& other = seeds[rng() % seeds.size()];
        const size_t from = other.empty() ? 0 : rng() % other.size();
        s.insert(pos, other.substr(from, 1 + rng() % 48));
        break;
      }
      }
    }
    run(s);
  }
  std::printf("replayed %zu seeds and %d mutated inputs\n", seeds.size(), iterations);
  return 0;
}

}  // namespace hiapi::fuzz
