#pragma once
/// \file GPT-2 from a Hugging Face directory (io/hf_directory.hpp): `GPT2LMHeadModel` (tensors under
/// "transformer.", plus "lm_head.weight") or `GPT2Model` (no prefix, as the original "gpt2" upload), F32, F16 or
/// BF16. Conv1D stores its weights [in, out]; they are transposed into the linear layers' (out, in) on the way in.

#include <string>
#include <vector>

#include "polyformer/io/hf_directory.hpp"
#include "polyformer/io/hf_tensor_map.hpp"
#include "polyformer/io/llama2c.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/models/gpt2.hpp"

namespace polyformer {

/// The sizes of the GPT-2 in `dir` (config.json; defaults as transformers' GPT2Config). Throws format_error naming
/// config.json and the key for another model_type, an activation other than the tanh GELU ("gelu_new",
/// "gelu_pytorch_tanh"), unscaled or layer-scaled attention scores, or cross-attention.
inline io::LlamaConfig hf_gpt2_config(const io::HfDirectory& dir) {
  const std::string type = dir.config_string("model_type");
  if (type != "gpt2") dir.wrong("model_type", type, "\"gpt2\"");
  if (const std::string act = dir.config_string("activation_function", "gelu_new");
      act != "gelu_new" && act != "gelu_pytorch_tanh")
    dir.wrong("activation_function", act, "\"gelu_new\" or \"gelu_pytorch_tanh\" (GELU with tanh)");
  if (!dir.config_bool("scale_attn_weights", true)) dir.wrong("scale_attn_weights", false, "true");
  for (const char* key : {"scale_attn_by_inverse_layer_idx", "add_cross_attention"})
    if (dir.config_bool(key, false)) dir.wrong(key, true, "false");
  io::LlamaConfig c;
  c.dim = dir.config_int("n_embd", 768);
  c.n_layers = dir.config_int("n_layer", 12);
  c.n_heads = dir.config_int("n_head", 12);
  c.n_kv_heads = c.n_heads;
  c.hidden_dim = dir.config_int("n_inner", 4 * c.dim);
  c.vocab_size = dir.config_int("vocab_size", 50257);
  c.seq_len = dir.config_int("n_positions", 1024);
  c.norm_eps = static_cast<float>(dir.config_number("layer_norm_epsilon", 1e-5));
  c.shared_classifier = dir.config_bool("tie_word_embeddings", true);
  try {
    Gpt2Architecture::validate(c, "hf_gpt2_config");
  } catch (const config_error& e) {
    throw format_error(polyformer::detail::cat(dir.path(), "/config.json: ", e.what()));
  }
  return c;
}

/// Reads the GPT-2 in `directory` into a Gpt2 over linear policy `Lin` and attention policy `attention`. Every
/// tensor must be present with the shape config.json implies (format_error naming the file, the tensor, expected
/// and found shapes); the old causal-mask buffers "h.<i>.attn.bias" / "attn.masked_bias" and a tied
/// "lm_head.weight" are skipped, anything else refused. `max_positions` (0: n_positions) caps the positions a
/// sequence may reach, and so the size of its KV state. `non_finite`: what an F16/BF16 weight holding NaN or Inf
/// does (refused by default: format_error naming the file and the tensor).
template <LinearPolicy Lin = Dense, IncrementalAttention Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix, Vector>
Gpt2<Attn, Lin> load_hf_gpt2(const std::string& directory, const Attn& attention = Attn{}, Index max_positions = 0,
                             io::NonFinite non_finite = io::NonFinite::refuse) {
  using polyformer::detail::cat;
  const io::HfDirectory dir = io::HfDirectory::open(directory, non_finite);
  io::LlamaConfig c = hf_gpt2_config(dir);
  const Index n_positions = c.seq_len;
  if (max_positions < 0 || max_positions > n_positions)
    throw config_error(cat("load_hf_gpt2: max_positions is ", max_positions, ", expected 0 (config.json's) or 1..",
                           n_positions, " (n_positions)"));
  if (max_positions > 0) c.seq_len = max_positions;
  const std::string base = dir.contains("transformer.wte.weight") ? "transformer." : "";
  const Index d = c.dim, h = c.hidden_dim;

  io::HfTensorMap t(dir, "load_hf_gpt2");
  const auto conv1d = [&](const std::string& hf, const std::string& ours, Index in, Index out) {
    t.take(base + hf + "weight", ours + "weight", {in, out}, {out, in}, io::HfTensorMap::transpose(in, out));
    t.take(base + hf + "bias", ours + "bias", {out});
  };
  const auto norm = [&](const std::string& hf) {
    t.take(base + hf + "weight", hf + "weight", {d});
    t.take(base + hf + "bias", hf + "bias", {d});
  };
  t.take(base + "wte.weight", "wte.weight", {c.vocab_size, d});
  t.take(base + "wpe.weight", "wpe.weight", {n_positions, d}, {c.seq_len, d},
         [&](const std::vector<float>& in, std::vector<float>& out) {  // the first seq_len positions
           std::copy_n(in.begin(), out.size(), out.begin());
         });
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string p = cat("h.", l, ".");
    norm(p + "ln_1.");
    conv1d(p + "attn.c_attn.", p + "attn.in_proj_", d, 3 * d);  // → in_proj_weight, in_proj_bias
    conv1d(p + "attn.c_proj.", p + "attn.c_proj.", d, d);
    norm(p + "ln_2.");
    conv1d(p + "mlp.c_fc.", p + "mlp.c_fc.", d, h);
    conv1d(p + "mlp.c_proj.", p + "mlp.c_proj.", h, d);
    t.ignore(base + p + "attn.bias");  // the causal mask as a buffer, in older checkpoints
    t.ignore(base + p + "attn.masked_bias");
  }
  norm("ln_f.");
  if (c.shared_classifier) t.ignore("lm_head.weight");  // tied: the embedding is the classifier
  else t.take("lm_head.weight", "lm_head.weight", {c.vocab_size, d});
  t.refuse_others("GPT-2 with this config.json");

  auto model = make_gpt2<Lin>(c, attention);
  if (c.shared_classifier && model.classifier() != nullptr)  // a tied classifier of its own (Int8)
    t.alias("lm_head.weight", "wte.weight");
  load_state_dict(parameters_of(model), t.refs());
  return model;
}

}  // namespace polyformer
