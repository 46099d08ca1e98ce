"""Reader for the released Deep Compression SqueezeNet (``compressed_SqueezeNet.net``).

Layout (little-endian, see the README beside the file): ``uint32[26]`` stored entries per
layer, then per layer in network order: ``float32[256]`` codebook (entry 0 is 0.0),
``float32[out_channels]`` bias, ``uint8[n]`` codes, ``uint8[ceil(n/2)]`` 4-bit relative
indices (low nibble first). Entry i lands ``r_i + 1`` positions after entry i-1; gaps
longer than 15 are bridged by filler entries whose code is 0 (weight 0.0).
"""

from __future__ import annotations

import numpy as np
import torch

from sqz.compress.codec import CorruptFileError
from sqz.models import SqueezeNet, squeezenet1_0

__all__ = ["DC_LAYERS", "read_dcnet", "load_dcnet"]

# The 26 weighted layers, in file order, by torchvision's squeezenet1_0 names.
DC_LAYERS = ["features.0"] + [
    f"features.{i}.{part}" for i in (3, 4, 5, 7, 8, 9, 10, 12) for part in ("squeeze", "expand1x1", "expand3x3")
] + ["classifier.1"]  # fmt: skip
_CODEBOOK = 256


def read_dcnet(data: bytes) -> dict[str, torch.Tensor]:
    """The file's weights and biases as a squeezenet1_0 state dict (1000 classes)."""
    reference = squeezenet1_0().state_dict()
    header = 4 * len(DC_LAYERS)
    if len(data) < header:
        raise CorruptFileError(f"file is {len(data)} bytes, too short for the {header}-byte entry table")
    counts = np.frombuffer(data, dtype="<u4", count=len(DC_LAYERS))
    pos = header
    state: dict[str, torch.Tensor] = {}
    for name, stored in zip(DC_LAYERS, counts.tolist()):
        weight_shape = reference[f"{name}.weight"].shape
        numel, out_channels = int(np.prod(weight_shape)), weight_shape[0]
        if stored > numel:
            raise CorruptFileError(f"{name}: {stored} stored entries for a {numel}-weight layer")
        size = 4 * _CODEBOOK + 4 * out_channels + stored + (stored + 1) // 2
        if pos + size > len(data):
            raise CorruptFileError(f"{name}: layer needs {size} bytes at offset {pos}, file has {len(data)}")
        codebook = np.frombuffer(data, dtype="<f4", count=_CODEBOOK, offset=pos)
        pos += 4 * _CODEBOOK
        bias = np.frombuffer(data, dtype="<f4", count=out_channels, offset=pos)
        pos += 4 * out_channels
        codes = np.frombuffer(data, dtype=np.uint8, count=stored, offset=pos)
        pos += stored
        packed = np.frombuffer(data, dtype=np.uint8, count=(stored + 1) // 2, offset=pos)
        pos += (stored + 1) // 2
        gaps = np.stack([packed & 0x0F, packed >> 4], axis=1).ravel()[:stored].astype(np.int64)
        positions = np.cumsum(gaps + 1) - 1
        if stored and positions[-1] >= numel:
            raise CorruptFileError(f"{name}: relative indices run past the layer's {numel} weights")
        weight = np.zeros(numel, dtype=np.float32)
        weight[positions] = codebook[codes]
        state[f"{name}.weight"] = torch.from_numpy(weight).view(weight_shape)
        state[f"{name}.bias"] = torch.from_numpy(bias.copy())
    if pos != len(data):
        raise CorruptFileError(f"{len(data) - pos} unexpected bytes after the last layer")
    return state


def load_dcnet(data: bytes) -> SqueezeNet:
    """A squeezenet1_0 with the released weights (Caffe input convention: 227x227, BGR,
    mean (104, 117, 123) subtracted, no std division)."""
    from sqz.models import build_model

    model = build_model("squeezenet1_0", num_classes=1000)
    model.load_state_dict(read_dcnet(data))
    return model.eval()
