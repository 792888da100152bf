// Writes tests/tokenizers/normalizers.json, the oracle of tests/test_tokenizers_normalization.cpp: what the Hugging
// Face tokenizers library's normalizers NFD, NFC, NFKD, NFKC, StripAccents and Lowercase (npm `tokenizers`, the Rust
// library's Node bindings) make of
//  - every code point alone: "code_points" has a row for each one (Hangul syllables aside) that NFD, NFC, NFKD, NFKC
//    or Lowercase changes: the code point minus the previous row's, then a column per form but StripAccents;
//    "strip_accents" has the ranges of the code points StripAccents removes (it leaves every other one as it is);
//    "hangul" has per form the hash of each chunk of 588 syllables (one leading consonant), an output a line;
//  - the combining classes, as the order NFD puts non-starters in: "classes" has one representative per class, in
//    ascending order, and each non-starter's rank among them (ranges [first, last, rank]); the code points that do
//    not decompose and are not listed are starters;
//  - texts.js's hand-written edge cases and 2,500 seeded random strings made to stress decomposition, canonical
//    ordering and composition ("edge", "stress"): rows of the text, then a column per form, in full;
//  - Debian's fortune records: per form the hash (texts.js's) of each chunk of 500 records, a record a line.
// A column is the form's output, or the number of an earlier column holding the same text (0: the input, 1: the first
// form's, ...). Run by hand when the library's version changes:
//   NODE_PATH=/path/to/node_modules node normalizer_fixtures.js tests/tokenizers/normalizers.json
'use strict';
const fs = require('fs');
const t = require('tokenizers');
const { edge, fortunes, hash } = require('./texts');

const version = require('tokenizers/package.json').version;
const forms = { nfd: t.nfdNormalizer(), nfc: t.nfcNormalizer(), nfkd: t.nfkdNormalizer(), nfkc: t.nfkcNormalizer(),
                strip_accents: t.stripAccentsNormalizer(), lowercase: t.lowercase() };
const names = Object.keys(forms);
const run = (name, s) => forms[name].normalizeString(s);
const check = (ok, what) => {
  if (!ok) throw new Error(what);
};

// A row: `head`, then each form's output of `input`, or the number of the earlier column (0: the input) equal to it.
function row(head, input, outputs) {
  const columns = [input], out = [head];
  for (const o of outputs) {
    const k = columns.indexOf(o);
    out.push(k >= 0 ? k : o);
    columns.push(o);
  }
  return out;
}

const isHangul = (c) => c >= 0xac00 && c <= 0xd7a3;
const codePoints = [];
for (let c = 0; c <= 0x10ffff; ++c) if (c < 0xd800 || c > 0xdfff) codePoints.push(c);

// Every code point alone.
const cpRows = [], stripped = [];
let previous = 0;
for (const c of codePoints) {
  const ch = String.fromCodePoint(c);
  const strip = run('strip_accents', ch);
  check(strip === ch || strip === '', `StripAccents keeps part of U+${c.toString(16)}`);
  if (strip === '') {
    if (stripped.length && stripped[stripped.length - 1][1] === c - 1) stripped[stripped.length - 1][1] = c;
    else stripped.push([c, c]);
  }
  if (isHangul(c)) continue;
  const outputs = names.filter((n) => n !== 'strip_accents').map((n) => run(n, ch));
  if (outputs.some((o) => o !== ch)) {
    cpRows.push(row(c - previous, ch, outputs));
    previous = c;
  }
}
const hangul = {};
for (const n of names) {
  hangul[n] = [];
  for (let first = 0xac00; first <= 0xd7a3; first += 588) {
    const lines = [];
    for (let c = first; c < first + 588; ++c) lines.push(run(n, String.fromCodePoint(c)));
    hangul[n].push(hash(lines.join('\n')));
  }
}

// Combining classes. A non-starter x before U+0334 (class 1) after U+0345 (class 240) moves; a starter does not.
// Non-starters are then sorted by how NFD orders them ("a" x y swaps to "a" y x when x's class is higher).
const decomposes = (c) => run('nfd', String.fromCodePoint(c)) !== String.fromCodePoint(c);
const nonStarters = codePoints.filter((c) => {
  const s = '\u0345' + String.fromCodePoint(c) + '\u0334';
  return !decomposes(c) && run('nfd', s) !== s;
});
const higher = (x, y) => {  // x's class above y's
  const [a, b] = [String.fromCodePoint(x), String.fromCodePoint(y)];
  return run('nfd', 'a' + a + b) === 'a' + b + a;
};
const order = nonStarters.slice().sort((x, y) => (higher(x, y) ? 1 : higher(y, x) ? -1 : 0));
const rank = new Map(), representatives = [];
for (const x of order) {
  if (representatives.length === 0 || higher(x, representatives[representatives.length - 1])) representatives.push(x);
  else check(!higher(representatives[representatives.length - 1], x), `classes out of order at U+${x.toString(16)}`);
  rank.set(x, representatives.length - 1);
}
const classRanges = [];
for (const x of nonStarters) {  // the check the test makes: x among the representatives sorts to its rank
  const r = rank.get(x), reps = representatives.map((c) => String.fromCodePoint(c));
  const probe = 'a' + String.fromCodePoint(x) + reps.slice().reverse().join('');
  check(run('nfd', probe) === 'a' + reps.slice(0, r).join('') + String.fromCodePoint(x) + reps.slice(r).join(''),
        `rank of U+${x.toString(16)}`);
  const last = classRanges[classRanges.length - 1];
  if (last && last[1] === x - 1 && last[2] === r) last[1] = x;
  else classRanges.push([x, x, r]);
}

// Random strings made to meet the normalization algorithm's cases: starters that compose (Latin, Greek, Cyrillic,
// Indic two-part vowels, kana and voicing marks, Hangul jamo and syllables), precomposed letters, runs of combining
// marks of many classes (and now and then a long one), composition exclusions, singletons, non-starter
// decompositions, compatibility characters (ligatures, fullwidth and halfwidth forms, circled and parenthesized
// ones, squared words, Arabic presentation forms, mathematical letters), and code points from anywhere.
function stressTexts(count) {
  let state = 0x9e3779b9;  // xorshift32
  const next = () => {
    state ^= state << 13; state >>>= 0; state ^= state >>> 17; state ^= state << 5; state >>>= 0;
    return state;
  };
  const any = (a) => a[next() % a.length];
  const span = (a, b) => a + (next() % (b - a + 1));
  const cps = (s) => Array.from(s).map((c) => c.codePointAt(0));
  const bases = cps('aAeEiIoOuUyYcCnNsSzZwWhHtTkKlLrRgGjJ<=>ÀÅÇÉÏÑÖØÜßæĀăĘıĲŉſƠưǅǪǫȦαεηιοωυΑΩΥρῥϒиеуоаИЕЗзѴѵ' +
                    'אשבויاوىيەकखगजडढफयरऋऌঅএଏஒஓஔெேఒెಒೆಿൊെേෙཀགདབཛဥᬅᬇᬉᬋᬍᬑᬺᬼᬾᬿᭂかきくけこさはひふへほカハヒウゝヽワɐʃ' +
                    '𑂙𑂛𑂥𑄱𑄲𑍇𑒹𑖸𑖹');
  const starterSeconds = cps('\u093e\u0903\u09be\u09d7\u0b3e\u0b56\u0b57\u0bbe\u0bd7\u0c56\u0cc2\u0cd5\u0cd6\u0d3e' +
                             '\u0d57\u0dcf\u0ddf\u102e\u1b35\u0e33\u0eb3\u{110ba}\u{11127}\u{1133e}\u{11357}\u{114b0}' +
                             '\u{114ba}\u{114bd}\u{115af}');
  const marks = [];
  for (const [a, b] of [[0x300, 0x36f], [0x483, 0x489], [0x591, 0x5c7], [0x610, 0x61a], [0x64b, 0x65f], [0x670, 0x670],
                        [0x6d6, 0x6ed], [0x711, 0x711], [0x730, 0x74a], [0x93c, 0x94d], [0x951, 0x954], [0x9bc, 0x9bc],
                        [0xe38, 0xe3a], [0xe48, 0xe4b], [0xeb8, 0xeb9], [0xec8, 0xecb], [0xf18, 0xf19], [0xf35, 0xf39],
                        [0xf71, 0xf84], [0x1037, 0x103a], [0x1dc0, 0x1dff], [0x20d0, 0x20f0], [0x302a, 0x302f],
                        [0x3099, 0x309a], [0xfe20, 0xfe2f], [0x1d165, 0x1d169], [0x1d16d, 0x1d172], [0x1d17b, 0x1d18b],
                        [0x1e8d0, 0x1e8d6], [0x1e944, 0x1e94a], [0x16af0, 0x16af4]])
    for (let c = a; c <= b; ++c) marks.push(c);
  const excluded = [0x958, 0x959, 0x95a, 0x95b, 0x95c, 0x95d, 0x95e, 0x95f, 0x9dc, 0x9dd, 0x9df, 0xa33, 0xa36, 0xa59,
                    0xa5a, 0xa5b, 0xa5e, 0xb5c, 0xb5d, 0xf43, 0xf4d, 0xf52, 0xf57, 0xf5c, 0xf69, 0xf76, 0xf78, 0xf93,
                    0xf9d, 0xfa2, 0xfa7, 0xfac, 0xfb9, 0xfb1d, 0xfb1f, 0xfb2a, 0xfb2b, 0xfb2c, 0xfb2d, 0xfb2e, 0xfb35,
                    0xfb4b, 0xfb4e, 0x2adc, 0x1d15e, 0x1d15f, 0x1d160, 0x1d164, 0x1d1bb, 0x1d1bc, 0x1d1bf, 0x1d1c0];
  const singletons = [0x340, 0x341, 0x343, 0x374, 0x37e, 0x387, 0x1f71, 0x1f73, 0x1fbb, 0x1fee, 0x1fef, 0x1ffd, 0x2000,
                      0x2001, 0x2126, 0x212a, 0x212b, 0x2329, 0x232a, 0xf900, 0xf92c, 0xfa10, 0xfad9, 0x2f800, 0x2fa1d];
  const nonStarterDecompositions = [0x344, 0xf73, 0xf75, 0xf81, 0xf77, 0xf79];
  const compatibility = cps('ﬀﬁﬂﬃﬄﬅﬆ①⑳⑴⒜ⓐ㈱㈠㊀㍿㌀㌔㌫㍻㋿¹²³½¼¾™℃℉Ⅻⅰ↉ǄǅǆĲĳŉſẛ΅῭῁῎῞ϓϔ¨´¸ˇ˘˙˚˛˜˝ﾞﾟｶﾊﾟｳﾞ～！ＡＺａｚ０９　' +
                            '𝐀𝔄𝕒𝟘ﷺﷻﺀﻵﻼﭐﹰﹱﹲﹴﹶﹾ︰︵︷ﹽ㍱㎏㏒ªº¯µ⁰ⁱ₀ₐℌℍ℡ⅅ⒈⓪\u00a0‥…′″‴⁗');
  const compatibilityRanges = [[0xfb00, 0xfb4f], [0xfb50, 0xfdff], [0xfe70, 0xfeff], [0xff00, 0xffef], [0x2460, 0x24ff],
                               [0x3200, 0x33ff], [0x1f100, 0x1f2ff], [0x1d400, 0x1d7ff], [0x2070, 0x218f],
                               [0xf900, 0xfaff], [0x2f800, 0x2fa1f], [0x3130, 0x318f]];
  const piece = () => {
    const r = next() % 100;
    if (r < 20) return [any(bases)];
    if (r < 46) return [any(marks)];
    if (r < 50) return [any(starterSeconds)];
    if (r < 55) return [span(0xc0, 0x24f)];
    if (r < 60) return [span(0x1e00, 0x1fff)];
    if (r < 63) return [any(excluded)];
    if (r < 66) return [any(singletons)];
    if (r < 68) return [any(nonStarterDecompositions)];
    if (r < 73) return [any(compatibility)];
    if (r < 77) return [span(...any(compatibilityRanges))];
    if (r < 80) return [span(0x1100, 0x1112), span(0x1161, 0x1175)];  // L V
    if (r < 82) return [span(0x1100, 0x1112), span(0x1161, 0x1175), span(0x11a7, 0x11c3)];  // L V T (or not quite)
    if (r < 85) return [span(0x10fe, 0x11ff)];  // any jamo, and around them
    if (r < 87) return [0xac00 + 28 * (next() % 399), span(0x11a6, 0x11c3)];  // LV T
    if (r < 89) return [span(0xac00, 0xd7a3)];
    if (r < 92) return [any([0x20, 0x0a, 0x41, 0x61, 0x65, 0x6f])];
    if (r < 97) return [span(0x300, 0x1fff)];
    const c = next() % 0x110000;
    return [c >= 0xd800 && c <= 0xdfff ? c - 0x800 : c];
  };
  const texts = [];
  for (let i = 0; i < count; ++i) {
    const s = [];
    if (i % 50 === 49) {  // a base and a long run of marks: more than the insertion sort takes
      s.push(any(bases));
      for (let n = 17 + (next() % 24); n > 0; --n) s.push(any(marks));
    }
    for (let n = 1 + (next() % 8); n > 0; --n) s.push(...piece());
    texts.push(String.fromCodePoint(...s));
  }
  return texts;
}

const textRows = (texts) => texts.map((s) => row(s, s, names.map((n) => run(n, s))));
const records = fortunes();
const fortuneHashes = {};
for (const n of names) {
  fortuneHashes[n] = [];
  for (let i = 0; i < records.length; i += 500)
    fortuneHashes[n].push(hash(records.slice(i, i + 500).map((r) => run(n, r)).join('\n')));
}

const list = (rows) => '[\n' + rows.map((r) => JSON.stringify(r)).join(',\n') + '\n]';
const text = `{
"library": ${JSON.stringify('tokenizers ' + version)},
"forms": ${JSON.stringify(names)},
"code_points": ${list(cpRows)},
"strip_accents": ${JSON.stringify(stripped)},
"hangul": ${JSON.stringify(hangul)},
"classes": {"representatives": ${JSON.stringify(representatives)},
            "ranks": ${JSON.stringify(classRanges)}},
"edge": ${list(textRows(edge))},
"stress": ${list(textRows(stressTexts(2500)))},
"fortunes": ${JSON.stringify(fortuneHashes)}
}
`;
fs.writeFileSync(process.argv[2], text);
console.error(`${cpRows.length} code points, ${stripped.length} StripAccents ranges, ` +
              `${representatives.length} classes (${nonStarters.length} non-starters), ` +
              `${records.length} fortune records, ${Buffer.byteLength(text)} bytes`);
