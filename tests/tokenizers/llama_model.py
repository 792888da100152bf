#!/usr/bin/python3
"""Trains the SentencePiece BPE model of the Llama-style tokenizer fixtures and writes it in both forms a Hugging
Face Llama directory may carry it. No Llama vocabulary ships under a licence this repository can take, so
python3-sentencepiece trains one the way Llama's was made (BPE, byte fallback, digits split, <unk> <s> </s> as
ids 0 1 2), on the text of Debian 12's fortunes. Run by hand before llama_fixtures.js:
    /usr/bin/python3 llama_model.py OUT_DIR
OUT_DIR receives
    spiece.model     the SentencePiece model (what tokenizer.model is in a Llama directory)
    tokenizer.json   the same model as the tokenizers library runs it, converted as transformers converts Llama's
                     (a BPE model with byte fallback over the pieces, merges ranked by the merged piece's score; the
                     legacy normalizer that prepends and substitutes U+2581; <s> before a sequence)
The training is repeatable (one thread), but a run replaces the whole archive anyway.
"""
import io
import json
import os
import sys

import sentencepiece as spm

FORTUNES = '/usr/share/games/fortunes'


def corpus_lines():
    for name in sorted(os.listdir(FORTUNES)):
        if name.endswith('.dat') or name.endswith('.u8'):
            continue
        with open(os.path.join(FORTUNES, name), encoding='utf-8') as f:
            for line in f:
                line = line.rstrip('\n')
                if line != '%' and line.strip():
                    yield line


def main(out):
    os.makedirs(out, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus_lines(), model_writer=model, model_type='bpe', vocab_size=6000,
        character_coverage=0.9995, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name='identity', unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, minloglevel=2)
    with open(os.path.join(out, 'spiece.model'), 'wb') as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}

    # A merge (left, right) for every way of splitting a piece into two pieces, ranked by the merged piece's id (its
    # score's order), then by the parts' ids.
    merges = []
    for i, piece in enumerate(pieces):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i):
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((i, vocab[left], vocab[right], left, right))
    merges.sort()

    def special(i):
        return {'id': i, 'content': pieces[i], 'single_word': False, 'lstrip': False, 'rstrip': False,
                'normalized': False, 'special': True}

    tokenizer = {
        'version': '1.0', 'truncation': None, 'padding': None,
        'added_tokens': [special(0), special(1), special(2)],
        'normalizer': {'type': 'Sequence', 'normalizers': [
            {'type': 'Prepend', 'prepend': '\u2581'},
            {'type': 'Replace', 'pattern': {'String': ' '}, 'content': '\u2581'}]},
        'pre_tokenizer': None,
        'post_processor': {
            'type': 'TemplateProcessing',
            'single': [{'SpecialToken': {'id': '<s>', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}],
            'pair': [{'SpecialToken': {'id': '<s>', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}},
                     {'SpecialToken': {'id': '<s>', 'type_id': 1}}, {'Sequence': {'id': 'B', 'type_id': 1}}],
            'special_tokens': {'<s>': {'id': '<s>', 'ids': [1], 'tokens': ['<s>']}}},
        'decoder': {'type': 'Sequence', 'decoders': [
            {'type': 'Replace', 'pattern': {'String': '\u2581'}, 'content': ' '},
            {'type': 'ByteFallback'}, {'type': 'Fuse'},
            {'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}]},
        'model': {'type': 'BPE', 'dropout': None, 'unk_token': '<unk>', 'continuing_subword_prefix': None,
                  'end_of_word_suffix': None, 'fuse_unk': True, 'byte_fallback': True, 'ignore_merges': False,
                  'vocab': vocab, 'merges': [[m[3], m[4]] for m in merges]},
    }
    with open(os.path.join(out, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    print(f'{len(pieces)} pieces, {len(merges)} merges')


if __name__ == '__main__':
    main(sys.argv[1])
