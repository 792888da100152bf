#pragma once
/// \file Llama from a Hugging Face directory (`LlamaForCausalLM`, io/hf_directory.hpp): config.json's sizes
/// and the safetensors weights (F32, F16 or BF16) under transformers' names, mapped onto the same Llama that
/// llama2.c files load into. transformers rotates the two halves of each head (`rotate_half`) where Llama
/// rotates adjacent pairs, so q_proj's and k_proj's rows are reordered on the way in: row i of a head goes to
/// 2i, row i + head_dim/2 to 2i + 1. Scores are unchanged: q and k are reordered alike.

#include <optional>
#include <string>
#include <vector>

#include "polyformer/io/hf_directory.hpp"
#include "polyformer/io/hf_tensor_map.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/models/llama.hpp"

namespace polyformer {

/// The sizes of the LlamaForCausalLM in `dir` (config.json; defaults as transformers' LlamaConfig). Throws
/// format_error naming config.json and the key for another model_type, an activation other than SiLU, RoPE
/// scaling, biases, a head_dim other than hidden_size / num_attention_heads, or unusable sizes.
inline io::LlamaConfig hf_llama_config(const io::HfDirectory& dir) {
  const std::string type = dir.config_string("model_type");
  if (type != "llama") dir.wrong("model_type", type, "\"llama\"");
  if (const std::string act = dir.config_string("hidden_act", "silu"); act != "silu") dir.wrong("hidden_act", act, "\"silu\"");
  if (const nlohmann::json* s = dir.field("rope_scaling")) dir.wrong("rope_scaling", *s, "null (RoPE scaling is not supported)");
  for (const char* bias : {"attention_bias", "mlp_bias"})
    if (dir.config_bool(bias, false)) dir.wrong(bias, true, "false (Llama here has no biases)");
  io::LlamaConfig c;
  c.dim = dir.config_int("hidden_size");
  c.hidden_dim = dir.config_int("intermediate_size");
  c.n_layers = dir.config_int("num_hidden_layers");
  c.n_heads = dir.config_int("num_attention_heads");
  c.n_kv_heads = dir.config_int("num_key_value_heads", c.n_heads);
  c.vocab_size = dir.config_int("vocab_size");
  c.seq_len = dir.config_int("max_position_embeddings");
  c.norm_eps = static_cast<float>(dir.config_number("rms_norm_eps", 1e-6));
  c.rope_theta = static_cast<float>(dir.config_number("rope_theta", 10000.0));
  c.shared_classifier = dir.config_bool("tie_word_embeddings", false);
  if (c.n_heads > 0 && dir.field("head_dim") != nullptr && dir.config_int("head_dim") * c.n_heads != c.dim)
    dir.wrong("head_dim", *dir.field("head_dim"), polyformer::detail::cat(c.dim / c.n_heads, " (hidden_size / num_attention_heads)"));
  try {
    c.validate("hf_llama_config");
  } catch (const config_error& e) {
    throw format_error(polyformer::detail::cat(dir.path(), "/config.json: ", e.what()));
  }
  return c;
}

namespace detail {

/// transformers' half-split rotary rows of `heads` heads → Llama's interleaved pairs (see the file comment).
inline void interleave_rotary_rows(const std::vector<float>& in, std::vector<float>& out, Index heads, Index head_dim,
                                   Index cols) {
  out.resize(in.size());
  const Index half = head_dim / 2;
  for (Index h = 0; h < heads; ++h)
    for (Index i = 0; i < head_dim; ++i) {
      const Index from = h * head_dim + (i % 2 == 0 ? i / 2 : half + i / 2), to = h * head_dim + i;
      std::copy_n(in.data() + from * cols, cols, out.data() + to * cols);
    }
}

}  // namespace detail

/// Reads the LlamaForCausalLM in `directory` into a Llama over linear policy `Lin` and attention policy
/// `attention`, as load_llama2c does for a llama2.c file. Every tensor of the model must be present with the
/// shape config.json implies (format_error naming the file, the tensor, expected and found shapes), and the
/// directory may hold nothing else but rotary `inv_freq` buffers and a tied `lm_head.weight`.
/// `max_positions` (0: config.json's max_position_embeddings) caps the positions a sequence may reach: a
/// sequence's state holds that many keys and values per layer (Llama 3's 131072 would be gigabytes per
/// sequence), so a program that generates a few thousand tokens says so here. `non_finite`: what an F16/BF16
/// weight holding NaN or Inf does (refused by default: format_error naming the file and the tensor).
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
Llama<Attn, Lin> load_hf_llama(const std::string& directory, const Attn& attention = Attn{}, Index max_positions = 0,
                               io::NonFinite non_finite = io::NonFinite::refuse) {
  using polyformer::detail::cat;
  const io::HfDirectory dir = io::HfDirectory::open(directory, non_finite);
  io::LlamaConfig c = hf_llama_config(dir);
  if (max_positions < 0 || max_positions > c.seq_len)
    throw config_error(cat("load_hf_llama: max_positions is ", max_positions, ", expected 0 (config.json's) or 1..",
                           c.seq_len, " (max_position_embeddings)"));
  if (max_positions > 0) c.seq_len = max_positions;
  const Index d = c.dim, hd = c.head_dim(), kv = c.kv_dim(), q = c.n_heads * hd;

  io::HfTensorMap t(dir, "load_hf_llama");
  const auto rotary = [&](Index heads) -> io::HfTensorMap::Rearrange {
    return [heads, hd, d](const std::vector<float>& in, std::vector<float>& out) {
      detail::interleave_rotary_rows(in, out, heads, hd, d);
    };
  };
  t.take("model.embed_tokens.weight", "tok_embeddings.weight", {c.vocab_size, d});
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string hf = cat("model.layers.", l, "."), ours = cat("layers.", l, ".");
    t.take(hf + "self_attn.q_proj.weight", ours + "attention.wq.weight", {q, d}, {q, d}, rotary(c.n_heads));
    t.take(hf + "self_attn.k_proj.weight", ours + "attention.wk.weight", {kv, d}, {kv, d}, rotary(c.n_kv_heads));
    t.take(hf + "self_attn.v_proj.weight", ours + "attention.wv.weight", {kv, d});
    t.take(hf + "self_attn.o_proj.weight", ours + "attention.wo.weight", {d, q});
    t.take(hf + "mlp.gate_proj.weight", ours + "feed_forward.w1.weight", {c.hidden_dim, d});
    t.take(hf + "mlp.down_proj.weight", ours + "feed_forward.w2.weight", {d, c.hidden_dim});
    t.take(hf + "mlp.up_proj.weight", ours + "feed_forward.w3.weight", {c.hidden_dim, d});
    t.take(hf + "input_layernorm.weight", ours + "attention_norm.weight", {d});
    t.take(hf + "post_attention_layernorm.weight", ours + "ffn_norm.weight", {d});
    t.ignore(hf + "self_attn.rotary_emb.inv_freq");  // an old checkpoint's buffer, recomputed from rope_theta
  }
  t.take("model.norm.weight", "norm.weight", {d});
  if (c.shared_classifier) t.ignore("lm_head.weight");  // tied: the embedding is the classifier
  else t.take("lm_head.weight", "output.weight", {c.vocab_size, d});
  t.refuse_others("LlamaForCausalLM with this config.json");

  auto model = make_llama<Lin>(c, attention);
  if (c.shared_classifier && model.classifier() != nullptr)  // a tied classifier of its own (Int8)
    t.alias("output.weight", "tok_embeddings.weight");
  load_state_dict(parameters_of(model), t.refs());
  return model;
}

}  // namespace polyformer
