// The texts the tokenizer fixtures are made of, shared by gpt2_fixtures.js and bert_fixtures.js: hand-written edge
// cases (contractions, whitespace runs and kinds, accents in both normal forms, CJK, emoji with joiners, digits,
// long words, special tokens, control characters), seeded random strings over every Unicode plane, the records of
// Debian 12's fortunes, and the hash the fixtures record ids by.
'use strict';
const fs = require('fs');
const path = require('path');

const edge = [
  '', ' ', '  ', '\n', '\n\n', ' \n ', 'a  b', 'a   b', 'a\t\tb', 'a \t b', '  leading', 'trailing  ', 'trailing\n',
  "It's, I'm, we're, they've, she'll, he'd, don't", "'s's 'S 'RE 'Ll", "''s", "rock'n'roll", 'x\'',
  'café naïve résumé', 'cafe\u0301 nai\u0308ve', 'İstanbul ΟΔΟΣ straße', '日本語のテキスト、中文字符。한국어 텍스트',
  '𠀀𪜀𫝀𫠠𬺰 U+2B820 U+2B920', '👋 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇩🇪', '12345 3.14159 1,000,000 ①②③ ½ Ⅻ ٣٤٥',
  'a\u00a0b\u2003c\u3000d\u2028e\u2029f\u0085g\u000bh\u000ci', 'zero\u200bwidth\u200djoiner\ufeffbom\u00adsoft',
  'x'.repeat(120), 'supercalifragilisticexpialidocious'.repeat(4), 'a<|endoftext|>b', '<|endoftext|><|endoftext|>',
  ' <|endoftext|> ', '<|endoftext', 'tabs\tand\tmore\t\ttabs', 'C++ -> std::vector<int>{1, 2}; // done!',
  '$5.99 @user #tag 50% a^b 1+1=2 ~home |pipe| `code`', 'mixed123abc456 abc-def_ghi', '\r\n\r\nwindows\r\n',
  'Hello [MASK] world [CLS][SEP] [mask] [UNK]', 'ÀÉÎÕÜ ǅ ﬁ Ⅳ ℌ K Å ẞ', '\u0000nul \ufffdrep \u0001ctl \ue000pua',
];

// xorshift32 from a fixed seed: code points from every plane (assigned or not, surrogates excepted), mixed with
// spaces, apostrophes and ASCII, so that each class of character meets every other.
function randomTexts(count) {
  let state = 0x2545F491;
  const next = () => {
    state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
    return state;
  };
  const pick = () => {
    const r = next() % 10;
    if (r < 3) return String.fromCharCode(0x20 + (next() % 95));
    if (r < 4) return [' ', '  ', '\n', '\t', "'", "'s", '\u00a0', '\u3000'][next() % 8];
    if (r < 7) return String.fromCodePoint(next() % 0x3000);
    let c = next() % 0x110000;
    if (c >= 0xd800 && c <= 0xdfff) c -= 0x800;
    return String.fromCodePoint(c);
  };
  const texts = [];
  for (let i = 0; i < count; ++i) {
    let s = '';
    for (let n = 1 + (next() % 24); n > 0; --n) s += pick();
    texts.push(s);
  }
  return texts;
}

// Every record of the fortune files (/usr/share/games/fortunes, in name order): the lines between "%" lines,
// joined with "\n".
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

// The low 32 bits of FNV-1a 64 over the text's UTF-8, hex: a wrong answer matches once in 4e9.
function hash(text) {
  let h = 0xcbf29ce484222325n;
  for (const byte of Buffer.from(text, 'utf8')) h = ((h ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  return (h & 0xffffffffn).toString(16).padStart(8, '0');
}

// SentencePiece's own ids of each text (python3-sentencepiece over `model`), with the special pieces `specials` in
// the text matched as such (the leftmost, then the longest) and the text between them encoded by the library; `bos`
// before and `eos` after every text when not null.
function sentencepieceIds(model, texts, specials, bos, eos) {
  const script = `import json, re, sys
import sentencepiece as spm
sp = spm.SentencePieceProcessor(model_file=sys.argv[1])
special = re.compile('|'.join(re.escape(s) for s in sorted(json.loads(sys.argv[2]), key=len, reverse=True)))
bos, eos = json.loads(sys.argv[3]), json.loads(sys.argv[4])
for line in sys.stdin:
    text, ids, at = json.loads(line), [] if bos is None else [bos], 0
    for m in special.finditer(text):
        if m.start() > at:
            ids += sp.encode(text[at:m.start()])
        ids.append(sp.piece_to_id(m.group()))
        at = m.end()
    if at < len(text):
        ids += sp.encode(text[at:])
    print(json.dumps(ids + ([] if eos is None else [eos])))
`;
  const lines = require('child_process').execFileSync(
      '/usr/bin/python3', ['-c', script, model, JSON.stringify(specials), JSON.stringify(bos), JSON.stringify(eos)],
      { input: texts.map((t) => JSON.stringify(t)).join('\n') + '\n', maxBuffer: 1 << 30 });
  return lines.toString('utf8').trim().split('\n').map((l) => JSON.parse(l));
}

module.exports = { edge, extra: edge.concat(randomTexts(3000)), fortunes, hash, sentencepieceIds };
