"""The safetensors writer of the reference scripts (imported from beside them): 8 bytes of header length, the
JSON header padded with spaces to a multiple of 8, then the tensors' little-endian bytes in order."""
import json
import struct

import numpy as np
import torch

_TORCH_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def tensor_bytes(t, dtype="F32"):
    """The bytes of t (a torch tensor or anything numpy takes) stored as dtype ("F32", "F16" or "BF16")."""
    t = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t)
    t = t.to(_TORCH_TYPES[dtype]).contiguous()
    if dtype == "BF16":  # numpy has no bfloat16: its bits as int16
        return t.view(torch.int16).numpy().astype("<i2").tobytes()
    return t.numpy().astype("<f4" if dtype == "F32" else "<f2").tobytes()


def save_safetensors(path, tensors, dtype="F32", metadata=None):
    """Writes the named tensors (name → tensor, in order) to path, all as dtype, with string metadata."""
    header, offset, blobs = {}, 0, []
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, t in tensors.items():
        data = tensor_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def save_hf_weights(directory, tensors, dtype, shards=1):
    """A Hugging Face directory's weights: model.safetensors, or with shards=2 the tensors split in two halves over
    model-0000k-of-00002.safetensors with model.safetensors.index.json naming each tensor's shard."""
    import os
    if shards == 1:
        save_safetensors(os.path.join(directory, "model.safetensors"), tensors, dtype, {"format": "pt"})
        return
    names = list(tensors)
    weight_map, cut = {}, (len(names) + 1) // 2
    for i, part in enumerate((names[:cut], names[cut:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_safetensors(os.path.join(directory, shard), {k: tensors[k] for k in part}, dtype, {"format": "pt"})
        weight_map.update({k: shard for k in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f, indent=2)
