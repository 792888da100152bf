#!/usr/bin/env bash
# Runs polyformer's benchmarks and their libtorch peers with the thread settings that keep the peers
# honest (shared/MACHINE.md), writes Google Benchmark JSON to a results folder, and prints a table.
# Builds nothing: configure and build first (see bench/README.md).
#
#   bench/compare.sh BUILD_DIR [RESULTS_DIR]
#
# Environment: REPS (repetitions, default 3), SLOW_REPS (for the slow sizes: encoder n = 2048,
# attention n >= 4096; default 1), THREADS (default "1 2"), AREAS (default "gemm encoder_layer attention llama
# generate train"), RUNC (path to llama2.c's run.c built by hand, e.g. `gcc -Ofast -march=native run.c -lm -o run`: the
# peer of the "generate" area, skipped when unset), ORT_HARNESS (a scratch folder set up as shared/peers/ort/README.txt
# says: its bench.js and bench2.js, node_modules with onnxruntime-node, models/ from export.py and make_mha.py; the
# ONNX Runtime peer of the encoder layer and of attention, skipped when unset), LLAMA_CPP (a llama.cpp source tree
# built by hand in a scratch folder, with build/bin/llama-bench and build/bin/llama-convert-llama2c-to-ggml: the peer
# of the "llama" area on the same random 110M model, written by bench/make_llama2c_model.py and converted to F32 GGUF
# once into BUILD_DIR/bench-models; with build/bin/llama-quantize too, also to BF16 for BM_llama110m_decode_bf16's
# peer; skipped when unset), LLAMA2C_DIR (a llama2.c checkout in a scratch folder: the
# peer of the "train" area, bench/peers/torch_train_llama2c.py importing its model.py on /usr/bin/python3's PyTorch;
# skipped when unset), SHARED (the shared/ folder, default ../shared from the repo).
# Every peer is measured in this run, on this machine; a peer that is absent is skipped, never filled in from
# another machine's figures.
#
# Each (area, thread count) runs polyformer then its peer, back to back, so both see the same machine
# load. Every bench is a separate invocation per thread count (--benchmark_filter), with:
#   polyformer:     OPENBLAS_NUM_THREADS=1 (polyformer calls sgemm single-threaded and runs its own thread pool,
#                   core/parallel.hpp; it does not use OpenMP, so OMP_* settings do not apply to it)
#   libtorch, 1:    OPENBLAS_NUM_THREADS=1
#   libtorch, 2:    OPENBLAS_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
set -euo pipefail

TABLE_ONLY=0
if [[ ${1:-} == --table ]]; then  # compare.sh --table RESULTS_DIR: only print the table of earlier results
  TABLE_ONLY=1
  shift
  [[ $# -eq 1 && -d $1 ]] || { echo "usage: $0 --table RESULTS_DIR" >&2; exit 2; }
  set -- "$1" "$1"
fi
if [[ $# -lt 1 || ! -d $1 ]]; then
  echo "usage: $0 BUILD_DIR [RESULTS_DIR]   or   $0 --table RESULTS_DIR" >&2
  exit 2
fi
BUILD=$(cd "$1" && pwd)
BIN=$BUILD/bench
RESULTS=${2:-$BUILD/bench-results/$(date +%Y%m%d-%H%M%S)}
REPS=${REPS:-3}
SLOW_REPS=${SLOW_REPS:-1}
THREADS=${THREADS:-"1 2"}
AREAS=${AREAS:-"gemm encoder_layer attention llama generate train"}
SHARED=${SHARED:-$(cd "$(dirname "$0")/../.." && pwd)/shared}
PYTHON=/usr/bin/python3
[[ -x $PYTHON ]] || PYTHON=python3
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
LOG=$RESULTS/console.log

# run BINARY TAG THREADS REPS FILTER — one invocation, JSON to $RESULTS/TAG.t<THREADS>.json
run() {
  local binary=$1 tag=$2 t=$3 reps=$4 filter=$5
  local exe=$BIN/$binary
  if [[ ! -x $exe ]]; then
    echo "  (skipping $binary: not built)" | tee -a "$LOG"
    return 0
  fi
  local -a env_vars=("OPENBLAS_NUM_THREADS=1")
  [[ $binary == dnnl_* ]] && env_vars=("OMP_WAIT_POLICY=PASSIVE")
  if [[ $binary == libtorch_* ]]; then
    env_vars=("OPENBLAS_NUM_THREADS=$t")
    [[ $t -gt 1 ]] && env_vars+=("OMP_WAIT_POLICY=PASSIVE")
  fi
  local -a args=("--benchmark_filter=$filter" "--benchmark_repetitions=$reps"
                 "--benchmark_out=$RESULTS/$tag.t$t.json" "--benchmark_out_format=json")
  [[ $reps -gt 1 ]] && args+=("--benchmark_report_aggregates_only=true")
  echo "  ${env_vars[*]} $binary ${args[*]}" | tee -a "$LOG"
  env "${env_vars[@]}" "$exe" "${args[@]}" >>"$LOG" 2>&1 || echo "  ($binary exited with $?)" | tee -a "$LOG"
}

# run_ort KIND TAG THREADS REPS WARMUP N... — ONNX Runtime (node, a process per n; KIND enc: the encoder layer,
# benchmark ort_encoder_layer; attn: fused MultiHeadAttention, ort_attention_mha) as Google Benchmark JSON in
# $RESULTS/TAG.t<THREADS>.json: median ms over REPS timed runs after WARMUP, GFLOP/s by the layer's or attention's
# flop count, peak_MB the node process's peak resident memory (node itself included, ≈ 50 MB).
run_ort() {
  local kind=$1 tag=$2 t=$3 reps=$4 warmup=$5 family=ort_encoder_layer
  [[ $kind == attn ]] && family=ort_attention_mha
  shift 5
  if [[ -z ${ORT_HARNESS:-} || ! -f ${ORT_HARNESS:-}/bench2.js ]]; then
    echo "  (skipping $family: ORT_HARNESS is not set)" | tee -a "$LOG"
    return 0
  fi
  local out=$RESULTS/$tag.t$t.jsonl
  : >"$out"
  for n in "$@"; do
    echo "  node bench2.js $kind $n $t $reps $warmup  ($family)" | tee -a "$LOG"
    (cd "$ORT_HARNESS" && if [[ $kind == attn ]]; then export ORT_MODEL=models/attn_mha.onnx; fi &&
      node bench2.js "$kind" "$n" "$t" "$reps" "$warmup") >>"$out" 2>>"$LOG" || echo "  (node exited with $?)" | tee -a "$LOG"
  done
  "$PYTHON" - "$out" "$family" "$RESULTS/$tag.t$t.json" <<'PY'
import json, sys
src, family, dst = sys.argv[1:]
benchmarks = []
for line in open(src):
    line = line.strip()
    if not line.startswith("{"):
        continue
    r = json.loads(line)
    n, d = r["n"], 768
    flops = 8 * n * d * d + 4 * n * d * 3072 + 4 * n * n * d if r["kind"] == "enc" else 4 * n * n * 64 * 12
    name = f"BM_{family}/n:{n}/threads:{r['threads']}"
    benchmarks.append({"name": name, "run_name": name, "run_type": "aggregate", "aggregate_name": "median",
                       "ms": r["median_ms"], "GFLOP/s": flops / r["median_ms"] / 1e6,
                       "peak_MB": r["maxrss_kb_node"] / 1024, "max_abs_err": r["max_abs_err"]})
json.dump({"benchmarks": benchmarks}, open(dst, "w"), indent=1)
PY
}

# run_llamacpp THREADS — llama.cpp's llama-bench on the 110M model (prefill of 16 tokens, 128 decoded tokens, REPS
# repetitions) as Google Benchmark JSON in $RESULTS/llamacpp.t<THREADS>.json: llamacpp_prefill (n:16) and
# llamacpp_decode, tok/s as llama-bench reports them; where llama-quantize is built, the same on the model converted
# to BF16 (every matrix bf16, as BM_llama110m_decode_bf16's linear layers and classifier): llamacpp_*_bf16.
run_llamacpp() {
  local t=$1 bin=${LLAMA_CPP:-}/build/bin
  if [[ -z ${LLAMA_CPP:-} || ! -x $bin/llama-bench || ! -x $bin/llama-convert-llama2c-to-ggml ]]; then
    echo "  (skipping llama.cpp: LLAMA_CPP is not set to a built llama.cpp tree)" | tee -a "$LOG"
    return 0
  fi
  local models=$BUILD/bench-models
  if [[ ! -f $models/rand110M.gguf ]]; then
    echo "  writing the random 110M model and its GGUF into $models" | tee -a "$LOG"
    "$PYTHON" "$(dirname "$0")/make_llama2c_model.py" "$models" >>"$LOG" 2>&1 &&
      "$bin/llama-convert-llama2c-to-ggml" --copy-vocab-from-model "$models/tok32000.bin" \
        --llama2c-model "$models/rand110M.bin" --llama2c-output-model "$models/rand110M.gguf" >>"$LOG" 2>&1 ||
      { echo "  (could not make the 110M GGUF)" | tee -a "$LOG"; return 0; }
  fi
  if [[ -x $bin/llama-quantize && ! -f $models/rand110M-bf16.gguf ]]; then
    "$bin/llama-quantize" "$models/rand110M.gguf" "$models/rand110M-bf16.gguf" BF16 >>"$LOG" 2>&1 ||
      echo "  (could not convert the 110M GGUF to BF16)" | tee -a "$LOG"
  fi
  local model suffix
  for model in rand110M rand110M-bf16; do
    [[ -f $models/$model.gguf ]] || continue
    suffix=${model#rand110M}
    echo "  llama-bench -m $models/$model.gguf -p 16 -n 128 -t $t -r $REPS" | tee -a "$LOG"
    "$bin/llama-bench" -m "$models/$model.gguf" -p 16 -n 128 -t "$t" -r "$REPS" -o json \
      >"$RESULTS/llamacpp$suffix.t$t.raw" 2>>"$LOG" || { echo "  (llama-bench exited with $?)" | tee -a "$LOG"; continue; }
    "$PYTHON" - "$RESULTS/llamacpp$suffix.t$t.raw" "$RESULTS/llamacpp$suffix.t$t.json" "${suffix//-/_}" <<'PY'
import json, sys
benchmarks = []
for r in json.load(open(sys.argv[1])):
    t, s = r["n_threads"], sys.argv[3]
    name = (f"BM_llamacpp_prefill{s}/n:{r['n_prompt']}/threads:{t}" if r["n_gen"] == 0
            else f"BM_llamacpp_decode{s}/threads:{t}")
    benchmarks.append({"name": name, "run_name": name, "run_type": "aggregate", "aggregate_name": "median",
                       "ms": r["avg_ns"] / 1e6, "tok/s": r["avg_ts"]})
json.dump({"benchmarks": benchmarks}, open(sys.argv[2], "w"), indent=1)
PY
  done
}

# run_llama2c_train THREADS — llama2.c's model.py on PyTorch (bench/peers/torch_train_llama2c.py, a process per
# thread count with the thread environment set inside), BM_llama_train's shape: Google Benchmark-style JSON in
# $RESULTS/llama2c_train.t<THREADS>.json (BM_llama2c_train: mean ms of 3 timed steps after 1 warm-up, tok/s).
run_llama2c_train() {
  local t=$1
  if [[ -z ${LLAMA2C_DIR:-} || ! -f ${LLAMA2C_DIR:-}/model.py ]]; then
    echo "  (skipping llama2c_train: LLAMA2C_DIR is not set to a llama2.c checkout)" | tee -a "$LOG"
    return 0
  fi
  echo "  LLAMA2C_DIR=$LLAMA2C_DIR $PYTHON torch_train_llama2c.py --threads $t" | tee -a "$LOG"
  "$PYTHON" "$(dirname "$0")/peers/torch_train_llama2c.py" --threads "$t" --json "$RESULTS/llama2c_train.t$t.json" \
    >>"$LOG" 2>&1 || echo "  (torch_train_llama2c.py exited with $?)" | tee -a "$LOG"
}

if [[ $TABLE_ONLY == 0 ]]; then
: >"$LOG"
{ echo "# $(date -Is) $(uname -n)"; echo "# load before: $(cat /proc/loadavg)"; } >>"$LOG"
for t in $THREADS; do
  for area in $AREAS; do
    echo "== $area, $t thread(s)"
    case $area in
      gemm)
        run bench_gemm gemm "$t" "$REPS" "threads:$t/"
        run dnnl_gemm dnnl_gemm "$t" "$REPS" "threads:$t/" ;;
      encoder_layer)
        run bench_encoder_layer encoder_layer "$t" "$REPS" "n:(128|512)/threads:$t/"
        run libtorch_encoder_layer libtorch_encoder_layer "$t" "$REPS" "n:(128|512)/threads:$t/"
        run_ort enc ort_encoder_layer "$t" 10 3 128 512
        run bench_encoder_layer encoder_layer_slow "$t" "$SLOW_REPS" "n:2048/threads:$t/"
        run libtorch_encoder_layer libtorch_encoder_layer_slow "$t" "$SLOW_REPS" "n:2048/threads:$t/"
        run_ort enc ort_encoder_layer_slow "$t" 3 1 2048 ;;
      attention)
        run bench_attention attention "$t" "$REPS" "n:(1024|2048)/threads:$t/"
        run libtorch_attention libtorch_attention "$t" "$REPS" "n:(1024|2048)/threads:$t/"
        run bench_attention attention_slow "$t" "$SLOW_REPS" "n:(4096|8192|16384)/threads:$t/"
        run libtorch_attention libtorch_attention_slow "$t" "$SLOW_REPS" "n:4096/threads:$t/"
        run_ort attn ort_attention_mha "$t" 5 1 1024 4096 ;;
      llama)
        run bench_llama llama "$t" "$REPS" "(stories260k|stream_triad|llama110m).*threads:$t/"
        run_llamacpp "$t" ;;
      train)  # training steps at stories15M's shape (seconds each: 1 repetition of 3 steps) against llama2.c on PyTorch
        run bench_llama llama_train "$t" 1 "BM_llama_train.*threads:$t/"
        run_llama2c_train "$t" ;;
      generate)  # whole processes, stories260K, greedy, 512 positions: generate against run.c, interleaved
        if [[ $t != 1 ]]; then echo "  (generate: run.c is single-threaded; compared at 1 thread only)" | tee -a "$LOG"
        elif [[ -z ${RUNC:-} || ! -x ${RUNC:-} ]]; then echo "  (skipping generate: RUNC is not set)" | tee -a "$LOG"
        elif ! command -v hyperfine >/dev/null; then echo "  (skipping generate: hyperfine is not installed)" | tee -a "$LOG"
        else
          M=$SHARED/models
          hyperfine -N -w 5 -r $((REPS * 10)) --export-json "$RESULTS/generate.t1.hyperfine.json" \
            -n run.c "$RUNC $M/stories260K.bin -z $M/tok512.bin -t 0 -n 512 -i 'Once upon a time'" \
            -n generate "$BUILD/examples/generate --model $M/stories260K.bin --tokenizer $M/tok512.bin --temperature 0 --steps 512 --threads 1 --prompt 'Once upon a time'" \
            >>"$LOG" 2>&1 || echo "  (hyperfine exited with $?)" | tee -a "$LOG"
        fi ;;
      *) echo "unknown area $area" >&2; exit 2 ;;
    esac
  done
done
echo "# load after: $(cat /proc/loadavg)" >>"$LOG"
fi  # TABLE_ONLY

"$PYTHON" - "$RESULTS" <<'PY' | tee "$RESULTS/table.md"
import glob, json, os, re, statistics, sys

results = sys.argv[1]
# polyformer benchmark -> its peers
PEERS = {
    "gemm_packed": ["gemm_entry", "gemm_eigen", "gemm_openblas", "dnnl_matmul_f32"],
    "linear_bf16": ["dnnl_matmul_bf16"],
    "encoder_layer": ["ort_encoder_layer", "libtorch_encoder_layer", "libtorch_encoder_layer_fused"],
    "attention": ["ort_attention_mha", "libtorch_attention_sdpa", "libtorch_attention_matmul"],
}
OURS = ["gemm_packed", "encoder_layer", "encoder_layer_gemms", "attention"]

# (family, args) -> list of (kind, counters); kind is "median" or "iteration"
runs = {}
for path in sorted(glob.glob(os.path.join(results, "*.json"))):
    with open(path) as f:
        data = json.load(f)
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        kind = b.get("aggregate_name", "iteration") if b.get("run_type") == "aggregate" else "iteration"
        if kind not in ("median", "iteration"):
            continue
        name = b.get("run_name", b["name"])
        parts = name.split("/")
        family = parts[0][3:] if parts[0].startswith("BM_") else parts[0]
        args = "/".join(p for p in parts[1:] if ":" in p and not p.startswith(("iterations:", "repeats:", "min_time:")))
        c = {k: b.get(k) for k in ("ms", "GFLOP/s", "peak_MB", "extra_MB", "tok/s", "decode_tok/s", "weight_GB/s",
                                   "triad_GB/s", "pct_of_triad", "gemm_GFLOP/s", "pct_of_gemm", "loss")}
        if c["ms"] is None:
            continue
        runs.setdefault((family, args), []).append((kind, c))

def pick(family, args):
    """Median aggregate when there is one, else the median of the single runs."""
    rs = runs.get((family, args))
    if not rs:
        return None
    med = [c for k, c in rs if k == "median"]
    if med:
        return med[0]
    cs = [c for k, c in rs]
    return {k: statistics.median(c[k] for c in cs) for k in cs[0] if all(c[k] is not None for c in cs)}

def key(args):
    d = dict(p.split(":") for p in args.split("/"))
    return (int(d.get("threads", 0)),) + tuple(int(v) for k, v in d.items() if k != "threads")

def fmt(x, spec):
    return "—" if x is None else format(x, spec)

print("| case | threads | polyformer ms | GFLOP/s | peak MB | peer | peer ms | GFLOP/s | peak MB | peer/polyformer |")
print("|---|---|---|---|---|---|---|---|---|---|")
for fam in ["gemm_packed", "linear_bf16", "encoder_layer", "encoder_layer_bf16", "attention"]:
    cases = sorted({a for (f, a) in runs if f == fam}, key=key)
    for args in cases:
        ours = pick(fam, args)
        d = dict(p.split(":") for p in args.split("/"))
        t = d.pop("threads")
        case = fam + " " + " ".join(f"{k}={v}" for k, v in d.items())
        peers = [(p, pick(p, args)) for p in PEERS.get(fam, [])]
        peers = [(p, c) for p, c in peers if c] or [("—", None)]
        for p, c in peers:
            ratio = c["ms"] / ours["ms"] if c else None
            print(f"| {case} | {t} | {fmt(ours['ms'], '.2f')} | {fmt(ours['GFLOP/s'], '.1f')} | "
                  f"{fmt(ours['peak_MB'], '.0f')} | {p} | {fmt(c and c['ms'], '.2f')} | "
                  f"{fmt(c and c['GFLOP/s'], '.1f')} | {fmt(c and c['peak_MB'], '.0f')} | {fmt(ratio, '.2f')} |")

def fastest_peer(fam, args, peers):
    """(polyformer's figures, the fastest peer's name, its figures) for one case, or None when either is missing."""
    ours = pick(fam, args)
    found = [(p, pick(p, args)) for p in peers]
    found = [(p, c) for p, c in found if c]
    if not ours or not found:
        return None
    p, c = min(found, key=lambda pc: pc[1]["ms"])
    return ours, p, c

def print_against_fastest(title, cases, column, better, target):
    """One table: each (family, args) case against its fastest peer; `better` turns (ours, peer) into the ratio."""
    rows = [(fam, args, r) for fam, args, peers in cases if (r := fastest_peer(fam, args, peers))]
    if not rows:
        return
    print()
    print(f"| {title} | polyformer {column} | fastest peer | its {column} | ratio (target {target}) |")
    print("|---|---|---|---|---|")
    for fam, args, (ours, p, c) in rows:
        print(f"| {fam} {args} | {ours[column]:.2f} | {p} | {c[column]:.2f} | {better(ours[column], c[column]):.2f} |")

print_against_fastest("packed GEMM against the best of Eigen, OpenBLAS, oneDNN",
                      [("gemm_packed", a, ("gemm_eigen", "gemm_openblas", "dnnl_matmul_f32"))
                       for a in sorted({a for (f, a) in runs if f == "gemm_packed"}, key=key)],
                      "GFLOP/s", lambda ours, peer: ours / peer, "polyformer ÷ peer ≥ 0.9")
print_against_fastest("against the fastest peer",
                      [(fam, a, [p for p in PEERS[fam] if p != "libtorch_attention_matmul"])
                       for fam in ("encoder_layer", "attention")
                       for a in sorted({a for (f, a) in runs if f == fam}, key=key)],
                      "ms", lambda ours, peer: peer / ours, "peer ÷ polyformer ≥ 1.2")

gemms = sorted({a for (f, a) in runs if f == "encoder_layer_gemms"}, key=key)
if gemms:
    print()
    print("| encoder layer GEMMs alone | threads | ms | GFLOP/s | % of gemm_entry this run | % of layer time |")
    print("|---|---|---|---|---|---|")
    for args in gemms:
        g, layer = pick("encoder_layer_gemms", args), pick("encoder_layer", args)
        d = dict(p.split(":") for p in args.split("/"))
        t = int(d["threads"])
        share = 100 * g["ms"] / layer["ms"] if layer else None
        # the best of BM_gemm_entry's shapes at this thread count, measured in this run
        entry = [pick("gemm_entry", a) for (f, a) in runs if f == "gemm_entry" and a.endswith(f"threads:{t}")]
        best = max((e["GFLOP/s"] for e in entry if e), default=None)
        here = 100 * g["GFLOP/s"] / best if best else None
        print(f"| n={d['n']} | {t} | {g['ms']:.2f} | {g['GFLOP/s']:.1f} | {fmt(here, '.0f')} | "
              f"{fmt(share, '.0f')} |")

llama = sorted((f, a) for (f, a) in runs if f.startswith(("stories260k", "llama110m")))
if llama:
    print()
    print("| llama case | threads | ms | tok/s | decode tok/s | weight GB/s | triad GB/s | % of triad | GFLOP/s | "
          "% of packed GEMM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fam, args in sorted(llama, key=lambda fa: (fa[0], key(fa[1]))):
        c = pick(fam, args)
        d = dict(p.split(":") for p in args.split("/"))
        t = int(d.pop("threads"))
        case = fam + " " + " ".join(f"{k}={v}" for k, v in d.items())
        print(f"| {case} | {t} | {fmt(c.get('ms'), '.2f')} | {fmt(c.get('tok/s'), '.0f')} | "
              f"{fmt(c.get('decode_tok/s'), '.0f')} | {fmt(c.get('weight_GB/s'), '.1f')} | "
              f"{fmt(c.get('triad_GB/s'), '.1f')} | {fmt(c.get('pct_of_triad'), '.0f')} | "
              f"{fmt(c.get('GFLOP/s'), '.1f')} | {fmt(c.get('pct_of_gemm'), '.0f')} |")

pairs = [("llama110m_decode", "threads:{t}", "llamacpp_decode", "threads:{t}"),
         ("llama110m_prefill", "n:16/threads:{t}", "llamacpp_prefill", "n:16/threads:{t}"),
         ("llama110m_decode_bf16", "threads:{t}", "llamacpp_decode_bf16", "threads:{t}")]
rows = []
for t in (1, 2):
    for ours_f, ours_a, peer_f, peer_a in pairs:
        ours, peer = pick(ours_f, ours_a.format(t=t)), pick(peer_f, peer_a.format(t=t))
        if ours and peer and ours.get("tok/s") and peer.get("tok/s"):
            rows.append((ours_f, t, ours["tok/s"], peer["tok/s"]))
if rows:
    print()
    print("| 110M model, same shape and bytes (F32, or every matrix BF16 for _bf16; llama.cpp reads an untied copy of "
          "the classifier, polyformer the tied embedding in F32 and a classifier of its own in BF16) | threads | "
          "polyformer tok/s | llama.cpp tok/s | polyformer ÷ llama.cpp (decode target ≥ 1.1, prefill ≥ 1) |")
    print("|---|---|---|---|---|")
    for fam, t, ours, peer in rows:
        print(f"| {fam} | {t} | {ours:.1f} | {peer:.1f} | {ours / peer:.2f} |")

rows = []
for t in (1, 2):
    full, lora, peer = (pick(f, f"threads:{t}") for f in ("llama_train", "llama_train_lora", "llama2c_train"))
    if full:
        rows.append((t, full, lora, peer))
if rows:
    print()
    print("| training step, stories15M shape, batch 8 × 256 | threads | polyformer tok/s | llama2.c model.py on PyTorch "
          "tok/s | polyformer ÷ PyTorch (target ≥ 2) | LoRA r 8 (wq, wv) ms | full ms | LoRA ÷ full (target ≤ 0.6) |")
    print("|---|---|---|---|---|---|---|---|")
    for t, full, lora, peer in rows:
        ratio = full["tok/s"] / peer["tok/s"] if peer and peer.get("tok/s") else None
        share = lora["ms"] / full["ms"] if lora else None
        print(f"| full fine-tuning | {t} | {fmt(full.get('tok/s'), '.0f')} | {fmt(peer and peer.get('tok/s'), '.0f')} | "
              f"{fmt(ratio, '.2f')} | {fmt(lora and lora['ms'], '.0f')} | {full['ms']:.0f} | {fmt(share, '.2f')} |")

gen = os.path.join(results, "generate.t1.hyperfine.json")
if os.path.exists(gen):
    with open(gen) as f:
        h = {r["command"]: r for r in json.load(f)["results"]}
    if "run.c" in h and "generate" in h:
        print()
        print("| whole process, stories260K, 512 positions, 1 thread | mean ms | min ms | run.c ÷ generate (mean) |")
        print("|---|---|---|---|")
        for name in ("run.c", "generate"):
            r = h[name]
            print(f"| {name} | {1e3 * r['mean']:.1f} | {1e3 * r['min']:.1f} | "
                  f"{h['run.c']['mean'] / r['mean']:.2f} |")

print(f"\nms are medians over repetitions (single runs for the slow sizes); peak MB = VmHWM of the process "
      f"during that benchmark (MiB, libraries included). JSON and console output: {results}")
PY
