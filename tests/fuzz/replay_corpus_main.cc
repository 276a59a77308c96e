// Drives LLVMFuzzerTestOneInput without libFuzzer over a corpus directory: every file in it, then
// seeded random mutations of them, bounded in count. Usage: replay <corpus-dir> [iterations].

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <corpus-dir> [iterations]\n", argv[0]);
    return 2;
  }
  const int iterations = argc > 2 ? std::atoi(argv[2]) : 20000;
  std::vector<std::string> seeds;
  for (const auto& e : std::filesystem::directory_iterator(argv[1])) {
    std::ifstream f(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    seeds.push_back(ss.str());
  }
  if (seeds.empty()) {
    std::fprintf(stderr, "no seeds in %s\n", argv[1]);
    return 2;
  }
  auto run = [](const std::string& s) {
    LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  for (const auto& s : seeds) {
    run(s);
  }
  std::mt19937_64 rng(0x5eedf00d);
  const std::string alphabet = " :\r\n\t;=,/?%.-0123456789abcdefHTP";
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
