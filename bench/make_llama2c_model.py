#!/usr/bin/env python3
"""Writes a random Llama in llama2.c's checkpoint format (shared classifier) and a llama2.c vocabulary of the same
size, for peers that need the model as a file (llama.cpp converts both to GGUF with its
llama-convert-llama2c-to-ggml). The default shape is BM_llama110m_decode's: dim 768, 12 layers, 12 heads, hidden
2048, vocab 32000 (≈ 110M parameters). Weights N(0, 0.02²), norms 1, seeded: the same file every time.

    make_llama2c_model.py OUT_DIR    -> OUT_DIR/rand110M.bin, OUT_DIR/tok32000.bin
"""
import os
import struct
import sys

import numpy as np

DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 768, 2048, 12, 12, 12, 32000, 1024


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(0)

    def normal(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32).tobytes()

    ones = lambda *shape: np.ones(shape, np.float32).tobytes()
    with open(os.path.join(out_dir, "rand110M.bin"), "wb") as f:
        f.write(struct.pack("7i", DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ))  # vocab > 0: shared classifier
        f.write(normal(VOCAB, DIM))                      # token embedding
        f.write(ones(LAYERS, DIM))                       # attention RMSNorm
        for _ in range(4):                               # wq, wk, wv, wo
            f.write(normal(LAYERS, DIM, DIM))
        f.write(ones(LAYERS, DIM))                       # FFN RMSNorm
        f.write(normal(LAYERS, HIDDEN, DIM))             # w1
        f.write(normal(LAYERS, DIM, HIDDEN))             # w2
        f.write(normal(LAYERS, HIDDEN, DIM))             # w3
        f.write(ones(DIM))                               # final RMSNorm
        half = DIM // HEADS // 2                         # the legacy RoPE tables llama2.c files carry
        angles = np.outer(np.arange(SEQ), 10000.0 ** (-np.arange(half) / half)).astype(np.float32)
        f.write(np.cos(angles).tobytes())
        f.write(np.sin(angles).tobytes())
    # Vocabulary: <unk>, BOS, EOS, the 256 byte tokens, printable ASCII, then filler words.
    tokens = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
    tokens += [bytes([c]) for c in range(32, 127)]
    tokens += [b"tok%d" % i for i in range(VOCAB - len(tokens))]
    with open(os.path.join(out_dir, "tok32000.bin"), "wb") as f:
        f.write(struct.pack("i", max(len(t) for t in tokens)))
        for i, t in enumerate(tokens):
            f.write(struct.pack("fi", 0.0 if i < 259 else -float(i), len(t)))
            f.write(t)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: make_llama2c_model.py OUT_DIR", file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
