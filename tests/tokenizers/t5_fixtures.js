// Writes the T5-style (SentencePiece Unigram) tokenizer fixtures of tests/test_tokenizers_t5.cpp with the Hugging
// Face tokenizers library as the oracle (npm `tokenizers`, the Rust library's Node bindings), over the model
// t5_model.py trained. Run by hand after it; CI uses the committed archive:
//   /usr/bin/python3 t5_model.py OUT_DIR
//   NODE_PATH=/path/to/node_modules node t5_fixtures.js OUT_DIR &&
//     tar cJf t5.tar.xz -C OUT_DIR spiece.model tokenizer.json edge.ids extra.jsonl extra.hashes fortunes.hashes &&
//     tar cJf t5_nfkc.tar.xz -C OUT_DIR spiece_nfkc.model tokenizer_nfkc.json tokenizer_nfkc_hub.json edge_nfkc.ids \
//       extra_nfkc.hashes fortunes_nfkc.hashes                                       (two parts, each under 512 KiB)
// OUT_DIR already holds the files t5_model.py writes; it receives, for the identity-normalized model
//   extra.jsonl      hand-written cases around T5's special tokens, texts.js's hand-written edge cases, then its
//                    seeded random strings, a JSON string per line
//   edge.ids         the oracle's ids of the hand-written cases of both kinds, one line each, space-separated
//   extra.hashes, fortunes.hashes
//                    per text: the number of ids and the low 32 bits of the FNV-1a 64 hash (hex) of their decimal
//                    text joined by single spaces, then the hash of the decoding of those ids (special tokens kept);
//                    last, the same count and hash for SentencePiece's own ids of the text (python3-sentencepiece
//                    over spiece.model, </s> last, special tokens in the text matched as such), "=" when equal to
//                    the oracle's
// and for the nmt_nfkc model (the oracle running tokenizer_nfkc_hub.json, the Hub's layout)
//   edge_nfkc.ids    as edge.ids
//   extra_nfkc.hashes, fortunes_nfkc.hashes
//                    as above, with a column before SentencePiece's: the count and hash of the ids of
//                    tokenizer_nfkc.json (transformers' converter's layout) by the oracle, "=" when equal to the
//                    first column
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('tokenizers');
const { edge, extra, fortunes, hash, sentencepieceIds } = require('./texts');

const out = process.argv[2];
const load = (name) => Tokenizer.fromString(fs.readFileSync(path.join(out, name), 'utf8'));
const t5Edge = ['translate English to German: That is good.', 'a</s>b', '<pad> <unk>x', '  two  spaces  ', '☃ ❄ 雪',
                'ｶﾞ ＡＢＣ ① ﬁ e\u0301 \r\n x \u00a0 y\u3000z   \t end  '];
const texts = t5Edge.concat(extra), edgeCount = t5Edge.length + edge.length;

// suffix '' (tokenizer.json, spiece.model) or '_nfkc' (tokenizer_nfkc_hub.json, also tokenizer_nfkc.json).
async function write(name, texts, suffix) {
  const tokenizer = load(suffix ? `tokenizer${suffix}_hub.json` : 'tokenizer.json');
  const converted = suffix ? load(`tokenizer${suffix}.json`) : null;
  const rows = [], edgeIds = [];
  const sp = sentencepieceIds(path.join(out, `spiece${suffix}.model`), texts, ['<pad>', '</s>', '<unk>'], null, 1);
  const column = (ids) => `${ids.length} ${hash(ids.join(' '))}`;
  let differs = 0, convertedDiffers = 0;
  for (let i = 0; i < texts.length; ++i) {
    const ids = (await tokenizer.encode(texts[i], null, { addSpecialTokens: true })).getIds();
    const first = column(ids), spColumn = column(sp[i]);
    if (first !== spColumn) ++differs;
    let row = `${first} ${hash(await tokenizer.decode(ids, false))}`;
    if (converted) {
      const other = column((await converted.encode(texts[i], null, { addSpecialTokens: true })).getIds());
      if (other !== first) ++convertedDiffers;
      row += ` ${other === first ? '=' : other}`;
    }
    rows.push(`${row} ${spColumn === first ? '=' : spColumn}`);
    if (name === 'extra' && edgeIds.length < edgeCount) edgeIds.push(ids.join(' '));
  }
  fs.writeFileSync(path.join(out, `${name}${suffix}.hashes`), rows.join('\n') + '\n');
  if (name === 'extra') fs.writeFileSync(path.join(out, `edge${suffix}.ids`), edgeIds.join('\n') + '\n');
  console.log(`${name}${suffix}: ${texts.length} texts; SentencePiece's ids differ from the oracle's on ${differs}` +
              (converted ? `, the converter's layout's on ${convertedDiffers}` : ''));
}

(async () => {
  fs.writeFileSync(path.join(out, 'extra.jsonl'), texts.map((s) => JSON.stringify(s)).join('\n') + '\n');
  for (const suffix of ['', '_nfkc']) {
    await write('extra', texts, suffix);
    await write('fortunes', fortunes(), suffix);
  }
})();
