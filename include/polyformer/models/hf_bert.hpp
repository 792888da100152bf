#pragma once
/// \file BERT from a Hugging Face directory (io/hf_directory.hpp): `BertModel` (tensors "embeddings.*",
/// "encoder.*", "pooler.*") or a model with heads (`BertForMaskedLM`, `BertForPreTraining`: the same under
/// "bert.", and the MLM head under "cls.predictions."), F32, F16 or BF16. Older checkpoints name LayerNorm's
/// tensors "gamma" and "beta"; they are read as "weight" and "bias", as transformers does. RoBERTa (model_type
/// "roberta": `RobertaModel`, `RobertaForMaskedLM` under "roberta." with its head under "lm_head.") is the same
/// model with positions counted from pad_token_id.

#include <string>
#include <vector>

#include "polyformer/io/hf_directory.hpp"
#include "polyformer/io/hf_tensor_map.hpp"
#include "polyformer/io/state_dict.hpp"
#include "polyformer/models/bert.hpp"

namespace polyformer {

/// The sizes of the BERT in `dir` (config.json; defaults as transformers' BertConfig). Throws format_error
/// naming config.json and the key for another model_type, an activation other than "gelu" (the erf form),
/// relative position embeddings, or a decoder configuration.
inline BertConfig hf_bert_config(const io::HfDirectory& dir) {
  const std::string type = dir.config_string("model_type");
  if (type != "bert" && type != "roberta") dir.wrong("model_type", type, "\"bert\" or \"roberta\"");
  const bool roberta = type == "roberta";
  if (const std::string act = dir.config_string("hidden_act", "gelu"); act != "gelu")
    dir.wrong("hidden_act", act, "\"gelu\" (GELU with erf)");
  if (const std::string pos = dir.config_string("position_embedding_type", "absolute"); pos != "absolute")
    dir.wrong("position_embedding_type", pos, "\"absolute\"");
  for (const char* key : {"is_decoder", "add_cross_attention"})
    if (dir.config_bool(key, false)) dir.wrong(key, true, "false (an encoder)");
  if (!dir.config_bool("tie_word_embeddings", true))
    dir.wrong("tie_word_embeddings", false, "true (the MLM decoder is the word embeddings)");
  BertConfig c;
  c.vocab_size = dir.config_int("vocab_size", roberta ? 50265 : 30522);
  c.dim = dir.config_int("hidden_size", 768);
  c.n_layers = dir.config_int("num_hidden_layers", 12);
  c.n_heads = dir.config_int("num_attention_heads", 12);
  c.hidden_dim = dir.config_int("intermediate_size", 3072);
  c.max_positions = dir.config_int("max_position_embeddings", roberta ? 514 : 512);
  c.type_vocab_size = dir.config_int("type_vocab_size", roberta ? 1 : 2);
  c.norm_eps = static_cast<float>(dir.config_number("layer_norm_eps", roberta ? 1e-5 : 1e-12));
  if (roberta) c.padding_idx = dir.config_int("pad_token_id", 1);
  try {
    c.validate("hf_bert_config");
  } catch (const config_error& e) {
    throw format_error(polyformer::detail::cat(dir.path(), "/config.json: ", e.what()));
  }
  return c;
}

/// Reads the BERT in `directory` into a Bert over linear policy `Lin` and attention policy `attention`: the
/// encoder, the pooler when the directory has "pooler.dense.*", the MLM head when it has "cls.predictions.*"
/// (RoBERTa: "lm_head.*").
/// Every tensor of the encoder must be present with the shape config.json implies (format_error naming the file,
/// the tensor, expected and found shapes). Ignored, as transformers ignores them for these classes: the
/// "position_ids"/"token_type_ids" buffers, the next-sentence head "cls.seq_relationship.*" and the MLM decoder's
/// copies of the word embeddings and of its bias. Anything else is refused. `non_finite`: what an F16/BF16 weight
/// holding NaN or Inf does (refused by default: format_error naming the file and the tensor).
template <LinearPolicy Lin = Dense, AttentionPolicy Attn = FullAttention>
  requires std::constructible_from<Lin, Matrix, Vector>
Bert<Attn, Lin> load_hf_bert(const std::string& directory, const Attn& attention = Attn{},
                             io::NonFinite non_finite = io::NonFinite::refuse) {
  using polyformer::detail::cat;
  const io::HfDirectory dir = io::HfDirectory::open(directory, non_finite);
  const BertConfig c = hf_bert_config(dir);
  const bool roberta = dir.config_string("model_type") == "roberta";
  const std::string family = roberta ? "roberta." : "bert.";
  const std::string base = dir.contains(family + "embeddings.word_embeddings.weight") ? family : "";
  const bool pooler = dir.contains(base + "pooler.dense.weight");
  const bool mlm = dir.contains(roberta ? "lm_head.dense.weight" : "cls.predictions.transform.dense.weight");
  const Index d = c.dim, h = c.hidden_dim;

  io::HfTensorMap t(dir, "load_hf_bert");
  // `ours` from the directory's `prefix + ours`, or its older gamma/beta spelling.
  const auto take = [&](const std::string& prefix, const std::string& ours, std::vector<std::int64_t> shape) {
    std::string hf = prefix + ours;
    if (!t.has(hf) && ours.ends_with("LayerNorm.weight")) hf = prefix + ours.substr(0, ours.size() - 6) + "gamma";
    else if (!t.has(hf) && ours.ends_with("LayerNorm.bias")) hf = prefix + ours.substr(0, ours.size() - 4) + "beta";
    if (!t.has(hf)) hf = prefix + ours;  // named in the error as transformers writes it now
    t.take(hf, ours, std::move(shape));
  };
  const auto linear = [&](const std::string& prefix, const std::string& ours, Index out, Index in) {
    take(prefix, ours + "weight", {out, in});
    take(prefix, ours + "bias", {out});
  };
  const auto norm = [&](const std::string& prefix, const std::string& ours) {
    take(prefix, ours + "weight", {d});
    take(prefix, ours + "bias", {d});
  };
  take(base, "embeddings.word_embeddings.weight", {c.vocab_size, d});
  take(base, "embeddings.position_embeddings.weight", {c.max_positions, d});
  take(base, "embeddings.token_type_embeddings.weight", {c.type_vocab_size, d});
  norm(base, "embeddings.LayerNorm.");
  t.ignore(base + "embeddings.position_ids");
  t.ignore(base + "embeddings.token_type_ids");
  for (Index l = 0; l < c.n_layers; ++l) {
    const std::string layer = cat("encoder.layer.", l, ".");
    linear(base, layer + "attention.self.query.", d, d);
    linear(base, layer + "attention.self.key.", d, d);
    linear(base, layer + "attention.self.value.", d, d);
    linear(base, layer + "attention.output.dense.", d, d);
    norm(base, layer + "attention.output.LayerNorm.");
    linear(base, layer + "intermediate.dense.", h, d);
    linear(base, layer + "output.dense.", d, h);
    norm(base, layer + "output.LayerNorm.");
  }
  if (pooler) linear(base, "pooler.dense.", d, d);
  if (mlm && roberta) {  // RobertaLMHead: BERT's head under other names
    t.take("lm_head.dense.weight", "cls.predictions.transform.dense.weight", {d, d});
    t.take("lm_head.dense.bias", "cls.predictions.transform.dense.bias", {d});
    t.take("lm_head.layer_norm.weight", "cls.predictions.transform.LayerNorm.weight", {d});
    t.take("lm_head.layer_norm.bias", "cls.predictions.transform.LayerNorm.bias", {d});
    // lm_head.decoder.bias is lm_head.bias in transformers: saved under either name.
    const bool own = t.has("lm_head.bias") || !t.has("lm_head.decoder.bias");
    t.take(own ? "lm_head.bias" : "lm_head.decoder.bias", "cls.predictions.bias", {c.vocab_size});
    t.ignore("lm_head.decoder.bias");
    t.ignore("lm_head.decoder.weight");  // tied: the word embeddings
  } else if (mlm) {
    linear("", "cls.predictions.transform.dense.", d, d);
    norm("", "cls.predictions.transform.LayerNorm.");
    if (t.has("cls.predictions.bias") || !t.has("cls.predictions.decoder.bias")) {
      take("", "cls.predictions.bias", {c.vocab_size});
      t.ignore("cls.predictions.decoder.bias");
    } else {  // saved under the decoder's name, the two being one tensor in transformers
      t.take("cls.predictions.decoder.bias", "cls.predictions.bias", {c.vocab_size});
    }
    t.ignore("cls.predictions.decoder.weight");  // tied: the word embeddings
  }
  for (const char* nsp : {"cls.seq_relationship.weight", "cls.seq_relationship.bias"}) t.ignore(nsp);
  t.refuse_others(roberta ? "RoBERTa with this config.json" : "BERT with this config.json");

  auto model = make_bert<Lin>(c, pooler, mlm, attention);
  load_state_dict(parameters_of(model), t.refs());
  return model;
}

}  // namespace polyformer
