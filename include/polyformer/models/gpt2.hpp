#pragma once
/// \file GPT-2 (Radford et al. 2019) composed from polyformer's policies, as transformers' GPT2LMHeadModel: token
/// embedding + learned position table → pre-norm layers of LayerNorm, multi-head causal self-attention with
/// biases and a tanh-GELU FFN → final LayerNorm → logits from the token embedding itself (tied), or from an
/// untied lm_head. The same decoding, batching and training as Llama (models/causal_lm.hpp).

#include <concepts>
#include <optional>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/block_names.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/models/causal_lm.hpp"

namespace polyformer {

/// GPT-2's layer and names: transformers' module paths ("wte.weight", "wpe.weight", "h.<i>.ln_1.*",
/// "h.<i>.attn.*", "h.<i>.ln_2.*", "h.<i>.mlp.c_fc.*", "h.<i>.mlp.c_proj.*", "ln_f.*", "lm_head.weight"), with every
/// weight in nn.Linear's (out, in) layout rather than Conv1D's [in, out], and c_attn as the fused
/// "attn.in_proj_weight" (3·d, d) / "attn.in_proj_bias" (3·d) of nn.MultiheadAttention.
struct Gpt2Architecture {
  template <typename Attn, typename Lin>
  using Layer = DecoderLayer<Attn, Lin, LayerNorm, GELUTanh, NormPlacement::pre, NoRotary, NoCrossAttention>;
  static constexpr bool learned_positions = true;
  static constexpr const char* name = "Gpt2";
  static constexpr const char* forward_name = "Gpt2::forward";
  static constexpr const char* forward_batch_name = "Gpt2::forward (batch)";
  static constexpr const char* forward_train_name = "Gpt2::forward_train";
  static constexpr const char* backward_name = "Gpt2::backward";
  static CausalLMNames names() {
    BlockNames b;
    b.self_attn = "attn.";
    b.attention = AttentionNames{.o = "c_proj.", .fused_in_proj = true};
    b.ffn = "mlp.";
    b.ffn_names = FFNNames{.gate = "", .up = "c_fc.", .down = "c_proj."};
    b.norm1 = "ln_1.";
    b.norm2 = "ln_2.";
    return {"wte.weight", "wpe.weight", "h.", "ln_f.", "lm_head.", b};
  }
  /// As LlamaConfig::validate, with every head size allowed (no rotary pairs) and no grouped-query heads.
  static void validate(const io::LlamaConfig& c, const char* who) {
    c.validate(who, false);
    if (c.n_kv_heads != c.n_heads)
      throw config_error(detail::cat(who, ": n_kv_heads ", c.n_kv_heads, ", expected n_heads ", c.n_heads,
                                     " (GPT-2 has no grouped-query attention)"));
  }
};

/// GPT-2 over attention policy `Attn` and linear policy `Lin`. Its sizes are an io::LlamaConfig's: dim = n_embd,
/// hidden_dim = n_inner, n_kv_heads = n_heads, seq_len = n_positions (or fewer), norm_eps = layer_norm_epsilon;
/// rope_theta is unused.
template <IncrementalAttention Attn = FullAttention, LinearPolicy Lin = Dense>
using Gpt2 = CausalLM<Gpt2Architecture, Attn, Lin>;

/// A Gpt2 of the sizes in `config` with zero weights and biases (unit norm gains), to be filled by name through
/// parameters() and load_state_dict. A tied classifier reads the embedding itself when `Lin` computes with exact
/// float weights (Dense, LoRA<Dense>); otherwise it is a `Lin` of its own ("lm_head.weight", no bias).
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix, Vector>
Gpt2<Attn, Lin> make_gpt2(const io::LlamaConfig& c, const Attn& attention = Attn{}) {
  using Model = Gpt2<Attn, Lin>;
  using Layer = typename Model::Layer;
  Gpt2Architecture::validate(c, "make_gpt2");
  const Index d = c.dim, h = c.hidden_dim;
  const auto zero = [](Index out, Index in) { return zero_linear<Lin>(out, in, /*bias=*/true); };
  std::vector<Layer> layers;
  layers.reserve(static_cast<std::size_t>(c.n_layers));
  for (Index l = 0; l < c.n_layers; ++l) {
    typename Layer::SelfAttention attn(zero(d, d), zero(d, d), zero(d, d), zero(d, d), HeadConfig{c.n_heads},
                                       attention);
    typename Layer::FFN ffn(zero(h, d), zero(d, h));
    layers.emplace_back(std::move(attn), std::move(ffn), LayerNorm(d, c.norm_eps), LayerNorm(d, c.norm_eps));
  }
  std::optional<Lin> classifier;
  if (!c.shared_classifier || !exact_float_weights<Lin>) classifier.emplace(Matrix(Matrix::Zero(c.vocab_size, d)));
  return Model(c, Matrix::Zero(c.vocab_size, d), std::move(layers), LayerNorm(d, c.norm_eps), std::move(classifier),
               Matrix::Zero(c.seq_len, d));
}

}  // namespace polyformer
