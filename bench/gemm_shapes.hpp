#pragma once
/// \file The GEMM shapes bench_gemm and its oneDNN peer both run, m × n × k on 1 and 2 threads: 1024³,
/// 128×768×768 and 512×768×768 (BERT-base projections at 128 and 512 tokens), 512×3072×768 (the FFN up-projection).

#include <benchmark/benchmark.h>

namespace bench {

inline void gemm_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"m", "n", "k", "threads"});
  for (int threads : {1, 2}) {
    b->Args({1024, 1024, 1024, threads});
    b->Args({128, 768, 768, threads});
    b->Args({512, 768, 768, threads});
    b->Args({512, 3072, 768, threads});
  }
  b->UseRealTime()->Unit(benchmark::kMillisecond);
}

}  // namespace bench
