#!/usr/bin/python3
"""Trains the SentencePiece Unigram models of the T5-style tokenizer fixtures and writes each in the forms a Hugging
Face T5 directory may carry it. python3-sentencepiece trains them the way T5's was laid out (Unigram, <pad> </s>
<unk> as ids 0 1 2, no byte fallback: characters outside the vocabulary are <unk>) on the text of Debian 12's
fortunes: one with the identity normalization, one with SentencePiece's default nmt_nfkc (T5's own: NFKC and
whitespace clean-up, compiled into the model as a precompiled character map).
Run by hand before t5_fixtures.js:
    /usr/bin/python3 t5_model.py OUT_DIR
OUT_DIR receives
    spiece.model     the identity-normalized model
    tokenizer.json   the same model as the tokenizers library runs it, converted as transformers converts T5's (a
                     Unigram model over the pieces and their scores, the Metaspace pre-tokenizer and decoder, </s>
                     after a sequence)
    spiece_nfkc.model, tokenizer_nfkc_hub.json, tokenizer_nfkc.json
                     the nmt_nfkc model, and as tokenizer.json in the two layouts T5 directories carry: the Hub's T5
                     files (the Precompiled normalizer; WhitespaceSplit then Metaspace) and transformers' converter
                     today (Precompiled, Strip on the right and runs of 2+ spaces replaced by U+2581; Metaspace)
"""
import base64
import io
import json
import os
import sys

import sentencepiece as spm

from llama_model import corpus_lines


def protobuf_field(message, wanted):
    """The bytes of the first length-delimited field numbered `wanted` in a protobuf message, or b''."""
    at = 0

    def varint():
        nonlocal at
        value, shift = 0, 0
        while True:
            b = message[at]
            at += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    while at < len(message):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        elif wire == 2:
            length = varint()
            if number == wanted:
                return message[at:at + length]
            at += length
        else:
            raise ValueError(f'protobuf wire type {wire}')
    return b''


def train(normalization, **options):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus_lines(), model_writer=model, model_type='unigram', vocab_size=4000,
        character_coverage=0.9995, normalization_rule_name=normalization,
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2, **options)
    return model.getvalue()


def main(out):
    os.makedirs(out, exist_ok=True)
    write(out, '', train('identity', remove_extra_whitespaces=False), None)
    proto = train('nmt_nfkc')
    charsmap = protobuf_field(protobuf_field(proto, 3), 2)  # ModelProto.normalizer_spec.precompiled_charsmap
    assert charsmap, 'the nmt_nfkc model has no precompiled_charsmap'
    write(out, '_nfkc', proto, base64.b64encode(charsmap).decode('ascii'))


def write(out, suffix, proto, charsmap):
    """spiece<suffix>.model; tokenizer.json (no charsmap), or the two layouts of a charsmap model."""
    with open(os.path.join(out, f'spiece{suffix}.model'), 'wb') as f:
        f.write(proto)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    pieces = [[sp.id_to_piece(i), sp.get_score(i)] for i in range(sp.get_piece_size())]

    def special(i):
        return {'id': i, 'content': pieces[i][0], 'single_word': False, 'lstrip': False, 'rstrip': False,
                'normalized': False, 'special': True}

    metaspace = {'type': 'Metaspace', 'replacement': '\u2581', 'prepend_scheme': 'always', 'split': True}
    tokenizer = {
        'version': '1.0', 'truncation': None, 'padding': None,
        'added_tokens': [special(0), special(1), special(2)],
        'normalizer': None, 'pre_tokenizer': metaspace,
        'post_processor': {
            'type': 'TemplateProcessing',
            'single': [{'Sequence': {'id': 'A', 'type_id': 0}}, {'SpecialToken': {'id': '</s>', 'type_id': 0}}],
            'pair': [{'Sequence': {'id': 'A', 'type_id': 0}}, {'SpecialToken': {'id': '</s>', 'type_id': 0}},
                     {'Sequence': {'id': 'B', 'type_id': 0}}, {'SpecialToken': {'id': '</s>', 'type_id': 0}}],
            'special_tokens': {'</s>': {'id': '</s>', 'ids': [1], 'tokens': ['</s>']}}},
        'decoder': metaspace,
        'model': {'type': 'Unigram', 'unk_id': 2, 'vocab': pieces, 'byte_fallback': False},
    }
    files = {'tokenizer.json': tokenizer}
    if charsmap is not None:
        precompiled = {'type': 'Precompiled', 'precompiled_charsmap': charsmap}
        hub_metaspace = {'type': 'Metaspace', 'replacement': '\u2581', 'add_prefix_space': True}
        files = {
            'tokenizer_nfkc_hub.json': dict(tokenizer, normalizer=precompiled, decoder=hub_metaspace, pre_tokenizer={
                'type': 'Sequence', 'pretokenizers': [{'type': 'WhitespaceSplit'}, hub_metaspace]}),
            'tokenizer_nfkc.json': dict(tokenizer, normalizer={'type': 'Sequence', 'normalizers': [
                precompiled, {'type': 'Strip', 'strip_left': False, 'strip_right': True},
                {'type': 'Replace', 'pattern': {'Regex': ' {2,}'}, 'content': '\u2581'}]}),
        }
    for name, content in files.items():
        with open(os.path.join(out, name), 'w', encoding='utf-8') as f:
            json.dump(content, f, ensure_ascii=False)
    print(f'spiece{suffix}.model: {len(pieces)} pieces')


if __name__ == '__main__':
    main(sys.argv[1])
