#!/usr/bin/env python3
"""Hugging Face BERT directories with random weights, and their outputs, for tests/test_models_hf_bert.cpp.

The forward below is written here from transformers' modeling_bert.py (BertEmbeddings: word + absolute
position + token type, LayerNorm; BertSelfAttention with the padding mask added to the scores; BertSelfOutput
and BertOutput: dense, residual, LayerNorm; GELU with erf; BertPooler: tanh of a dense layer over the first token;
BertLMPredictionHead: dense, GELU, LayerNorm, the word embeddings as decoder, plus a bias), in float64 over the
weights as stored (F16/BF16 weights rounded first). Each case is a directory DIR/<case>/ with config.json and the
weights as transformers writes them, and DIR/<case>.reference.safetensors with "ids", "attention_mask",
"token_type_ids" (batch, n) as floats, "last_hidden_state" (batch, n, d), and "pooler_output" (batch, d) and/or
"logits" (batch, n, vocab) as the case has them.
  model_f32: BertModel (no prefix, pooler), 4 heads, padded batch of 3 with mixed token types, n = 37;
  masked_lm_bf16_sharded: BertForMaskedLM ("bert." prefix, no pooler), BF16 over two shards with an index, the
    decoder's tied copy of the embeddings stored too, n = 70;
  pretraining_f16_gamma: BertForPreTraining (pooler, MLM and next-sentence heads), F16, LayerNorm tensors named
    gamma/beta, the bias stored as cls.predictions.decoder.bias, a position_ids buffer, n = 20; with `texts`, also a
    vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK], then "w5", "w6", … named by their ids) and the outputs of TEXTS as
    BertTokenizer would encode them ([CLS], each word's id, [SEP]; padded), prefixed "text_", and of one text pair
    ([CLS] A [SEP] B [SEP] with type ids 0, then 1 after the first [SEP]), prefixed "pair_" (for examples/encode);
  roberta_mlm_f32: RobertaForMaskedLM ("roberta." prefix, head under lm_head., the decoder's tied copy stored too),
    one token type; positions from the ids as modeling_roberta.py's create_position_ids_from_input_ids counts them
    (pad_token_id + the count of non-pad ids so far; a pad id, padding or not, at pad_token_id), padding with the pad
    id, one attended pad id inside a sequence, and the longest sequence the positions allow (n = 30 of 32);
  roberta_model_bf16: RobertaModel (no prefix, pooler), BF16, pad_token_id 0;
  long_f32: BertModel over n = 300 with sequences of 300, 131 and 1 tokens, past the edges of the attention's
    tiles (128 queries by 256 keys).
usage: hf_bert_reference.py --out-dir DIR"""
import argparse
import json
import math
import os

import torch

from safetensors_writer import save_hf_weights, save_safetensors

TORCH_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def dense(x, w, prefix):
    return x @ w[prefix + "weight"].T + w[prefix + "bias"]


def forward(cfg, w, ids, mask, types):
    """Last hidden state (n, d), pooler output (d) or None, MLM logits (n, vocab) or None, for one sequence."""
    d, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    hd, n = d // heads, ids.shape[0]
    e = "embeddings."
    if cfg.get("model_type") == "roberta":
        not_pad = (ids != cfg["pad_token_id"]).long()
        positions = torch.cumsum(not_pad, 0) * not_pad + cfg["pad_token_id"]
    else:
        positions = torch.arange(n)
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][positions] \
        + w[e + "token_type_embeddings.weight"][types]
    x = layer_norm(x, w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"], eps)
    padding = torch.where(mask == 0, -math.inf, 0.0).to(torch.float64)  # transformers: (1 - mask) * finfo.min
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        q = dense(x, w, p + "attention.self.query.").view(n, heads, hd).transpose(0, 1)
        k = dense(x, w, p + "attention.self.key.").view(n, heads, hd).transpose(0, 1)
        v = dense(x, w, p + "attention.self.value.").view(n, heads, hd).transpose(0, 1)
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + padding, dim=-1)
        context = (probs @ v).transpose(0, 1).reshape(n, d)
        x = layer_norm(dense(context, w, p + "attention.output.dense.") + x,
                       w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps)
        inner = gelu(dense(x, w, p + "intermediate.dense."))
        x = layer_norm(dense(inner, w, p + "output.dense.") + x,
                       w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps)
    pooled = torch.tanh(dense(x[0], w, "pooler.dense.")) if "pooler.dense.weight" in w else None
    logits = None
    if "cls.predictions.transform.dense.weight" in w:
        t = gelu(dense(x, w, "cls.predictions.transform.dense."))
        t = layer_norm(t, w["cls.predictions.transform.LayerNorm.weight"],
                       w["cls.predictions.transform.LayerNorm.bias"], eps)
        logits = t @ w[e + "word_embeddings.weight"].T + w["cls.predictions.bias"]
    return x, pooled, logits


def make_case(out_dir, name, cfg, dtype, shards, base, pooler, mlm, nsp, old_norm_names, bias_on_decoder,
              store_decoder_weight, position_ids, seed, lengths, n, texts=(), pair=None):
    g = torch.Generator().manual_seed(seed)
    d, inner, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    rnd = lambda *shape, scale=0.2: torch.randn(*shape, generator=g) * scale
    w = {"embeddings.word_embeddings.weight": rnd(vocab, d, scale=1.0),
         "embeddings.position_embeddings.weight": rnd(cfg["max_position_embeddings"], d, scale=0.5),
         "embeddings.token_type_embeddings.weight": rnd(cfg["type_vocab_size"], d, scale=0.5)}

    def linear(prefix, out, inp):
        w[prefix + "weight"], w[prefix + "bias"] = rnd(out, inp), rnd(out, scale=0.1)

    def norm(prefix):
        w[prefix + "weight"], w[prefix + "bias"] = 1.0 + rnd(d, scale=0.1), rnd(d, scale=0.1)

    norm("embeddings.LayerNorm.")
    for l in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{l}."
        for part in ("query", "key", "value"):
            linear(p + f"attention.self.{part}.", d, d)
        linear(p + "attention.output.dense.", d, d)
        norm(p + "attention.output.LayerNorm.")
        linear(p + "intermediate.dense.", inner, d)
        linear(p + "output.dense.", d, inner)
        norm(p + "output.LayerNorm.")
    if pooler:
        linear("pooler.dense.", d, d)
    if mlm:
        linear("cls.predictions.transform.dense.", d, d)
        norm("cls.predictions.transform.LayerNorm.")
        w["cls.predictions.bias"] = rnd(vocab, scale=0.1)
    stored = {k: v.to(TORCH_TYPES[dtype]).to(torch.float64) for k, v in w.items()}  # what the files hold

    # The files: the encoder (and pooler) under `base`, the heads under cls. (RoBERTa: lm_head.), in transformers'
    # spellings.
    roberta = cfg.get("model_type") == "roberta"
    roberta_head = {"cls.predictions.transform.dense.": "lm_head.dense.",
                    "cls.predictions.transform.LayerNorm.": "lm_head.layer_norm.", "cls.predictions.": "lm_head."}
    files = {}
    for k, v in w.items():
        key = k if k.startswith("cls.") else base + k
        if roberta and key.startswith("cls."):
            old = next(prefix for prefix in roberta_head if key.startswith(prefix))
            key = roberta_head[old] + key[len(old):]
        if old_norm_names and "LayerNorm." in key:
            key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        if bias_on_decoder and key == "cls.predictions.bias":
            key = "cls.predictions.decoder.bias"
        files[key] = v
    if store_decoder_weight:
        files["lm_head.decoder.weight" if roberta else "cls.predictions.decoder.weight"] = \
            w["embeddings.word_embeddings.weight"]
    if nsp:
        files["cls.seq_relationship.weight"], files["cls.seq_relationship.bias"] = rnd(2, d), rnd(2)
    if position_ids:
        files[base + "embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"]).view(1, -1).float()

    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    family = "Roberta" if roberta else "Bert"
    architecture = family + ("ForPreTraining" if nsp else "ForMaskedLM" if mlm else "Model")
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dict(cfg, architectures=[architecture], model_type="roberta" if roberta else "bert"), f, indent=2)
    save_hf_weights(directory, files, dtype, shards)

    batch = len(lengths)
    ids = torch.randint(0, vocab, (batch, n), generator=g)
    mask = torch.zeros(batch, n, dtype=torch.long)
    for b, length in enumerate(lengths):
        mask[b, :length] = 1
        if roberta:  # padded with the pad id; the first sequence also holds one (attended) inside it
            ids[b, length:] = cfg["pad_token_id"]
            if b == 0:
                ids[b, length // 2] = cfg["pad_token_id"]
    types = torch.randint(0, cfg["type_vocab_size"], (batch, n), generator=g)
    outs = [forward(cfg, stored, ids[b], mask[b], types[b]) for b in range(batch)]
    ref = {"ids": ids, "attention_mask": mask, "token_type_ids": types,
           "last_hidden_state": torch.stack([o[0] for o in outs])}
    if pooler:
        ref["pooler_output"] = torch.stack([o[1] for o in outs])
    if mlm:
        ref["logits"] = torch.stack([o[2] for o in outs])
    if texts:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokens = specials + [f"w{i}" for i in range(len(specials), vocab)]
        with open(os.path.join(directory, "vocab.txt"), "w") as f:
            f.write("\n".join(tokens) + "\n")
        encoded = [[2] + [tokens.index(word) for word in text.split()] + [3] for text in texts]
        longest = max(len(e) for e in encoded)
        text_ids = torch.tensor([e + [0] * (longest - len(e)) for e in encoded])
        text_mask = torch.tensor([[1] * len(e) + [0] * (longest - len(e)) for e in encoded])
        text_types = torch.zeros_like(text_ids)
        outs = [forward(cfg, stored, text_ids[b], text_mask[b], text_types[b]) for b in range(len(texts))]
        ref.update({"text_ids": text_ids, "text_attention_mask": text_mask,
                    "text_last_hidden_state": torch.stack([o[0] for o in outs]),
                    "text_pooler_output": torch.stack([o[1] for o in outs]),
                    "text_logits": torch.stack([o[2] for o in outs])})
    if pair:  # BertTokenizer's pair: [CLS] A [SEP] B [SEP], type ids 0 through the first [SEP], 1 after it
        first, second = ([tokens.index(word) for word in text.split()] for text in pair)
        pair_ids = torch.tensor([2] + first + [3] + second + [3])
        pair_types = torch.tensor([0] * (len(first) + 2) + [1] * (len(second) + 1))
        o = forward(cfg, stored, pair_ids, torch.ones_like(pair_ids), pair_types)
        ref.update({"pair_ids": pair_ids, "pair_token_type_ids": pair_types, "pair_last_hidden_state": o[0],
                    "pair_pooler_output": o[1]})
    save_safetensors(os.path.join(out_dir, name + ".reference.safetensors"), ref)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    base = {"hidden_act": "gelu", "max_position_embeddings": 96, "layer_norm_eps": 1e-12, "vocab_size": 101,
            "type_vocab_size": 2, "position_embedding_type": "absolute"}
    make_case(args.out_dir, "model_f32",
              dict(base, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4),
              "F32", 1, "", pooler=True, mlm=False, nsp=False, old_norm_names=False, bias_on_decoder=False,
              store_decoder_weight=False, position_ids=False, seed=11, lengths=[37, 20, 1], n=37)
    make_case(args.out_dir, "masked_lm_bf16_sharded",
              dict(base, hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=6,
                   layer_norm_eps=1e-5, type_vocab_size=3),
              "BF16", 2, "bert.", pooler=False, mlm=True, nsp=False, old_norm_names=False, bias_on_decoder=False,
              store_decoder_weight=True, position_ids=False, seed=12, lengths=[70, 64], n=70)
    make_case(args.out_dir, "pretraining_f16_gamma",
              dict(base, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2),
              "F16", 1, "bert.", pooler=True, mlm=True, nsp=True, old_norm_names=True, bias_on_decoder=True,
              store_decoder_weight=False, position_ids=True, seed=13, lengths=[20], n=20,
              texts=["w10 w11 [MASK] w12", "w20 [MASK] w21 w22 [MASK] w23 w24 w99 w100"],
              pair=["w10 w11 w12", "w30 w31 w32 w33"])
    roberta = dict(base, model_type="roberta", layer_norm_eps=1e-5, type_vocab_size=1, pad_token_id=1,
                   max_position_embeddings=32)
    make_case(args.out_dir, "roberta_mlm_f32",
              dict(roberta, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4),
              "F32", 1, "roberta.", pooler=False, mlm=True, nsp=False, old_norm_names=False, bias_on_decoder=False,
              store_decoder_weight=True, position_ids=False, seed=14, lengths=[30, 17, 2], n=30)
    make_case(args.out_dir, "roberta_model_bf16",
              dict(roberta, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                   pad_token_id=0, max_position_embeddings=40),
              "BF16", 1, "", pooler=True, mlm=False, nsp=False, old_norm_names=False, bias_on_decoder=False,
              store_decoder_weight=False, position_ids=True, seed=15, lengths=[12, 25], n=25)
    make_case(args.out_dir, "long_f32",
              dict(base, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   max_position_embeddings=320),
              "F32", 1, "", pooler=True, mlm=False, nsp=False, old_norm_names=False, bias_on_decoder=False,
              store_decoder_weight=False, position_ids=False, seed=16, lengths=[300, 131, 1], n=300)


if __name__ == "__main__":
    main()
