// Tokenizer throughput (tokenizers/tokenizer.hpp) over the text of Debian's fortunes, one thread, as MB of UTF-8 per
// second, for each kind of tokenizer the test fixtures hold (unpacked by the test build into
// build/tests/tokenizers-<name>): gpt2 (byte-level BPE, GPT-2's real vocabulary from vocab.json + merges.txt),
// bert (WordPiece, uncased, from vocab.txt), llama (SentencePiece-style BPE with byte fallback, tokenizer.json),
// t5 (Unigram, tokenizer.json), t5_nfkc (Unigram after T5's Precompiled NFKC map, WhitespaceSplit and Metaspace: the
// Hub's T5 layout, tokenizers-t5/tokenizer_nfkc_hub.json), gpt2_cl100k (GPT-2's vocabulary behind Llama 3's
// pre-tokenizer: Split by cl100k_base's pattern, then ByteLevel without its own) and bert_nfd (the BERT vocabulary
// behind the normalizers NFD, StripAccents and Lowercase). The peer, the Hugging Face tokenizers library on the same corpus and files:
// bench/peers/hf_tokenizers.js (bench/README.md).
//   ./build/bench/bench_tokenizer [--benchmark_filter=…]   (POLYFORMER_TOKENIZER_FIXTURES overrides build/tests)

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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
  if (name == "gpt2_cl100k") return root + "gpt2";
  if (name == "bert_nfd") return root + "bert";
  return name == "llama" || name == "t5" ? root + name + "/tokenizer.json" : root + name;
}

const char* const names[] = {"gpt2", "bert", "llama", "t5", "t5_nfkc", "gpt2_cl100k", "bert_nfd"};

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// The tokenizer `name` (as bench/peers/hf_tokenizers.js builds it).
pt::Tokenizer tokenizer_of(const std::string& name) {
  if (name == "gpt2_cl100k") {
    nlohmann::json merges = nlohmann::json::array();
    std::istringstream lines(read_text(fixture(name) + "/merges.txt"));
    for (std::string line; std::getline(lines, line);)
      if (!line.empty() && !line.starts_with("#version")) merges.push_back(line);
    const std::string cl100k = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|)"
                               R"(\s*[\r\n]+|\s+(?!\S)|\s+)";
    const nlohmann::json split = {{"type", "Split"}, {"pattern", {{"Regex", cl100k}}}, {"behavior", "Isolated"},
                                  {"invert", false}};
    const nlohmann::json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}};
    const nlohmann::json j = {
        {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}},
        {"pre_tokenizer", {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}}},
        {"decoder", byte_level},
        {"model", {{"type", "BPE"}, {"vocab", nlohmann::json::parse(read_text(fixture(name) + "/vocab.json"))},
                   {"merges", merges}}}};
    return pt::Tokenizer::from_json(j.dump(), name);
  }
  if (name == "bert_nfd") {
    nlohmann::json vocab = nlohmann::json::object();
    std::istringstream lines(read_text(fixture(name) + "/vocab.txt"));
    int id = 0;
    for (std::string line; std::getline(lines, line);) vocab[line] = id++;
    nlohmann::json added = nlohmann::json::array();
    for (const char* s : {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
      added.push_back({{"id", vocab[s]}, {"content", s}, {"special", true}});
    const nlohmann::json j = {
        {"added_tokens", added},
        {"normalizer", {{"type", "Sequence"},
                        {"normalizers", {{{"type", "NFD"}}, {{"type", "StripAccents"}}, {{"type", "Lowercase"}}}}}},
        {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
        {"post_processor", {{"type", "BertProcessing"}, {"sep", {"[SEP]", vocab["[SEP]"]}}, {"cls", {"[CLS]", vocab["[CLS]"]}}}},
        {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
        {"model", {{"type", "WordPiece"}, {"unk_token", "[UNK]"}, {"vocab", vocab}}}};
    return pt::Tokenizer::from_json(j.dump(), name);
  }
  return pt::Tokenizer::open(fixture(name));
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
  const pt::Tokenizer tokenizer = tokenizer_of(name);
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
BENCHMARK(BM_encode)->DenseRange(0, 6)->Unit(benchmark::kMillisecond)->MinTime(2.0);

void BM_decode(benchmark::State& state) {
  const std::string name = names[state.range(0)];
  state.SetLabel(name);
  if (!inputs_present(state, name)) return;
  const pt::Tokenizer tokenizer = tokenizer_of(name);
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
BENCHMARK(BM_decode)->DenseRange(0, 6)->Unit(benchmark::kMillisecond)->MinTime(2.0);

}  // namespace

POLYFORMER_BENCHMARK_MAIN();
