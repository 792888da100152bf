// Writes the T5-style (SentencePiece Unigram) tokenizer fixtures of tests/test_tokenizers_t5.cpp with the Hugging
// Face tokenizers library as the oracle (npm `tokenizers`, the Rust library's Node bindings), over the model
// t5_model.py trained. Run by hand after it; CI uses the committed archive:
//   /usr/bin/python3 t5_model.py OUT_DIR
//   NODE_PATH=/path/to/node_modules node t5_fixtures.js OUT_DIR && tar cJf t5.tar.xz -C OUT_DIR .
// OUT_DIR already holds spiece.model and tokenizer.json; it receives
//   extra.jsonl      hand-written cases around T5's special tokens, texts.js's hand-written edge cases, then its
//                    seeded random strings, a JSON string per line
//   edge.ids         the oracle's ids of the hand-written cases of both kinds, one line each, space-separated
//   extra.hashes, fortunes.hashes
//                    per text: the number of ids and the low 32 bits of the FNV-1a 64 hash (hex) of their decimal
//                    text joined by single spaces, then the hash of the decoding of those ids (special tokens kept);
//                    last, the same count and hash for SentencePiece's own ids of the text (python3-sentencepiece
//                    over spiece.model, </s> last, special tokens in the text matched as such), "=" when equal to
//                    the oracle's
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { edge, extra, fortunes, hash, sentencepieceIds } = require('./texts');

const out = process.argv[2];
const tokenizer = Tokenizer.fromString(fs.readFileSync(path.join(out, 'tokenizer.json'), 'utf8'));
const t5Edge = ['translate English to German: That is good.', 'a</s>b', '<pad> <unk>x', '  two  spaces  ', '☃ ❄ 雪'];
const texts = t5Edge.concat(extra), edgeCount = t5Edge.length + edge.length;

async function write(name, texts) {
  const rows = [], edgeIds = [];
  const sp = sentencepieceIds(path.join(out, 'spiece.model'), texts, ['<pad>', '</s>', '<unk>'], null, 1);
  let differs = 0;
  for (let i = 0; i < texts.length; ++i) {
    const ids = (await tokenizer.encode(texts[i], null, { addSpecialTokens: true })).getIds();
    const column = `${ids.length} ${hash(ids.join(' '))}`, spColumn = `${sp[i].length} ${hash(sp[i].join(' '))}`;
    if (column !== spColumn) ++differs;
    rows.push(`${column} ${hash(await tokenizer.decode(ids, false))} ${spColumn === column ? '=' : spColumn}`);
    if (name === 'extra' && edgeIds.length < edgeCount) edgeIds.push(ids.join(' '));
  }
  fs.writeFileSync(path.join(out, name + '.hashes'), rows.join('\n') + '\n');
  if (name === 'extra') fs.writeFileSync(path.join(out, 'edge.ids'), edgeIds.join('\n') + '\n');
  console.log(`${name}: ${texts.length} texts; SentencePiece's ids differ from the oracle's on ${differs}`);
}

(async () => {
  fs.writeFileSync(path.join(out, 'extra.jsonl'), texts.map((s) => JSON.stringify(s)).join('\n') + '\n');
  await write('extra', texts);
  await write('fortunes', fortunes());
})();
