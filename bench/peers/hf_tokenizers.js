// The Hugging Face tokenizers library (npm `tokenizers`, the Rust library's Node bindings) on bench_tokenizer's
// corpus and vocabulary: GPT-2's tokenizer.json built from vocab.json + merges.txt as tests/tokenizers/gpt2_fixtures.js
// builds it, the fortune files without their "%" lines cut into pieces of 20 lines, encoded in one batch on one
// thread (RAYON_NUM_THREADS=1), the best of 5 runs as MB of UTF-8 per second.
//   RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false NODE_PATH=/path/to/node_modules \
//     node bench/peers/hf_tokenizers.js build/tests/tokenizers-gpt2
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const dir = process.argv[2];
const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8'));
const merges = fs.readFileSync(path.join(dir, 'merges.txt'), 'utf8').split('\n').slice(1).filter((l) => l.length > 0);
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
const tokenizer = Tokenizer.fromString(JSON.stringify({
  version: '1.0', truncation: null, padding: null,
  added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false,
                   normalized: true, special: true }],
  normalizer: null, pre_tokenizer: byteLevel, post_processor: { ...byteLevel, trim_offsets: false }, decoder: byteLevel,
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
           fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
}));

const fortunes = '/usr/share/games/fortunes';
const lines = [];
for (const f of fs.readdirSync(fortunes).filter((n) => !n.endsWith('.dat') && !n.endsWith('.u8')).sort()) {
  const text = fs.readFileSync(path.join(fortunes, f), 'utf8');
  const parts = text.split('\n');
  if (parts.length > 0 && parts[parts.length - 1] === '') parts.pop();  // as getline: no line after the last "\n"
  for (const line of parts) if (line !== '%') lines.push(line);
}
const pieces = [];
for (let i = 0; i < lines.length; i += 20) pieces.push(lines.slice(i, i + 20).join('\n'));
const bytes = pieces.reduce((n, p) => n + Buffer.byteLength(p, 'utf8'), 0);

(async () => {
  let best = 0, ids = 0;
  for (let run = 0; run < 5; ++run) {
    const t0 = process.hrtime.bigint();
    const encodings = await tokenizer.encodeBatch(pieces);
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    ids = encodings.reduce((n, e) => n + e.getIds().length, 0);
    best = Math.max(best, bytes / 1e6 / seconds);
  }
  console.log(JSON.stringify({ peer: 'hf_tokenizers', pieces: pieces.length, bytes, ids, encode_MB_per_s: best }));
})();
