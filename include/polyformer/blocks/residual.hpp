#pragma once
/// \file The residual wiring of a transformer sublayer, written once for every block: with the norm after the
/// sum (post-norm, Vaswani et al. 2017) or before the sublayer (pre-norm, Xiong et al. 2020).

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/layers/norm.hpp"

namespace polyformer {

/// One sublayer f with its residual: out = norm(x + f(x)) (post) or out = x + f(norm(x)) (pre).
/// f(in, f_out) writes (rows, d); `normed` and `f_out` are the caller's buffers (resized here), and hold the
/// sublayer's input and output afterwards. out must not alias x.
template <NormPlacement Placement, NormPolicy Norm, typename Sublayer>
void residual_sublayer(ConstMatrixView x, const Norm& norm, MatrixView out, Matrix& normed, Matrix& f_out,
                       Sublayer&& f) {
  ensure_shape(f_out, x.rows(), x.cols());
  if constexpr (Placement == NormPlacement::post) {
    f(x, view(f_out));
    out = x + f_out;
    norm.forward(cview(out), out);
  } else {
    ensure_shape(normed, x.rows(), x.cols());
    norm.forward(x, view(normed));
    f(cview(normed), view(f_out));
    out = x + f_out;
  }
}

}  // namespace polyformer
