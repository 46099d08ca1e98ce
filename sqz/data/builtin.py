"""The built-in datasets, held in memory: ``digits``, the 1,797 8x8 handwritten digits
that ship inside scikit-learn, upsampled to ``image_size`` and repeated to 3 channels (no
download, so it works offline and in CI), and ``synthetic``, class-conditional noise
patterns generated from a seed. Both are split train/val by a seeded stratified split.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import os
import zipfile
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from sqz import storage
from sqz.config import BUILTIN_CLASSES, BUILTIN_DATASETS, DataConfig
from sqz.data.imagenet import Split

__all__ = ["BUILTIN_DATASETS", "BUILTIN_CLASSES", "ShiftedTensors", "cache_dir", "digits_arrays", "load_builtin"]

# Digits pixels are in [0, 1] after scaling: map them to roughly zero mean, unit range.
_DIGITS_MEAN, _DIGITS_STD = 0.5, 0.5


# scikit-learn is where the digits and the stratified split come from, but importing it
# costs ~1.7 CPU-s (scipy.stats), paid by every process that loads the data: each Ray
# Train worker, each Tune trial's actor, each `sqz` command. So its results (the digits'
# arrays, each split's indices) are kept in a small .npz cache, written once per machine;
# a process that finds them never imports sklearn. The key includes sklearn's version, so
# an upgrade that changed the data or the split is seen.
def cache_dir() -> str:
    """Where sqz keeps derived files it can rebuild: ``SQZ_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/sqz``, else ``~/.cache/sqz``."""
    if os.environ.get("SQZ_CACHE_DIR"):
        return os.environ["SQZ_CACHE_DIR"]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sqz")


def _cached_arrays(name: str, key: object, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``compute()``'s arrays, read from ``cache_dir()/name-<digest of key>.npz`` when an
    earlier process wrote them (no pickle: ``allow_pickle=False``). An unreadable cache
    file is recomputed and replaced; an unwritable cache folder only means no cache."""
    digest = hashlib.sha256(repr((key, importlib.metadata.version("scikit-learn"))).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir(), f"{name}-{digest}.npz")
    try:
        with np.load(path, allow_pickle=False) as stored:
            return {field: stored[field] for field in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        pass  # not cached yet, or a damaged file: compute it again
    arrays = compute()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        storage.write_bytes(path, buffer.getvalue())  # whole or not at all, however many write it at once
    except OSError:
        pass  # a read-only or full disk: this process computed the arrays, the next will too
    return arrays


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    def split() -> dict[str, np.ndarray]:
        from sklearn.model_selection import train_test_split

        indices = np.arange(len(labels))
        train_idx, val_idx = train_test_split(
            indices, test_size=val_fraction, random_state=seed, stratify=labels
        )
        return {"train": np.sort(train_idx), "val": np.sort(val_idx)}

    key = (hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest(), str(labels.dtype), val_fraction, seed)
    arrays = _cached_arrays("split", key, split)
    return arrays["train"], arrays["val"]


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) in 0..16 and their labels."""

    def load() -> dict[str, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return {"images": digits.images, "target": digits.target}

    arrays = _cached_arrays("digits", "load_digits", load)
    return arrays["images"], arrays["target"]


def _digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    digits_images, digits_target = digits_arrays()
    images = torch.from_numpy(digits_images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)  # (N, 3, S, S): SqueezeNet expects RGB
    images = (images - _DIGITS_MEAN) / _DIGITS_STD
    return images, torch.from_numpy(digits_target.astype(np.int64))


class ShiftedTensors(TensorDataset):
    """In-memory images, each shifted by a random offset in [-shift, shift] pixels per
    axis every time it is read, the uncovered border filled with the image's minimum (the
    background). Uses torch's global generator, so a seeded run repeats itself."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, shift: int) -> None:
        super().__init__(images, labels)
        self.shift = shift

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = super().__getitem__(index)
        s = self.shift
        dy, dx = (int(v) for v in torch.randint(0, 2 * s + 1, (2,)))
        padded = F.pad(image, (s, s, s, s), value=float(image.min()))
        return padded[:, dy : dy + image.shape[1], dx : dx + image.shape[2]], label


def _synthetic_tensors(image_size: int, seed: int, num_classes: int = 10, per_class: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, 3, image_size, image_size, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 3, image_size, image_size, generator=generator)
    return templates[labels] + 0.8 * noise, labels


def load_builtin(config: DataConfig, split: Split) -> Dataset:
    """The ``split`` of the built-in set ``config.url``; the same config gives the same split."""
    if config.url == "digits":
        images, labels = _digits_tensors(config.image_size)
    elif config.url == "synthetic":
        images, labels = _synthetic_tensors(config.image_size, config.seed, num_classes=BUILTIN_CLASSES)
    else:
        raise ValueError(f"--data: {config.url!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
    train_idx, val_idx = _stratified_split(labels.numpy(), config.val_fraction, config.seed)
    idx = torch.from_numpy(train_idx if split == "train" else val_idx)
    if split == "train" and config.shift_augment:
        return ShiftedTensors(images[idx], labels[idx], config.shift_augment)
    return TensorDataset(images[idx], labels[idx])
