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
