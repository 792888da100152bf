// Tokenizer throughput (tokenizers/tokenizer.hpp) over the text of Debian's fortunes, one thread, as MB of UTF-8 per
// second, for each kind of tokenizer the test fixtures hold (unpacked by the test build into
// build/tests/tokenizers-<name>): gpt2 (byte-level BPE, GPT-2's real vocabulary from vocab.json + merges.txt),
// bert (WordPiece, uncased, from vocab.txt), llama (SentencePiece-style BPE with byte fallback, tokenizer.json),
// t5 (Unigram, tokenizer.json), t5_nfkc (Unigram after T5's Precompiled NFKC map, WhitespaceSplit and Metaspace: the
// Hub's T5 layout, tokenizers-t5/tokenizer_nfkc_hub.json). The peer, the Hugging Face tokenizers library on the same corpus and files:
// bench/peers/hf_tokenizers.js (bench/README.md).
//   ./build/bench/bench_tokenizer [--benchmark_filter=…]   (POLYFORMER_TOKENIZER_FIXTURES overrides build/tests)

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

/// The fixture of tokenizer `name`: a directory for gpt2 and bert (vocab.json + merges.txt, vocab.txt), a
/// tokenizer.json for llama, t5 and t5_nfkc.
std::string fixture(const std::string& name) {
  const char* dir = std::getenv("POLYFORMER_TOKENIZER_FIXTURES");
  const std::string root = std::string(dir != nullptr ? dir : POLYFORMER_TOKENIZER_FIXTURES) + "/tokenizers-";
  if (name == "t5_nfkc") return root + "t5/tokenizer_nfkc_hub.json";
  return name == "llama" || name == "t5" ? root + name + "/tokenizer.json" : root + name;
}

const char* const names[] = {"gpt2", "bert", "llama", "t5", "t5_nfkc"};

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

/// False (the benchmark skipped, saying why) without the fixture or the corpus.
bool inputs_present(benchmark::State& state, const std::string& name) {
  if (!std::filesystem::exists(fixture(name))) {
    state.SkipWithError("no tokenizer fixture: build the tests (they unpack it) or set POLYFORMER_TOKENIZER_FIXTURES");
    return false;
  }
  if (corpus().empty()) {
    state.SkipWithError("no fortunes (apt-get install fortunes)");
    return false;
  }
  return true;
}

void BM_encode(benchmark::State& state) {
  const std::string name = names[state.range(0)];
  state.SetLabel(name);
  if (!inputs_present(state, name)) return;
  const pt::Tokenizer tokenizer = pt::Tokenizer::open(fixture(name));
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
BENCHMARK(BM_encode)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_decode(benchmark::State& state) {
  const std::string name = names[state.range(0)];
  state.SetLabel(name);
  if (!inputs_present(state, name)) return;
  const pt::Tokenizer tokenizer = pt::Tokenizer::open(fixture(name));
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
BENCHMARK(BM_decode)->DenseRange(0, 4)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

POLYFORMER_BENCHMARK_MAIN();
