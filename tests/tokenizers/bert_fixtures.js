// Writes the BERT (WordPiece) tokenizer fixtures of tests/test_tokenizers_bert.cpp with the Hugging Face tokenizers
// library as the oracle (npm `tokenizers`, the Rust library's Node bindings). No BERT vocabulary ships offline, so
// the library trains one: WordPiece with its default trainer (30,000 tokens) on the text of Debian 12's fortunes,
// under BertNormalizer and BertPreTokenizer; [PAD] [UNK] [CLS] [SEP] [MASK] are appended to it. The training is not
// repeatable (the order of equal counts follows the library's hash maps), so a run replaces the whole archive. Run
// by hand; CI uses the committed archive:
//   NODE_PATH=/path/to/node_modules node bert_fixtures.js OUT_DIR && tar cJf bert.tar.xz -C OUT_DIR .
// OUT_DIR receives
//   vocab.txt        the vocabulary, a token per line in id order
//   extra.jsonl      texts.js's hand-written edge cases, then its seeded random strings, a JSON string per line
//   edge.ids         the uncased tokenizer's ids of the hand-written cases, one line each, space-separated
//   extra.hashes     per text, for each normalizer setting — uncased (lowercase, accents stripped), cased
//                    (neither), lowercase only, accents stripped only —: the number of ids and the low 32 bits of
//                    the FNV-1a 64 hash (hex) of their decimal text joined by single spaces; then the hash of the
//                    uncased tokenizer's decoding of its ids (special tokens kept)
//   fortunes.hashes  the same for every fortune record (texts.js), uncased only
// The tokenizer.json of each setting is the one the test writes from vocab.txt (`tokenizerJson` below).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { Tokenizer, WordPiece, bertNormalizer, bertPreTokenizer } = require('tokenizers');
const { edge, extra, fortunes, hash } = require('./texts');

const out = process.argv[2];
fs.mkdirSync(out, { recursive: true });

// Train on the fortunes' text.
const corpus = path.join(os.tmpdir(), 'bert_fixtures_corpus.txt');
fs.writeFileSync(corpus, fortunes().join('\n'));
const trainer = new Tokenizer(WordPiece.init({}, { unkToken: '[UNK]' }));
trainer.setNormalizer(bertNormalizer({ lowercase: true }));
trainer.setPreTokenizer(bertPreTokenizer());
trainer.train([corpus]);
const trainedPath = path.join(os.tmpdir(), 'bert_fixtures_trained.json');
trainer.save(trainedPath);
const trained = JSON.parse(fs.readFileSync(trainedPath, 'utf8')).model.vocab;
const tokens = [];
for (const [token, id] of Object.entries(trained)) tokens[id] = token;
const specials = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'];
for (const s of specials) if (!(s in trained)) tokens.push(s);
fs.writeFileSync(path.join(out, 'vocab.txt'), tokens.join('\n') + '\n');
const vocab = Object.fromEntries(tokens.map((t, i) => [t, i]));

function tokenizerJson(lowercase, stripAccents) {
  const special = (name) => ({ id: vocab[name], content: name, single_word: false, lstrip: false, rstrip: false,
                               normalized: false, special: true });
  return {
    version: '1.0', truncation: null, padding: null, added_tokens: specials.map(special),
    normalizer: { type: 'BertNormalizer', clean_text: true, handle_chinese_chars: true, strip_accents: stripAccents,
                  lowercase },
    pre_tokenizer: { type: 'BertPreTokenizer' },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
               { SpecialToken: { id: '[SEP]', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '[CLS]', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
             { SpecialToken: { id: '[SEP]', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } },
             { SpecialToken: { id: '[SEP]', type_id: 1 } }],
      special_tokens: { '[CLS]': { id: '[CLS]', ids: [vocab['[CLS]']], tokens: ['[CLS]'] },
                        '[SEP]': { id: '[SEP]', ids: [vocab['[SEP]']], tokens: ['[SEP]'] } },
    },
    decoder: { type: 'WordPiece', prefix: '##', cleanup: true },
    model: { type: 'WordPiece', unk_token: '[UNK]', continuing_subword_prefix: '##', max_input_chars_per_word: 100,
             vocab },
  };
}
const settings = [[true, null], [false, false], [true, false], [false, true]].map(
  ([lower, strip]) => Tokenizer.fromString(JSON.stringify(tokenizerJson(lower, strip))));



async function write(name, texts, count) {
  const rows = [], edgeIds = [];
  for (const text of texts) {
    const columns = [];
    for (const t of settings.slice(0, count)) {
      const ids = (await t.encode(text, null, { addSpecialTokens: true })).getIds();
      columns.push(`${ids.length} ${hash(ids.join(' '))}`);
      if (t === settings[0]) {
        if (edgeIds.length < edge.length) edgeIds.push(ids.join(' '));
        var decoded = await t.decode(ids, false);
      }
    }
    rows.push(`${columns.join(' ')} ${hash(decoded)}`);
  }
  fs.writeFileSync(path.join(out, name + '.hashes'), rows.join('\n') + '\n');
  if (name === 'extra') fs.writeFileSync(path.join(out, 'edge.ids'), edgeIds.join('\n') + '\n');
  console.log(`${name}: ${texts.length} texts, ${count} settings`);
}

(async () => {
  fs.writeFileSync(path.join(out, 'extra.jsonl'), extra.map((s) => JSON.stringify(s)).join('\n') + '\n');
  await write('extra', extra, settings.length);
  await write('fortunes', fortunes(), 1);
})();
