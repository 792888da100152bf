// Int8 (linear/int8.hpp): the LinearPolicy contract, quantize-once construction, shape errors, and its error
// against the fp32 Dense layer — relative Frobenius ||y_int8 − y_fp32|| / ||y_fp32|| ≤ 1e-2 — on random weights
// and inputs and on the real stories260K weights (every layer's wq, w1, w2, fed the activations they see in the
// model: token-embedding rows after the layer's RMSNorm, and the SwiGLU hidden state for w2). Run with -s to see
// the measured errors.

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <string>

#include "polyformer/core/concepts.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/linear/int8.hpp"
#include "linear_testing.hpp"
#include "support.hpp"

namespace pf = polyformer;

static_assert(pf::LinearPolicy<pf::Int8>);

namespace {

using pf::Index;
using pf::Matrix;
using pf::Vector;

/// ||y_int8 − y_fp32|| / ||y_fp32|| against Dense of the same weight and bias.
double relative_error(const Matrix& weight, const Vector& bias, const Matrix& x, int threads = 1) {
  return pft::relative_error_vs_dense<pf::Int8>(weight, bias, x, threads);
}

using pft::rms_normed;

}  // namespace

TEST_CASE("linear/int8: quantize-once construction, accessors, from_dense", "[linear][int8]") {
  const Matrix w = pft::random_matrix(37, 53, 1);
  const Vector b = pft::random_matrix(37, 1, 2);
  const pf::Int8 layer(w, b);
  CHECK(layer.in_features() == 53);
  CHECK(layer.out_features() == 37);
  CHECK(layer.has_bias());
  CHECK(layer.bias() == b);
  const Matrix deq = layer.dequantized_weight();
  REQUIRE(deq.rows() == 37);
  REQUIRE(deq.cols() == 53);
  for (Index j = 0; j < w.rows(); ++j) {
    const float scale = w.row(j).cwiseAbs().maxCoeff() / 127.0f;
    CHECK((deq.row(j) - w.row(j)).cwiseAbs().maxCoeff() <= 0.5f * scale * 1.0001f);  // round to nearest
  }
  const pf::Int8 no_bias(w);
  CHECK_FALSE(no_bias.has_bias());
  CHECK(no_bias.bias().size() == 0);

  const pf::Int8 from = pf::Int8::from_dense(pf::Dense(w, b));
  const Matrix x = pft::random_matrix(9, 53, 3);
  Matrix y1(9, 37), y2(9, 37);
  layer.forward(pf::cview(x), pf::view(y1), pf::Context{});
  from.forward(pf::cview(x), pf::view(y2), pf::Context{});
  CHECK(y1 == y2);

  const pf::Int8 empty;
  CHECK(empty.in_features() == 0);
  CHECK(empty.out_features() == 0);
  CHECK_FALSE(empty.has_bias());
}

TEST_CASE("linear/int8: forward on strided views matches the dequantized product", "[linear][int8]") {
  const Matrix w = pft::random_matrix(70, 40, 4), x_wide = pft::random_matrix(11, 45, 5);
  const Vector b = pft::random_matrix(70, 1, 6);
  const pf::Int8 layer(w, b);
  const pf::ConstMatrixView x = pf::block(pf::cview(x_wide), 0, 2, 11, 40);  // rows 45 apart
  Matrix y_wide = Matrix::Constant(11, 75, 7.0f);
  pf::MatrixView y = pf::block(pf::view(y_wide), 0, 3, 11, 70);
  layer.forward(x, y, pf::Context{});
  // The product of the quantized operands, in double: x quantized per row here by the same rule.
  Matrix xq(11, 40);
  for (Index i = 0; i < 11; ++i) {
    const float amax = x.row(i).cwiseAbs().maxCoeff(), inv = 127.0f / amax;
    for (Index r = 0; r < 40; ++r) xq(i, r) = std::nearbyint(x(i, r) * inv) * (amax / 127.0f);
  }
  const Matrix expect = ((xq.cast<double>() * layer.dequantized_weight().cast<double>().transpose()).rowwise() +
                         b.cast<double>().transpose()).cast<float>();
  CHECK(pft::max_abs_diff(Matrix(y), expect) < 1e-4);
  CHECK(y_wide.leftCols(3).isConstant(7.0f));   // columns outside the view untouched
  CHECK(y_wide.rightCols(2).isConstant(7.0f));
}

TEST_CASE("linear/int8: shape errors name the function and the argument", "[linear][int8][errors]") {
  const pf::Int8 layer(pft::random_matrix(4, 3, 1), Vector::Zero(4));
  Matrix x(2, 5), y(2, 4);
  CHECK_THROWS_AS(layer.forward(pf::cview(x), pf::view(y), pf::Context{}), pf::shape_error);
  CHECK_THROWS_WITH(layer.forward(pf::cview(x), pf::view(y), pf::Context{}),
                    "Int8::forward: x has shape (2, 5), expected (n, 3)");
  Matrix x_ok(2, 3), y_bad(3, 4);
  CHECK_THROWS_WITH(layer.forward(pf::cview(x_ok), pf::view(y_bad), pf::Context{}),
                    "Int8::forward: y has shape (3, 4), expected (2, 4)");
  CHECK_THROWS_AS(pf::Int8(Matrix(0, 3)), pf::shape_error);
  CHECK_THROWS_WITH(pf::Int8(Matrix(0, 3)), "Int8: weight has shape (0, 3), expected (out >= 1, in >= 1)");
  CHECK_THROWS_WITH(pf::Int8(pft::random_matrix(4, 3, 1), Vector::Zero(5)), "Int8: bias has shape (5), expected (4)");
}

TEST_CASE("linear/int8: relative error against Dense on random weights and inputs", "[linear][int8]") {
  // Uniform entries (max/rms = √3 ≈ 1.7 per row): the issue's ≤ 1e-2 (measured ≈ 0.55 %), 1 and 2 threads.
  for (int threads : {1, 2}) {
    const Matrix w_uniform = Matrix::Random(768, 768), x_uniform = Matrix::Random(64, 768);
    const Vector b = Vector::Random(768) * 0.1f;
    const double uniform = relative_error(w_uniform, b, x_uniform, threads);
    const double uniform_gemv = relative_error(Matrix::Random(2048, 768), Vector(), Matrix::Random(1, 768), threads);
    CAPTURE(threads, uniform, uniform_gemv);
    CHECK(uniform <= 1e-2);
    CHECK(uniform_gemv <= 1e-2);
  }
}

TEST_CASE("linear/int8: Gaussian operands sit just above 1e-2 (a bound of max/127 scales, not of the kernel)",
          "[linear][int8]") {
  // Gaussian entries: max/rms ≈ 3.2 over 768 entries, so steps are twice as coarse relative to the typical entry
  // as for uniform ones; each operand's rounding then costs ≈ 0.73 %, together ≈ 1.09 % — MISSING the 1e-2
  // (a float64 simulation of the same scales gives the same figure, so the kernel is not the cause: it is exact,
  // test_kernels_int8_gemm.cpp). Checked against the measured figure so that a regression shows.
  for (int threads : {1, 2}) {
    const Vector b = Vector::Random(768) * 0.1f;
    const double gaussian = relative_error(pft::random_matrix(768, 768, 7, 0.036f), b, pft::random_matrix(64, 768, 8),
                                           threads);
    const double gaussian_gemv = relative_error(pft::random_matrix(2048, 768, 9, 0.036f), Vector(),
                                                pft::random_matrix(1, 768, 10), threads);
    CAPTURE(threads, gaussian, gaussian_gemv);
    CHECK(gaussian <= 1.15e-2);
    CHECK(gaussian_gemv <= 1.15e-2);
  }
}

TEST_CASE("linear/int8: relative error against Dense on the stories260K attention and FFN inputs",
          "[linear][int8][io]") {
  const pf::io::LlamaWeights m = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  const Matrix& emb = m.token_embedding;  // (512, 64): every token's row
  for (std::size_t l = 0; l < m.wq.size(); ++l) {
    const double wq = relative_error(m.wq[l], Vector(), rms_normed(emb, m.attn_norm[l]));
    const double wq_raw = relative_error(m.wq[l], Vector(), emb);  // the embedding rows as they are
    const double wk = relative_error(m.wk[l], Vector(), rms_normed(emb, m.attn_norm[l]));
    const double wv = relative_error(m.wv[l], Vector(), rms_normed(emb, m.attn_norm[l]));
    const double w1 = relative_error(m.w1[l], Vector(), rms_normed(emb, m.ffn_norm[l]));
    const double w3 = relative_error(m.w3[l], Vector(), rms_normed(emb, m.ffn_norm[l]));
    CAPTURE(l, wq, wq_raw, wk, wv, w1, w3);
    CHECK(wq <= 1e-2);
    CHECK(wq_raw <= 1e-2);
    CHECK(wk <= 1e-2);
    // wv MISSES the 1e-2: measured 1.2–1.6 % (weight rounding alone ≈ 0.8 %, activation rounding alone
    // ≈ 1.1 %; a float64 simulation of the same scales agrees, and MSE-searched weight scales change nothing).
    // Checked against the measured figure so that a regression shows.
    CHECK(wv <= 2e-2);
    CHECK(w1 <= 1e-2);
    CHECK(w3 <= 1e-2);
  }
}

TEST_CASE("linear/int8: the stories260K FFN down-projection on its SwiGLU hidden state (outliers: above 1e-2)",
          "[linear][int8][io]") {
  // w2 reads silu(x·w1ᵀ) ⊙ (x·w3ᵀ), whose rows carry outliers (max/rms 5–10, kurtosis 15–180): one max/127 scale
  // per row leaves the typical entry a few steps wide. Measured 1.6–2.7 % — MISSING the 1e-2 (activation
  // rounding dominates; weight rounding alone ≈ 0.6–0.9 %; a float64 simulation of per-block scales along k, as
  // llama.cpp's Q8_0, still gives 1.0–1.4 % with blocks of 32). Checked against the measured figure so that a
  // regression shows; the greedy text this gives is in test_examples_generate.cpp (--int8).
  const pf::io::LlamaWeights m = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  for (std::size_t l = 0; l < m.w2.size(); ++l) {
    const Matrix ffn_in = rms_normed(m.token_embedding, m.ffn_norm[l]);
    const Matrix gate = ffn_in * m.w1[l].transpose(), up = ffn_in * m.w3[l].transpose();
    const Matrix hidden = (gate.array() / (1.0f + (-gate.array()).exp()) * up.array()).matrix();
    const double w2 = relative_error(m.w2[l], Vector(), hidden);
    CAPTURE(l, w2);
    CHECK(w2 <= 3e-2);
    // The same real weight on inputs without outliers (uniform rows) meets 1e-2: the miss is the activations'.
    const double w2_uniform = relative_error(m.w2[l], Vector(), Matrix::Random(256, m.w2[l].cols()));
    CAPTURE(w2_uniform);
    CHECK(w2_uniform <= 1e-2);
  }
}

namespace {

/// ||y_int8 − y_fp32|| / ||y_fp32|| on x for an Int8 calibrated on `calibration` against Dense.
double calibrated_error(const Matrix& weight, const Matrix& calibration, const Matrix& x, pf::Int8Calibration c) {
  const pf::Dense dense(weight);
  const pf::Int8 int8 = pf::Int8::calibrated(weight, Vector(), pf::cview(calibration), c);
  Matrix y_fp32(x.rows(), weight.rows()), y_int8(x.rows(), weight.rows());
  dense.forward(pf::cview(x), pf::view(y_fp32), pf::Context{});
  int8.forward(pf::cview(x), pf::view(y_int8), pf::Context{2});
  return (y_int8.cast<double>() - y_fp32.cast<double>()).norm() / y_fp32.cast<double>().norm();
}

/// Every other row of x, from row `first`.
Matrix alternate_rows(const Matrix& x, Index first) {
  Matrix out((x.rows() - first + 1) / 2, x.cols());
  for (Index i = 0; i < out.rows(); ++i) out.row(i) = x.row(first + 2 * i);
  return out;
}

}  // namespace

TEST_CASE("linear/int8: calibrated (SmoothQuant + per-row outliers) meets 1e-2 on the stories260K misses",
          "[linear][int8][io]") {
  // The two cases above that miss 1e-2 — w2 on the SwiGLU hidden state, wv on the attention input — calibrated on
  // the even tokens' rows and measured on the odd ones (α = 0.5, 8 outliers a row: the defaults).
  const pf::io::LlamaWeights m = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  double worst = 0.0;
  for (std::size_t l = 0; l < m.w2.size(); ++l) {
    const Matrix ffn_in = rms_normed(m.token_embedding, m.ffn_norm[l]);
    const Matrix gate = ffn_in * m.w1[l].transpose(), up = ffn_in * m.w3[l].transpose();
    const Matrix hidden = (gate.array() / (1.0f + (-gate.array()).exp()) * up.array()).matrix();
    const Matrix attn_in = rms_normed(m.token_embedding, m.attn_norm[l]);
    const double w2 = calibrated_error(m.w2[l], alternate_rows(hidden, 0), alternate_rows(hidden, 1), {});
    const double wv = calibrated_error(m.wv[l], alternate_rows(attn_in, 0), alternate_rows(attn_in, 1), {});
    // Neither half alone reaches it: smoothing without outliers, outliers without smoothing.
    const double w2_smooth_only = calibrated_error(m.w2[l], alternate_rows(hidden, 0), alternate_rows(hidden, 1), {0.5f, 0});
    CAPTURE(l, w2, wv, w2_smooth_only);
    CHECK(w2 <= 1e-2);
    CHECK(wv <= 1e-2);
    CHECK(w2_smooth_only > w2);
    worst = std::max({worst, w2, wv});
  }
  WARN("int8 calibrated on stories260K w2 / wv, worst relative error: " << worst);
}

TEST_CASE("linear/int8: a calibrated layer's parameters round-trip, and bad calibrations are refused",
          "[linear][int8][errors]") {
  const Matrix w = pft::random_matrix(24, 40, 3);
  const Matrix calib = pft::random_matrix(30, 40, 4) * 3.0f;
  const pf::Int8 layer = pf::Int8::calibrated(w, Vector::Random(24), pf::cview(calib));
  CHECK(layer.inverse_smoothing().size() == 40);
  CHECK(layer.outliers_per_row() == 8);
  // The applied weight stays close to W, and writing it back gives the same layer.
  CHECK((layer.dequantized_weight() - w).cwiseAbs().maxCoeff() < 0.05f);
  pf::Int8 copy = layer;
  pf::ParameterList list;
  copy.parameters(list, "");
  Matrix read(24, 40);
  list.find("weight")->read(read.data());
  list.find("weight")->write(read.data());
  const Matrix x = pft::random_matrix(5, 40, 5);
  Matrix y1(5, 24), y2(5, 24);
  layer.forward(pf::cview(x), pf::view(y1), pf::Context{});
  copy.forward(pf::cview(x), pf::view(y2), pf::Context{});
  CHECK(pft::max_abs_diff(y1, y2) < 1e-4);
  CHECK_THROWS_WITH(pf::Int8::calibrated(w, Vector(), Vector(Vector::Ones(39))),
                    "Int8::calibrated: input_absmax has shape (39), expected (40)");
  CHECK_THROWS_AS(pf::Int8::calibrated(w, Vector(), pf::cview(calib), {1.5f, 8}), pf::config_error);
  CHECK_THROWS_AS(pf::Int8::calibrated(w, Vector(), pf::cview(calib), {0.5f, -1}), pf::config_error);
}
