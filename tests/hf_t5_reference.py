#!/usr/bin/env python3
"""Hugging Face T5 directories with random weights and their outputs, for tests/test_models_hf_t5.cpp.

The forward below is written here from transformers' modeling_t5.py (T5ForConditionalGeneration): a shared
embedding; T5LayerNorm (x / sqrt(mean x² + eps) · weight, no mean, no bias); per encoder block a self-attention
sublayer and a feed-forward sublayer, per decoder block self-attention, cross-attention (EncDecAttention) and
feed-forward, each pre-norm with a residual; attention without biases and without 1/sqrt(d) scaling, plus a
relative position bias (computed from the first block's relative_attention_bias table and shared by every block of
the stack; bidirectional buckets in the encoder, past-only in the decoder; none in cross-attention); DenseReluDense
(wo(relu(wi x))) or DenseGatedActDense (wo(gelu_new(wi_0 x) · wi_1 x)); a final norm per stack; logits from the
shared embedding scaled by d_model^-0.5 when tie_word_embeddings, else from lm_head. Buckets are computed as
transformers computes them (in float32); everything else in float64 over the weights as stored.
Each case is DIR/<case>/ (config.json, model.safetensors) and DIR/<case>.reference.safetensors with "input_ids",
"attention_mask" (batch, n), "decoder_input_ids" (batch, m), "encoder_last_hidden_state" (batch, n, d),
"last_hidden_state" (batch, m, d: the decoder's, after its final norm), "logits" (batch, m, vocab), and "greedy"
(steps): greedy decoding from the decoder start token (0) for the first
sequence, recomputed in full each step; "beam_<i>" with "beam_<i>_settings" as in hf_gpt2_reference.py.
  relu_f32: the original T5 (ReLU, tied, 4 heads of 8, d_model 32), two padded sequences;
  gated_bf16: v1.1 / FLAN-T5 (gated-gelu, untied lm_head, 3 heads of 12 so inner 36 ≠ d_model 30), BF16;
  long_f16_sharded: gated-gelu and tied, F16 over two shards and an index, encoder sequences of 300 and 131 tokens
    and 260 decoder positions: past the edges of the attention's tiles (128 queries by 256 keys).
usage: hf_t5_reference.py --out-dir DIR"""
import argparse
import json
import math
import os

import torch

from beam_search_reference import beam_search
from safetensors_writer import save_hf_weights, save_safetensors

TORCH_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
BEAM_SETTINGS = [(3, 10, 1.0, False, 2), (4, 8, 0.7, True, 1)]


def bucket(relative, bidirectional, num_buckets, max_distance):
    """transformers' _relative_position_bucket, in its own arithmetic (float32 logs)."""
    buckets = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative > 0).to(torch.long) * num_buckets
        relative = torch.abs(relative)
    else:
        relative = -torch.min(relative, torch.zeros_like(relative))
    max_exact = num_buckets // 2
    large = max_exact + (torch.log(relative.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).to(torch.long)
    large = torch.min(large, torch.full_like(large, num_buckets - 1))
    return buckets + torch.where(relative < max_exact, relative, large)


def position_bias(cfg, table, n_q, n_k, bidirectional):
    """(heads, n_q, n_k): query i at position i, key j at j."""
    relative = torch.arange(n_k)[None, :] - torch.arange(n_q)[:, None]
    b = bucket(relative, bidirectional, cfg["relative_attention_num_buckets"], cfg["relative_attention_max_distance"])
    return table[b].permute(2, 0, 1)


def norm(x, w, eps):
    return w * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def attention(cfg, w, p, x, kv, bias):
    heads, dkv = cfg["num_heads"], cfg["d_kv"]
    split = lambda t: t.view(t.shape[0], heads, dkv).transpose(0, 1)
    q, k, v = split(x @ w[p + "q.weight"].T), split(kv @ w[p + "k.weight"].T), split(kv @ w[p + "v.weight"].T)
    probs = torch.softmax(q @ k.transpose(1, 2) + bias, dim=-1)
    return (probs @ v).transpose(0, 1).reshape(x.shape[0], heads * dkv) @ w[p + "o.weight"].T


def feed_forward(cfg, w, p, x):
    if cfg["feed_forward_proj"] == "relu":
        return torch.relu(x @ w[p + "wi.weight"].T) @ w[p + "wo.weight"].T
    gelu_new = lambda t: 0.5 * t * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (t + 0.044715 * t ** 3)))
    return (gelu_new(x @ w[p + "wi_0.weight"].T) * (x @ w[p + "wi_1.weight"].T)) @ w[p + "wo.weight"].T


def encode(cfg, w, ids, mask):
    eps, n = cfg["layer_norm_epsilon"], ids.shape[0]
    padding = torch.zeros(n, dtype=torch.float64).masked_fill(mask == 0, -math.inf)
    bias = position_bias(cfg, w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], n, n, True)
    bias = bias + padding[None, None, :]
    x = w["shared.weight"][ids]
    for l in range(cfg["num_layers"]):
        p = f"encoder.block.{l}.layer."
        h = norm(x, w[p + "0.layer_norm.weight"], eps)
        x = x + attention(cfg, w, p + "0.SelfAttention.", h, h, bias)
        x = x + feed_forward(cfg, w, p + "1.DenseReluDense.", norm(x, w[p + "1.layer_norm.weight"], eps))
    return norm(x, w["encoder.final_layer_norm.weight"], eps)


def decode(cfg, w, memory, mask, ids, hidden=False):
    """Logits (m, vocab) of decoder ids (m,) over the encoder's output; with `hidden`, the final norm's output
    (m, d_model) instead."""
    eps, m, n = cfg["layer_norm_epsilon"], ids.shape[0], memory.shape[0]
    causal = torch.full((m, m), -math.inf, dtype=torch.float64).triu(1)
    self_bias = position_bias(cfg, w["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], m, m,
                              False) + causal[None]
    cross_bias = torch.zeros(1, m, n, dtype=torch.float64).masked_fill((mask == 0)[None, None, :], -math.inf)
    y = w["shared.weight"][ids]
    for l in range(cfg["num_decoder_layers"]):
        p = f"decoder.block.{l}.layer."
        h = norm(y, w[p + "0.layer_norm.weight"], eps)
        y = y + attention(cfg, w, p + "0.SelfAttention.", h, h, self_bias)
        y = y + attention(cfg, w, p + "1.EncDecAttention.", norm(y, w[p + "1.layer_norm.weight"], eps), memory, cross_bias)
        y = y + feed_forward(cfg, w, p + "2.DenseReluDense.", norm(y, w[p + "2.layer_norm.weight"], eps))
    y = norm(y, w["decoder.final_layer_norm.weight"], eps)
    if hidden:
        return y
    if cfg["tie_word_embeddings"]:
        return (y * cfg["d_model"] ** -0.5) @ w["shared.weight"].T
    return y @ w["lm_head.weight"].T


def make_case(out_dir, name, cfg, dtype, seed, lengths, n, m, steps, shards=1):
    g = torch.Generator().manual_seed(seed)
    d, inner, ff, vocab = cfg["d_model"], cfg["num_heads"] * cfg["d_kv"], cfg["d_ff"], cfg["vocab_size"]
    rnd = lambda *shape, scale=0.3: torch.randn(*shape, generator=g) * scale
    w = {"shared.weight": rnd(vocab, d, scale=1.0)}

    def block(p, cross):
        w[p + "0.SelfAttention.q.weight"], w[p + "0.SelfAttention.k.weight"] = rnd(inner, d), rnd(inner, d)
        w[p + "0.SelfAttention.v.weight"], w[p + "0.SelfAttention.o.weight"] = rnd(inner, d), rnd(d, inner)
        w[p + "0.layer_norm.weight"] = 1.0 + rnd(d, scale=0.1)
        f = "2" if cross else "1"
        if cross:
            for part in ("q", "k", "v"):
                w[p + f"1.EncDecAttention.{part}.weight"] = rnd(inner, d)
            w[p + "1.EncDecAttention.o.weight"] = rnd(d, inner)
            w[p + "1.layer_norm.weight"] = 1.0 + rnd(d, scale=0.1)
        if cfg["feed_forward_proj"] == "relu":
            w[p + f"{f}.DenseReluDense.wi.weight"] = rnd(ff, d)
        else:
            w[p + f"{f}.DenseReluDense.wi_0.weight"], w[p + f"{f}.DenseReluDense.wi_1.weight"] = rnd(ff, d), rnd(ff, d)
        w[p + f"{f}.DenseReluDense.wo.weight"] = rnd(d, ff)
        w[p + f"{f}.layer_norm.weight"] = 1.0 + rnd(d, scale=0.1)

    for l in range(cfg["num_layers"]):
        block(f"encoder.block.{l}.layer.", False)
    for l in range(cfg["num_decoder_layers"]):
        block(f"decoder.block.{l}.layer.", True)
    for stack in ("encoder", "decoder"):
        w[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rnd(
            cfg["relative_attention_num_buckets"], cfg["num_heads"], scale=1.0)
        w[f"{stack}.final_layer_norm.weight"] = 1.0 + rnd(d, scale=0.1)
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = rnd(vocab, d)
    stored = {k: v.to(TORCH_TYPES[dtype]).to(torch.float64) for k, v in w.items()}
    files = dict(w)
    files["encoder.embed_tokens.weight"] = files["decoder.embed_tokens.weight"] = w["shared.weight"]  # as saved

    directory = os.path.join(out_dir, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(dict(cfg, architectures=["T5ForConditionalGeneration"], model_type="t5",
                       decoder_start_token_id=0, pad_token_id=0, eos_token_id=1), f, indent=2)
    save_hf_weights(directory, files, dtype, shards)

    batch = len(lengths)
    ids = torch.randint(2, vocab, (batch, n), generator=g)
    mask = torch.zeros(batch, n, dtype=torch.long)
    for b, length in enumerate(lengths):
        mask[b, :length] = 1
    dec = torch.randint(2, vocab, (batch, m), generator=g)
    dec[:, 0] = 0  # the decoder start token
    memories = [encode(cfg, stored, ids[b], mask[b]) for b in range(batch)]
    logits = torch.stack([decode(cfg, stored, memories[b], mask[b], dec[b]) for b in range(batch)])
    hidden = torch.stack([decode(cfg, stored, memories[b], mask[b], dec[b], hidden=True) for b in range(batch)])
    seq = [0]
    for _ in range(steps):  # greedy from the start token over the first sequence, recomputed each step
        seq.append(int(decode(cfg, stored, memories[0], mask[0], torch.tensor(seq))[-1].argmax()))
    ref = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
           "encoder_last_hidden_state": torch.stack(memories), "logits": logits,
           "last_hidden_state": hidden,
           "greedy": torch.tensor(seq[1:], dtype=torch.float64)}
    for i, (beams, max_new, penalty, early, eos_at) in enumerate(BEAM_SETTINGS):
        eos = seq[1 + eos_at]
        tokens, _ = beam_search(lambda s: decode(cfg, stored, memories[0], mask[0], torch.tensor(s))[-1], [0], beams,
                                max_new, penalty, early, [eos])
        ref[f"beam_{i}"] = torch.tensor(tokens, dtype=torch.float64)
        ref[f"beam_{i}_settings"] = torch.tensor([beams, max_new, penalty, {True: 1, False: 0, "never": -1}[early], eos],
                                                 dtype=torch.float64)
    save_safetensors(os.path.join(out_dir, name + ".reference.safetensors"), ref)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    base = {"layer_norm_epsilon": 1e-6, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 20,
            "vocab_size": 107, "dropout_rate": 0.0}
    make_case(args.out_dir, "relu_f32",
              dict(base, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="relu", tie_word_embeddings=True),
              "F32", 31, lengths=[37, 25], n=37, m=21, steps=20)
    make_case(args.out_dir, "gated_bf16",
              dict(base, d_model=30, d_kv=12, num_heads=3, d_ff=40, num_layers=3, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False),
              "BF16", 32, lengths=[30], n=30, m=17, steps=16)
    make_case(args.out_dir, "long_f16_sharded",
              dict(base, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=2, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=True),
              "F16", 33, lengths=[300, 131], n=300, m=260, steps=6, shards=2)


if __name__ == "__main__":
    main()
