// Writes tests/tokenizers/pairs.json, the oracle of tests/test_tokenizers_pairs.cpp: the Hugging Face tokenizers
// library's ids and type ids (npm `tokenizers`, the Rust library's Node bindings) of single texts and text pairs,
// with and without special tokens, under every post-processor polyformer reads. The tokenizers are the other
// fixtures' (the build unpacks them into build/tests/tokenizers-<name>), each with a post-processor set here:
//   NODE_PATH=/path/to/node_modules node pair_fixtures.js build/tests tests/tokenizers/pairs.json
// pairs.json holds the texts, the inputs (a text's index, and its pair's or null), and per case the base tokenizer's
// name, the post-processor and any added tokens put into it, and per input the ids and type ids with special tokens
// and without.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { edge, extra, fortunes } = require('./texts');

const fixtures = process.argv[2];
const outFile = process.argv[3];
const read = (name, file) => fs.readFileSync(path.join(fixtures, 'tokenizers-' + name, file), 'utf8');

// The base tokenizers, as tokenizer.json objects. BERT's and GPT-2's are built from their older files exactly as
// tests/test_tokenizers_pairs.cpp builds them.
function special(id, content) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true };
}
function bertBase() {
  const tokens = read('bert', 'vocab.txt').split('\n');
  if (tokens[tokens.length - 1] === '') tokens.pop();
  const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'].map((s) => special(vocab[s], s)),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: null,
                  lowercase: true },
    pre_tokenizer: { type: 'BertPreTokenizer' }, post_processor: null,
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
             vocab },
  };
}
function gpt2Base() {
  const vocab = JSON.parse(read('gpt2', 'vocab.json'));
  const merges = read('gpt2', 'merges.txt').split('\n').filter((l, i) => l !== '' && !(i === 0 && l.startsWith('#version')));
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: [special(vocab['<|endoftext|>'], '<|endoftext|>')],
    normalizer: null, pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null, decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
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

const piece = (kind, id, typeId) => ({ [kind]: { id, type_id: typeId } });
const template = (single, pair, specials) => ({
  type: 'TemplateProcessing', single, pair,
  special_tokens: Object.fromEntries(specials.map(([name, ids]) => [name, { id: name, ids, tokens: ids.map(() => name) }])),
});
const endoftext = bases.gpt2.added_tokens[0].id;
const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
const bertIds = Object.fromEntries(bases.bert.added_tokens.map((t) => [t.content, t.id]));

// name, base, post-processor, added tokens put after the base's
const cases = [
  ['bert_template', 'bert', null, []],  // the BERT template of bert_fixtures.js (below)
  ['bert_processing', 'bert', { type: 'BertProcessing', sep: ['[SEP]', bertIds['[SEP]']], cls: ['[CLS]', bertIds['[CLS]']] }, []],
  ['llama', 'llama', undefined, []],  // undefined: the base's own
  ['t5', 't5', undefined, []],
  ['gpt2_byte_level', 'gpt2', byteLevel, []],
  ['gpt2_none', 'gpt2', null, []],
  ['roberta', 'gpt2', { type: 'RobertaProcessing', sep: ['</s>', endoftext + 2], cls: ['<s>', endoftext + 1],
                        trim_offsets: true, add_prefix_space: false },
   [special(endoftext + 1, '<s>'), special(endoftext + 2, '</s>')]],
  // Types other than 0 and 1, a special token of two ids, and a template with B before A.
  ['template_types', 'bert',
   template([piece('SpecialToken', '[CLS]', 2), piece('Sequence', 'A', 3)],
            [piece('Sequence', 'B', 5), piece('SpecialToken', 'PAIR', 4), piece('Sequence', 'A', 3),
             piece('SpecialToken', '[SEP]', 0)],
            [['[CLS]', [bertIds['[CLS]']]], ['[SEP]', [bertIds['[SEP]']]],
             ['PAIR', [bertIds['[SEP]'], bertIds['[MASK]']]]]), []],
  ['sequence', 'gpt2',
   { type: 'Sequence', processors: [byteLevel,
     template([piece('Sequence', 'A', 0), piece('SpecialToken', '<|endoftext|>', 0)],
              [piece('Sequence', 'A', 0), piece('SpecialToken', '<|endoftext|>', 0), piece('Sequence', 'B', 1),
               piece('SpecialToken', '<|endoftext|>', 1)],
              [['<|endoftext|>', [endoftext]]])] }, []],
];
cases[0][2] = template(
    [piece('SpecialToken', '[CLS]', 0), piece('Sequence', 'A', 0), piece('SpecialToken', '[SEP]', 0)],
    [piece('SpecialToken', '[CLS]', 0), piece('Sequence', 'A', 0), piece('SpecialToken', '[SEP]', 0),
     piece('Sequence', 'B', 1), piece('SpecialToken', '[SEP]', 1)],
    [['[CLS]', [bertIds['[CLS]']]], ['[SEP]', [bertIds['[SEP]']]]]);

// Texts: hand-written edge cases (empty ones included) paired with their neighbours, random strings and fortunes.
const records = fortunes();
const texts = edge.concat(extra.slice(edge.length, edge.length + 2), records.slice(0, 2), records.slice(-1));
const inputs = [];  // [index of A, index of B or null]
for (let i = 0; i < texts.length; ++i) inputs.push([i, null], [i, (i * 7 + 3) % texts.length]);

async function main() {
const out = { texts, inputs, cases: [] };
for (const [name, base, post, added] of cases) {
  const json = JSON.parse(JSON.stringify(bases[base]));
  if (post !== undefined) json.post_processor = post;
  json.added_tokens = json.added_tokens.concat(added);
  const tokenizer = Tokenizer.fromString(JSON.stringify(json));
  const rows = [];
  for (const [a, b] of inputs) {
    const row = {};
    for (const [key, special] of [['with', true], ['without', false]]) {
      const e = await tokenizer.encode(texts[a], b === null ? null : texts[b], { addSpecialTokens: special });
      row[key] = { ids: e.getIds(), type_ids: e.getTypeIds() };
    }
    rows.push(row);
  }
  out.cases.push({ name, base, post_processor: json.post_processor, added_tokens: added, rows });
}
fs.writeFileSync(outFile, JSON.stringify(out) + '\n');
}
main();
