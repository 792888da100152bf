// BERT-base as a whole model (models/bert.hpp from a Hugging Face directory): the forward of one sequence of n
// tokens — embeddings, 12 post-norm layers, the pooler — as BertModel runs it, n = 128 and 512, 1 and 2 threads.
// The directory is bench/peers/ort_bert.py's bert-base/ (random weights, 440 MB, made outside the repository), named
// by POLYFORMER_BERT_BASE_DIR; without it the benchmarks are skipped. The peer, ONNX Runtime on the same weights
// exported to ONNX by the same script: bench/peers/ort_bert.js (bench/README.md).
//   POLYFORMER_BERT_BASE_DIR=/scratch/bert/bert-base ./build/bench/bench_bert

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "main.hpp"
#include "polyformer/models/hf_bert.hpp"

namespace {

namespace pf = polyformer;

/// The model, loaded once; nullptr (the benchmark skipped, saying why) without the directory.
const pf::Bert<>* model(benchmark::State& state) {
  static const std::optional<pf::Bert<>> loaded = []() -> std::optional<pf::Bert<>> {
    const char* dir = std::getenv("POLYFORMER_BERT_BASE_DIR");
    if (dir == nullptr || !std::filesystem::exists(std::string(dir) + "/config.json")) return std::nullopt;
    return pf::load_hf_bert(dir);
  }();
  if (!loaded) state.SkipWithError("set POLYFORMER_BERT_BASE_DIR to bench/peers/ort_bert.py's bert-base directory");
  return loaded ? &*loaded : nullptr;
}

void BM_bert_base(benchmark::State& state) {
  const pf::Bert<>* bert = model(state);
  if (bert == nullptr) return;
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  std::mt19937 rng(static_cast<unsigned>(n));
  std::vector<int> ids(static_cast<std::size_t>(n)), mask(static_cast<std::size_t>(n), 1);
  for (int& id : ids) id = static_cast<int>(rng() % static_cast<unsigned>(bert->config().vocab_size));
  pf::BertInputs in;
  in.input_ids = ids;
  in.attention_mask = mask;
  pf::Matrix hidden(n, bert->config().dim), pooled(1, bert->config().dim);
  pf::Bert<>::Workspace ws;
  for (auto _ : state) {
    bert->forward(in, pf::view(hidden), ws, ctx);
    bert->pool(pf::cview(hidden), 1, pf::view(pooled), ws, ctx);
    benchmark::DoNotOptimize(pooled.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_bert_base)
    ->ArgNames({"n", "threads"})
    ->Args({128, 1})
    ->Args({512, 1})
    ->Args({128, 2})
    ->Args({512, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace

POLYFORMER_BENCHMARK_MAIN();
