#!/usr/bin/python3
"""A BERT-base (12 layers, 768 wide, 12 heads, 3072 inner, GELU with erf, post-norm, pooler; vocabulary 30522) with
random weights, written twice: as a Hugging Face directory (config.json + model.safetensors, BertModel's names) for
polyformer (bench_bert, hf_forward) and as ONNX (torch.onnx, opset 14, inputs input_ids and attention_mask of shape
(1, n), n dynamic) for ONNX Runtime (ort_bert.js). The model below is written here from transformers' modeling_bert.py
with torch.nn layers; both files hold the same weights. Run with Debian's PyTorch, outside the repository:
    /usr/bin/python3 bench/peers/ort_bert.py OUT_DIR
OUT_DIR receives bert-base/ (the directory), bert-base.onnx, and for n = 128 and 512 the inputs and PyTorch's
last_hidden_state (bert_ids_N.bin int64, bert_y_N.bin float32) that ort_bert.js checks its output against."""
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests"))
from safetensors_writer import save_hf_weights  # noqa: E402

D, HEADS, INNER, LAYERS, VOCAB, POSITIONS, EPS = 768, 12, 3072, 12, 30522, 512, 1e-12


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(D, D) for _ in range(4))
        self.norm1, self.norm2 = torch.nn.LayerNorm(D, eps=EPS), torch.nn.LayerNorm(D, eps=EPS)
        self.up, self.down = torch.nn.Linear(D, INNER), torch.nn.Linear(INNER, D)

    def forward(self, x, bias):  # x (1, n, D); bias (1, 1, 1, n): 0 for tokens, −10000 for padding
        n, hd = x.shape[1], D // HEADS
        split = lambda t: t.view(1, n, HEADS, hd).transpose(1, 2)
        scores = split(self.q(x)) @ split(self.k(x)).transpose(-1, -2) / math.sqrt(hd) + bias
        attn = (torch.softmax(scores, dim=-1) @ split(self.v(x))).transpose(1, 2).reshape(1, n, D)
        x = self.norm1(x + self.o(attn))
        return self.norm2(x + self.down(torch.nn.functional.gelu(self.up(x))))


class Bert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.word = torch.nn.Embedding(VOCAB, D)
        self.position = torch.nn.Embedding(POSITIONS, D)
        self.token_type = torch.nn.Embedding(2, D)
        self.norm = torch.nn.LayerNorm(D, eps=EPS)
        self.layers = torch.nn.ModuleList(Layer() for _ in range(LAYERS))
        self.pooler = torch.nn.Linear(D, D)

    def forward(self, input_ids, attention_mask):
        n = input_ids.shape[1]
        x = self.norm(self.word(input_ids) + self.position.weight[:n] + self.token_type.weight[0])
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return x, torch.tanh(self.pooler(x[:, 0]))


def main(out):
    os.makedirs(os.path.join(out, "bert-base"), exist_ok=True)
    torch.manual_seed(0)
    model = Bert().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02) if p.dim() > 1 else p.normal_(0.0, 0.02 if p.shape[0] != D else 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.05)
    w = {"embeddings.word_embeddings.weight": model.word.weight,
         "embeddings.position_embeddings.weight": model.position.weight,
         "embeddings.token_type_embeddings.weight": model.token_type.weight,
         "embeddings.LayerNorm.weight": model.norm.weight, "embeddings.LayerNorm.bias": model.norm.bias,
         "pooler.dense.weight": model.pooler.weight, "pooler.dense.bias": model.pooler.bias}
    for i, l in enumerate(model.layers):
        p = f"encoder.layer.{i}."
        for name, lin in (("attention.self.query.", l.q), ("attention.self.key.", l.k), ("attention.self.value.", l.v),
                          ("attention.output.dense.", l.o), ("intermediate.dense.", l.up), ("output.dense.", l.down)):
            w[p + name + "weight"], w[p + name + "bias"] = lin.weight, lin.bias
        for name, norm in (("attention.output.LayerNorm.", l.norm1), ("output.LayerNorm.", l.norm2)):
            w[p + name + "weight"], w[p + name + "bias"] = norm.weight, norm.bias
    save_hf_weights(os.path.join(out, "bert-base"), {k: v.detach() for k, v in w.items()}, "F32")
    config = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": D, "num_hidden_layers": LAYERS,
              "num_attention_heads": HEADS, "intermediate_size": INNER, "hidden_act": "gelu",
              "max_position_embeddings": POSITIONS, "type_vocab_size": 2, "vocab_size": VOCAB, "layer_norm_eps": EPS,
              "position_embedding_type": "absolute"}
    with open(os.path.join(out, "bert-base", "config.json"), "w") as f:
        json.dump(config, f, indent=2)

    ids = torch.randint(0, VOCAB, (1, 128))
    mask = torch.ones_like(ids)
    torch.onnx.export(model, (ids, mask), os.path.join(out, "bert-base.onnx"), opset_version=14,
                      input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={"input_ids": {1: "n"}, "attention_mask": {1: "n"}, "last_hidden_state": {1: "n"}},
                      do_constant_folding=True)
    for n in (128, 512):
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(0, VOCAB, (1, n), generator=g)
        with torch.no_grad():
            y, _ = model(ids, torch.ones_like(ids))
        ids.numpy().astype(np.int64).tofile(os.path.join(out, f"bert_ids_{n}.bin"))
        y.numpy().astype(np.float32).tofile(os.path.join(out, f"bert_y_{n}.bin"))
    print("wrote", out)


if __name__ == "__main__":
    main(sys.argv[1])
