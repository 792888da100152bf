// Writes tests/tokenizers/pretokenizers.json, the oracle of tests/test_tokenizers_pre_tokenizers.cpp: the Hugging
// Face tokenizers library's ids (npm `tokenizers`, the Rust library's Node bindings) under its splitting
// pre-tokenizers — Whitespace, WhitespaceSplit, Punctuation, Digits (runs and single digits), BertPreTokenizer and
// Sequences of them — put in front of the WordPiece (BERT), SentencePiece-style BPE (Llama) and Unigram (T5) fixtures
// the build unpacks into build/tests/tokenizers-<name>:
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
const bases = {
  bert: bertBase(),
  llama: JSON.parse(read('llama', 'tokenizer.json')),
  t5: JSON.parse(read('t5', 'tokenizer.json')),
};

const whitespace = { type: 'Whitespace' }, whitespaceSplit = { type: 'WhitespaceSplit' };
const punctuation = { type: 'Punctuation', behavior: 'Isolated' }, bert = { type: 'BertPreTokenizer' };
const digits = (individual) => ({ type: 'Digits', individual_digits: individual });
const sequence = (...steps) => ({ type: 'Sequence', pretokenizers: steps });
const cases = [
  ['bert_whitespace', 'bert', whitespace],
  ['bert_split_punctuation_digit', 'bert', sequence(whitespaceSplit, punctuation, digits(true))],
  ['bert_whitespace_digits', 'bert', sequence(whitespace, digits(false))],
  ['bert_bert_digit', 'bert', sequence(bert, digits(true))],
  ['llama_whitespace', 'llama', whitespace],
  ['llama_punctuation_digit', 'llama', sequence(punctuation, digits(true))],
  ['t5_whitespace', 't5', whitespace],
  ['t5_split_punctuation_digits', 't5', sequence(whitespaceSplit, punctuation, digits(false))],
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
  for (const [name, base, pre] of cases) {
    const json = JSON.parse(JSON.stringify(bases[base]));
    json.pre_tokenizer = pre;
    json.post_processor = null;
    const tokenizer = Tokenizer.fromString(JSON.stringify(json));
    const ids = async (texts) => {
      const rows = [];
      for (const t of texts) rows.push((await tokenizer.encode(t, null, { addSpecialTokens: false })).getIds().join(' '));
      return rows;
    };
    out.cases.push({ name, base, pre_tokenizer: pre, edge: await ids(edge),
                     random: chunkHashes(await ids(random), 100), fortunes: chunkHashes(await ids(records), 500) });
    console.error(name);
  }
  fs.writeFileSync(outFile, JSON.stringify(out, null, 1) + '\n');
}
main();
