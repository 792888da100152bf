/// \file Micro-benchmarks of the SIMD kernels (Google Benchmark 1.7): exp (ours vs a std::exp loop
/// vs xsimd::exp), softmax rows, LayerNorm/RMSNorm rows. Build with -O3 -DNDEBUG -march=native.

#include <benchmark/benchmark.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>
#include <xsimd/xsimd.hpp>

#include "main.hpp"
#include "polyformer/kernels/activation.hpp"
#include "polyformer/kernels/exp.hpp"
#include "polyformer/kernels/norm.hpp"
#include "polyformer/kernels/softmax.hpp"

namespace k = polyformer::kernels;

namespace {

std::vector<float> random_vec(std::size_t n, float lo, float hi, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

/// items = elements, bytes = one read + one write of each element.
void set_rates(benchmark::State& state, std::size_t n, std::size_t streams = 2) {
  const auto items = static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n);
  state.SetItemsProcessed(items);
  state.SetBytesProcessed(items * static_cast<std::int64_t>(streams * sizeof(float)));
}

void BM_exp_polyformer(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -80.0f, 80.0f, 1);
  std::vector<float> y(n);
  for (auto _ : state) {
    k::exp(x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n);
}
BENCHMARK(BM_exp_polyformer)->Arg(4096);

void BM_exp_std_loop(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -80.0f, 80.0f, 1);
  std::vector<float> y(n);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; ++i) y[i] = std::exp(x[i]);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n);
}
BENCHMARK(BM_exp_std_loop)->Arg(4096);

void BM_exp_xsimd(benchmark::State& state) {
  using B = xsimd::batch<float>;
  const auto n = static_cast<std::size_t>(state.range(0));  // a multiple of the lane count
  const auto x = random_vec(n, -80.0f, 80.0f, 1);
  std::vector<float> y(n);
  for (auto _ : state) {
    for (std::size_t i = 0; i < n; i += B::size) xsimd::exp(B::load_unaligned(x.data() + i)).store_unaligned(y.data() + i);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n);
}
BENCHMARK(BM_exp_xsimd)->Arg(4096);

void BM_softmax(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto x = random_vec(n, -8.0f, 8.0f, 2);
  // In place on its own output: the values stay valid logits, and no copy pollutes the timing.
  for (auto _ : state) {
    k::softmax(x.data(), n);
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n);
}
BENCHMARK(BM_softmax)->Arg(1024)->Arg(4096);

void BM_softmax_masked(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto x = random_vec(n, -8.0f, 8.0f, 2);
  std::vector<float> mask(n, 0.0f);
  for (std::size_t i = n / 2; i < n; ++i) mask[i] = -INFINITY;  // causal-style: half the row masked
  for (auto _ : state) {
    k::softmax(x.data(), n, mask.data());
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n, 3);
}
BENCHMARK(BM_softmax_masked)->Arg(1024)->Arg(4096);

void BM_softmax_scalar(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto x = random_vec(n, -8.0f, 8.0f, 2);
  for (auto _ : state) {
    k::softmax_scalar(x.data(), n);
    benchmark::DoNotOptimize(x.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n);
}
BENCHMARK(BM_softmax_scalar)->Arg(1024)->Arg(4096);

void BM_layer_norm(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -2.0f, 2.0f, 3), g = random_vec(n, 0.5f, 1.5f, 4), b = random_vec(n, -1.0f, 1.0f, 5);
  std::vector<float> y(n);
  for (auto _ : state) {
    k::layer_norm(x.data(), y.data(), g.data(), b.data(), n, 1e-5f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n, 4);
}
BENCHMARK(BM_layer_norm)->Arg(768);

void BM_layer_norm_scalar(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -2.0f, 2.0f, 3), g = random_vec(n, 0.5f, 1.5f, 4), b = random_vec(n, -1.0f, 1.0f, 5);
  std::vector<float> y(n);
  for (auto _ : state) {
    k::layer_norm_scalar(x.data(), y.data(), g.data(), b.data(), n, 1e-5f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n, 4);
}
BENCHMARK(BM_layer_norm_scalar)->Arg(768);

void BM_rms_norm(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -2.0f, 2.0f, 3), g = random_vec(n, 0.5f, 1.5f, 4);
  std::vector<float> y(n);
  for (auto _ : state) {
    k::rms_norm(x.data(), y.data(), g.data(), n, 1e-5f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n, 3);
}
BENCHMARK(BM_rms_norm)->Arg(768);

void BM_rms_norm_scalar(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -2.0f, 2.0f, 3), g = random_vec(n, 0.5f, 1.5f, 4);
  std::vector<float> y(n);
  for (auto _ : state) {
    k::rms_norm_scalar(x.data(), y.data(), g.data(), n, 1e-5f);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n, 3);
}
BENCHMARK(BM_rms_norm_scalar)->Arg(768);

/// The activations over one FFN row (3072 = 4 × 768).
template <void (*F)(const float*, float*, std::size_t)>
void BM_activation(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const auto x = random_vec(n, -6.0f, 6.0f, 6);
  std::vector<float> y(n);
  for (auto _ : state) {
    F(x.data(), y.data(), n);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, n);
}
void gelu_erf(const float* x, float* y, std::size_t n) { k::gelu_erf(x, y, n); }
void gelu_tanh(const float* x, float* y, std::size_t n) { k::gelu_tanh(x, y, n); }
void silu(const float* x, float* y, std::size_t n) { k::silu(x, y, n); }
BENCHMARK_TEMPLATE(BM_activation, gelu_erf)->Name("BM_gelu_erf")->Arg(3072);
BENCHMARK_TEMPLATE(BM_activation, gelu_tanh)->Name("BM_gelu_tanh")->Arg(3072);
BENCHMARK_TEMPLATE(BM_activation, silu)->Name("BM_silu")->Arg(3072);

}  // namespace

POLYFORMER_BENCHMARK_MAIN()
