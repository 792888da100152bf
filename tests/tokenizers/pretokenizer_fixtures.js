// Writes tests/tokenizers/pretokenizers.json, the oracle of tests/test_tokenizers_pre_tokenizers.cpp: the Hugging
// Face tokenizers library's ids (npm `tokenizers`, the Rust library's Node bindings) under its splitting
// pre-tokenizers — Whitespace, WhitespaceSplit, Punctuation, Digits (runs and single digits), BertPreTokenizer and
// Sequences of them — put in front of the WordPiece (BERT), SentencePiece-style BPE (Llama) and Unigram (T5) fixtures,
// and of Split by the regular expressions of GPT-2, cl100k_base (Llama 3) and Qwen2 before ByteLevel (with and
// without its own regular expression and prefix space) in front of GPT-2's byte-level BPE, the fixtures the build
// unpacks into build/tests/tokenizers-<name>; and the normalizers NFD, NFKD, NFC, NFKC, Lowercase and StripAccents
// in front of them:
//   NODE_PATH=/path/to/node_modules node pretokenizer_fixtures.js build/tests tests/tokenizers/pretokenizers.json
// Per case: the base, the pre-tokenizer, the ids of texts.js's hand-written edge cases in full, and for its 3,000
// random strings and for the fortune records the hash (texts.js's) of each chunk of 100 and 500 texts, a chunk being
// its texts' ids, space-separated, one text a line.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { edge, extra, fortunes, hash } = require('./texts');

const fixtures = process.argv[2];
const outFile = process.argv[3];
const read = (name, file) => fs.readFileSync(path.join(fixtures, 'tokenizers-' + name, file), 'utf8');

function bertBase() {  // as pair_fixtures.js and the tests build it from vocab.txt
  const tokens = read('bert', 'vocab.txt').split('\n');
  if (tokens[tokens.length - 1] === '') tokens.pop();
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  const special = (s) => ({ id: vocab[s], content: s, single_word: false, lstrip: false, rstrip: false,
                            normalized: false, special: true });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map(special),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null,
                  lowercase: true },
    pre_tokenizer: null, post_processor: null, decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
             vocab },
  };
}
function gpt2Base() {  // as tests/test_tokenizers_pre_tokenizers.cpp builds it from vocab.json and merges.txt
  const vocab = JSON.parse(read('gpt2', 'vocab.json'));
  const merges = read('gpt2', 'merges.txt').split('\n').filter((l) => l !== '' && !l.startsWith('#version'));
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: [{ id: 50256, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false,
                     normalized: false, special: true }],
    normalizer: null, pre_tokenizer: byteLevel, post_processor: null, decoder: byteLevel,
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
             fuse_unk: false, byte_fallback: false, vocab, merges },
  };
}
const bases = {
  bert: bertBase(),
  gpt2: gpt2Base(),
  llama: JSON.parse(read('llama', 'tokenizer.json')),
  t5: JSON.parse(read('t5', 'tokenizer.json')),
};

const whitespace = { type: 'Whitespace' }, whitespaceSplit = { type: 'WhitespaceSplit' };
const punctuation = { type: 'Punctuation', behavior: 'Isolated' }, bert = { type: 'BertPreTokenizer' };
const digits = (individual) => ({ type: 'Digits', individual_digits: individual });
const sequence = (...steps) => ({ type: 'Sequence', pretokenizers: steps });
const nf = (type) => ({ type });
const normalizers = (...steps) => ({ type: 'Sequence', normalizers: steps });
const llamaNormalizers = bases.llama.normalizer.normalizers;  // Prepend ▁, Replace ' ' with ▁
// Split by the regular expressions of byte-level models (split_pattern.hpp), before ByteLevel.
const patterns = {
  gpt2: String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`,
  cl100k: String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|` +
          String.raw`\s*[\r\n]+|\s+(?!\S)|\s+`,
  qwen2: String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|` +
         String.raw`\s*[\r\n]+|\s+(?!\S)|\s+`,
};
const split = (pattern) => ({ type: 'Split', pattern: { Regex: patterns[pattern] }, behavior: 'Isolated', invert: false });
const byteLevel = (prefix, regex) => ({ type: 'ByteLevel', add_prefix_space: prefix, trim_offsets: true, use_regex: regex });
const cases = [
  ['bert_whitespace', 'bert', whitespace],
  ['bert_split_punctuation_digit', 'bert', sequence(whitespaceSplit, punctuation, digits(true))],
  ['bert_whitespace_digits', 'bert', sequence(whitespace, digits(false))],
  ['bert_bert_digit', 'bert', sequence(bert, digits(true))],
  ['llama_whitespace', 'llama', whitespace],
  ['llama_punctuation_digit', 'llama', sequence(punctuation, digits(true))],
  ['t5_whitespace', 't5', whitespace],
  ['t5_split_punctuation_digits', 't5', sequence(whitespaceSplit, punctuation, digits(false))],
  ['gpt2_split_cl100k', 'gpt2', sequence(split('cl100k'), byteLevel(false, false))],  // Llama 3's
  ['gpt2_split_qwen2', 'gpt2', sequence(split('qwen2'), byteLevel(false, false))],
  ['gpt2_split_cl100k_prefix_regex', 'gpt2', sequence(split('cl100k'), byteLevel(true, true))],
  ['gpt2_split_gpt2', 'gpt2', sequence(split('gpt2'), byteLevel(false, false))],
  ['gpt2_byte_level_whole', 'gpt2', byteLevel(false, false)],
  // Normalizers (normalizer.hpp) in front of the base's own pre-tokenizer (undefined) or another.
  ['bert_nfd_strip_lowercase', 'bert', bert, normalizers(nf('NFD'), { type: 'StripAccents' }, { type: 'Lowercase' })],
  ['bert_nfkc_whitespace', 'bert', whitespace, nf('NFKC')],
  ['llama_nfkc', 'llama', undefined, normalizers(nf('NFKC'), ...llamaNormalizers)],
  ['llama_nfd_lowercase', 'llama', undefined, normalizers(nf('NFD'), { type: 'Lowercase' }, ...llamaNormalizers)],
  ['t5_nfkd_strip_accents', 't5', undefined, normalizers(nf('NFKD'), { type: 'StripAccents' })],
  ['gpt2_nfc_split_cl100k', 'gpt2', sequence(split('cl100k'), byteLevel(false, false)), nf('NFC')],
];

function chunkHashes(rows, size) {
  const out = [];
  for (let i = 0; i < rows.length; i += size) out.push(hash(rows.slice(i, i + size).join('\n')));
  return out;
}

async function main() {
  const records = fortunes();
  const random = extra.slice(edge.length);
  const out = { cases: [] };
  for (const [name, base, pre, normalizer] of cases) {
    const json = JSON.parse(JSON.stringify(bases[base]));
    if (pre !== undefined) json.pre_tokenizer = pre;
    if (normalizer !== undefined) json.normalizer = normalizer;
    json.post_processor = null;
    const tokenizer = Tokenizer.fromString(JSON.stringify(json));
    const ids = async (texts) => {
      const rows = [];
      for (const t of texts) rows.push((await tokenizer.encode(t, null, { addSpecialTokens: false })).getIds().join(' '));
      return rows;
    };
    out.cases.push({ name, base, pre_tokenizer: json.pre_tokenizer, normalizer, edge: await ids(edge),
                     random: chunkHashes(await ids(random), 100), fortunes: chunkHashes(await ids(records), 500) });
    console.error(name);
  }
  fs.writeFileSync(outFile, JSON.stringify(out, null, 1) + '\n');
}
main();
