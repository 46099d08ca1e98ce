"""Datasets: scikit-learn's bundled digits (real, tiny), synthetic, and image folders.

``data_url`` names the source:
- ``digits``: the 1,797 8x8 handwritten digits that ship inside scikit-learn, upsampled to
  ``image_size`` and repeated to 3 channels (no download, so it works offline and in CI);
- ``synthetic``: class-conditional noise patterns generated from a seed;
- a folder with ``train/<class>/*`` and ``val/<class>/*`` images (ImageNet layout), read
  with torchvision's ImageFolder, class order = sorted folder names.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

from sqz.config import DataConfig

__all__ = ["BUILTIN_DATASETS", "check_data_url", "load_split", "num_classes_of"]

BUILTIN_DATASETS = ("digits", "synthetic")
Split = Literal["train", "val"]

# Normalise to roughly zero mean / unit range; digits pixels are in [0, 1] after scaling.
_MEAN, _STD = 0.5, 0.5


def check_data_url(url: str) -> None:
    """Raise a one-line ValueError before any work if ``url`` cannot be a dataset."""
    if url in BUILTIN_DATASETS:
        return
    if "://" in url and not url.startswith("file://"):
        raise ValueError(f"--data: unsupported scheme in {url!r}; use digits, synthetic or a local folder")
    path = url.removeprefix("file://")
    if not os.path.isdir(path):
        raise ValueError(f"--data: no such dataset folder: {path}")
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(path, split)):
            raise ValueError(f"--data: {path} has no {split}/ folder (expected ImageNet layout)")


def _stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        indices, test_size=val_fraction, random_state=seed, stratify=labels
    )
    return np.sort(train_idx), np.sort(val_idx)


def _digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)  # (N, 3, S, S): SqueezeNet expects RGB
    images = (images - _MEAN) / _STD
    return images, torch.from_numpy(digits.target.astype(np.int64))


def _synthetic_tensors(image_size: int, seed: int, num_classes: int = 10, per_class: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, 3, image_size, image_size, generator=generator)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    noise = torch.randn(len(labels), 3, image_size, image_size, generator=generator)
    return templates[labels] + 0.8 * noise, labels


def _folder_dataset(root: str, split: Split, image_size: int) -> Dataset:
    from torchvision import datasets, transforms

    normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    if split == "train":
        tf = transforms.Compose([
            transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), normalize,
        ])  # fmt: skip
    else:
        tf = transforms.Compose([
            transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
            transforms.ToTensor(), normalize,
        ])  # fmt: skip
    return datasets.ImageFolder(os.path.join(root, split), transform=tf)


def load_split(config: DataConfig, split: Split) -> Dataset:
    """The ``split`` of the dataset ``config.url`` names; the same config gives the same split."""
    check_data_url(config.url)
    if config.url in BUILTIN_DATASETS:
        if config.url == "digits":
            images, labels = _digits_tensors(config.image_size)
        else:
            images, labels = _synthetic_tensors(config.image_size, config.seed)
        train_idx, val_idx = _stratified_split(labels.numpy(), config.val_fraction, config.seed)
        idx = torch.from_numpy(train_idx if split == "train" else val_idx)
        return TensorDataset(images[idx], labels[idx])
    return _folder_dataset(config.url.removeprefix("file://"), split, config.image_size)


def num_classes_of(config: DataConfig) -> int:
    if config.url in BUILTIN_DATASETS:
        return 10
    check_data_url(config.url)
    root = os.path.join(config.url.removeprefix("file://"), "train")
    return len([d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))])
