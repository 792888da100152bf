#pragma once
/// \file PyTorch nn.TransformerEncoderLayer / nn.TransformerDecoderLayer / nn.Transformer state dicts
/// (safetensors, exact state_dict names) mapped onto polyformer blocks: blocks of the file's sizes are made with
/// zero weights, then filled by name through the generic loader (io/state_dict.hpp).

#include <optional>
#include <string>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/blocks/layer_stack.hpp"
#include "polyformer/blocks/encoder_decoder.hpp"
#include "polyformer/blocks/encoder_layer.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/io/safetensors.hpp"
#include "polyformer/io/state_dict.hpp"
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

/// d_model from "<prefix>self_attn.out_proj.weight" (d, d).
inline Index d_model_of(const io::SafetensorsFile& f, const std::string& prefix) {
  const auto& info = f.info(prefix + "self_attn.out_proj.weight");
  if (info.shape.size() != 2)
    throw shape_error(polyformer::detail::cat("torch loader: ", f.path(), ": '", prefix,
                                              "self_attn.out_proj.weight' has ", info.shape.size(),
                                              " dimensions, expected 2"));
  return static_cast<Index>(info.shape[0]);
}

/// A zero nn.Linear in → out of policy Lin, with a bias when the file has "<name>.bias" (nn.Linear(bias=False)
/// has none).
template <typename Lin = Dense>
Lin zero_linear(const io::SafetensorsFile& f, const std::string& name, Index in, Index out) {
  return Lin(Matrix(Matrix::Zero(out, in)), f.contains(name + ".bias") ? Vector(Vector::Zero(out)) : Vector());
}

/// A zero nn.MultiheadAttention of d_model d: biases as the file has them.
template <typename MHA>
MHA zero_mha(const io::SafetensorsFile& f, const std::string& name, Index d, Index nhead) {
  using Lin = typename MHA::linear_type;
  const auto in_proj = [&] {
    return Lin(Matrix(Matrix::Zero(d, d)), f.contains(name + ".in_proj_bias") ? Vector(Vector::Zero(d)) : Vector());
  };
  return MHA(in_proj(), in_proj(), in_proj(), zero_linear<Lin>(f, name + ".out_proj", d, d), HeadConfig{nhead, nhead, 0});
}

/// The FFN width, from "<prefix>linear1.weight" (dff, d).
inline Index ffn_width_of(const io::SafetensorsFile& f, const std::string& prefix) {
  const auto& info = f.info(prefix + "linear1.weight");
  if (info.shape.size() != 2)
    throw shape_error(polyformer::detail::cat("torch loader: ", f.path(), ": '", prefix, "linear1.weight' has ",
                                              info.shape.size(), " dimensions, expected 2"));
  return static_cast<Index>(info.shape[0]);
}

/// A decoder layer that attends to memory (nn.TransformerDecoderLayer).
template <typename Layer>
concept CrossAttending = requires { typename Layer::CrossAttention; } && Layer::has_cross_attention;

/// A layer of the file's sizes with zero weights, for the names below to fill.
template <typename Layer>
Layer zero_layer(const io::SafetensorsFile& f, const std::string& prefix, const LayerOptions& opt) {
  const Index d = d_model_of(f, prefix), dff = ffn_width_of(f, prefix);
  using FFN = typename Layer::FFN;
  using Lin = typename FFN::linear_type;
  FFN ffn(zero_linear<Lin>(f, prefix + "linear1", d, dff), zero_linear<Lin>(f, prefix + "linear2", dff, d));
  const auto norm = [&] { return LayerNorm(d, opt.layer_norm_eps); };
  if constexpr (CrossAttending<Layer>) {
    return Layer(zero_mha<typename Layer::SelfAttention>(f, prefix + "self_attn", d, opt.nhead),
                 zero_mha<typename Layer::CrossAttention>(f, prefix + "multihead_attn", d, opt.nhead), std::move(ffn),
                 norm(), norm(), norm());
  } else {
    return Layer(zero_mha<typename Layer::Attention>(f, prefix + "self_attn", d, opt.nhead), std::move(ffn), norm(),
                 norm());
  }
}

/// Fills `module` from the file's tensors under its state-dict names (PyTorch's); other tensors in the file
/// (inputs, outputs) are left alone.
template <typename Module>
void load_torch_names(Module& module, const io::SafetensorsFile& f, const std::string& prefix) {
  ParameterList params;
  module.parameters(params, prefix);
  load_state_dict(params, f, /*strict=*/false);
}

}  // namespace detail

/// Loads "<prefix>self_attn.*", "linear1/2.*", "norm1/2.*" into an encoder layer: a layer of the file's sizes
/// filled through its PyTorch state-dict names (io/state_dict.hpp).
template <typename Layer>
Layer load_encoder_layer(const io::SafetensorsFile& f, const std::string& prefix, const LayerOptions& opt) {
  Layer layer = detail::zero_layer<Layer>(f, prefix, opt);
  detail::load_torch_names(layer, f, prefix);
  return layer;
}

/// Loads "<prefix>self_attn.*", "multihead_attn.*", "linear1/2.*", "norm1/2/3.*" into a decoder layer.
template <typename Layer>
Layer load_decoder_layer(const io::SafetensorsFile& f, const std::string& prefix, const LayerOptions& opt) {
  Layer layer = detail::zero_layer<Layer>(f, prefix, opt);
  detail::load_torch_names(layer, f, prefix);
  return layer;
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
    enc.push_back(detail::zero_layer<typename EncoderStack::layer_type>(
        f, polyformer::detail::cat("encoder.layers.", i, "."), opt));
  for (Index i = 0; i < num_decoder_layers; ++i)
    dec.push_back(detail::zero_layer<typename DecoderStack::layer_type>(
        f, polyformer::detail::cat("decoder.layers.", i, "."), opt));
  const Index d = enc.front().d_model();
  std::optional<LayerNorm> enc_norm, dec_norm;
  if (f.contains("encoder.norm.weight")) enc_norm = LayerNorm(d, opt.layer_norm_eps);
  if (f.contains("decoder.norm.weight")) dec_norm = LayerNorm(d, opt.layer_norm_eps);
  Model model(EncoderStack(std::move(enc), std::move(enc_norm)), DecoderStack(std::move(dec), std::move(dec_norm)));
  detail::load_torch_names(model, f, "");
  return model;
}

}  // namespace polyformer::torch
