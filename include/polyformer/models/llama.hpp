#pragma once
/// \file Llama-2-architecture decoder-only model (Touvron et al. 2023) composed from polyformer's policies:
/// token embedding → layers of pre-norm RMSNorm, grouped-query self-attention with interleaved RoPE and SwiGLU
/// FFN → final RMSNorm → classifier (models/causal_lm.hpp). Loads llama2.c checkpoints.

#include <concepts>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "polyformer/attention/full.hpp"
#include "polyformer/blocks/block_names.hpp"
#include "polyformer/blocks/decoder_layer.hpp"
#include "polyformer/core/concepts.hpp"
#include "polyformer/core/error.hpp"
#include "polyformer/core/tensor.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/layers/activation.hpp"
#include "polyformer/layers/norm.hpp"
#include "polyformer/layers/rotary.hpp"
#include "polyformer/linear/dense.hpp"
#include "polyformer/models/causal_lm.hpp"

namespace polyformer {

/// Llama's layer and names (llama2.c model.py's: "tok_embeddings.weight", "layers.<i>.attention.wq.weight" …
/// "layers.<i>.feed_forward.w2.weight", "layers.<i>.attention_norm.weight", "layers.<i>.ffn_norm.weight",
/// "norm.weight", "output.weight").
struct LlamaArchitecture {
  template <typename Attn, typename Lin>
  using Layer = DecoderLayer<Attn, Lin, RMSNorm, SwiGLU, NormPlacement::pre, RoPE<RotaryStyle::interleaved>,
                             NoCrossAttention>;
  static constexpr bool learned_positions = false;
  static constexpr const char* name = "Llama";
  static constexpr const char* forward_name = "Llama::forward";
  static constexpr const char* forward_batch_name = "Llama::forward (batch)";
  static constexpr const char* forward_train_name = "Llama::forward_train";
  static constexpr const char* backward_name = "Llama::backward";
  static CausalLMNames names() {
    return {"tok_embeddings.weight", "", "layers.", "norm.", "output.", llama2c_block_names()};
  }
  static void validate(const io::LlamaConfig& c, const char* who) { c.validate(who); }
};

/// A decoder-only Llama over attention policy `Attn` and linear policy `Lin` (CausalLM): one loaded model serves
/// any number of sequences from any number of threads; a sequence's KV caches are its State, sized for
/// config.seq_len positions when made, and a call's scratch its Workspace.
template <IncrementalAttention Attn = FullAttention, LinearPolicy Lin = Dense>
using Llama = CausalLM<LlamaArchitecture, Attn, Lin>;

/// A Llama of the sizes in `config` with zero weights (unit norm gains), to be filled by name through
/// parameters() and load_state_dict (io/state_dict.hpp), e.g. from a safetensors export or a llama2.c file.
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> make_llama(const io::LlamaConfig& c, const Attn& attention = Attn{}) {
  using Model = Llama<Attn, Lin>;
  using Layer = typename Model::Layer;
  c.validate("make_llama");
  const Index d = c.dim, h = c.hidden_dim, q = c.n_heads * c.head_dim(), kv = c.kv_dim();
  const auto zero = [](Index out, Index in) { return zero_linear<Lin>(out, in, /*bias=*/false); };
  std::vector<Layer> layers;
  layers.reserve(static_cast<std::size_t>(c.n_layers));
  for (Index l = 0; l < c.n_layers; ++l) {
    typename Layer::SelfAttention attn(zero(q, d), zero(kv, d), zero(kv, d), zero(d, q),
                                       HeadConfig{c.n_heads, c.n_kv_heads, c.head_dim()}, attention,
                                       RoPE<RotaryStyle::interleaved>(c.rope_theta));
    typename Layer::FFN ffn(zero(h, d), zero(h, d), zero(d, h));
    layers.emplace_back(std::move(attn), std::move(ffn), RMSNorm(d, c.norm_eps), RMSNorm(d, c.norm_eps));
  }
  std::optional<Lin> classifier;
  if (!c.shared_classifier || !exact_float_weights<Lin>) classifier.emplace(zero(c.vocab_size, d));
  return Model(c, Matrix::Zero(c.vocab_size, d), std::move(layers), RMSNorm(d, c.norm_eps), std::move(classifier));
}

/// llama2.c model.py's names for the tensors of a parsed checkpoint (borrowed: `w` must outlive the result):
/// the mapping from the llama2.c layout to the names Llama::parameters() lists.
inline TensorRefs llama2c_tensors(const io::LlamaWeights& w) {
  TensorRefs t;
  const auto matrix = [&](const std::string& name, const Matrix& m) {
    t[name] = TensorRef{{m.rows(), m.cols()}, m.data()};
  };
  const auto vector = [&](const std::string& name, const Vector& v) { t[name] = TensorRef{{v.size()}, v.data()}; };
  matrix("tok_embeddings.weight", w.token_embedding);
  for (std::size_t l = 0; l < w.wq.size(); ++l) {
    const std::string layer = detail::cat("layers.", l, ".");
    matrix(layer + "attention.wq.weight", w.wq[l]);
    matrix(layer + "attention.wk.weight", w.wk[l]);
    matrix(layer + "attention.wv.weight", w.wv[l]);
    matrix(layer + "attention.wo.weight", w.wo[l]);
    matrix(layer + "feed_forward.w1.weight", w.w1[l]);
    matrix(layer + "feed_forward.w2.weight", w.w2[l]);
    matrix(layer + "feed_forward.w3.weight", w.w3[l]);
    vector(layer + "attention_norm.weight", w.attn_norm[l]);
    vector(layer + "ffn_norm.weight", w.ffn_norm[l]);
  }
  vector("norm.weight", w.final_norm);
  if (!w.config.shared_classifier) matrix("output.weight", w.classifier);
  return t;
}

/// A Llama over the float weights of a parsed llama2.c checkpoint: a model of its sizes filled through its
/// model.py names (llama2c_tensors, load_state_dict), every layer's attention a copy of `attention`
/// (FullAttention by default; any IncrementalAttention policy, e.g. SlidingWindow for a bounded cache) and every
/// linear layer a `Lin`: Dense packs the weight, Int8 quantizes it, LoRA<Inner> wraps it with no adapters yet.
/// A shared (tied) classifier reads the embedding itself when `Lin` computes with exact float weights (Dense,
/// LoRA<Dense>); otherwise it is a `Lin` of its own (Int8).
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> make_llama(const io::LlamaWeights& w, const Attn& attention = Attn{}) {
  auto model = make_llama<Lin>(w.config, attention);
  TensorRefs tensors = llama2c_tensors(w);
  if (w.config.shared_classifier && model.classifier() != nullptr)  // a tied classifier of its own: the embedding
    tensors["output.weight"] = tensors.at("tok_embeddings.weight");
  load_state_dict(parameters_of(model), tensors);
  return model;
}

/// Reads a llama2.c checkpoint (legacy, version 1 or 2) into a Llama over linear policy `Lin` and attention
/// policy `attention`: `load_llama2c(path)`, `load_llama2c<Int8>(path)`, `load_llama2c(path, SlidingWindow(64))`.
/// Float tensors go from the file's mapping straight into the model's layers (no float copy of the checkpoint on
/// the way); version-2 (Q8_0) matrices are dequantized one at a time.
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> load_llama2c(const std::string& path, const Attn& attention = Attn{}) {
  const io::detail::ByteBuffer file = io::detail::map_file(path, "llama2c");
  const std::span<const unsigned char> bytes(file.data(), file.size());
  const io::Llama2cLayout layout = io::llama2c_layout(bytes, path);
  auto model = make_llama<Lin>(layout.config, attention);
  TensorRefs tensors;
  std::vector<std::vector<float>> converted;  // the tensors not stored as this machine's floats
  converted.reserve(layout.tensors.size());
  for (const io::Llama2cTensor& t : layout.tensors) {
    const float* data = io::llama2c_tensor_in_place(bytes, layout, t);
    if (data == nullptr) {
      converted.emplace_back(static_cast<std::size_t>(t.rows * t.cols));
      io::read_llama2c_tensor(bytes, layout, t, converted.back().data());
      data = converted.back().data();
    }
    std::vector<std::int64_t> shape = t.is_vector() ? std::vector<std::int64_t>{t.cols} : std::vector<std::int64_t>{t.rows, t.cols};
    tensors[io::llama2c_name(t)] = TensorRef{std::move(shape), data};
  }
  if (layout.config.shared_classifier && model.classifier() != nullptr)  // a tied classifier of its own
    tensors["output.weight"] = tensors.at("tok_embeddings.weight");
  load_state_dict(parameters_of(model), tensors);
  return model;
}

}  // namespace polyformer
