// Peer of bench_encoder_layer.cpp: libtorch 1.13's torch::nn::TransformerEncoderLayer (d_model 768, 12 heads,
// FFN 3072, ReLU, post-norm — the only placement the 1.13 C++ module has —, dropout 0, eval, no grad,
// batch 1), the fused kernel Python's fast path calls, at::_transformer_encoder_layer_fwd, on the module's own
// weights, and a training step through autograd (BM_libtorch_encoder_layer_train). The 1.13 C++ module has no batch_first: its input is (seq, batch, d) = (n, 1, 768);
// the fused kernel takes (batch, seq, d) = (1, n, 768). Built without polyformer (see bench/CMakeLists.txt).
//
// Thread settings that keep it honest (shared/MACHINE.md): 1 thread: OPENBLAS_NUM_THREADS=1; 2 threads:
// OPENBLAS_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE. The benchmark also calls torch::set_num_threads and
// openblas_set_num_threads with its thread count.
//
//   OPENBLAS_NUM_THREADS=1 libtorch_encoder_layer --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "counters.hpp"
#include "memory.hpp"

#ifdef POLYFORMER_PEER_HAS_OPENBLAS
extern "C" void openblas_set_num_threads(int);
#endif

namespace {

constexpr int64_t d_model = 768, n_heads = 12, d_ffn = 3072;

void set_threads(int threads) {
  torch::set_num_threads(threads);
#ifdef POLYFORMER_PEER_HAS_OPENBLAS
  openblas_set_num_threads(threads);
#endif
}

torch::nn::TransformerEncoderLayer make_layer() {
  torch::manual_seed(1);
  torch::nn::TransformerEncoderLayer layer(
      torch::nn::TransformerEncoderLayerOptions(d_model, n_heads).dim_feedforward(d_ffn).dropout(0.0));
  layer->eval();
  return layer;
}

double layer_flops(double n) {
  const double d = d_model;
  return 8 * n * d * d + 4 * n * d * d_ffn + 4 * n * n * d;
}

/// The fused kernel on the module's weights; src is (1, n, d).
torch::Tensor fused_forward(const torch::nn::TransformerEncoderLayer& layer, const torch::Tensor& src) {
  const auto& attn = layer->self_attn;
  return at::_transformer_encoder_layer_fwd(
      src, d_model, n_heads, attn->in_proj_weight, attn->in_proj_bias, attn->out_proj->weight, attn->out_proj->bias,
      /*use_gelu=*/false, /*norm_first=*/false, /*eps=*/1e-5, layer->norm1->weight, layer->norm1->bias,
      layer->norm2->weight, layer->norm2->bias, layer->linear1->weight, layer->linear1->bias, layer->linear2->weight,
      layer->linear2->bias);
}

void BM_libtorch_encoder_layer(benchmark::State& state) {
  const int64_t n = state.range(0);
  set_threads(static_cast<int>(state.range(1)));
  torch::NoGradGuard no_grad;
  auto layer = make_layer();
  const torch::Tensor x = torch::randn({n, 1, d_model});  // (seq, batch, d)
  const bench::PeakMemory memory;
  torch::Tensor y = layer->forward(x);  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    y = layer->forward(x);
    benchmark::DoNotOptimize(y.data_ptr());
    benchmark::ClobberMemory();
  }
  clock.report(state, layer_flops(static_cast<double>(n)));
  memory.report(state, "module, " + std::to_string(at::get_num_threads()) + " thread(s)");
}

void BM_libtorch_encoder_layer_fused(benchmark::State& state) {
  const int64_t n = state.range(0);
  set_threads(static_cast<int>(state.range(1)));
  torch::NoGradGuard no_grad;
  auto layer = make_layer();
  const torch::Tensor x = torch::randn({n, 1, d_model});
  const torch::Tensor src = x.transpose(0, 1).contiguous();  // (batch, seq, d)
  // The fused kernel must compute what the module computes.
  const torch::Tensor expected = layer->forward(x).transpose(0, 1);
  const double err = (fused_forward(layer, src) - expected).abs().max().item<double>();
  if (!(err < 1e-3)) {
    state.SkipWithError(("fused output differs from the module's by " + std::to_string(err)).c_str());
    return;
  }
  const bench::PeakMemory memory;
  torch::Tensor y = fused_forward(layer, src);  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    y = fused_forward(layer, src);
    benchmark::DoNotOptimize(y.data_ptr());
    benchmark::ClobberMemory();
  }
  clock.report(state, layer_flops(static_cast<double>(n)));
  memory.report(state, "fused, " + std::to_string(at::get_num_threads()) + " thread(s)");
}

/// A training step through autograd: the module with gradients on, its input requiring grad, forward, then
/// backward from a random gradient of the output; the gradients zeroed first (zero_grad). 3× the forward's flops.
void BM_libtorch_encoder_layer_train(benchmark::State& state) {
  const int64_t n = state.range(0);
  set_threads(static_cast<int>(state.range(1)));
  auto layer = make_layer();
  layer->train();  // dropout is 0: the same arithmetic as eval, with autograd's graph
  const torch::Tensor x = torch::randn({n, 1, d_model}).requires_grad_(true);
  const torch::Tensor dy = torch::randn({n, 1, d_model});
  const bench::PeakMemory memory;
  const auto step = [&] {
    layer->zero_grad();
    x.mutable_grad() = torch::Tensor();
    torch::Tensor y = layer->forward(x);
    y.backward(dy);
  };
  step();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) {
    step();
    benchmark::DoNotOptimize(x.grad().data_ptr());
    benchmark::ClobberMemory();
  }
  clock.report(state, 3.0 * layer_flops(static_cast<double>(n)));
  memory.report(state, "autograd, " + std::to_string(at::get_num_threads()) + " thread(s)");
}

void sizes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "threads"});
  for (int threads : {1, 2})
    for (int n : {128, 512, 2048}) b->Args({n, threads});
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_libtorch_encoder_layer)->Apply(sizes);
BENCHMARK(BM_libtorch_encoder_layer_fused)->Apply(sizes);
BENCHMARK(BM_libtorch_encoder_layer_train)->Apply(sizes);

BENCHMARK_MAIN();
