#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include "polyformer/kernels/gemm.hpp"

int main(int argc, char** argv) {
  polyformer::kernels::use_single_threaded_backends();  // the library leaves the process settings alone
  return Catch::Session().run(argc, argv);
}
