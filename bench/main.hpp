#pragma once
/// \file The main() of every polyformer benchmark: Google Benchmark's, after making the BLAS backend
/// single-threaded (polyformer runs its products on its own threads; the library itself never changes
/// that process-wide setting).

#include <benchmark/benchmark.h>

#include "polyformer/kernels/gemm.hpp"

#define POLYFORMER_BENCHMARK_MAIN()                                        \
  int main(int argc, char** argv) {                                        \
    polyformer::kernels::use_single_threaded_backends();                   \
    benchmark::Initialize(&argc, argv);                                    \
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;      \
    benchmark::RunSpecifiedBenchmarks();                                   \
    benchmark::Shutdown();                                                 \
    return 0;                                                              \
  }
