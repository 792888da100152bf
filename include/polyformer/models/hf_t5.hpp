#pragma once
/// \file T5 from a Hugging Face directory (`T5ForConditionalGeneration`, io/hf_directory.hpp): config.json's sizes and
/// the safetensors weights (F32, F16 or BF16) under transformers' names, which are the model's own. The embedding's
/// copies under encoder.embed_tokens / decoder.embed_tokens are the shared one and are not read.

#include <string>

#include "polyformer/io/hf_directory.hpp"
#include "polyformer/io/hf_tensor_map.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/models/t5.hpp"

namespace polyformer {

/// The sizes of the T5 in `dir` (defaults as transformers' T5Config). Throws format_error naming config.json and
/// the key for another model_type or an unusable size; `gated` receives whether feed_forward_proj is gated-gelu
/// ("relu" otherwise; anything else is refused).
inline T5Config hf_t5_config(const io::HfDirectory& dir, bool& gated) {
  const std::string type = dir.config_string("model_type");
  if (type != "t5") dir.wrong("model_type", type, "\"t5\"");
  const std::string ff = dir.config_string("feed_forward_proj", "relu");
  if (ff != "relu" && ff != "gated-gelu") dir.wrong("feed_forward_proj", ff, "\"relu\" or \"gated-gelu\"");
  gated = ff == "gated-gelu";
  T5Config c;
  c.vocab_size = dir.config_int("vocab_size", 32128);
  c.d_model = dir.config_int("d_model", 512);
  c.d_kv = dir.config_int("d_kv", 64);
  c.n_heads = dir.config_int("num_heads", 8);
  c.d_ff = dir.config_int("d_ff", 2048);
  c.n_layers = dir.config_int("num_layers", 6);
  c.n_decoder_layers = dir.config_int("num_decoder_layers", c.n_layers);
  c.num_buckets = dir.config_int("relative_attention_num_buckets", 32);
  c.max_distance = dir.config_int("relative_attention_max_distance", 128);
  c.norm_eps = static_cast<float>(dir.config_number("layer_norm_epsilon", 1e-6));
  c.tied = dir.config_bool("tie_word_embeddings", true);
  c.decoder_start_token_id = static_cast<int>(dir.config_int("decoder_start_token_id", 0));
  try {
    c.validate("hf_t5_config");
  } catch (const config_error& e) {
    throw format_error(polyformer::detail::cat(dir.path(), "/config.json: ", e.what()));
  }
  return c;
}

/// Reads the T5ForConditionalGeneration in `directory` with FFN activation `Act` (ReLU for feed_forward_proj
/// "relu", GeGLUTanh for "gated-gelu": format_error naming config.json for the other) over linear policy `Lin` and
/// attention policy `attention` (T5's relative position bias added to its scores: make_t5).
/// Every tensor must be present with the shape config.json implies; nothing else may be there. `non_finite`: what an
/// F16/BF16 weight holding NaN or Inf does (refused by default: format_error naming the file and the tensor).
template <ActivationPolicy Act = ReLU, LinearPolicy Lin = Dense, AttentionPolicy Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix>
T5<Act, Lin, Attn> load_hf_t5(const std::string& directory, const Attn& attention = Attn{},
                              io::NonFinite non_finite = io::NonFinite::refuse) {
  const io::HfDirectory dir = io::HfDirectory::open(directory, non_finite);
  bool gated = false;
  const T5Config c = hf_t5_config(dir, gated);
  if (gated != Act::gated)
    dir.wrong("feed_forward_proj", gated ? "gated-gelu" : "relu",
              std::string(Act::gated ? "\"gated-gelu\"" : "\"relu\"") + " for load_hf_t5<" + Act::name + ">");
  dir.require_stored_values("load_hf_t5", c.parameter_count(gated));  // before make_t5 allocates them
  auto model = make_t5<Act, Lin, Attn>(c, attention);
  io::HfTensorMap t(dir, "load_hf_t5");
  const ParameterList params = parameters_of(model);  // named: the loop refers into it
  for (const Parameter& p : params.items()) t.take(p.name, p.name, p.shape);
  t.ignore("encoder.embed_tokens.weight");
  t.ignore("decoder.embed_tokens.weight");
  t.refuse_others("T5 with this config.json");
  load_state_dict(parameters_of(model), t.refs());
  return model;
}

}  // namespace polyformer
