#pragma once
/// \file A Llama's weights out again as llama2.c's checkpoint (io/llama2c_export.hpp): after training, run.c and
/// generate run the model. The weights are read through the model's named parameters (model.py names); a LoRA
/// model's active adapters are folded in (W + s·B·A), so the export computes what the adapted model computes.

#include <string>
#include <type_traits>

#include "polyformer/core/parameters.hpp"
#include "polyformer/io/llama2c_export.hpp"
#include "polyformer/models/llama.hpp"
#include "polyformer/models/llama_lora.hpp"

namespace polyformer {

namespace detail {
template <typename Lin>
inline constexpr bool is_lora = false;
template <typename Inner>
inline constexpr bool is_lora<LoRA<Inner>> = true;

/// W += Σ_active s·B·A of `lin` (nothing for a layer without adapters).
template <typename Lin>
void fold_active_adapters(const Lin& lin, Matrix& w) {
  if constexpr (is_lora<Lin>) {
    if (lin.merged())
      throw config_error("llama2c_weights_of: the LoRA adapters are merged, unmerge() them before exporting");
    for (const LoRAAdapter& a : lin.adapters())
      if (a.active) w.noalias() += (a.scaling * a.b) * a.a;
  }
}
}  // namespace detail

/// The model's weights in llama2.c's layout (its config, float tensors), active LoRA adapters folded in.
template <IncrementalAttention Attn, LinearPolicy Lin>
io::LlamaWeights llama2c_weights_of(Llama<Attn, Lin>& model) {
  const ParameterList params = parameters_of(model);
  const auto read = [&](const std::string& name, Index rows, Index cols) {
    const Parameter* p = params.find(name);
    if (p == nullptr) throw config_error(detail::cat("llama2c_weights_of: the model has no parameter '", name, "'"));
    Matrix m(rows, cols);
    p->read(m.data());
    return m;
  };
  const auto read_vector = [&](const std::string& name, Index n) {
    const Matrix m = read(name, 1, n);
    return Vector(m.row(0).transpose());
  };
  io::LlamaWeights w;
  w.config = model.config();
  const io::LlamaConfig& c = w.config;
  const Index d = c.dim, h = c.hidden_dim, q = c.n_heads * c.head_dim(), kv = c.kv_dim();
  w.token_embedding = read("tok_embeddings.weight", c.vocab_size, d);
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string at = detail::cat("layers.", l, ".");
    auto& layer = model.layers()[static_cast<std::size_t>(l)];
    const auto linear = [&](const std::string& name, const Lin& lin, Index rows, Index cols) {
      Matrix m = read(at + name + ".weight", rows, cols);
      detail::fold_active_adapters(lin, m);
      return m;
    };
    w.attn_norm.push_back(read_vector(at + "attention_norm.weight", d));
    w.wq.push_back(linear("attention.wq", layer.self_attn().q_proj(), q, d));
    w.wk.push_back(linear("attention.wk", layer.self_attn().k_proj(), kv, d));
    w.wv.push_back(linear("attention.wv", layer.self_attn().v_proj(), kv, d));
    w.wo.push_back(linear("attention.wo", layer.self_attn().o_proj(), d, q));
    w.ffn_norm.push_back(read_vector(at + "ffn_norm.weight", d));
    w.w1.push_back(linear("feed_forward.w1", layer.ffn().gate(), h, d));
    w.w2.push_back(linear("feed_forward.w2", layer.ffn().down(), d, h));
    w.w3.push_back(linear("feed_forward.w3", layer.ffn().up(), h, d));
  }
  w.final_norm = read_vector("norm.weight", d);
  if (const Lin* classifier = model.classifier(); classifier != nullptr && !c.shared_classifier) {
    w.classifier = read("output.weight", c.vocab_size, d);
    detail::fold_active_adapters(*classifier, w.classifier);
  }
  return w;
}

/// Writes the model as a legacy llama2.c checkpoint (through a temporary file renamed into place).
template <IncrementalAttention Attn, LinearPolicy Lin>
void save_llama2c(const std::string& path, Llama<Attn, Lin>& model) {
  io::write_llama2c(path, llama2c_weights_of(model));
}

}  // namespace polyformer
