// The Hugging Face tokenizers library (npm `tokenizers`, the Rust library's Node bindings) on bench_tokenizer's
// corpus and fixtures (build/tests/tokenizers-<name>): the fortune files without their "%" lines cut into pieces of
// 20 lines, encoded in one batch on one thread (RAYON_NUM_THREADS=1), the best of 5 runs as MB of UTF-8 per second.
// NAME is gpt2 (its tokenizer.json built from vocab.json + merges.txt as tests/tokenizers/gpt2_fixtures.js builds
// it), bert (uncased, from vocab.txt as tests/tokenizers/bert_fixtures.js builds it), llama or t5 (their
// tokenizer.json), t5_nfkc (tokenizers-t5/tokenizer_nfkc_hub.json: T5's Precompiled NFKC layout), gpt2_cl100k or
// bert_nfd (below).
//   RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false NODE_PATH=/path/to/node_modules \
//     node bench/peers/hf_tokenizers.js build/tests NAME
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');

const name = process.argv[3] || 'gpt2';
const base = { t5_nfkc: 't5', gpt2_cl100k: 'gpt2', bert_nfd: 'bert' }[name] || name;
const dir = path.join(process.argv[2], 'tokenizers-' + base);

function gpt2Json() {
  const vocab = JSON.parse(fs.readFileSync(path.join(dir, 'vocab.json'), 'utf8'));
  const merges = fs.readFileSync(path.join(dir, 'merges.txt'), 'utf8').split('\n').slice(1).filter((l) => l.length > 0);
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false,
                     normalized: true, special: true }],
    normalizer: null, pre_tokenizer: byteLevel, post_processor: { ...byteLevel, trim_offsets: false }, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
             fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
  };
}

function bertJson() {
  const tokens = fs.readFileSync(path.join(dir, 'vocab.txt'), 'utf8').split('\n');
  if (tokens[tokens.length - 1] === '') tokens.pop();
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: specials.map((s) => ({ id: vocab[s], content: s, single_word: false, lstrip: false, rstrip: false,
                                         normalized: false, special: true })),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null,
                  lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: { type: 'BertProcessing', sep: ['[SEP]', vocab['[SEP]']], cls: ['[CLS]', vocab['[CLS]']] },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
             vocab },
  };
}

// Llama 3's pre-tokenizer over GPT-2's vocabulary, and BERT's vocabulary behind the normalizers NFD, StripAccents and
// Lowercase (bench_tokenizer's gpt2_cl100k and bert_nfd).
const cl100k = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|` +
               String.raw`\s*[\r\n]+|\s+(?!\S)|\s+`;
function variant() {
  if (name === 'gpt2_cl100k') {
    const j = gpt2Json();
    j.pre_tokenizer = { type: 'Sequence', pretokenizers: [
      { type: 'Split', pattern: { Regex: cl100k }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false }] };
    return j;
  }
  const j = bertJson();
  j.normalizer = { type: 'Sequence', normalizers: [{ type: 'NFD' }, { type: 'StripAccents' }, { type: 'Lowercase' }] };
  return j;
}
const json = name === 'gpt2' ? JSON.stringify(gpt2Json()) : name === 'bert' ? JSON.stringify(bertJson())
           : name === 'gpt2_cl100k' || name === 'bert_nfd' ? JSON.stringify(variant())
           : fs.readFileSync(path.join(dir, name === 't5_nfkc' ? 'tokenizer_nfkc_hub.json' : 'tokenizer.json'), 'utf8');
const tokenizer = Tokenizer.fromString(json);

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
  console.log(JSON.stringify({ peer: 'hf_tokenizers', tokenizer: name, pieces: pieces.length, bytes, ids, encode_MB_per_s: best }));
})();
