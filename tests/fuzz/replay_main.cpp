// Replays every fuzz target's seed corpus and the crashes fuzzing found (regressions/<reader>/) through the same
// targets, built with the suite's compiler and flags, as one ctest entry: a reader that crashes, trips a sanitizer
// or throws anything but its documented errors on any of them fails the suite. Each target's entry point is renamed
// fuzz_<reader> at compile time (tests/CMakeLists.txt).
//   polyformer_fuzz_replay TESTS_FUZZ_DIR

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#define POLYFORMER_FUZZ_READER(name) extern "C" int fuzz_##name(const std::uint8_t*, std::size_t);
#include "readers.inc"
#undef POLYFORMER_FUZZ_READER

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  if (argc != 2) {
    std::fprintf(stderr, "usage: polyformer_fuzz_replay TESTS_FUZZ_DIR\n");
    return 2;
  }
  struct Reader {
    const char* name;
    int (*run)(const std::uint8_t*, std::size_t);
  };
  const std::vector<Reader> readers = {
#define POLYFORMER_FUZZ_READER(name) {#name, fuzz_##name},
#include "readers.inc"
#undef POLYFORMER_FUZZ_READER
  };
  std::size_t total = 0;
  for (const Reader& r : readers) {
    std::size_t count = 0;
    for (const char* kind : {"corpus", "regressions"}) {
      const fs::path dir = fs::path(argv[1]) / kind / r.name;
      if (!fs::is_directory(dir)) continue;
      for (const auto& entry : fs::directory_iterator(dir)) {
        std::ifstream in(entry.path(), std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        r.run(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
        ++count;
      }
    }
    if (count == 0) {
      std::fprintf(stderr, "fuzz_%s: no seed in %s/corpus/%s\n", r.name, argv[1], r.name);
      return 1;
    }
    std::printf("fuzz_%s: %zu inputs\n", r.name, count);
    total += count;
  }
  std::printf("%zu inputs replayed, none failed\n", total);
  return 0;
}
