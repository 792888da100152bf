// BF16 (linear/bf16.hpp): the LinearPolicy contract, construction and shape errors, a BF16 checkpoint loaded bit for
// bit, and its error against fp32 — relative Frobenius ||y_bf16 − y_ref|| / ||y_ref|| — per layer on the real
// stories260K weights and activations, and per model on PyTorch's encoder layers (against PyTorch's float64
// output). The greedy-text check on stories260K is in test_examples_generate.cpp (--linear bf16). Run with -s to
// see the measured errors.

#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/linear/bf16.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/models/torch_transformer.hpp"
#include "linear_testing.hpp"
#include "support.hpp"

namespace pf = polyformer;

namespace {

using pf::Index;
using pf::Matrix;
using pf::Vector;

/// ||y_bf16 − y_fp32|| / ||y_fp32|| against Dense of the same weight and bias.
double relative_error(const Matrix& weight, const Vector& bias, const Matrix& x, int threads = 1) {
  return pft::relative_error_vs_dense<pf::BF16>(weight, bias, x, threads);
}

using pft::rms_normed;

/// A safetensors file with one BF16 tensor "w" of shape (rows, cols) holding `bits`, written here byte by byte.
std::string write_bf16_file(const std::string& name, Index rows, Index cols, const std::vector<std::uint16_t>& bits) {
  const std::string header = "{\"w\":{\"dtype\":\"BF16\",\"shape\":[" + std::to_string(rows) + "," +
                             std::to_string(cols) + "],\"data_offsets\":[0," + std::to_string(bits.size() * 2) + "]}}";
  const std::string path = pft::process_temp_path("linear_bf16", name);
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header;
  for (std::uint16_t b : bits) {
    out.put(static_cast<char>(b & 0xff));
    out.put(static_cast<char>(b >> 8));
  }
  return path;
}

}  // namespace

TEST_CASE("linear/bf16: construction rounds the weight to bf16, accessors, from_dense", "[linear][bf16]") {
  const Matrix w = pft::random_matrix(37, 53, 1);
  const Vector b = Vector::Random(37);
  const pf::BF16 layer(w, b);
  CHECK(layer.in_features() == 53);
  CHECK(layer.out_features() == 37);
  CHECK(layer.has_bias());
  CHECK(layer.bias() == b);
  const Matrix kept = layer.weight();
  // Rounded to 8 significant bits: within half a step, at most 2^-8 of each value.
  CHECK(((kept - w).cwiseAbs().array() <= w.cwiseAbs().array() * (1.0f / 256.0f)).all());
  CHECK(kept != w);
  const pf::BF16 again = pf::BF16::from_dense(pf::Dense(w, b));
  CHECK(again.weight() == kept);
  CHECK_FALSE(pf::BF16(w).has_bias());
  CHECK(layer.packed_weight().bytes() < static_cast<std::size_t>(w.size()) * 4 / 2 + 2 * 48 * 2 * 64);
}

TEST_CASE("linear/bf16: forward on strided views against a float64 product", "[linear][bf16]") {
  const Matrix w = pft::random_matrix(21, 40, 2);
  const Vector b = Vector::Random(21);
  const pf::BF16 layer(w, b);
  Matrix x_wide = pft::random_matrix(9, 45, 3);
  Matrix y_wide = Matrix::Constant(9, 26, 7.0f);
  const auto x = pf::block(pf::cview(x_wide), 0, 2, 9, 40);
  auto y = pf::block(pf::view(y_wide), 0, 3, 9, 21);
  layer.forward(x, y, pf::Context{});
  // The reference rounds x to bf16 the same way (through a BF16 layer of identity weight would be circular): here
  // by dropping to the nearest of the bf16 neighbours in double.
  Eigen::MatrixXd xr = Matrix(x).cast<double>();
  for (Index i = 0; i < xr.size(); ++i) xr.data()[i] = pf::kernels::from_bf16(pf::kernels::to_bf16(float(xr.data()[i])));
  const Eigen::MatrixXd expect = (xr * layer.weight().cast<double>().transpose()).rowwise() + b.cast<double>().transpose();
  CHECK((Matrix(y).cast<double>() - expect).cwiseAbs().maxCoeff() < 1e-4);
  CHECK(y_wide.leftCols(3).isConstant(7.0f));
  CHECK(y_wide.rightCols(2).isConstant(7.0f));
}

TEST_CASE("linear/bf16: shape errors name the function and the argument", "[linear][bf16][errors]") {
  const pf::BF16 layer(pft::random_matrix(4, 3, 1));
  Matrix x(2, 5), y(2, 4);
  CHECK_THROWS_AS(layer.forward(pf::cview(x), pf::view(y), pf::Context{}), pf::shape_error);
  CHECK_THROWS_WITH(layer.forward(pf::cview(x), pf::view(y), pf::Context{}), Catch::Contains("BF16::forward") && Catch::Contains("x"));
  CHECK_THROWS_WITH(pf::BF16(Matrix(0, 3)), "BF16: weight has shape (0, 3), expected (out >= 1, in >= 1)");
  CHECK_THROWS_WITH(pf::BF16(pft::random_matrix(4, 3, 1), Vector::Zero(5)), "BF16: bias has shape (5), expected (4)");
}

TEST_CASE("linear/bf16: a BF16 safetensors weight loads bit for bit, never through float", "[linear][bf16][io]") {
  // A signalling NaN (0x7f81) survives only a bf16-to-bf16 copy: widening to float and rounding back quiets it.
  std::vector<std::uint16_t> bits{0x3f80, 0xc040, 0x7f81, 0x0001, 0x8000, 0x4049};
  const std::string path = write_bf16_file("w.safetensors", 2, 3, bits);
  pf::BF16 layer(Matrix::Zero(2, 3));
  pf::ParameterList params;
  layer.parameters(params, "");
  auto file = pf::io::SafetensorsFile::open(path, pf::io::NonFinite::accept);  // the NaN on purpose
  // The file names "w": map the layer's "weight" to it.
  pf::ParameterList renamed;
  pf::Parameter p = params.items().front();
  p.name = "w";
  renamed.add(p);
  // Opened as by default, the NaN is refused on this path too, before anything is written.
  CHECK_THROWS_WITH(pf::load_state_dict(renamed, pf::io::SafetensorsFile::open(path)),
                    Catch::Contains("tensor 'w' (BF16) holds NaN at element 2"));
  CHECK(layer.packed_weight().bits(0, 0) == 0);
  pf::load_state_dict(renamed, file);
  for (Index j = 0; j < 2; ++j)
    for (Index r = 0; r < 3; ++r) CHECK(layer.packed_weight().bits(std::size_t(r), std::size_t(j)) == bits[std::size_t(j * 3 + r)]);
  // The float path for contrast: the same tensor through write() quiets the NaN.
  pf::BF16 widened(Matrix::Zero(2, 3));
  pf::ParameterList wp;
  widened.parameters(wp, "");
  const auto t = file.tensor("w");
  wp.items().front().write(t.data.data());
  CHECK(widened.packed_weight().bits(2, 0) == 0x7fc1);
}

TEST_CASE("linear/bf16: relative error against Dense on the stories260K layers and their inputs",
          "[linear][bf16][io]") {
  const pf::io::LlamaWeights m = pf::io::read_llama2c(pft::shared_path("models/stories260K.bin"));
  double worst = 0.0;
  for (std::size_t l = 0; l < m.wq.size(); ++l) {
    const Matrix attn_in = rms_normed(m.token_embedding, m.attn_norm[l]);
    const Matrix ffn_in = rms_normed(m.token_embedding, m.ffn_norm[l]);
    const Matrix gate = ffn_in * m.w1[l].transpose(), up = ffn_in * m.w3[l].transpose();
    const Matrix hidden = (gate.array() / (1.0f + (-gate.array()).exp()) * up.array()).matrix();
    const double wq = relative_error(m.wq[l], Vector(), attn_in), wk = relative_error(m.wk[l], Vector(), attn_in);
    const double wv = relative_error(m.wv[l], Vector(), attn_in);
    const double wo = relative_error(m.wo[l], Vector(), attn_in);  // any (n, dim) input exercises the weight
    const double w1 = relative_error(m.w1[l], Vector(), ffn_in), w3 = relative_error(m.w3[l], Vector(), ffn_in);
    const double w2 = relative_error(m.w2[l], Vector(), hidden);  // the SwiGLU hidden state, outliers and all
    CAPTURE(l, wq, wk, wv, wo, w1, w2, w3);
    for (double e : {wq, wk, wv, wo, w1, w2, w3}) {
      CHECK(e <= 1e-2);
      worst = std::max(worst, e);
    }
  }
  WARN("bf16 vs fp32 on stories260K, worst layer relative error: " << worst);
}

TEST_CASE("linear/bf16: PyTorch's encoder layers within 1e-2 of their float64 output", "[linear][bf16][torch]") {
  using pf::NormPlacement;
  for (const char* name : {"encoder_layer_postnorm_relu_seed0", "encoder_layer_prenorm_relu_seed0"}) {
    const auto f = pf::io::SafetensorsFile::open(pft::shared_path(std::string("reference/torch/") + name + ".safetensors"));
    const bool pre = std::string(name).find("prenorm") != std::string::npos;
    const pf::torch::LayerOptions opt{4, 1e-5f};
    const Matrix src = pft::as_rows(f.tensor("input.src"));
    const Index batch = static_cast<Index>(f.info("input.src").shape.at(0));
    const Eigen::MatrixXd want = pft::as_rows(f.tensor("output_f64.y")).cast<double>();
    for (auto products : {pf::FullAttention::Products::fp32, pf::FullAttention::Products::bf16}) {
      // Tiles of 4 queries and 8 keys: the reference sequences are short, and bf16 products need the tiled path.
      const pf::FullAttention attention(pf::FullAttention::Tiles{4, 8}, products);
      Matrix y;
      if (pre) {
        auto layer = pf::torch::load_encoder_layer<pf::EncoderLayer<pf::FullAttention, pf::BF16, pf::LayerNorm,
                                                                    pf::ReLU, NormPlacement::pre>>(f, "", opt);
        layer.self_attn().attention() = attention;
        y = layer.forward(src, batch, {}, pf::Context{});
      } else {
        auto layer = pf::torch::load_encoder_layer<pf::EncoderLayer<pf::FullAttention, pf::BF16, pf::LayerNorm,
                                                                    pf::ReLU, NormPlacement::post>>(f, "", opt);
        layer.self_attn().attention() = attention;
        y = layer.forward(src, batch, {}, pf::Context{});
      }
      const bool bf16_attention = products == pf::FullAttention::Products::bf16;
      const double rel = (y.cast<double>() - want).norm() / want.norm();
      CAPTURE(name, bf16_attention, rel);
      CHECK(rel <= 1e-2);
      WARN(name << ": bf16 encoder layer" << (bf16_attention ? " with bf16 attention products" : "")
                << ", relative error vs PyTorch float64 " << rel);
    }
  }
}
