// Tokenizer throughput: GPT-2's byte-level BPE (tokenizers/tokenizer.hpp, GPT-2's real vocabulary from
// tests/tokenizers/gpt2.tar.xz, unpacked by the test build) over every record of Debian's fortunes, one thread,
// as MB of UTF-8 per second. The peer, the Hugging Face tokenizers library on the same corpus and vocabulary:
// bench/peers/hf_tokenizers.js (bench/README.md).
//   ./build/bench/bench_tokenizer [--benchmark_filter=…]   (POLYFORMER_GPT2_TOKENIZER_DIR overrides the vocabulary)

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "main.hpp"
#include "polyformer/tokenizers/tokenizer.hpp"

namespace {

namespace pt = polyformer::tokenizers;

std::string vocabulary_dir() {
  const char* dir = std::getenv("POLYFORMER_GPT2_TOKENIZER_DIR");
  return dir != nullptr ? dir : POLYFORMER_GPT2_TOKENIZER_DIR;
}

/// The fortune files' text without their "%" separator lines, in name order, cut into pieces of 20 lines (the
/// size of a short document): what bench/peers/hf_tokenizers.js reads.
const std::vector<std::string>& corpus() {
  static const std::vector<std::string> pieces = [] {
    namespace fs = std::filesystem;
    std::vector<std::string> files, lines, out;
    for (const auto& e : fs::directory_iterator("/usr/share/games/fortunes")) {
      const std::string name = e.path().filename().string();
      if (!name.ends_with(".dat") && !name.ends_with(".u8")) files.push_back(e.path().string());
    }
    std::sort(files.begin(), files.end());
    for (const std::string& f : files) {
      std::ifstream in(f);
      for (std::string line; std::getline(in, line);)
        if (line != "%") lines.push_back(line);
    }
    for (std::size_t i = 0; i < lines.size(); i += 20) {
      std::string piece;
      for (std::size_t k = i; k < std::min(lines.size(), i + 20); ++k) {
        if (k > i) piece += '\n';
        piece += lines[k];
      }
      out.push_back(piece);
    }
    return out;
  }();
  return pieces;
}

/// False (the benchmark skipped, saying why) without the vocabulary or the corpus.
bool inputs_present(benchmark::State& state) {
  if (!std::filesystem::exists(vocabulary_dir() + "/vocab.json")) {
    state.SkipWithError("no GPT-2 vocabulary: build the tests (they unpack it) or set POLYFORMER_GPT2_TOKENIZER_DIR");
    return false;
  }
  if (corpus().empty()) {
    state.SkipWithError("no fortunes (apt-get install fortunes)");
    return false;
  }
  return true;
}

void BM_gpt2_encode(benchmark::State& state) {
  if (!inputs_present(state)) return;
  const pt::Tokenizer tokenizer = pt::Tokenizer::open(vocabulary_dir());
  const std::vector<std::string>& pieces = corpus();
  std::int64_t bytes = 0, ids = 0;
  for (auto _ : state)
    for (const std::string& piece : pieces) {
      const std::vector<int> out = tokenizer.encode(piece);
      benchmark::DoNotOptimize(out.data());
      bytes += static_cast<std::int64_t>(piece.size());
      ids += static_cast<std::int64_t>(out.size());
    }
  state.SetBytesProcessed(bytes);
  state.counters["ids"] = benchmark::Counter(double(ids), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_gpt2_encode)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_gpt2_decode(benchmark::State& state) {
  if (!inputs_present(state)) return;
  const pt::Tokenizer tokenizer = pt::Tokenizer::open(vocabulary_dir());
  std::vector<std::vector<int>> encoded;
  for (const std::string& piece : corpus()) encoded.push_back(tokenizer.encode(piece));
  std::int64_t bytes = 0;
  for (auto _ : state)
    for (const std::vector<int>& ids : encoded) {
      const std::string text = tokenizer.decode(ids);
      benchmark::DoNotOptimize(text.data());
      bytes += static_cast<std::int64_t>(text.size());
    }
  state.SetBytesProcessed(bytes);
}
BENCHMARK(BM_gpt2_decode)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

POLYFORMER_BENCHMARK_MAIN();
