#!/usr/bin/python3
"""Trains the SentencePiece Unigram model of the T5-style tokenizer fixtures and writes it in both forms a Hugging
Face T5 directory may carry it. python3-sentencepiece trains it the way T5's was laid out (Unigram, <pad> </s> <unk>
as ids 0 1 2, no byte fallback: characters outside the vocabulary are <unk>) on the text of Debian 12's fortunes,
with the identity normalization (T5's own normalizer, a Precompiled character map, is not run by polyformer).
Run by hand before t5_fixtures.js:
    /usr/bin/python3 t5_model.py OUT_DIR
OUT_DIR receives
    spiece.model     the SentencePiece model
    tokenizer.json   the same model as the tokenizers library runs it, converted as transformers converts T5's (a
                     Unigram model over the pieces and their scores, the Metaspace pre-tokenizer and decoder, </s>
                     after a sequence)
"""
import io
import json
import os
import sys

import sentencepiece as spm

from llama_model import corpus_lines


def main(out):
    os.makedirs(out, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=corpus_lines(), model_writer=model, model_type='unigram', vocab_size=4000,
        character_coverage=0.9995, remove_extra_whitespaces=False, normalization_rule_name='identity',
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, minloglevel=2)
    with open(os.path.join(out, 'spiece.model'), 'wb') as f:
        f.write(model.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
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
    with open(os.path.join(out, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        json.dump(tokenizer, f, ensure_ascii=False)
    print(f'{len(pieces)} pieces')


if __name__ == '__main__':
    main(sys.argv[1])
