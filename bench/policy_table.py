#!/usr/bin/env python3
"""Prints the attention-policy scaling table from bench_attention's JSON (BM_policy and BM_policy_train runs): ms
and peak MB per policy and n, the speed-up over FullAttention at the same n (same run), time(32K)/time(4K), and
the training step (forward_train + backward) at 4K: its time, its speed-up over full attention's training step,
and the share of the forward's speed-up it keeps.
usage: bench/policy_table.py policies.json"""
import json
import re
import sys

runs, train = {}, {}
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    m = re.match(r"BM_policy(_train)?/(\w+)/n:(\d+)/threads:(\d+)", b["name"])
    if not m or b.get("run_type") == "aggregate":
        continue
    (train if m.group(1) else runs)[(m.group(2), int(m.group(3)))] = (b["real_time"], b.get("peak_MB", float("nan")))
policies = list(dict.fromkeys(p for p, _ in runs))  # the registry's order, as bench_attention ran them
sizes = sorted({n for _, n in runs})
print("| policy | " + " | ".join(f"n={n}" for n in sizes) +
      " | × full at 4K | t(32K)/t(4K) | train step at 4K | × full train | share kept |")
print("|---" * (len(sizes) + 6) + "|")
for p in policies:
    cells = []
    for n in sizes:
        r = runs.get((p, n))
        cells.append(f"{r[0]:.1f} ms, {r[1]:.0f} MB" if r else "")
    full4k, own4k, own32k = runs.get(("full", 4096)), runs.get((p, 4096)), runs.get((p, 32768))
    speed = f"{full4k[0] / own4k[0]:.1f}×" if full4k and own4k else ""
    growth = f"{own32k[0] / own4k[0]:.1f}" if own4k and own32k else ""
    full_t, own_t = train.get(("full", 4096)), train.get((p, 4096))
    step = f"{own_t[0]:.1f} ms, {own_t[1]:.0f} MB" if own_t else ""
    t_speed = f"{full_t[0] / own_t[0]:.1f}×" if full_t and own_t else ""
    kept = (f"{(full_t[0] / own_t[0]) / (full4k[0] / own4k[0]):.2f}"
            if full_t and own_t and full4k and own4k else "")
    print(f"| {p} | " + " | ".join(cells) + f" | {speed} | {growth} | {step} | {t_speed} | {kept} |")
