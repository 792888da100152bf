#!/usr/bin/python3
"""Writes include/polyformer/tokenizers/normalization_tables.hpp: the Unicode data of the normalization forms (UAX #15)
as the Hugging Face tokenizers library has it. Its normalizers run the Rust crate unicode-normalization-alignments,
whose tables are Unicode 9.0's; Debian's unicode-data package installs a later Unicode Character Database, so the
data is taken from it for the characters assigned in 9.0 (DerivedAge.txt) alone. Unicode's stability policy keeps
the decompositions, the combining classes and the composition exclusions of assigned characters as they were; the
General_Category is not kept, and the three characters that entered or left the marks (StripAccents' set) since 9.0
are put back as 9.0 had them (GC_9_0 below). tests/tokenizers/normalizer_fixtures.js checks every code point against
the library itself.
Run by hand when the library's Unicode version changes:
    /usr/bin/python3 normalization_tables.py > ../../include/polyformer/tokenizers/normalization_tables.hpp
"""
import re
import sys

UCD = '/usr/share/unicode'
VERSION = (9, 0)  # unicode-normalization-alignments' Unicode version
# General_Category as of 9.0 where a later version changed whether the character is a mark (M*).
GC_9_0 = {0x1CF2: 'Mc', 0x1CF3: 'Mc',  # VEDIC SIGN ARDHAVISARGA, ROTATED ARDHAVISARGA: Lo now
          0x111C9: 'Po'}  # SHARADA SANDHI MARK: Mn now
HANGUL_FIRST, HANGUL_COUNT = 0xAC00, 11172
LINE = re.compile(r'^([0-9A-F]+)(?:\.\.([0-9A-F]+))?\s*(?:;\s*([\w.]+))?')  # CompositionExclusions.txt: no value


def ranges(path):
    for line in open(f'{UCD}/{path}', encoding='utf-8'):
        m = LINE.match(line)
        if m:
            yield int(m.group(1), 16), int(m.group(2) or m.group(1), 16), m.group(3)


def file_version(path):
    for line in open(f'{UCD}/{path}', encoding='utf-8'):
        m = re.search(r'-(\d+\.\d+\.\d+)\.txt', line)
        if m:
            return m.group(1)
    return 'unknown'


def load():
    """The characters assigned in VERSION, their General_Category, combining class and decomposition mapping."""
    assigned = set()
    for first, last, age in ranges('DerivedAge.txt'):
        if tuple(int(x) for x in age.split('.')) <= VERSION:
            assigned.update(range(first, last + 1))
    gc, ccc, decomposition = {}, {}, {}
    rows = [line.split(';') for line in open(f'{UCD}/UnicodeData.txt', encoding='utf-8')]
    for i, f in enumerate(rows):
        c = int(f[0], 16)
        if f[1].endswith(', First>'):  # a range: only its category matters here
            gc.update((x, f[2]) for x in range(c, int(rows[i + 1][0], 16) + 1) if x in assigned)
        if c not in assigned or f[1].endswith(', Last>'):
            continue
        gc[c] = f[2]
        if f[3] != '0':
            ccc[c] = int(f[3])
        if f[5]:
            parts = f[5].split()
            compat = parts[0].startswith('<')
            decomposition[c] = (compat, [int(x, 16) for x in parts[1 if compat else 0:]])
    gc.update(GC_9_0)
    return assigned, gc, ccc, decomposition


def full_decomposition(c, decomposition, compat):
    if HANGUL_FIRST <= c < HANGUL_FIRST + HANGUL_COUNT:
        s = c - HANGUL_FIRST
        return [0x1100 + s // 588, 0x1161 + s % 588 // 28] + ([0x11A7 + s % 28] if s % 28 else [])
    d = decomposition.get(c)
    if d is None or (d[0] and not compat):
        return [c]
    return [y for x in d[1] for y in full_decomposition(x, decomposition, compat)]


def merged(items):
    """(first, last, value) ranges from sorted (code point, value) pairs, neighbours with one value joined."""
    out = []
    for c, v in items:
        if out and out[-1][1] + 1 == c and out[-1][2] == v:
            out[-1][1] = c
        else:
            out.append([c, c, v])
    return out


def rows(items, width=120):
    """The items on lines of at most `width` characters, indented by 4."""
    lines = []
    for item in items:
        if lines and len(lines[-1]) + 1 + len(item) <= width:
            lines[-1] += ' ' + item
        else:
            lines.append('    ' + item)
    return '\n'.join(lines)


def main():
    assigned, gc, ccc, decomposition = load()

    # Full decompositions, Hangul syllables left out (computed); the compatibility table holds only those that differ.
    canonical, compatibility = {}, {}
    for c in sorted(decomposition):
        nfd = full_decomposition(c, decomposition, False)
        nfkd = full_decomposition(c, decomposition, True)
        if nfd != [c]:
            canonical[c] = nfd
        if nfkd != nfd:
            compatibility[c] = nfkd
    # One pool: the longest sequences first, each stored once, or found inside what is there already.
    pool, at, text = [], {}, ','  # text: the pool as ",c,c,...,c," to search in
    sequences = {tuple(v) for v in list(canonical.values()) + list(compatibility.values())}
    for seq in sorted(sequences, key=lambda s: (-len(s), s)):
        found = text.find(',' + ','.join(map(str, seq)) + ',')
        if found < 0:
            at[seq] = len(pool)
            pool.extend(seq)
            text += ','.join(map(str, seq)) + ','
        else:
            at[seq] = text.count(',', 0, found)
    assert len(pool) < 1 << 16 and max(len(s) for s in at) < 256

    # Composition: the canonical pairs, but for the composition exclusions, the singletons and the decompositions that
    # start with a non-starter (together, DerivedNormalizationProps' Full_Composition_Exclusion).
    canonical_mappings = {c: d for c, (compat, d) in decomposition.items() if not compat}
    excluded = {c for first, last, _ in ranges('CompositionExclusions.txt') for c in range(first, last + 1)}
    excluded = {c for c in excluded if c in assigned}
    excluded |= {c for c, d in canonical_mappings.items() if len(d) == 1}
    excluded |= {c for c, d in canonical_mappings.items() if ccc.get(c, 0) or ccc.get(d[0], 0)}
    full_exclusion = {c for first, last, p in ranges('DerivedNormalizationProps.txt')
                      if p == 'Full_Composition_Exclusion' for c in range(first, last + 1) if c in assigned}
    assert excluded == full_exclusion
    pairs = sorted((d[0], d[1], c) for c, d in canonical_mappings.items() if c not in excluded)
    assert all(len(canonical_mappings[c]) == 2 and ccc.get(a, 0) == 0 == ccc.get(c, 0) for a, _, c in pairs)
    # The starters that compose with the character before them (Hangul vowels and trailing consonants aside).
    composing_starters = sorted({b for _, b, _ in pairs if ccc.get(b, 0) == 0})
    assert all(b >= 0x80 for b in composing_starters)

    ccc_ranges = merged(sorted(ccc.items()))
    marks = merged([(c, 1) for c in sorted(gc) if gc[c].startswith('M')])

    out = sys.stdout
    version, ucd = '.'.join(map(str, VERSION)), file_version('DerivedAge.txt')
    out.write(f'''#pragma once
/// \\file Generated by tests/tokenizers/normalization_tables.py from the Unicode Character Database {ucd}; do not edit.
/// The Unicode {version} data of the normalization forms (UAX #15) as the Hugging Face tokenizers library has it: the
/// characters assigned in {version} alone, with the General_Category {version} gave them. Canonical combining classes
/// as sorted, disjoint ranges (a code point outside them has class 0); full canonical and compatibility
/// decompositions as (offset, length) into one pool of code points, sorted by code point (the compatibility table
/// only where it differs from the canonical one; the Hangul syllables U+AC00..U+D7A3 are left out, as their
/// decomposition is arithmetic); the canonical composition pairs, sorted, without the composition exclusions,
/// singletons and non-starter decompositions; the starters that compose with the character before them (Hangul
/// jamo aside); and the ranges of the combining marks (General_Category M), which StripAccents removes.

#include <cstdint>

namespace polyformer::tokenizers::detail {{

struct CombiningClassRange {{
  char32_t first, last;  ///< inclusive
  std::uint8_t ccc;
}};

struct DecompositionEntry {{
  char32_t code_point;
  std::uint16_t offset;  ///< into decomposition_pool
  std::uint8_t length;
}};

struct CompositionPair {{
  char32_t first, second, composite;
}};

struct CombiningMarkRange {{
  char32_t first, last;  ///< inclusive
}};

/// Sorted, disjoint; {len(ccc)} code points.
inline constexpr CombiningClassRange combining_class_ranges[] = {{
''')
    out.write(rows([f'{{0x{a:X}, 0x{b:X}, {v}}},' for a, b, v in ccc_ranges]) + '\n};\n\n')
    out.write('/// The code points the decompositions refer to.\ninline constexpr char32_t decomposition_pool[] = {\n')
    out.write(rows([f'0x{c:X},' for c in pool]) + '\n};\n\n')
    for name, table, what in (
            ('canonical', canonical, 'canonical decompositions'),
            ('compatibility', compatibility, 'compatibility decompositions that differ from the canonical ones')):
        out.write(f'/// The full {what}, sorted by code point.\n'
                  f'inline constexpr DecompositionEntry {name}_decompositions[] = {{\n')
        out.write(rows([f'{{0x{c:X}, {at[tuple(d)]}, {len(d)}}},' for c, d in table.items()]) + '\n};\n\n')
    out.write('/// Sorted by (first, second).\ninline constexpr CompositionPair composition_pairs[] = {\n')
    out.write(rows([f'{{0x{a:X}, 0x{b:X}, 0x{c:X}}},' for a, b, c in pairs]) + '\n};\n\n')
    out.write('/// Sorted: the second characters of composition pairs that are starters (class 0).\n')
    out.write('inline constexpr char32_t composing_starters[] = {\n')
    out.write(rows([f'0x{c:X},' for c in composing_starters]) + '\n};\n\n')
    out.write('/// Sorted, disjoint.\ninline constexpr CombiningMarkRange combining_mark_ranges[] = {\n')
    out.write(rows([f'{{0x{a:X}, 0x{b:X}}},' for a, b, _ in marks]) + '\n};\n\n')
    out.write('}  // namespace polyformer::tokenizers::detail\n')


if __name__ == '__main__':
    main()
