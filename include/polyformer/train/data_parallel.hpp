#pragma once
/// \file Data-parallel training over MPI (needs <mpi.h>; the library itself does not): every rank holds the whole
/// model, reads its share of each global batch (TrainerOptions::rank / ranks), and before each optimizer step the
/// ranks' gradients and losses are averaged. The sum is formed once, on rank 0, and broadcast, so every rank applies
/// bit-identical gradients and the weights stay identical on all ranks whatever reduction order MPI picks.
///
/// Cost per step: one reduce and one broadcast of every trainable value (4 bytes each) plus the loss.

#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1  // the C interface alone: Open MPI's deprecated C++ bindings would need their library
#endif
#include <mpi.h>

#include <string>
#include <vector>

#include "polyformer/core/error.hpp"
#include "polyformer/core/gradients.hpp"

namespace polyformer {

/// The rank of this process and the number of ranks of `comm`.
inline int mpi_rank(MPI_Comm comm = MPI_COMM_WORLD) {
  int r = 0;
  MPI_Comm_rank(comm, &r);
  return r;
}
inline int mpi_ranks(MPI_Comm comm = MPI_COMM_WORLD) {
  int n = 1;
  MPI_Comm_size(comm, &n);
  return n;
}

/// A CausalLMTrainer gradient reduction (set_gradient_reduction) that averages every trainable gradient and the
/// loss over the ranks of `comm`. Every rank must list the same trainable tensors in the same order.
class MpiGradientAverage {
 public:
  explicit MpiGradientAverage(MPI_Comm comm = MPI_COMM_WORLD) : comm_(comm) {}

  void operator()(const GradientList& grads, double& loss) {
    const char* func = "MpiGradientAverage";
    std::size_t n = 0;
    for (const Gradient& g : grads.items())
      if (g.trainable()) n += static_cast<std::size_t>(g.numel());
    local_.resize(n + 1);
    std::size_t at = 0;
    for (const Gradient& g : grads.items())
      if (g.trainable()) {
        g.read(local_.data() + at);
        at += static_cast<std::size_t>(g.numel());
      }
    local_[n] = static_cast<float>(loss);
    sum_.resize(n + 1);
    const int ranks = mpi_ranks(comm_);
    // Counts above INT_MAX would need several calls; no model here comes near (8 GB of gradients).
    if (n + 1 > static_cast<std::size_t>(2147483647))
      throw config_error(detail::cat(func, ": ", n, " gradient values, expected below 2^31"));
    const int count = static_cast<int>(n + 1);
    check(MPI_Reduce(local_.data(), sum_.data(), count, MPI_FLOAT, MPI_SUM, 0, comm_), "MPI_Reduce");
    check(MPI_Bcast(sum_.data(), count, MPI_FLOAT, 0, comm_), "MPI_Bcast");
    const float inv = 1.0f / static_cast<float>(ranks);
    for (float& x : sum_) x *= inv;
    at = 0;
    for (const Gradient& g : grads.items())
      if (g.trainable()) {
        g.write(sum_.data() + at);
        at += static_cast<std::size_t>(g.numel());
      }
    loss = static_cast<double>(sum_[n]);
  }

 private:
  static void check(int code, const char* what) {
    if (code != MPI_SUCCESS) throw config_error(detail::cat("MpiGradientAverage: ", what, " failed with code ", code));
  }

  MPI_Comm comm_;
  std::vector<float> local_, sum_;
};

}  // namespace polyformer
