// BERT-base as a whole model (models/bert.hpp from a Hugging Face directory): the forward of one sequence of n
// tokens — embeddings, 12 post-norm layers, the pooler — as BertModel runs it, n = 128 and 512, 1 and 2 threads;
// BM_bert_base_bf16 the same with every linear layer BF16 (weights rounded to bf16 once, fp32 sums), its counter
// rel_err the largest |bf16 − fp32| of the last hidden state over the largest |fp32| on the same input.
// The directory is bench/peers/ort_bert.py's bert-base/ (random weights, 440 MB, made outside the repository), named
// by POLYFORMER_BERT_BASE_DIR; without it the benchmarks are skipped. The peer, ONNX Runtime on the same weights
// exported to ONNX by the same script: bench/peers/ort_bert.js (bench/README.md).
//   POLYFORMER_BERT_BASE_DIR=/scratch/bert/bert-base ./build/bench/bench_bert

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "main.hpp"
#include "polyformer/linear/bf16.hpp"
#include "polyformer/models/hf_bert.hpp"

namespace {

namespace pf = polyformer;

/// The model over linear policy Lin, loaded once; nullptr (the benchmark skipped, saying why) without the directory.
template <class Lin>
const pf::Bert<pf::FullAttention, Lin>* model(benchmark::State& state) {
  using Model = pf::Bert<pf::FullAttention, Lin>;
  static const std::optional<Model> loaded = []() -> std::optional<Model> {
    const char* dir = std::getenv("POLYFORMER_BERT_BASE_DIR");
    if (dir == nullptr || !std::filesystem::exists(std::string(dir) + "/config.json")) return std::nullopt;
    return pf::load_hf_bert<Lin>(dir);
  }();
  if (!loaded) state.SkipWithError("set POLYFORMER_BERT_BASE_DIR to bench/peers/ort_bert.py's bert-base directory");
  return loaded ? &*loaded : nullptr;
}

/// n random ids of the model's vocabulary, the same for every policy.
std::vector<int> random_ids(pf::Index n, pf::Index vocab) {
  std::mt19937 rng(static_cast<unsigned>(n));
  std::vector<int> ids(static_cast<std::size_t>(n));
  for (int& id : ids) id = static_cast<int>(rng() % static_cast<unsigned>(vocab));
  return ids;
}

template <class Lin>
void run_bert(benchmark::State& state) {
  const auto* bert = model<Lin>(state);
  if (bert == nullptr) return;
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  const std::vector<int> ids = random_ids(n, bert->config().vocab_size), mask(static_cast<std::size_t>(n), 1);
  pf::BertInputs in;
  in.input_ids = ids;
  in.attention_mask = mask;
  pf::Matrix hidden(n, bert->config().dim), pooled(1, bert->config().dim);
  typename pf::Bert<pf::FullAttention, Lin>::Workspace ws;
  if constexpr (!std::is_same_v<Lin, pf::Dense>) {  // the error against the fp32 model on this input
    const auto* fp32 = model<pf::Dense>(state);
    if (fp32 == nullptr) return;
    pf::Matrix want(n, bert->config().dim);
    pf::Bert<>::Workspace fp32_ws;
    fp32->forward(in, pf::view(want), fp32_ws, ctx);
    bert->forward(in, pf::view(hidden), ws, ctx);
    state.counters["rel_err"] = (hidden - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff();
  }
  for (auto _ : state) {
    bert->forward(in, pf::view(hidden), ws, ctx);
    bert->pool(pf::cview(hidden), 1, pf::view(pooled), ws, ctx);
    benchmark::DoNotOptimize(pooled.data());
  }
  state.counters["tokens/s"] = benchmark::Counter(double(n), benchmark::Counter::kIsIterationInvariantRate);
}

void BM_bert_base(benchmark::State& state) { run_bert<pf::Dense>(state); }
void BM_bert_base_bf16(benchmark::State& state) { run_bert<pf::BF16>(state); }

#define POLYFORMER_BERT_ARGS(name)    \
  BENCHMARK(name)                     \
      ->ArgNames({"n", "threads"})    \
      ->Args({128, 1})                \
      ->Args({512, 1})                \
      ->Args({128, 2})                \
      ->Args({512, 2})                \
      ->UseRealTime()                 \
      ->Unit(benchmark::kMillisecond)
POLYFORMER_BERT_ARGS(BM_bert_base);
POLYFORMER_BERT_ARGS(BM_bert_base_bf16);

}  // namespace

POLYFORMER_BENCHMARK_MAIN();
