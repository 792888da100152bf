#!/usr/bin/python3
"""Writes include/polyformer/tokenizers/grapheme_tables.hpp: every code point's Grapheme_Cluster_Break value and the
Extended_Pictographic ranges (UAX #29), from the Unicode Character Database files Debian's unicode-data package
installs. The Hangul syllables U+AC00..U+D7A3 are left out: LV or LVT follows from the code point.
Run by hand when the Unicode version changes:
    /usr/bin/python3 grapheme_tables.py > ../../include/polyformer/tokenizers/grapheme_tables.hpp
"""
import re
import sys

UCD = '/usr/share/unicode'
KINDS = {'CR': 'cr', 'LF': 'lf', 'Control': 'control', 'Extend': 'extend', 'ZWJ': 'zwj',
         'Regional_Indicator': 'regional_indicator', 'Prepend': 'prepend', 'SpacingMark': 'spacing_mark',
         'L': 'l', 'V': 'v', 'T': 't', 'LV': 'lv', 'LVT': 'lvt'}
LINE = re.compile(r'^([0-9A-F]+)(?:\.\.([0-9A-F]+))?\s*;\s*(\w+)')


def ranges(path, wanted=None):
    out = []
    for line in open(path, encoding='utf-8'):
        m = LINE.match(line)
        if m and (wanted is None or m.group(3) == wanted):
            first = int(m.group(1), 16)
            out.append((first, int(m.group(2) or m.group(1), 16), m.group(3)))
    return sorted(out)


def merged(items):
    out = []
    for first, last, kind in items:
        if out and out[-1][2] == kind and out[-1][1] + 1 == first:
            out[-1] = (out[-1][0], last, kind)
        else:
            out.append((first, last, kind))
    return out


def version(path):
    for line in open(path, encoding='utf-8'):
        m = re.search(r'-(\d+\.\d+\.\d+)\.txt', line)
        if m:
            return m.group(1)
    return 'unknown'


def rows(items, width=4):
    return '\n'.join('    ' + ' '.join(items[i:i + width]) for i in range(0, len(items), width))


def main():
    gcb_path = f'{UCD}/auxiliary/GraphemeBreakProperty.txt'
    gcb = merged([r for r in ranges(gcb_path) if not (0xAC00 <= r[0] <= 0xD7A3 and r[2] in ('LV', 'LVT'))])
    pict = merged([(a, b, 'p') for a, b, _ in ranges(f'{UCD}/emoji/emoji-data.txt', 'Extended_Pictographic')])
    out = sys.stdout
    out.write(f'''#pragma once
/// \\file Unicode {version(gcb_path)} data for grapheme clusters (UAX #29), written by tests/tokenizers/grapheme_tables.py from
/// the Unicode Character Database (GraphemeBreakProperty.txt, emoji-data.txt): code point ranges of each
/// Grapheme_Cluster_Break value other than Other (the Hangul syllables U+AC00..U+D7A3 left out: LV or LVT follows
/// from the code point), and the Extended_Pictographic ranges. Do not edit by hand.

#include <cstdint>

namespace polyformer::tokenizers::detail {{

enum class GraphemeBreak : std::uint8_t {{
  other, cr, lf, control, extend, zwj, regional_indicator, prepend, spacing_mark, l, v, t, lv, lvt
}};

struct GraphemeBreakRange {{
  char32_t first, last;
  GraphemeBreak kind;
}};

/// Sorted, disjoint.
inline constexpr GraphemeBreakRange grapheme_break_ranges[] = {{
''')
    out.write(rows([f'{{0x{a:04X}, 0x{b:04X}, GraphemeBreak::{KINDS[k]}}},' for a, b, k in gcb], 2) + '\n};\n\n')
    out.write('struct CodePointRange {\n  char32_t first, last;\n};\n\n/// Sorted, disjoint.\n')
    out.write('inline constexpr CodePointRange extended_pictographic_ranges[] = {\n')
    out.write(rows([f'{{0x{a:04X}, 0x{b:04X}}},' for a, b, _ in pict], 5) + '\n};\n\n')
    out.write('}  // namespace polyformer::tokenizers::detail\n')


if __name__ == '__main__':
    main()
