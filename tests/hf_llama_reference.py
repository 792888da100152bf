#!/usr/bin/env python3
"""Hugging Face LlamaForCausalLM directories with random weights, and their logits, for
tests/test_models_hf_llama.cpp.

The forward below is written here from transformers' modeling_llama.py (LlamaRMSNorm, rotate_half rotary
embeddings with rope_theta, repeat_kv for grouped-query attention, the SiLU-gated MLP, a tied or untied lm_head),
in float64 over the weights as stored (BF16 weights rounded first). Each case is a directory DIR/<case>/ with
config.json and the weights as transformers writes them, and DIR/<case>.reference.safetensors with "ids"
(batch, n) as floats and "logits" (batch, n, vocab).
  tied_f32: 4 heads over 2 kv heads (head_dim 8), tied embeddings, rope_theta 500000, model.safetensors;
  untied_bf16_sharded: 6 heads (head_dim 6), untied lm_head, BF16 weights over two shards and an index;
  f16_inv_freq: F16 weights, an old checkpoint's rotary inv_freq buffers (ignored, as transformers does);
  long_f32: n = 300, past the edges of the attention's tiles (128 queries by 256 keys).
usage: hf_llama_reference.py --out-dir DIR"""
import argparse
import json
import math
import os

import torch

from safetensors_writer import save_hf_weights, save_safetensors

TORCH_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def rms_norm(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def forward(cfg, w, ids):
    """LlamaForCausalLM's logits for ids (n,), float64."""
    d, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    kv_heads, hd, eps = cfg["num_key_value_heads"], d // heads, cfg["rms_norm_eps"]
    n = ids.shape[0]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.outer(torch.arange(n, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
    causal = torch.full((n, n), -math.inf, dtype=torch.float64).triu(1)
    x = w["model.embed_tokens.weight"][ids]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).view(n, heads, hd).transpose(0, 1)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).view(n, kv_heads, hd).transpose(0, 1)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).view(n, kv_heads, hd).transpose(0, 1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(heads // kv_heads, dim=0)  # repeat_kv: head i reads kv head i // n_rep
        v = v.repeat_interleave(heads // kv_heads, dim=0)
        scores = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + causal, dim=-1)
        attn = (scores @ v).transpose(0, 1).reshape(n, d)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return x @ head.T


def make_case(out_dir, name, cfg, dtype, shards, extra, seed, batch, n):
    g = torch.Generator().manual_seed(seed)
    d, hidden, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    q_rows = cfg["num_attention_heads"] * (d // cfg["num_attention_heads"])
    kv_rows = cfg["num_key_value_heads"] * (d // cfg["num_attention_heads"])
    rnd = lambda *shape, scale=0.2: torch.randn(*shape, generator=g) * scale
    w = {"model.embed_tokens.weight": rnd(vocab, d, scale=1.0)}
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        w[p + "self_attn.q_proj.weight"] = rnd(q_rows, d)
        w[p + "self_attn.k_proj.weight"] = rnd(kv_rows, d)
        w[p + "self_attn.v_proj.weight"] = rnd(kv_rows, d)
        w[p + "self_attn.o_proj.weight"] = rnd(d, q_rows)
        w[p + "mlp.gate_proj.weight"] = rnd(hidden, d)
        w[p + "mlp.up_proj.weight"] = rnd(hidden, d)
        w[p + "mlp.down_proj.weight"] = rnd(d, hidden)
        w[p + "input_layernorm.weight"] = 1.0 + rnd(d, scale=0.1)
        w[p + "post_attention_layernorm.weight"] = 1.0 + rnd(d, scale=0.1)
    w["model.norm.weight"] = 1.0 + rnd(d, scale=0.1)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(vocab, d)
    stored = {k: v.to(TORCH_TYPES[dtype]).to(torch.float64) for k, v in w.items()}  # what the files hold

    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama"), f, indent=2)
    files = dict(w, **extra)
    save_hf_weights(directory, files, dtype, shards)

    ids = torch.randint(0, vocab, (batch, n), generator=g)
    logits = torch.stack([forward(cfg, stored, ids[b]) for b in range(batch)])
    save_safetensors(os.path.join(out_dir, name + ".reference.safetensors"), {"ids": ids, "logits": logits})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    base = {"hidden_act": "silu", "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "vocab_size": 97}
    make_case(args.out_dir, "tied_f32",
              dict(base, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=True),
              "F32", 1, {}, seed=1, batch=2, n=37)
    make_case(args.out_dir, "untied_bf16_sharded",
              dict(base, hidden_size=36, intermediate_size=50, num_hidden_layers=3, num_attention_heads=6,
                   num_key_value_heads=6, rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False),
              "BF16", 2, {}, seed=2, batch=2, n=70)
    hd = 16
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    make_case(args.out_dir, "f16_inv_freq",
              dict(base, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, rope_theta=10000.0, tie_word_embeddings=False),
              "F16", 1, {f"model.layers.{l}.self_attn.rotary_emb.inv_freq": inv_freq for l in range(2)},
              seed=3, batch=1, n=20)
    make_case(args.out_dir, "long_f32",
              dict(base, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=320),
              "F32", 1, {}, seed=4, batch=2, n=300)


if __name__ == "__main__":
    main()
