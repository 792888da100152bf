// One BERT-base encoder layer (d_model 768, 12 heads, FFN 3072, ReLU, post-norm, random weights, batch 1)
// at n tokens, as torch.nn.TransformerEncoderLayer computes it; the peer is bench/peers/libtorch_encoder_layer.cpp.
// BM_encoder_layer_gemms times the layer's six matrix products alone (Q, K, V, output, FFN up and down,
// through kernels::gemm), so the layer's time splits into GEMMs and the rest (attention, norms, ...).
//
//   bench_encoder_layer --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <cstdlib>

#include "counters.hpp"
#include "memory.hpp"
#include "polyformer/polyformer.hpp"

namespace pf = polyformer;

namespace {

constexpr pf::Index d_model = 768, n_heads = 12, d_ffn = 3072;

using Layer = pf::EncoderLayer<pf::FullAttention, pf::Dense, pf::LayerNorm, pf::ReLU, pf::NormPlacement::post>;

pf::Dense random_dense(pf::Index in, pf::Index out) {
  return pf::Dense(pf::Matrix::Random(out, in) / std::sqrt(static_cast<float>(in)), pf::Vector::Random(out) * 0.1f);
}

Layer make_layer() {
  std::srand(1);
  return Layer(Layer::Attention(random_dense(d_model, d_model), random_dense(d_model, d_model),
                                random_dense(d_model, d_model), random_dense(d_model, d_model),
                                pf::HeadConfig{n_heads}),
               Layer::FFN(random_dense(d_model, d_ffn), random_dense(d_ffn, d_model)), pf::LayerNorm(d_model),
               pf::LayerNorm(d_model));
}

/// 8nd² (Q, K, V, output projections) + 4nd·ffn (FFN) — the six GEMMs.
double gemm_flops(double n) {
  const double d = d_model;
  return 8 * n * d * d + 4 * n * d * d_ffn;
}
/// The GEMMs plus 4n²d for attention's QKᵀ and PV.
double layer_flops(double n) { return gemm_flops(n) + 4 * n * n * d_model; }

void BM_encoder_layer(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  Layer layer = make_layer();
  const pf::Matrix x = pf::Matrix::Random(n, d_model);
  pf::Matrix y(n, d_model);
  const pf::MaskSpec mask{};
  const bench::PeakMemory memory;
  layer.forward(pf::cview(x), 1, mask, pf::view(y), ctx);  // warm-up: sizes the workspaces once
  const bench::LoopClock clock;
  for (auto _ : state) {
    layer.forward(pf::cview(x), 1, mask, pf::view(y), ctx);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, layer_flops(static_cast<double>(n)));
  memory.report(state);
}

void BM_encoder_layer_gemms(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const int threads = static_cast<int>(state.range(1));
  using pf::kernels::Transpose;
  const pf::Matrix x = pf::Matrix::Random(n, d_model);
  std::array<pf::Matrix, 4> w_attn;  // (d, d) each: Q, K, V, output
  for (auto& w : w_attn) w = pf::Matrix::Random(d_model, d_model);
  const pf::Matrix w_up = pf::Matrix::Random(d_ffn, d_model), w_down = pf::Matrix::Random(d_model, d_ffn);
  std::array<pf::Matrix, 4> proj;  // (n, d) each
  for (auto& p : proj) p = pf::Matrix::Zero(n, d_model);
  pf::Matrix hidden = pf::Matrix::Zero(n, d_ffn), out = pf::Matrix::Zero(n, d_model);
  const bench::PeakMemory memory;
  auto run = [&] {
    for (int i = 0; i < 3; ++i)
      pf::kernels::gemm(pf::cview(x), pf::cview(w_attn[i]), Transpose::yes, pf::view(proj[i]), 1.0f, 0.0f, threads);
    pf::kernels::gemm(pf::cview(proj[2]), pf::cview(w_attn[3]), Transpose::yes, pf::view(proj[3]), 1.0f, 0.0f,
                      threads);
    pf::kernels::gemm(pf::cview(proj[3]), pf::cview(w_up), Transpose::yes, pf::view(hidden), 1.0f, 0.0f, threads);
    pf::kernels::gemm(pf::cview(hidden), pf::cview(w_down), Transpose::yes, pf::view(out), 1.0f, 0.0f, threads);
  };
  run();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(static_cast<double>(n)));
  memory.report(state, pf::kernels::gemm_backend());
}

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2})
    for (int n : {128, 512, 2048}) b->Args({n, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_encoder_layer)->Apply(sizes);
BENCHMARK(BM_encoder_layer_gemms)->Apply(sizes);

BENCHMARK_MAIN();
