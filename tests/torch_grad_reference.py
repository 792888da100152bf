#!/usr/bin/python3
"""Gradient references from torch.autograd in float64, for torch_forward --grad-output.

    /usr/bin/python3 torch_grad_reference.py --out-dir DIR [--seed S]

For nn.TransformerEncoderLayer (batch_first, dropout 0) in each of post-/pre-norm x ReLU/GELU, with a causal
additive src_mask and a key-padding mask that pads the last keys of the second sequence, for
nn.TransformerDecoderLayer (causal tgt_mask, memory key padding) and nn.Transformer (2 + 2 layers with their final
norms; causal tgt_mask, src and memory key padding), post-norm ReLU and pre-norm GELU, it writes
DIR/<case>.safetensors holding

  * the module's state_dict under its own names, float32, with metadata module, nhead, norm_first, activation,
    layer_norm_eps (what torch_forward reads);
  * "input.<name>": the float inputs (src, tgt, memory) and the masks (additive 0 / -inf; key padding 1.0 = padded);
  * "expected.y" and "expected.grad.<name>" for every float input and every parameter: the output and the gradients computed by
    torch.autograd with the module and the float32 inputs cast to float64, rounded to float32.

and DIR/<case>.grad_output.safetensors holding "y": G, the gradient of the loss sum(output * G) with respect to the
output (the --grad-output file).

Parameters and inputs are drawn in float32 first, so the float64 computation runs on exactly the values the C++ side
reads. The safetensors format is written by hand: u64 header length, JSON header, raw little-endian data.
"""

import argparse
import os

import torch
import torch.nn as nn

from safetensors_writer import save_safetensors


def randomize(module, gen):
    """Every bias from U(-0.1, 0.1), every LayerNorm gain from 1 + 0.1 N(0, 1): no parameter trivially 0 or 1."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)
            elif "norm" in name.split(".")[-2]:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))


def gradient_file(module, inputs, masks, grad_out, call, metadata):
    """Runs call(module64, inputs64, masks) in float64, backward of sum(y * grad_out); returns the tensors."""
    module64 = module.double()
    inputs64 = {name: t.double().requires_grad_(True) for name, t in inputs.items()}
    y = call(module64, inputs64, masks)
    (y * grad_out.double()).sum().backward()
    tensors = {name: p.detach().float().numpy() for name, p in module.state_dict().items()}
    for name, t in inputs.items():
        tensors["input." + name] = t.numpy()
        tensors["expected.grad." + name] = inputs64[name].grad.float().numpy()
    for name, m in masks.items():
        tensors["input." + name] = m.numpy()
    tensors["expected.y"] = y.detach().float().numpy()
    for name, p in module64.named_parameters():
        tensors["expected.grad." + name] = p.grad.float().numpy()
    return tensors, metadata, {"y": grad_out.numpy()}


def encoder_case(norm_first, activation, seed, d_model=24, nhead=4, dff=40, batch=2, seq=7, padded=2):
    gen = torch.Generator().manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model, nhead, dff, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    randomize(layer, gen)
    inputs = {"src": torch.randn(batch, seq, d_model, generator=gen)}
    grad_out = torch.randn(batch, seq, d_model, generator=gen)
    padding = torch.zeros(batch, seq)
    padding[1, seq - padded:] = 1.0
    masks = {"src_mask": torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1), "src_key_padding_mask": padding}

    def call(m, x, k):
        return m(x["src"], src_mask=k["src_mask"].double(), src_key_padding_mask=k["src_key_padding_mask"].bool())
    metadata = {"module": "TransformerEncoderLayer", "nhead": str(nhead), "norm_first": str(norm_first),
                "activation": activation, "layer_norm_eps": "1e-05"}
    return gradient_file(layer, inputs, masks, grad_out, call, metadata)


def decoder_case(norm_first, activation, seed, d_model=24, nhead=4, dff=40, batch=2, tgt_len=6, mem_len=9):
    gen = torch.Generator().manual_seed(seed)
    layer = nn.TransformerDecoderLayer(d_model, nhead, dff, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    randomize(layer, gen)
    inputs = {"tgt": torch.randn(batch, tgt_len, d_model, generator=gen),
              "memory": torch.randn(batch, mem_len, d_model, generator=gen)}
    grad_out = torch.randn(batch, tgt_len, d_model, generator=gen)
    memory_padding = torch.zeros(batch, mem_len)
    memory_padding[0, mem_len - 3:] = 1.0
    masks = {"tgt_mask": torch.triu(torch.full((tgt_len, tgt_len), float("-inf")), diagonal=1),
             "memory_key_padding_mask": memory_padding}

    def call(m, x, k):
        return m(x["tgt"], x["memory"], tgt_mask=k["tgt_mask"].double(),
                 memory_key_padding_mask=k["memory_key_padding_mask"].bool())
    metadata = {"module": "TransformerDecoderLayer", "nhead": str(nhead), "norm_first": str(norm_first),
                "activation": activation, "layer_norm_eps": "1e-05"}
    return gradient_file(layer, inputs, masks, grad_out, call, metadata)


def transformer_case(norm_first, activation, seed, d_model=24, nhead=4, dff=40, batch=2, src_len=7, tgt_len=5):
    gen = torch.Generator().manual_seed(seed)
    model = nn.Transformer(d_model, nhead, 2, 2, dff, dropout=0.0, activation=activation, batch_first=True,
                           norm_first=norm_first)
    randomize(model, gen)
    inputs = {"src": torch.randn(batch, src_len, d_model, generator=gen),
              "tgt": torch.randn(batch, tgt_len, d_model, generator=gen)}
    grad_out = torch.randn(batch, tgt_len, d_model, generator=gen)
    src_padding = torch.zeros(batch, src_len)
    src_padding[1, src_len - 2:] = 1.0
    masks = {"tgt_mask": torch.triu(torch.full((tgt_len, tgt_len), float("-inf")), diagonal=1),
             "src_key_padding_mask": src_padding, "memory_key_padding_mask": src_padding}

    def call(m, x, k):
        return m(x["src"], x["tgt"], tgt_mask=k["tgt_mask"].double(),
                 src_key_padding_mask=k["src_key_padding_mask"].bool(),
                 memory_key_padding_mask=k["memory_key_padding_mask"].bool())
    metadata = {"module": "Transformer", "nhead": str(nhead), "norm_first": str(norm_first), "activation": activation,
                "layer_norm_eps": "1e-05", "num_encoder_layers": "2", "num_decoder_layers": "2"}
    return gradient_file(model, inputs, masks, grad_out, call, metadata)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    for norm_first in (False, True):
        for activation in ("relu", "gelu"):
            tensors, metadata, grad_output = encoder_case(norm_first, activation, args.seed)
            name = "grad_encoder_layer_{}_{}".format("prenorm" if norm_first else "postnorm", activation)
            save_safetensors(os.path.join(args.out_dir, name + ".safetensors"), tensors, metadata=metadata)
            save_safetensors(os.path.join(args.out_dir, name + ".grad_output.safetensors"), grad_output, metadata={})
    cases = [("grad_decoder_layer_postnorm_relu", decoder_case, False, "relu"),
             ("grad_decoder_layer_prenorm_gelu", decoder_case, True, "gelu"),
             ("grad_transformer_postnorm_relu", transformer_case, False, "relu"),
             ("grad_transformer_prenorm_gelu", transformer_case, True, "gelu")]
    for name, case, norm_first, activation in cases:
        tensors, metadata, grad_output = case(norm_first, activation, args.seed)
        save_safetensors(os.path.join(args.out_dir, name + ".safetensors"), tensors, metadata=metadata)
        save_safetensors(os.path.join(args.out_dir, name + ".grad_output.safetensors"), grad_output, metadata={})


if __name__ == "__main__":
    main()
