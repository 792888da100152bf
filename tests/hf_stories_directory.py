#!/usr/bin/env python3
"""stories260K (shared/models: llama2.c's stories260K.bin and tok512.bin) rewritten as a Hugging Face Llama directory,
for tests/test_examples_generate_hf.cpp: `generate --model DIR` must print run.c's golden text from it.

The weights: llama2.c's legacy layout read here with numpy, written under LlamaForCausalLM's names. llama2.c rotates
adjacent pairs of each head and transformers the two halves (rotate_half), so q_proj's and k_proj's rows are
reordered as transformers' conversion script does in reverse: row 2j + c of a head goes to c·head_dim/2 + j.
The tokenizer: tok512.bin's pieces (llama2.c wrote U+2581 as a space; written back) as a tokenizer.json with
transformers' Llama pipeline (the legacy Prepend/Replace normalizer, BPE with byte fallback, <s> before a
sequence), its merges every split of a piece into two pieces, ranked by the merged piece's score (highest first):
the order llama2.c's encoder merges in. config.json names <s> as eos_token_id: run.c stops when the model produces
<s>, and generate stops at eos_token_id.
usage: hf_stories_directory.py --out-dir DIR --shared SHARED"""
import argparse
import json
import os
import struct

import numpy as np

from safetensors_writer import save_hf_weights


def read_checkpoint(path):
    with open(path, "rb") as f:
        dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("7i", f.read(28))
        data = np.frombuffer(f.read(), dtype="<f4")
    shared = vocab > 0
    vocab = abs(vocab)
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        t = data[at:at + n].reshape(shape)
        at += n
        return t

    head = dim // heads
    kv_dim = kv_heads * head
    w = {"tok": take(vocab, dim), "rms_att": take(layers, dim), "wq": take(layers, dim, dim),
         "wk": take(layers, kv_dim, dim), "wv": take(layers, kv_dim, dim), "wo": take(layers, dim, dim),
         "rms_ffn": take(layers, dim), "w1": take(layers, hidden, dim), "w2": take(layers, dim, hidden),
         "w3": take(layers, hidden, dim), "rms_final": take(dim)}
    take(seq_len, head // 2)  # freq_cis_real, freq_cis_imag: unused
    take(seq_len, head // 2)
    w["wcls"] = w["tok"] if shared else take(vocab, dim)
    cfg = dict(dim=dim, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, vocab=vocab, seq_len=seq_len,
               shared=shared)
    return cfg, w


def half_split(w, heads):
    """Adjacent-pair rows per head → transformers' halves: row 2j + c → c·half + j."""
    rows, cols = w.shape
    head = rows // heads
    return w.reshape(heads, head // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def read_tokenizer(path, vocab):
    pieces, scores = [], []
    with open(path, "rb") as f:
        f.read(4)  # max_token_length
        for _ in range(vocab):
            score, length = struct.unpack("fi", f.read(8))
            pieces.append(f.read(length).decode("utf-8"))
            scores.append(score)
    return pieces, scores


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--shared", required=True)
    args = parser.parse_args()
    out = os.path.join(args.out_dir, "stories260K")
    os.makedirs(out, exist_ok=True)
    cfg, w = read_checkpoint(os.path.join(args.shared, "models", "stories260K.bin"))

    tensors = {"model.embed_tokens.weight": w["tok"]}
    for l in range(cfg["layers"]):
        p = f"model.layers.{l}."
        tensors[p + "input_layernorm.weight"] = w["rms_att"][l]
        tensors[p + "self_attn.q_proj.weight"] = half_split(w["wq"][l], cfg["heads"])
        tensors[p + "self_attn.k_proj.weight"] = half_split(w["wk"][l], cfg["kv_heads"])
        tensors[p + "self_attn.v_proj.weight"] = w["wv"][l]
        tensors[p + "self_attn.o_proj.weight"] = w["wo"][l]
        tensors[p + "post_attention_layernorm.weight"] = w["rms_ffn"][l]
        tensors[p + "mlp.gate_proj.weight"] = w["w1"][l]
        tensors[p + "mlp.down_proj.weight"] = w["w2"][l]
        tensors[p + "mlp.up_proj.weight"] = w["w3"][l]
    tensors["model.norm.weight"] = w["rms_final"]
    if not cfg["shared"]:
        tensors["lm_head.weight"] = w["wcls"]
    save_hf_weights(out, {k: np.array(v) for k, v in tensors.items()}, "F32")  # copies: writable
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": cfg["dim"],
              "intermediate_size": cfg["hidden"], "num_hidden_layers": cfg["layers"],
              "num_attention_heads": cfg["heads"], "num_key_value_heads": cfg["kv_heads"],
              "vocab_size": cfg["vocab"], "max_position_embeddings": cfg["seq_len"], "rms_norm_eps": 1e-5,
              "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": cfg["shared"],
              "bos_token_id": 1, "eos_token_id": 1}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    pieces, scores = read_tokenizer(os.path.join(args.shared, "models", "tok512.bin"), cfg["vocab"])
    pieces = [p if p.startswith("<0x") or p in ("<unk>", "<s>", "</s>") else p.replace(" ", "\u2581") for p in pieces]
    ids = {p: i for i, p in enumerate(pieces)}
    merges = []
    for i, piece in enumerate(pieces):
        if i < 3 or piece.startswith("<0x"):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((-scores[i], i, ids[left], ids[right], left, right))
    merges.sort()

    def special(i):
        return {"id": i, "content": pieces[i], "single_word": False, "lstrip": False, "rstrip": False,
                "normalized": False, "special": True}

    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": [special(0), special(1), special(2)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"}, {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                           "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "}, {"type": "ByteFallback"},
            {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "vocab": ids,
                  "merges": [[m[4], m[5]] for m in merges]},
    }
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
