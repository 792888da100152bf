// ONNX Runtime (npm onnxruntime-node, CPU execution provider) on the BERT-base of ort_bert.py: one process per
// measurement, the median of REPS runs after WARMUP, checked against PyTorch's last_hidden_state.
//   NODE_PATH=/path/to/node_modules node bench/peers/ort_bert.js DIR N THREADS [REPS] [WARMUP]
// DIR: ort_bert.py's output folder. Session options: intraOpNumThreads THREADS, interOpNumThreads 1, graph
// optimizations all, sequential. Prints one JSON line: median_ms, min_ms, max_abs_err.
'use strict';
const fs = require('fs');
const path = require('path');
const ort = require('onnxruntime-node');

function median(xs) { const s = [...xs].sort((a, b) => a - b); const k = s.length >> 1; return s.length % 2 ? s[k] : 0.5 * (s[k - 1] + s[k]); }

(async () => {
  const [dir, nText, threadsText, repsText, warmupText] = process.argv.slice(2);
  const n = Number(nText), threads = Number(threadsText), reps = Number(repsText || 10), warmup = Number(warmupText || 3);
  const session = await ort.InferenceSession.create(path.join(dir, 'bert-base.onnx'), {
    executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all',
    executionMode: 'sequential',
  });
  const idsBytes = fs.readFileSync(path.join(dir, `bert_ids_${n}.bin`));
  const ids = new BigInt64Array(idsBytes.buffer, idsBytes.byteOffset, n).slice();
  const feeds = { input_ids: new ort.Tensor('int64', ids, [1, n]),
                  attention_mask: new ort.Tensor('int64', new BigInt64Array(n).fill(1n), [1, n]) };
  const yBytes = fs.readFileSync(path.join(dir, `bert_y_${n}.bin`));
  const want = new Float32Array(yBytes.buffer, yBytes.byteOffset, yBytes.byteLength / 4);
  let out = await session.run(feeds);
  let err = 0;
  const got = out.last_hidden_state.data;
  for (let i = 0; i < want.length; ++i) err = Math.max(err, Math.abs(got[i] - want[i]));
  for (let i = 1; i < warmup; ++i) out = await session.run(feeds);
  const times = [];
  for (let i = 0; i < reps; ++i) {
    const t0 = process.hrtime.bigint();
    out = await session.run(feeds);
    times.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  console.log(JSON.stringify({ peer: 'onnxruntime', model: 'bert-base', n, threads, reps,
                               median_ms: +median(times).toFixed(2), min_ms: +Math.min(...times).toFixed(2),
                               max_abs_err: err }));
})().catch((e) => { console.error(e); process.exit(1); });
