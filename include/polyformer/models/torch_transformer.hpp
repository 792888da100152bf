#pragma once
/// \file PyTorch nn.TransformerEncoderLayer / nn.TransformerDecoderLayer / nn.Transformer state dicts
/// (safetensors, exact state_dict names) mapped onto polyformer blocks.

#include <optional>
#include <string>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/decoder.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/encoder.hpp"
#include "polyformer/blocks/encoder_decoder.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/linear/dense.hpp"

namespace polyformer::torch {

/// torch's blocks: exact full attention, nn.Linear, nn.LayerNorm, with activation and norm_first chosen.
template <typename Act, NormPlacement Placement>
using EncoderLayer = polyformer::EncoderLayer<FullAttention, Dense, LayerNorm, Act, Placement>;
template <typename Act, NormPlacement Placement>
using DecoderLayer = polyformer::DecoderLayer<FullAttention, Dense, LayerNorm, Act, Placement>;
template <typename Act, NormPlacement Placement>
using Transformer = polyformer::EncoderDecoder<polyformer::Encoder<EncoderLayer<Act, Placement>>,
                                               polyformer::Decoder<DecoderLayer<Act, Placement>>>;

/// Hyper-parameters that a state dict does not carry.
struct LayerOptions {
  Index nhead = 0;
  float layer_norm_eps = 1e-5f;
};

namespace detail {

inline Dense load_linear(const io::SafetensorsFile& f, const std::string& name) {
  Matrix w = f.matrix(name + ".weight");
  Vector b = f.contains(name + ".bias") ? f.vector(name + ".bias") : Vector();
  return Dense(std::move(w), std::move(b));
}

inline LayerNorm load_layer_norm(const io::SafetensorsFile& f, const std::string& name, Index d, float eps) {
  Matrix g = f.matrix(name + ".weight", 1, d), b = f.matrix(name + ".bias", 1, d);
  return LayerNorm(Vector(g.row(0).transpose()), Vector(b.row(0).transpose()), eps);
}

/// nn.MultiheadAttention: in_proj_weight (3d, d) holds W_q, W_k, W_v as row blocks; in_proj_bias likewise.
template <typename MHA>
MHA load_mha(const io::SafetensorsFile& f, const std::string& name, Index d, Index nhead) {
  const Matrix w = f.matrix(name + ".in_proj_weight", 3 * d, d);
  const Matrix b = f.matrix(name + ".in_proj_bias", 1, 3 * d);
  const auto part = [&](Index i) {
    return Dense(Matrix(w.middleRows(i * d, d)), Vector(b.row(0).segment(i * d, d).transpose()));
  };
  return MHA(part(0), part(1), part(2), load_linear(f, name + ".out_proj"), HeadConfig{nhead, nhead, 0});
}

inline Index d_model_of(const io::SafetensorsFile& f, const std::string& prefix) {
  const auto& info = f.info(prefix + "self_attn.out_proj.weight");
  if (info.shape.size() != 2)
    throw shape_error(polyformer::detail::cat("torch loader: ", f.path(), ": '", prefix,
                                              "self_attn.out_proj.weight' has ", info.shape.size(),
                                              " dimensions, expected 2"));
  return static_cast<Index>(info.shape[0]);
}

}  // namespace detail

/// Loads "<prefix>self_attn.*", "linear1/2.*", "norm1/2.*" into an encoder layer.
template <typename Layer>
Layer load_encoder_layer(const io::SafetensorsFile& f, const std::string& prefix, const LayerOptions& opt) {
  const Index d = detail::d_model_of(f, prefix);
  using FFN = typename Layer::FFN;
  return Layer(detail::load_mha<typename Layer::Attention>(f, prefix + "self_attn", d, opt.nhead),
               FFN(detail::load_linear(f, prefix + "linear1"), detail::load_linear(f, prefix + "linear2")),
               detail::load_layer_norm(f, prefix + "norm1", d, opt.layer_norm_eps),
               detail::load_layer_norm(f, prefix + "norm2", d, opt.layer_norm_eps));
}

/// Loads "<prefix>self_attn.*", "multihead_attn.*", "linear1/2.*", "norm1/2/3.*" into a decoder layer.
template <typename Layer>
Layer load_decoder_layer(const io::SafetensorsFile& f, const std::string& prefix, const LayerOptions& opt) {
  const Index d = detail::d_model_of(f, prefix);
  using FFN = typename Layer::FFN;
  return Layer(detail::load_mha<typename Layer::SelfAttention>(f, prefix + "self_attn", d, opt.nhead),
               detail::load_mha<typename Layer::CrossAttention>(f, prefix + "multihead_attn", d, opt.nhead),
               FFN(detail::load_linear(f, prefix + "linear1"), detail::load_linear(f, prefix + "linear2")),
               detail::load_layer_norm(f, prefix + "norm1", d, opt.layer_norm_eps),
               detail::load_layer_norm(f, prefix + "norm2", d, opt.layer_norm_eps),
               detail::load_layer_norm(f, prefix + "norm3", d, opt.layer_norm_eps));
}

/// Loads nn.Transformer: encoder.layers.{i}.*, encoder.norm.*, decoder.layers.{i}.*, decoder.norm.*.
template <typename Model>
Model load_transformer(const io::SafetensorsFile& f, Index num_encoder_layers, Index num_decoder_layers,
                       const LayerOptions& opt) {
  if (num_encoder_layers < 1 || num_decoder_layers < 1)
    throw config_error(polyformer::detail::cat("load_transformer: layers (encoder ", num_encoder_layers,
                                               ", decoder ", num_decoder_layers, "), expected both >= 1"));
  using EncoderStack = std::remove_cvref_t<decltype(std::declval<Model&>().encoder())>;
  using DecoderStack = std::remove_cvref_t<decltype(std::declval<Model&>().decoder())>;
  std::vector<typename EncoderStack::layer_type> enc;
  std::vector<typename DecoderStack::layer_type> dec;
  for (Index i = 0; i < num_encoder_layers; ++i)
    enc.push_back(load_encoder_layer<typename EncoderStack::layer_type>(
        f, polyformer::detail::cat("encoder.layers.", i, "."), opt));
  for (Index i = 0; i < num_decoder_layers; ++i)
    dec.push_back(load_decoder_layer<typename DecoderStack::layer_type>(
        f, polyformer::detail::cat("decoder.layers.", i, "."), opt));
  const Index d = enc.front().d_model();
  std::optional<LayerNorm> enc_norm, dec_norm;
  if (f.contains("encoder.norm.weight")) enc_norm = detail::load_layer_norm(f, "encoder.norm", d, opt.layer_norm_eps);
  if (f.contains("decoder.norm.weight")) dec_norm = detail::load_layer_norm(f, "decoder.norm", d, opt.layer_norm_eps);
  return Model(EncoderStack(std::move(enc), std::move(enc_norm)), DecoderStack(std::move(dec), std::move(dec_norm)));
}

}  // namespace polyformer::torch
