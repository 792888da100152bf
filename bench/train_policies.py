#!/usr/bin/env python3
"""Trains one small model per causal attention policy with examples/train, the same steps on the same data,
and prints validation loss, training tokens/s and peak memory side by side: the efficient-attention comparison
done by training, not only by timing.

  bench/train_policies.py [--train build/examples/train] [--steps 300] [--threads 2] [--policies full,sliding:32,...]
                          [-- extra train flags, e.g. --data FILE --tokenizer T.bin]

Without extra flags every run is train's default corpus (Debian's fortunes, byte-level) with a 4-layer model of
seq_len 256. Only policies that decode incrementally train (a Llama decodes with a cache): LSH and Linformer
do not.
"""
import argparse
import re
import subprocess
import sys


def cpu_name():
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", default="build/examples/train")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policies", default="full,sliding:32,sliding:64,blockwise:32,blockwise:64,linear,performer:64")
    p.add_argument("extra", nargs="*", help="flags passed to every train run (after --)")
    a = p.parse_args()
    base = [a.train, "--steps", str(a.steps), "--threads", str(a.threads), "--seed", "7"]
    if not a.extra:
        base += ["--config", "dim=128,layers=4,heads=4,kv_heads=4,hidden=384,vocab=259,seq_len=256", "--batch", "8",
                 "--lr", "2e-3", "--warmup", "30", "--shuffle", "7", "--sample", "0"]
    base += a.extra
    print(f"# {cpu_name()}, {a.threads} threads, {a.steps} steps; command: {' '.join(base)} --attention POLICY")
    print(f"{'policy':<14} {'val_loss':>9} {'perplexity':>11} {'tokens/s':>10} {'peak_MiB':>9}")
    for policy in a.policies.split(","):
        r = subprocess.run(base + ["--attention", policy], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{policy:<14} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
            continue
        err = r.stderr
        val = re.findall(r"validation loss ([0-9.]+), perplexity ([0-9.]+)", err)
        tps = re.findall(r"([0-9.]+) tok/s", err)
        mem = re.findall(r"peak resident memory ([0-9.]+) MiB", err)
        v, ppl = (float(val[-1][0]), float(val[-1][1])) if val else (float("nan"), float("nan"))
        print(f"{policy:<14} {v:>9.4f} {ppl:>11.2f} {float(tps[-1]) if tps else float('nan'):>10.0f} "
              f"{float(mem[-1]) if mem else float('nan'):>9.1f}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
