// Writes the Llama-style (SentencePiece BPE with byte fallback) tokenizer fixtures of tests/test_tokenizers_llama.cpp
// with the Hugging Face tokenizers library as the oracle (npm `tokenizers`, the Rust library's Node bindings), over
// the model llama_model.py trained. Run by hand after it; CI uses the committed archive:
//   /usr/bin/python3 llama_model.py OUT_DIR
//   NODE_PATH=/path/to/node_modules node llama_fixtures.js OUT_DIR && tar cJf llama.tar.xz -C OUT_DIR .
// OUT_DIR already holds spiece.model and tokenizer.json; it receives
//   extra.jsonl      hand-written cases around Llama's special tokens (below), texts.js's hand-written edge cases,
//                    then its seeded random strings, a JSON string per line
//   edge.ids         the legacy tokenizer's ids of the hand-written cases of both kinds, one line each,
//                    space-separated
//   extra.hashes, fortunes.hashes
//                    per text, for each of the two pipelines transformers writes for Llama — legacy (normalizers
//                    Prepend and Replace, no pre-tokenizer, decoders Replace, ByteFallback, Fuse, Strip) and
//                    Metaspace (no normalizer, the Metaspace pre-tokenizer and decoder with prepend_scheme "first")
//                    —: the number of ids and the low 32 bits of the FNV-1a 64 hash (hex) of their decimal text
//                    joined by single spaces, then the hash of the decoding of those ids (special tokens kept);
//                    last, the same count and hash for SentencePiece's own ids of the text (python3-sentencepiece
//                    over spiece.model, <s> first, special tokens in the text matched as such). A column equal to the
//                    legacy pipeline's is written "=" (most are: the file stays small)
// The Metaspace tokenizer.json is the one the test derives from the legacy one (`metaspace` below).
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { edge, extra, fortunes, hash, sentencepieceIds } = require('./texts');

const out = process.argv[2];
const legacyJson = JSON.parse(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8'));
const metaspaceJson = {
  ...legacyJson,
  normalizer: null,
  pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false },
  decoder: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: true },
};
// Special tokens inside the text: the segments after them are not the text's first (Metaspace's "first").
const llamaEdge = ['<s>hello', 'Hi</s>there', 'a <unk> b', ' </s> x', '</s></s>', '<s> <s>  two', 'x<s>\ny'];
const texts = llamaEdge.concat(extra), edgeCount = llamaEdge.length + edge.length;
const settings = [legacyJson, metaspaceJson].map((j) => Tokenizer.fromString(JSON.stringify(j)));

async function write(name, texts) {
  const rows = [], edgeIds = [];
  const sp = sentencepieceIds(path.join(out, 'spiece.model'), texts, ['<unk>', '<s>', '</s>'], 1, null);
  let differs = 0;
  for (let i = 0; i < texts.length; ++i) {
    const columns = [];
    const idsColumn = (ids) => `${ids.length} ${hash(ids.join(' '))}`;
    let legacy;
    for (const t of settings) {
      const ids = (await t.encode(texts[i], null, { addSpecialTokens: true })).getIds();
      const column = { ids: idsColumn(ids), decoded: hash(await t.decode(ids, false)) };
      if (t === settings[0]) {
        legacy = column;
        columns.push(column.ids, column.decoded);
        if (name === 'extra' && edgeIds.length < edgeCount) edgeIds.push(ids.join(' '));
        if (ids.join(' ') !== sp[i].join(' ')) ++differs;
      } else {
        columns.push(column.ids === legacy.ids ? '=' : column.ids, column.decoded === legacy.decoded ? '=' : column.decoded);
      }
    }
    columns.push(idsColumn(sp[i]) === legacy.ids ? '=' : idsColumn(sp[i]));
    rows.push(columns.join(' '));
  }
  fs.writeFileSync(path.join(out, name + '.hashes'), rows.join('\n') + '\n');
  if (name === 'extra') fs.writeFileSync(path.join(out, 'edge.ids'), edgeIds.join('\n') + '\n');
  console.log(`${name}: ${texts.length} texts; SentencePiece's ids differ from the legacy pipeline's on ${differs}`);
}

(async () => {
  fs.writeFileSync(path.join(out, 'extra.jsonl'), texts.map((s) => JSON.stringify(s)).join('\n') + '\n');
  await write('extra', texts);
  await write('fortunes', fortunes());
})();
