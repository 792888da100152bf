#!/usr/bin/env python3
"""Hugging Face GPT-2 directories with random weights, their logits and greedy continuations, for
tests/test_models_hf_gpt2.cpp.

The forward below is written here from transformers' modeling_gpt2.py (wte + wpe; per block ln_1, Conv1D c_attn
split into q, k, v, causal softmax of q·kᵀ/√head_dim, c_proj, residual, ln_2, Conv1D c_fc, tanh GELU ("gelu_new"),
c_proj, residual; ln_f; logits from wte, or from an untied lm_head), in float64 over the weights as stored (F16/BF16
weights rounded first). Conv1D weights are [in, out]: y = x·W + b. Each case is a directory DIR/<case>/ with
config.json and the weights as transformers writes them, and DIR/<case>.reference.safetensors with "ids" (batch, n)
and "logits" (batch, n, vocab), and "prompt" (p) with "greedy" (steps): the ids greedy decoding appends to it, each
step recomputed over the whole sequence; and "beam_<i>" with "beam_<i>_settings" (num_beams, max_new_tokens,
length_penalty, early_stopping as 1 True / 0 False / -1 "never", eos): beam search from the prompt as transformers
runs it (beam_search_reference.py), its EOS one of the greedy tokens so that hypotheses finish early.
  lm_head_f32: GPT2LMHeadModel ("transformer." prefix), 4 heads of 8, the tied lm_head.weight stored too;
  model_bf16_sharded: GPT2Model names (no prefix, as the original "gpt2" upload) with the old attn.bias /
    attn.masked_bias buffers, BF16 over two shards, 3 heads of 12;
  untied_f16: an untied lm_head, n_inner given, "gelu_pytorch_tanh", F16, 5 heads of 7 (an odd head size);
  long_f32: n = 300, past the edges of the attention's tiles (128 queries by 256 keys).
usage: hf_gpt2_reference.py --out-dir DIR"""
import argparse
import json
import math
import os

import torch

from beam_search_reference import beam_search
from safetensors_writer import save_hf_weights, save_safetensors

# (num_beams, max_new_tokens, length_penalty, early_stopping, index of the greedy token that is EOS)
BEAM_SETTINGS = [(3, 12, 1.0, False, 2), (4, 10, 0.6, True, 1), (2, 8, 1.5, "never", 3), (5, 9, -0.5, False, 0)]

TORCH_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * w + b


def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def conv1d(x, w, prefix):
    return x @ w[prefix + "weight"] + w[prefix + "bias"]


def forward(cfg, w, ids):
    """Logits (n, vocab) for ids (n,), float64."""
    d, heads, eps = cfg["n_embd"], cfg["n_head"], cfg["layer_norm_epsilon"]
    hd, n = d // heads, ids.shape[0]
    causal = torch.full((n, n), -math.inf, dtype=torch.float64).triu(1)
    x = w["wte.weight"][ids] + w["wpe.weight"][:n]
    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        h = layer_norm(x, w[p + "ln_1.weight"], w[p + "ln_1.bias"], eps)
        q, k, v = conv1d(h, w, p + "attn.c_attn.").split(d, dim=-1)
        q, k, v = (t.view(n, heads, hd).transpose(0, 1) for t in (q, k, v))
        probs = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(hd) + causal, dim=-1)
        x = x + conv1d((probs @ v).transpose(0, 1).reshape(n, d), w, p + "attn.c_proj.")
        h = layer_norm(x, w[p + "ln_2.weight"], w[p + "ln_2.bias"], eps)
        x = x + conv1d(gelu_new(conv1d(h, w, p + "mlp.c_fc.")), w, p + "mlp.c_proj.")
    x = layer_norm(x, w["ln_f.weight"], w["ln_f.bias"], eps)
    head = w["wte.weight"] if cfg.get("tie_word_embeddings", True) else w["lm_head.weight"]
    return x @ head.T


def make_case(out_dir, name, cfg, dtype, shards, prefix, store_lm_head, mask_buffers, seed, batch, n, steps):
    g = torch.Generator().manual_seed(seed)
    d, vocab, positions = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"]
    inner = cfg.get("n_inner") or 4 * d
    rnd = lambda *shape, scale=0.2: torch.randn(*shape, generator=g) * scale
    w = {"wte.weight": rnd(vocab, d, scale=1.0), "wpe.weight": rnd(positions, d, scale=0.5)}

    def conv(p, inp, out):
        w[p + "weight"], w[p + "bias"] = rnd(inp, out), rnd(out, scale=0.1)

    def norm(p):
        w[p + "weight"], w[p + "bias"] = 1.0 + rnd(d, scale=0.1), rnd(d, scale=0.1)

    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        norm(p + "ln_1.")
        conv(p + "attn.c_attn.", d, 3 * d)
        conv(p + "attn.c_proj.", d, d)
        norm(p + "ln_2.")
        conv(p + "mlp.c_fc.", d, inner)
        conv(p + "mlp.c_proj.", inner, d)
    norm("ln_f.")
    if not cfg.get("tie_word_embeddings", True):
        w["lm_head.weight"] = rnd(vocab, d)
    stored = {k: v.to(TORCH_TYPES[dtype]).to(torch.float64) for k, v in w.items()}  # what the files hold

    files = {(k if k == "lm_head.weight" else prefix + k): v for k, v in w.items()}
    if store_lm_head:
        files["lm_head.weight"] = w["wte.weight"]
    if mask_buffers:
        for l in range(cfg["n_layer"]):
            files[f"{prefix}h.{l}.attn.bias"] = torch.ones(positions, positions).tril().view(1, 1, positions, positions)
            files[f"{prefix}h.{l}.attn.masked_bias"] = torch.tensor(-1e4)
    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    architecture = "GPT2LMHeadModel" if prefix else "GPT2Model"
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dict(cfg, architectures=[architecture], model_type="gpt2"), f, indent=2)
    save_hf_weights(directory, files, dtype, shards)

    ids = torch.randint(0, vocab, (batch, n), generator=g)
    logits = torch.stack([forward(cfg, stored, ids[b]) for b in range(batch)])
    prompt = torch.randint(0, vocab, (5,), generator=g)
    seq = prompt.clone()
    for _ in range(steps):  # greedy, the whole sequence recomputed each step
        seq = torch.cat((seq, forward(cfg, stored, seq)[-1].argmax().view(1)))
    ref = {"ids": ids, "logits": logits, "prompt": prompt, "greedy": seq[len(prompt):]}
    for i, (beams, max_new, penalty, early, eos_at) in enumerate(BEAM_SETTINGS):
        eos = int(seq[len(prompt) + eos_at])
        tokens, _ = beam_search(lambda s: forward(cfg, stored, torch.tensor(s))[-1], prompt.tolist(), beams, max_new,
                                penalty, early, [eos])
        ref[f"beam_{i}"] = torch.tensor(tokens, dtype=torch.float64)
        stop = {True: 1, False: 0, "never": -1}[early]
        ref[f"beam_{i}_settings"] = torch.tensor([beams, max_new, penalty, stop, eos], dtype=torch.float64)
    save_safetensors(os.path.join(out_dir, name + ".reference.safetensors"), ref)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    base = {"activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "n_positions": 80, "vocab_size": 103}
    make_case(args.out_dir, "lm_head_f32", dict(base, n_embd=32, n_layer=2, n_head=4),
              "F32", 1, "transformer.", store_lm_head=True, mask_buffers=False, seed=21, batch=2, n=37, steps=30)
    make_case(args.out_dir, "model_bf16_sharded", dict(base, n_embd=36, n_layer=3, n_head=3, n_inner=None),
              "BF16", 2, "", store_lm_head=False, mask_buffers=True, seed=22, batch=2, n=70, steps=20)
    make_case(args.out_dir, "untied_f16",
              dict(base, n_embd=35, n_layer=2, n_head=5, n_inner=50, activation_function="gelu_pytorch_tanh",
                   tie_word_embeddings=False, layer_norm_epsilon=1e-6),
              "F16", 1, "transformer.", store_lm_head=False, mask_buffers=False, seed=23, batch=1, n=20, steps=20)
    make_case(args.out_dir, "long_f32", dict(base, n_embd=32, n_layer=2, n_head=4, n_positions=320),
              "F32", 1, "transformer.", store_lm_head=False, mask_buffers=False, seed=24, batch=2, n=300, steps=8)


if __name__ == "__main__":
    main()
