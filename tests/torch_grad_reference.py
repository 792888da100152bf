#!/usr/bin/python3
"""Gradient references from torch.autograd in float64, for torch_forward --grad-output.

    /usr/bin/python3 torch_grad_reference.py --out-dir DIR [--seed S]

For nn.TransformerEncoderLayer (batch_first, dropout 0) in each of post-/pre-norm x ReLU/GELU, with a causal
additive src_mask and a key-padding mask that pads the last keys of the second sequence, it writes DIR/<case>.safetensors
holding

  * the module's state_dict under its own names, float32, with metadata module, nhead, norm_first, activation,
    layer_norm_eps (what torch_forward reads);
  * "input.src", "input.src_mask" (0 / -inf), "input.src_key_padding_mask" (1.0 = padded), float32;
  * "expected.y" and "expected.grad.<name>" for src and every parameter: the output and the gradients computed by
    torch.autograd with the module and the float32 inputs cast to float64, rounded to float32.

and DIR/<case>.grad_output.safetensors holding "y": G, the gradient of the loss sum(output * G) with respect to the
output (the --grad-output file).

Parameters and inputs are drawn in float32 first, so the float64 computation runs on exactly the values the C++ side
reads. The safetensors format is written by hand: u64 header length, JSON header, raw little-endian data.
"""

import argparse
import json
import os
import struct

import numpy as np
import torch
import torch.nn as nn


def save_safetensors(path, tensors, metadata):
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def encoder_case(norm_first, activation, seed, d_model=24, nhead=4, dff=40, batch=2, seq=7, padded=2):
    gen = torch.Generator().manual_seed(seed)
    layer = nn.TransformerEncoderLayer(d_model, nhead, dff, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first)
    with torch.no_grad():  # no parameter trivially 0 or 1
        for name, p in layer.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=gen) * 0.2 - 0.1)
            elif name.startswith("norm"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
    src = torch.randn(batch, seq, d_model, generator=gen)
    grad_out = torch.randn(batch, seq, d_model, generator=gen)
    mask = torch.triu(torch.full((seq, seq), float("-inf")), diagonal=1)
    padding = torch.zeros(batch, seq)
    padding[1, seq - padded:] = 1.0

    layer64 = layer.double()
    src64 = src.double().requires_grad_(True)
    y = layer64(src64, src_mask=mask.double(), src_key_padding_mask=padding.bool())
    (y * grad_out.double()).sum().backward()

    tensors = {name: p.detach().float().numpy() for name, p in layer.state_dict().items()}
    tensors["input.src"] = src.numpy()
    tensors["input.src_mask"] = mask.numpy()
    tensors["input.src_key_padding_mask"] = padding.numpy()
    tensors["expected.y"] = y.detach().float().numpy()
    tensors["expected.grad.src"] = src64.grad.float().numpy()
    for name, p in layer64.named_parameters():
        tensors["expected.grad." + name] = p.grad.float().numpy()
    metadata = {"module": "TransformerEncoderLayer", "nhead": str(nhead), "norm_first": str(norm_first),
                "activation": activation, "layer_norm_eps": "1e-05"}
    return tensors, metadata, {"y": grad_out.numpy()}


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
            save_safetensors(os.path.join(args.out_dir, name + ".safetensors"), tensors, metadata)
            save_safetensors(os.path.join(args.out_dir, name + ".grad_output.safetensors"), grad_output, {})


if __name__ == "__main__":
    main()
