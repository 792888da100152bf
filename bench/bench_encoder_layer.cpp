// One BERT-base encoder layer (d_model 768, 12 heads, FFN 3072, ReLU, post-norm, random weights, batch 1)
// at n tokens, as torch.nn.TransformerEncoderLayer computes it; the peer is bench/peers/libtorch_encoder_layer.cpp.
// BM_encoder_layer_gemms times the layer's six matrix products alone (Q, K, V, output, FFN up and down,
// through Dense::forward: packed weights, bias fused), so the layer's time splits into GEMMs and the rest (attention, norms, ...).
// BM_encoder_layer_bf16: the same in bf16 — every linear layer (linear/bf16.hpp) and attention's score and value
// products (FullAttention::Products::bf16); BM_encoder_layer_gemms_bf16: its six products alone.
// BM_encoder_layer_train: a training step, forward and backward (the peer: libtorch autograd, same file).
//
//   bench_encoder_layer --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>

#include <array>
#include <cmath>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "main.hpp"
#include "counters.hpp"
#include "memory.hpp"
#include "polyformer/polyformer.hpp"

namespace pf = polyformer;

namespace {

constexpr pf::Index d_model = 768, n_heads = 12, d_ffn = 3072;

template <typename Lin>
using Layer = pf::EncoderLayer<pf::FullAttention, Lin, pf::LayerNorm, pf::ReLU, pf::NormPlacement::post>;

template <typename Lin>
Lin random_linear(pf::Index in, pf::Index out) {
  return Lin(pf::Matrix(pf::Matrix::Random(out, in) / std::sqrt(static_cast<float>(in))),
             pf::Vector(pf::Vector::Random(out) * 0.1f));
}

template <typename Lin>
Layer<Lin> make_layer() {
  std::srand(1);
  using L = Layer<Lin>;
  // A bf16 layer multiplies in bf16 inside attention too.
  const auto products = std::is_same_v<Lin, pf::BF16> ? pf::FullAttention::Products::bf16 : pf::FullAttention::Products::fp32;
  return L(typename L::Attention(random_linear<Lin>(d_model, d_model), random_linear<Lin>(d_model, d_model),
                                 random_linear<Lin>(d_model, d_model), random_linear<Lin>(d_model, d_model),
                                 pf::HeadConfig{n_heads}, pf::FullAttention(pf::FullAttention::Tiles{}, products)),
           typename L::FFN(random_linear<Lin>(d_model, d_ffn), random_linear<Lin>(d_ffn, d_model)),
           pf::LayerNorm(d_model), pf::LayerNorm(d_model));
}

/// 8nd² (Q, K, V, output projections) + 4nd·ffn (FFN) — the six GEMMs.
double gemm_flops(double n) {
  const double d = d_model;
  return 8 * n * d * d + 4 * n * d * d_ffn;
}
/// The GEMMs plus 4n²d for attention's QKᵀ and PV.
double layer_flops(double n) { return gemm_flops(n) + 4 * n * n * d_model; }

template <typename Lin>
void encoder_layer(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  using L = Layer<Lin>;
  L layer = make_layer<Lin>();
  const pf::Matrix x = pf::Matrix::Random(n, d_model);
  pf::Matrix y(n, d_model);
  const pf::MaskSpec mask{};
  const bench::PeakMemory memory;
  typename L::Workspace ws;
  layer.forward(pf::cview(x), 1, mask, pf::view(y), ws, ctx);  // warm-up: sizes the workspace once
  const bench::LoopClock clock;
  for (auto _ : state) {
    layer.forward(pf::cview(x), 1, mask, pf::view(y), ws, ctx);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, layer_flops(static_cast<double>(n)));
  memory.report(state, Lin::name);
}

template <typename Lin>
void encoder_layer_gemms(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  const pf::Matrix x = pf::Matrix::Random(n, d_model);
  const auto dense = [](pf::Index in, pf::Index out) { return random_linear<Lin>(in, out); };
  std::array<Lin, 4> attn{dense(d_model, d_model), dense(d_model, d_model), dense(d_model, d_model),
                          dense(d_model, d_model)};  // Q, K, V, output
  const Lin up = dense(d_model, d_ffn), down = dense(d_ffn, d_model);
  std::array<pf::Matrix, 4> proj;  // (n, d) each
  for (auto& p : proj) p = pf::Matrix::Zero(n, d_model);
  pf::Matrix hidden = pf::Matrix::Zero(n, d_ffn), out = pf::Matrix::Zero(n, d_model);
  const bench::PeakMemory memory;
  auto run = [&] {
    for (int i = 0; i < 3; ++i) attn[std::size_t(i)].forward(pf::cview(x), pf::view(proj[std::size_t(i)]), ctx);
    attn[3].forward(pf::cview(proj[2]), pf::view(proj[3]), ctx);
    up.forward(pf::cview(proj[3]), pf::view(hidden), ctx);
    down.forward(pf::cview(hidden), pf::view(out), ctx);
  };
  run();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, gemm_flops(static_cast<double>(n)));
  memory.report(state, std::string(Lin::name) + " packed weights");
}

/// One training step of the layer: forward_train, then backward from a random dy into every parameter's gradient
/// and the input's, the gradients zeroed first (as an optimizer step would). 3× the forward's flops are counted.
void BM_encoder_layer_train(benchmark::State& state) {
  const pf::Index n = state.range(0);
  const pf::Context ctx{static_cast<int>(state.range(1))};
  using L = Layer<pf::Dense>;
  const L layer = make_layer<pf::Dense>();
  const pf::Matrix x = pf::Matrix::Random(n, d_model), dy = pf::Matrix::Random(n, d_model);
  pf::Matrix y(n, d_model), dx(n, d_model);
  const pf::MaskSpec mask{};
  L::Saved saved;
  auto grads = layer.make_gradients();
  const pf::GradientList list = pf::gradients_of(layer, grads);
  const bench::PeakMemory memory;
  const auto step = [&] {
    list.zero();
    layer.forward_train(pf::cview(x), 1, mask, pf::view(y), saved, ctx);
    layer.backward(pf::cview(dy), pf::view(dx), grads, saved, ctx);
  };
  step();  // warm-up: sizes the saved buffers once
  const bench::LoopClock clock;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  clock.report(state, 3.0 * layer_flops(static_cast<double>(n)));
  memory.report(state, "fp32 forward + backward");
}

void BM_encoder_layer(benchmark::State& state) { encoder_layer<pf::Dense>(state); }
void BM_encoder_layer_gemms(benchmark::State& state) { encoder_layer_gemms<pf::Dense>(state); }
void BM_encoder_layer_bf16(benchmark::State& state) { encoder_layer<pf::BF16>(state); }
void BM_encoder_layer_gemms_bf16(benchmark::State& state) { encoder_layer_gemms<pf::BF16>(state); }

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2})
    for (int n : {128, 512, 2048}) b->Args({n, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_encoder_layer)->Apply(sizes);
BENCHMARK(BM_encoder_layer_train)->Apply(sizes);
BENCHMARK(BM_encoder_layer_gemms)->Apply(sizes);
BENCHMARK(BM_encoder_layer_bf16)->Apply(sizes);
BENCHMARK(BM_encoder_layer_gemms_bf16)->Apply(sizes);

POLYFORMER_BENCHMARK_MAIN()
