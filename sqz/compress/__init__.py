"""Deep Compression: magnitude pruning, k-means weight sharing, and the .sqz file."""

from sqz.compress.codec import CorruptFileError, decode, encode, layer_sizes, load, save
from sqz.compress.kmeans import CodebookSGD, kmeans_1d, quantize_
from sqz.compress.prune import GradualPruner, GradualSchedule, attach_masks_, compute_masks, density, prune_

__all__ = [
    "CodebookSGD",
    "CorruptFileError",
    "GradualPruner",
    "GradualSchedule",
    "attach_masks_",
    "compute_masks",
    "decode",
    "density",
    "encode",
    "kmeans_1d",
    "layer_sizes",
    "load",
    "prune_",
    "quantize_",
    "save",
]
