#pragma once
/// \file The residual wiring of a transformer sublayer, written once for every block: with the norm after the
/// sum (post-norm, Vaswani et al. 2017) or before the sublayer (pre-norm, Xiong et al. 2020).

#include "polyformer/core/concepts.hpp"
#include "polyformer/core/context.hpp"
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

/// What a training forward of one residual sublayer keeps: its input and, post-norm, the sum the norm read or,
/// pre-norm, the normed input the sublayer read.
struct SavedResidual {
  Matrix input;   ///< (rows, d): x
  Matrix normed;  ///< (rows, d): post-norm x + f(x); pre-norm norm(x)
};

/// residual_sublayer for training: the same output, with what residual_backward needs kept in `saved`. f(in, f_out)
/// runs the sublayer's own training forward. out must not alias x.
template <NormPlacement Placement, NormPolicy Norm, typename Sublayer>
void residual_sublayer_train(ConstMatrixView x, const Norm& norm, MatrixView out, SavedResidual& saved, Matrix& f_out,
                             Sublayer&& f) {
  ensure_shape(saved.input, x.rows(), x.cols());
  ensure_shape(saved.normed, x.rows(), x.cols());
  ensure_shape(f_out, x.rows(), x.cols());
  saved.input = x;
  if constexpr (Placement == NormPlacement::post) {
    f(cview(saved.input), view(f_out));
    saved.normed = saved.input + f_out;
    norm.forward(cview(saved.normed), out);
  } else {
    norm.forward(cview(saved.input), view(saved.normed));
    f(cview(saved.normed), view(f_out));
    out = saved.input + f_out;
  }
}

/// The backward of residual_sublayer_train: dx (rows, d) from dout, adding the norm's gradients into g_norm.
/// f_backward(in, d_f_out, d_in, accumulate) runs the sublayer's backward from its input `in`, writing (or, with
/// accumulate, adding) d_in. `scratch` is the caller's (rows, d) buffer. dx must not alias dout.
template <NormPlacement Placement, TrainableNorm Norm, typename SublayerBackward>
void residual_backward(ConstMatrixView dout, MatrixView dx, const Norm& norm, typename Norm::Gradients& g_norm,
                       const SavedResidual& saved, Matrix& scratch, SublayerBackward&& f_backward) {
  ensure_shape(scratch, dout.rows(), dout.cols());
  if constexpr (Placement == NormPlacement::post) {
    norm.backward(cview(saved.normed), dout, dx, g_norm);  // d(x + f(x))
    scratch = dx;
    f_backward(cview(saved.input), cview(scratch), dx, true);
  } else {
    f_backward(cview(saved.normed), dout, view(scratch), false);  // d norm(x)
    norm.backward(cview(saved.input), cview(scratch), dx, g_norm);
    dx += dout;
  }
}

}  // namespace polyformer
