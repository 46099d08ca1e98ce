"""Inference straight from the codebook indices.

:func:`to_indexed` swaps every weight-shared ``nn.Conv2d`` / ``nn.Linear`` for a module
that keeps only ``uint8`` indices (one byte per weight, pruned zeros included as index 0)
and the layer's small float32 codebook (a layer with all 2^8 non-zero centroids plus its
zeros has 257 values and keeps ``int16`` indices; quantize with ``clusters=255``, as the
released model's 256-entry codebooks with entry 0 = 0.0 do, to stay at one byte), and rebuilds the float weight for the duration of
its own forward call. The model's resident weight memory is therefore the index bytes,
about a quarter of float32; the price is one gather per layer per forward, which the
bench (bench/bench_compress.py) measures against the dense model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IndexedConv2d", "IndexedLinear", "to_indexed", "weight_bytes"]

_MAX_SHARED = 256  # distinct non-zero values of a weight-shared (8-bit) layer


def _is_shared(weight: torch.Tensor) -> bool:
    return torch.unique(weight.detach()).numel() <= _MAX_SHARED + 1  # + the pruned zeros


def _codebook_and_indices(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    values = weight.detach().float().cpu()
    codebook = torch.unique(torch.cat([torch.zeros(1), values.flatten()]))  # ascending, 0.0 included
    if codebook.numel() > _MAX_SHARED + 1:
        raise ValueError(f"weight has {codebook.numel()} distinct values; at most {_MAX_SHARED} non-zero ones can be indexed (quantize it first)")
    dtype = torch.uint8 if codebook.numel() <= 256 else torch.int16
    indices = torch.searchsorted(codebook, values.flatten()).to(dtype).view(values.shape)
    return codebook, indices


class _Indexed(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        codebook, indices = _codebook_and_indices(layer.weight)
        self.register_buffer("codebook", codebook)
        self.register_buffer("indices", indices)
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def weight(self) -> torch.Tensor:
        # embedding is a gather that takes the int32 indices without a float copy of them
        return F.embedding(self.indices.to(torch.int32), self.codebook.view(-1, 1)).view(self.indices.shape)


class IndexedConv2d(_Indexed):
    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__(conv)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise ValueError(f"IndexedConv2d: padding_mode {conv.padding_mode!r} is not supported")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class IndexedLinear(_Indexed):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight(), self.bias)


def to_indexed(model: nn.Module) -> nn.Module:
    """Replace (in place) each Conv2d/Linear whose weight has at most 256 distinct non-zero
    values by its indexed twin; layers with more values stay dense. Returns ``model``."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv2d) and _is_shared(child.weight):
            setattr(model, name, IndexedConv2d(child))
        elif isinstance(child, nn.Linear) and _is_shared(child.weight):
            setattr(model, name, IndexedLinear(child))
        else:
            to_indexed(child)
    return model


def weight_bytes(model: nn.Module) -> int:
    """Resident bytes of the model's parameters and buffers (what stays in memory)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
