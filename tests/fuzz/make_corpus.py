#!/usr/bin/python3
"""Writes the fuzz targets' seed corpora, corpus/<reader>/: small valid inputs of every form each reader takes, and
malformed ones that reach its checks. Run by hand when a reader learns a new form; the files are committed.
    /usr/bin/python3 make_corpus.py        (from tests/fuzz)
"""
import base64
import io
import json
import os
import shutil
import struct
import sys

import sentencepiece as spm

HERE = os.path.dirname(os.path.abspath(__file__))


def save(reader, name, data):
    d = os.path.join(HERE, 'corpus', reader)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), 'wb') as f:
        f.write(data if isinstance(data, bytes) else data.encode('utf-8'))


def floats(n, seed):
    return [((i * 7919 + seed * 104729) % 2001 - 1000) / 1000.0 for i in range(n)]


def f32(values):
    return struct.pack(f'<{len(values)}f', *values)


def safetensors(tensors, metadata=None):
    """tensors: name -> (dtype, shape, raw bytes)."""
    header, data = {}, b''
    if metadata:
        header['__metadata__'] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b' ' * ((8 - len(text) % 8) % 8)
    return struct.pack('<Q', len(text)) + text + data


def safetensors_corpus():
    save('safetensors', 'f32.bin', safetensors({'w': ('F32', [2, 3], f32(floats(6, 1)))}, {'format': 'pt'}))
    half = struct.pack('<4e', 1.0, -2.5, 65504.0, 0.0)
    bf16 = b''.join(struct.pack('<f', v)[2:] for v in (1.0, -2.0, 3.5, 0.25))
    save('safetensors', 'f16_bf16.bin', safetensors({'a': ('F16', [4], half), 'b': ('BF16', [2, 2], bf16)}))
    save('safetensors', 'ids.bin', safetensors({'i64': ('I64', [3], struct.pack('<3q', 1, 2, 3)),
                                                        'i32': ('I32', [1, 2], struct.pack('<2i', 7, 8))}))
    save('safetensors', 'scalar_empty.bin', safetensors({'s': ('F32', [], f32([1.0])), 'e': ('F32', [0, 4], b'')}))
    good = safetensors({'w': ('F32', [2], f32([1.0, 2.0]))})
    save('safetensors', 'truncated.bin', good[:-3])
    save('safetensors', 'huge_header.bin', struct.pack('<Q', 1 << 40) + good[8:])
    save('safetensors', 'empty_header.bin', struct.pack('<Q', 0))
    two = safetensors({'a': ('F32', [2], f32([1.0, 2.0])), 'b': ('F32', [2], f32([3.0, 4.0]))})
    save('safetensors', 'overlap.bin', two.replace(b'[8, 16]', b'[4, 12]'))


def llama2c_corpus():
    dim, hidden, layers, heads, kv_heads, vocab, seq = 8, 16, 1, 2, 2, 8, 4
    head = dim // heads
    kv = kv_heads * head
    parts = {'emb': vocab * dim, 'attn_norm': layers * dim, 'wq': layers * dim * dim, 'wk': layers * kv * dim,
             'wv': layers * kv * dim, 'wo': layers * dim * dim, 'ffn_norm': layers * dim, 'w1': layers * hidden * dim,
             'w2': layers * dim * hidden, 'w3': layers * hidden * dim, 'final': dim, 'rope': seq * head, 'cls': vocab * dim}
    w = {k: floats(n, i) for i, (k, n) in enumerate(parts.items())}
    legacy = struct.pack('<7i', dim, hidden, layers, heads, kv_heads, vocab, seq)
    for k in ('emb', 'attn_norm', 'wq', 'wk', 'wv', 'wo', 'ffn_norm', 'w1', 'w2', 'w3', 'final', 'rope'):
        legacy += f32(w[k])
    save('llama2c', 'legacy_shared.bin', legacy)
    save('llama2c', 'legacy_own_classifier.bin',
         struct.pack('<7i', dim, hidden, layers, heads, kv_heads, -vocab, seq) + legacy[28:] + f32(w['cls']))

    def header(version, shared, group=0):
        h = struct.pack('<Ii7iB', 0x616b3432, version, dim, hidden, layers, heads, kv_heads, vocab, seq, shared)
        if version == 2:
            h += struct.pack('<i', group)
        return h + b'\0' * (256 - len(h))

    matrices = ['emb', 'wq', 'wk', 'wv', 'wo', 'w1', 'w2', 'w3']
    v1 = header(1, 1) + f32(w['attn_norm']) + f32(w['ffn_norm']) + f32(w['final'])
    for k in matrices:
        v1 += f32(w[k])
    save('llama2c', 'v1.bin', v1)
    group = 8
    v2 = header(2, 1, group) + f32(w['attn_norm']) + f32(w['ffn_norm']) + f32(w['final'])
    for k in matrices:
        values = w[k]
        per = len(values) if k == 'emb' else len(values) // layers
        for t in range(0, len(values), per):
            chunk = values[t:t + per]
            scales = []
            q = b''
            for g in range(0, len(chunk), group):
                top = max(abs(x) for x in chunk[g:g + group]) / 127.0
                scales.append(top)
                q += bytes((round(x / top) if top else 0) & 0xFF for x in chunk[g:g + group])
            v2 += q + f32(scales)
    save('llama2c', 'v2.bin', v2)
    save('llama2c', 'huge_dims.bin', struct.pack('<7i', 1 << 20, 1 << 20, 1000, 8, 8, 32000, 1 << 20))
    save('llama2c', 'bad_version.bin', header(7, 1))


def tokenizer_bin_corpus():
    pieces = [b'<unk>', b'<s>', b'</s>', b' ', b'a', b'b', b' a', b'ab', b'<0x0A>']
    body = struct.pack('<i', 3)
    for i, p in enumerate(pieces):
        body += struct.pack('<fi', -float(i), len(p)) + p
    save('tokenizer_bin', 'nine.bin', bytes([len(pieces) - 3]) + body + b'\0PROMPT\0' + b'a ab b')
    save('tokenizer_bin', 'nine_no_byte_token.bin', bytes([len(pieces) - 3]) + body + b'\0PROMPT\0' + b'a\nb')
    save('tokenizer_bin', 'negative_length.bin', bytes([0]) + struct.pack('<i', 3) + struct.pack('<fi', 0.0, -5))
    save('tokenizer_bin', 'huge_max_length.bin', bytes([0]) + struct.pack('<i', 1 << 30) + body[4:40])


def peft_corpus():
    config = {'peft_type': 'LORA', 'r': 2, 'lora_alpha': 4.0, 'target_modules': ['wq'], 'lora_dropout': 0.0,
              'bias': 'none', 'fan_in_fan_out': False, 'task_type': 'CAUSAL_LM'}
    weights = safetensors({'base_model.model.layers.0.attention.wq.lora_A.weight': ('F32', [2, 4], f32(floats(8, 3))),
                           'base_model.model.layers.0.attention.wq.lora_B.weight': ('F32', [4, 2], f32(floats(8, 4)))})
    sep = b'\n--SAFETENSORS--\n'
    save('peft', 'wq.txt', json.dumps(config).encode() + sep + weights)
    save('peft', 'rslora_regex.txt', json.dumps(dict(config, use_rslora=True, target_modules='.*wq')).encode() + sep + weights)
    save('peft', 'no_weights.txt', json.dumps(config).encode() + sep)


def bf16(values):
    return b''.join(struct.pack('<f', v)[2:] for v in values)


def hf_directory_corpus():
    """One tiny directory of each model the HF loaders read (names as transformers saves them), in F32 and BF16, and
    configs claiming far more than the weights hold."""
    sep = b'\n--SAFETENSORS--\n'

    def directory(name, config, shapes, dtype='F32'):
        tensors = {}
        for i, (tensor, shape) in enumerate(shapes.items()):
            n = 1
            for e in shape:
                n *= e
            values = floats(n, i)
            tensors[tensor] = (dtype, shape, f32(values) if dtype == 'F32' else bf16(values))
        save('hf_directory', name, json.dumps(config).encode() + sep + safetensors(tensors))

    d, h, v = 4, 6, 8
    bert = {'model_type': 'bert', 'vocab_size': v, 'hidden_size': d, 'num_hidden_layers': 1, 'num_attention_heads': 2,
            'intermediate_size': h, 'max_position_embeddings': 6, 'type_vocab_size': 2}
    shapes = {'embeddings.word_embeddings.weight': [v, d], 'embeddings.position_embeddings.weight': [6, d],
              'embeddings.token_type_embeddings.weight': [2, d]}
    for norm in ('embeddings.LayerNorm.', 'encoder.layer.0.attention.output.LayerNorm.',
                 'encoder.layer.0.output.LayerNorm.'):
        shapes.update({norm + 'weight': [d], norm + 'bias': [d]})
    for linear, out, inp in (('attention.self.query.', d, d), ('attention.self.key.', d, d),
                             ('attention.self.value.', d, d), ('attention.output.dense.', d, d),
                             ('intermediate.dense.', h, d), ('output.dense.', d, h)):
        shapes.update({'encoder.layer.0.' + linear + 'weight': [out, inp], 'encoder.layer.0.' + linear + 'bias': [out]})
    directory('bert_f32.txt', bert, shapes)
    directory('bert_huge_vocab.txt', dict(bert, vocab_size=1 << 40), shapes)

    gpt2 = {'model_type': 'gpt2', 'vocab_size': v, 'n_embd': d, 'n_layer': 1, 'n_head': 2, 'n_inner': h,
            'n_positions': 6}
    shapes = {'transformer.wte.weight': [v, d], 'transformer.wpe.weight': [6, d]}
    for norm in ('h.0.ln_1.', 'h.0.ln_2.', 'ln_f.'):
        shapes.update({'transformer.' + norm + 'weight': [d], 'transformer.' + norm + 'bias': [d]})
    for conv, inp, out in (('attn.c_attn.', d, 3 * d), ('attn.c_proj.', d, d), ('mlp.c_fc.', d, h),
                           ('mlp.c_proj.', h, d)):
        shapes.update({'transformer.h.0.' + conv + 'weight': [inp, out], 'transformer.h.0.' + conv + 'bias': [out]})
    directory('gpt2_bf16.txt', gpt2, shapes, 'BF16')
    directory('gpt2_huge_layers.txt', dict(gpt2, n_layer=1 << 40), shapes)

    llama = {'model_type': 'llama', 'vocab_size': v, 'hidden_size': d, 'intermediate_size': h, 'num_hidden_layers': 1,
             'num_attention_heads': 2, 'num_key_value_heads': 1, 'max_position_embeddings': 6,
             'tie_word_embeddings': False}
    shapes = {'model.embed_tokens.weight': [v, d], 'model.norm.weight': [d], 'lm_head.weight': [v, d]}
    p = 'model.layers.0.'
    shapes.update({p + 'self_attn.q_proj.weight': [d, d], p + 'self_attn.k_proj.weight': [2, d],
                   p + 'self_attn.v_proj.weight': [2, d], p + 'self_attn.o_proj.weight': [d, d],
                   p + 'mlp.gate_proj.weight': [h, d], p + 'mlp.up_proj.weight': [h, d],
                   p + 'mlp.down_proj.weight': [d, h], p + 'input_layernorm.weight': [d],
                   p + 'post_attention_layernorm.weight': [d]})
    directory('llama_f32.txt', llama, shapes)
    directory('llama_huge_positions.txt', dict(llama, max_position_embeddings=1 << 40), shapes)

    for gated in (False, True):
        t5 = {'model_type': 't5', 'vocab_size': v, 'd_model': d, 'd_kv': 2, 'num_heads': 2, 'd_ff': h, 'num_layers': 1,
              'num_decoder_layers': 1, 'relative_attention_num_buckets': 4, 'relative_attention_max_distance': 8,
              'feed_forward_proj': 'gated-gelu' if gated else 'relu', 'tie_word_embeddings': not gated}
        shapes = {'shared.weight': [v, d], 'encoder.final_layer_norm.weight': [d],
                  'decoder.final_layer_norm.weight': [d]}
        if gated:
            shapes['lm_head.weight'] = [v, d]
        wi = {'wi_0.': [h, d], 'wi_1.': [h, d]} if gated else {'wi.': [h, d]}
        for stack, blocks in (('encoder', ('layer.0.SelfAttention.', 'layer.1.')),
                              ('decoder', ('layer.0.SelfAttention.', 'layer.1.EncDecAttention.', 'layer.2.'))):
            b = stack + '.block.0.'
            for i, part in enumerate(blocks):
                if part.endswith('Attention.'):
                    shapes.update({b + part + x + '.weight': [4, d] for x in 'qkv'})
                    shapes[b + part + 'o.weight'] = [d, 4]
                else:
                    shapes.update({b + part + 'DenseReluDense.' + k + 'weight': s for k, s in wi.items()})
                    shapes[b + part + 'DenseReluDense.wo.weight'] = [d, h]
                shapes[b + 'layer.%d.layer_norm.weight' % i] = [d]
            shapes[b + 'layer.0.SelfAttention.relative_attention_bias.weight'] = [4, 2]
        name = 't5_gated_bf16.txt' if gated else 't5_relu_f32.txt'
        directory(name, t5, shapes, 'BF16' if gated else 'F32')
    directory('t5_huge_ffn.txt', dict(t5, d_ff=1 << 36), shapes, 'BF16')


def attention_corpus():
    for i, s in enumerate(['full', 'full:bf16_products', 'sliding:128', 'blockwise:128', 'lsh:4:64', 'linformer:256',
                           'performer:256', 'linear', 'sliding:0', 'lsh:4', 'unknown:1']):
        save('attention_spelling', f'{i:02d}', s)


def tokenizer_corpus(charsmap):
    sep = '\n--TEXT--\n'
    text = 'Hello wörld, ｶﾞ ① e\u0301\r\n<s>x</s>  two  spaces'
    level = {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True}
    bpe = {'pre_tokenizer': level, 'decoder': level, 'added_tokens': [
        {'id': 5, 'content': '<s>', 'special': True, 'normalized': False}],
        'model': {'type': 'BPE', 'vocab': {'H': 0, 'e': 1, 'l': 2, 'o': 3, 'He': 4, '<s>': 5}, 'merges': ['H e']}}
    wordpiece = {'normalizer': {'type': 'BertNormalizer', 'lowercase': True}, 'pre_tokenizer': {'type': 'BertPreTokenizer'},
                 'post_processor': {'type': 'BertProcessing', 'sep': ['[SEP]', 2], 'cls': ['[CLS]', 1]},
                 'decoder': {'type': 'WordPiece', 'prefix': '##', 'cleanup': True},
                 'model': {'type': 'WordPiece', 'unk_token': '[UNK]', 'vocab': {'[UNK]': 0, '[CLS]': 1, '[SEP]': 2,
                                                                                'hello': 3, '##o': 4, 'w': 5}}}
    metaspace = {'type': 'Metaspace', 'replacement': '\u2581', 'prepend_scheme': 'always', 'split': True}
    unigram = {'normalizer': {'type': 'Sequence', 'normalizers': [
        {'type': 'Precompiled', 'precompiled_charsmap': charsmap}, {'type': 'Strip', 'strip_left': False, 'strip_right': True},
        {'type': 'Replace', 'pattern': {'Regex': ' {2,}'}, 'content': '\u2581'}]},
        'pre_tokenizer': {'type': 'Sequence', 'pretokenizers': [{'type': 'WhitespaceSplit'}, metaspace]},
        'post_processor': {'type': 'TemplateProcessing', 'single': [{'Sequence': {'id': 'A', 'type_id': 0}},
                                                                    {'SpecialToken': {'id': '</s>', 'type_id': 0}}],
                           'special_tokens': {'</s>': {'id': '</s>', 'ids': [1], 'tokens': ['</s>']}}},
        'decoder': metaspace,
        'model': {'type': 'Unigram', 'unk_id': 2, 'byte_fallback': True, 'vocab': [
            ['<pad>', 0.0], ['</s>', 0.0], ['<unk>', 0.0], ['\u2581', -1.5], ['\u2581He', -3.1], ['llo', -4.25],
            ['<0x0A>', -9.833489418029785]]}}
    llama = {'normalizer': {'type': 'Sequence', 'normalizers': [{'type': 'Prepend', 'prepend': '\u2581'},
                                                                {'type': 'Replace', 'pattern': {'String': ' '}, 'content': '\u2581'}]},
             'pre_tokenizer': None, 'decoder': {'type': 'Sequence', 'decoders': [
                 {'type': 'Replace', 'pattern': {'String': '\u2581'}, 'content': ' '}, {'type': 'ByteFallback'},
                 {'type': 'Fuse'}, {'type': 'Strip', 'content': ' ', 'start': 1, 'stop': 0}]},
             'model': {'type': 'BPE', 'byte_fallback': True, 'fuse_unk': True, 'unk_token': '<unk>',
                       'vocab': {'<unk>': 0, '<0x41>': 1, '\u2581': 2, 'a': 3, '\u2581a': 4}, 'merges': ['\u2581 a']}}
    # WordPiece after splitting pre-tokenizers, with a pair template whose type ids run past 1
    splits = dict(wordpiece, pre_tokenizer={'type': 'Sequence', 'pretokenizers': [
        {'type': 'Whitespace'}, {'type': 'Punctuation', 'behavior': 'Isolated'}, {'type': 'Digits', 'individual_digits': True}]},
        post_processor={'type': 'TemplateProcessing',
                        'single': [{'SpecialToken': {'id': '[CLS]', 'type_id': 0}}, {'Sequence': {'id': 'A', 'type_id': 0}}],
                        'pair': [{'Sequence': {'id': 'B', 'type_id': 3}}, {'SpecialToken': {'id': '[SEP]', 'type_id': 2}},
                                 {'Sequence': {'id': 'A', 'type_id': 0}}],
                        'special_tokens': {'[CLS]': {'id': '[CLS]', 'ids': [1], 'tokens': ['[CLS]']},
                                           '[SEP]': {'id': '[SEP]', 'ids': [2], 'tokens': ['[SEP]']}}})
    # Byte-level BPE after Llama 3's Split and the Unicode normalizers, ignore_merges set
    cl100k = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
              r"\s*[\r\n]+|\s+(?!\S)|\s+")
    split_normalized = dict(bpe, normalizer={'type': 'Sequence', 'normalizers': [
        {'type': 'NFKC'}, {'type': 'Lowercase'}, {'type': 'NFD'}, {'type': 'StripAccents'}, {'type': 'NFC'}]},
        pre_tokenizer={'type': 'Sequence', 'pretokenizers': [
            {'type': 'Split', 'pattern': {'Regex': cl100k}, 'behavior': 'Isolated', 'invert': False},
            dict(level, use_regex=False)]},
        model=dict(bpe['model'], ignore_merges=True))
    for name, j in [('bpe', bpe), ('wordpiece', wordpiece), ('unigram_precompiled', unigram), ('llama', llama),
                    ('wordpiece_splits_pair', splits), ('bpe_split_normalized', split_normalized)]:
        save('tokenizer_json', name + '.txt', json.dumps(j, ensure_ascii=False) + sep + text)
    for i, s in enumerate(['', 'the thé  ', 'a\u2581b', '\xff', 'e\u0301\u0301', '\U0001F468\u200d\U0001F469', '\r\n\t ',
                           'ｶﾞ①ﬁ']):
        save('tokenizer_encode', f'{i:02d}', s.encode('utf-8', 'surrogatepass') if s != '\xff' else b'\xff\xfe')
    raw = base64.b64decode(charsmap)
    save('precompiled', 'rules.bin', raw + sep.encode() + text.encode())
    save('precompiled', 'short.bin', raw[:6] + sep.encode() + b'abc')


def small_charsmap():
    """A SentencePiece model with a few normalization rules of its own: its precompiled charsmap (base64)."""
    rules = os.path.join(HERE, 'rules.tsv.tmp')
    with open(rules, 'w') as f:
        for src, dst in [('ＡＢ', 'AB'), ('①', '1'), ('ﬁ', 'fi'), ('ｶﾞ', 'ガ'), ('\u3000', ' '), ('e\u0301', 'é')]:
            f.write(' '.join(f'{ord(c):X}' for c in src) + '\t' + ' '.join(f'{ord(c):X}' for c in dst) + '\n')
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(['ab cd ef gh'] * 50), model_writer=model, vocab_size=20,
                                   normalization_rule_tsv=rules, model_type='unigram', minloglevel=2,
                                   hard_vocab_limit=False)
    os.remove(rules)
    proto = model.getvalue()
    sys.path.insert(0, os.path.join(HERE, '..', 'tokenizers'))
    from t5_model import protobuf_field  # pylint: disable=import-outside-toplevel
    return base64.b64encode(protobuf_field(protobuf_field(proto, 3), 2)).decode()


def main():
    shutil.rmtree(os.path.join(HERE, 'corpus'), ignore_errors=True)
    safetensors_corpus()
    llama2c_corpus()
    tokenizer_bin_corpus()
    peft_corpus()
    hf_directory_corpus()
    attention_corpus()
    tokenizer_corpus(small_charsmap())


if __name__ == '__main__':
    main()
