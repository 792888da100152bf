#!/usr/bin/env python3
"""Peer of bench_llama's BM_llama_train: training steps of llama2.c's own PyTorch model (its model.py, imported
from a llama2.c checkout in a scratch folder; none of its code lives here) at stories15M's shape, timed as
llama2.c's train.py runs a step:

    logits = model(X, Y); loss = model.last_loss; loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); optimizer.step(); optimizer.zero_grad(set_to_none=True)

Model: Transformer(ModelArgs(dim=288, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000, max_seq_len=256,
multiple_of=32, dropout=0.0)) (hidden_dim 768 by model.py's rule, tied classifier), float32, train mode; optimizer
model.configure_optimizers(weight_decay=0.1, learning_rate=5e-4, betas=(0.9, 0.95), device_type='cpu') (AdamW,
weight decay on the matrices); batch 8 of random token windows of 256 (+1 for the targets). PyTorch 1.13 has no
F.scaled_dot_product_attention, so model.py takes its own masked-softmax attention there (it prints a warning).

Each thread count runs in a process of its own, with the environment set before torch loads (shared/MACHINE.md):
OMP_NUM_THREADS = MKL_NUM_THREADS = OPENBLAS_NUM_THREADS = T, OMP_WAIT_POLICY=PASSIVE for T > 1, and
torch.set_num_threads(T). tokens/s = batch·seq / the mean wall time of the timed steps (after untimed warm-up).

    LLAMA2C_DIR=/path/to/llama2.c /usr/bin/python3 bench/peers/torch_train_llama2c.py [--threads 1,2]
        [--steps 3] [--warmup 1] [--json OUT.json]

--json writes Google Benchmark-style JSON (BM_llama2c_train/threads:T: ms, tok/s, loss), as bench/compare.sh
reads it. Without LLAMA2C_DIR (or without model.py in it) the script says so and exits 0.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

DIM, N_LAYERS, N_HEADS, VOCAB, SEQ, MULTIPLE_OF = 288, 6, 6, 32000, 256, 32
BATCH = 8
EXPECTED_HIDDEN = 768  # bench_llama's config_15m(): 4·288 → int(2·1152/3) = 768 → a multiple of 32


def llama2c_dir():
    d = os.environ.get("LLAMA2C_DIR", "")
    if not d or not os.path.isfile(os.path.join(d, "model.py")):
        return None
    return d


def worker(threads, steps, warmup):
    """One thread count, in this process (the environment already set by the parent): one JSON line on stdout."""
    import torch

    sys.path.insert(0, llama2c_dir())
    from model import ModelArgs, Transformer  # llama2.c's model.py

    torch.set_num_threads(threads)
    torch.manual_seed(1337)
    args = ModelArgs(dim=DIM, n_layers=N_LAYERS, n_heads=N_HEADS, n_kv_heads=N_HEADS, vocab_size=VOCAB,
                     max_seq_len=SEQ, multiple_of=MULTIPLE_OF, dropout=0.0)
    model = Transformer(args)
    model.train()
    hidden = model.layers[0].feed_forward.w1.weight.shape[0]
    if hidden != EXPECTED_HIDDEN:
        raise SystemExit(f"model.py made hidden_dim {hidden}, bench_llama uses {EXPECTED_HIDDEN}: fix one of them")
    stdout = sys.stdout
    sys.stdout = sys.stderr  # configure_optimizers and model.py print; keep stdout for the result line
    optimizer = model.configure_optimizers(weight_decay=0.1, learning_rate=5e-4, betas=(0.9, 0.95), device_type="cpu")
    sys.stdout = stdout

    # 64 random windows read round-robin, as bench_llama's TokenWindows.
    corpus = torch.randint(0, VOCAB, (64 * SEQ + 1,), dtype=torch.int64)
    windows = corpus.unfold(0, SEQ + 1, SEQ)  # (64, SEQ + 1), consecutive windows sharing one token
    position = 0

    def batch():
        nonlocal position
        rows = [(position + b) % windows.shape[0] for b in range(BATCH)]
        position += BATCH
        w = windows[rows]
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def step(X, Y):  # train.py's loop body: one micro-batch, float32, no scaler
        for group in optimizer.param_groups:
            group["lr"] = 5e-4
        model(X, Y)
        loss = model.last_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(warmup):
        step(*batch())
    times, loss = [], 0.0
    for _ in range(steps):
        X, Y = batch()  # drawn outside the timing (train.py prefetches the next batch during the forward)
        t0 = time.perf_counter()
        loss = step(X, Y)
        times.append(time.perf_counter() - t0)
    mean = statistics.mean(times)
    print(json.dumps({"threads": threads, "torch": torch.__version__, "hidden_dim": hidden, "steps": steps,
                      "warmup": warmup, "mean_ms": 1e3 * mean, "min_ms": 1e3 * min(times),
                      "median_ms": 1e3 * statistics.median(times), "tok_s": BATCH * SEQ / mean, "loss": loss,
                      "params": sum(p.numel() for p in model.parameters())}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per thread count (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default 1)")
    parser.add_argument("--json", help="write Google Benchmark-style JSON here")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()

    if llama2c_dir() is None:
        print("torch_train_llama2c: skipped: set LLAMA2C_DIR to a llama2.c checkout (a folder holding its model.py)")
        return 0
    if a.worker is not None:
        worker(a.worker, a.steps, a.warmup)
        return 0

    results = []
    for t in (int(x) for x in a.threads.split(",") if x):
        env = dict(os.environ, OMP_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS=str(t))
        if t > 1:
            env["OMP_WAIT_POLICY"] = "PASSIVE"
        else:
            env.pop("OMP_WAIT_POLICY", None)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(t), "--steps", str(a.steps),
               "--warmup", str(a.warmup)]
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stdout + out.stderr)
            print(f"torch_train_llama2c: the {t}-thread run exited with {out.returncode}", file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"llama2.c model.py, torch {r['torch']}, {t} thread(s): {r['tok_s']:.1f} tok/s "
              f"(step mean {r['mean_ms']:.0f} ms, min {r['min_ms']:.0f} ms, {r['steps']} steps after {r['warmup']} "
              f"warm-up; hidden_dim {r['hidden_dim']}, {r['params']:,} parameters, loss {r['loss']:.3f})", flush=True)

    if a.json:
        benchmarks = []
        for r in results:
            name = f"BM_llama2c_train/threads:{r['threads']}"
            benchmarks.append({"name": name, "run_name": name, "run_type": "iteration", "iterations": r["steps"],
                               "ms": r["mean_ms"], "tok/s": r["tok_s"], "loss": r["loss"]})
        with open(a.json, "w") as f:
            json.dump({"context": {"peer": "llama2.c model.py on PyTorch " + results[0]["torch"] if results else ""},
                       "benchmarks": benchmarks}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
