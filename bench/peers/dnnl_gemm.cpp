// Peer of bench_gemm.cpp: oneDNN's matmul primitive (Debian's libdnnl 2.6) on the same products,
// C (m, n) = A (m, k) · Bᵀ with B (n, k) in the nn.Linear layout, the weight reordered once into the layout
// oneDNN picks for it (format "any"), as polyformer packs its weights once — so both sides time the product
// alone. fp32 on the shapes of BM_gemm_packed; bf16 (A and B in bf16, fp32 C) on 512×3072×768 and
// 512×768×768; int8 (u8 A × s8 B, s32 C) on 512×768×768. Built without polyformer (bench/CMakeLists.txt).
// oneDNN runs on OpenMP: the thread count is set with omp_set_num_threads; run it with OMP_WAIT_POLICY=PASSIVE.
//
//   OMP_WAIT_POLICY=PASSIVE dnnl_gemm --benchmark_filter='threads:1/'

#include <benchmark/benchmark.h>
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include <string>
#include <vector>

#include "counters.hpp"
#include "gemm_shapes.hpp"
#include "memory.hpp"

namespace {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

/// One matmul of the given data types with its operands in place; the weight already in oneDNN's layout.
struct Matmul {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  dnnl::matmul prim;
  dnnl::memory a, b, c;

  Matmul(long m, long n, long k, dt a_type, dt b_type, dt c_type) {
    const dnnl::memory::desc a_md({m, k}, a_type, tag::ab);
    const dnnl::memory::desc b_user({k, n}, b_type, tag::ba);  // Bᵀ of an (n, k) row-major weight
    const dnnl::memory::desc b_any({k, n}, b_type, tag::any);
    const dnnl::memory::desc c_md({m, n}, c_type, tag::ab);
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_any, c_md), engine);
    prim = dnnl::matmul(pd);
    a = dnnl::memory(a_md, engine);
    c = dnnl::memory(c_md, engine);
    dnnl::memory b_plain(b_user, engine);
    fill(a);
    fill(b_plain);
    b = dnnl::memory(pd.weights_desc(), engine);
    dnnl::reorder(b_plain, b).execute(stream, b_plain, b);
    stream.wait();
  }

  static void fill(dnnl::memory& mem) {
    auto* bytes = static_cast<unsigned char*>(mem.get_data_handle());
    const std::size_t size = mem.get_desc().get_size();
    // Small values in every type: a byte pattern that is a modest bf16/int8 number and a finite float.
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<unsigned char>(0x3c + (i * 7) % 3);
  }

  void run() {
    prim.execute(stream, {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}});
    stream.wait();
  }
};

void matmul_bench(benchmark::State& state, dt a_type, dt b_type, dt c_type, const char* label) {
  const long m = state.range(0), n = state.range(1), k = state.range(2);
  omp_set_num_threads(static_cast<int>(state.range(3)));
  Matmul mm(m, n, k, a_type, b_type, c_type);
  const bench::PeakMemory memory;
  mm.run();  // warm-up
  const bench::LoopClock clock;
  for (auto _ : state) mm.run();
  clock.report(state, 2.0 * double(m) * double(n) * double(k));
  memory.report(state, std::string("oneDNN ") + label);
}

void BM_dnnl_matmul_f32(benchmark::State& state) { matmul_bench(state, dt::f32, dt::f32, dt::f32, "f32"); }
void BM_dnnl_matmul_bf16(benchmark::State& state) { matmul_bench(state, dt::bf16, dt::bf16, dt::f32, "bf16"); }
void BM_dnnl_matmul_int8(benchmark::State& state) { matmul_bench(state, dt::u8, dt::s8, dt::s32, "u8s8s32"); }

void low_precision_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "threads"});
  for (int threads : {1, 2}) {
    b->Args({512, 768, 768, threads});
    b->Args({512, 3072, 768, threads});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_dnnl_matmul_f32)->Apply(bench::gemm_shapes);
BENCHMARK(BM_dnnl_matmul_bf16)->Apply(low_precision_shapes);
BENCHMARK(BM_dnnl_matmul_int8)->Apply(low_precision_shapes);

BENCHMARK_MAIN();
