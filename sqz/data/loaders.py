"""Entry points over every kind of dataset ``data_url`` names: check it, load a split,
count its classes, and batch it.

A file that cannot be read or decoded is skipped and counted, never fatal: the loaders
here return :class:`ImageLoader`, whose ``skipped`` lists the pass's casualties.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset

from sqz import storage
from sqz.config import DataConfig
from sqz.data.builtin import BUILTIN_CLASSES, BUILTIN_DATASETS, load_builtin
from sqz.data.imagenet import SPLITS, FolderImages, Split, check_folder, dataset_classes, scan_split
from sqz.data.parquet import PLAN_NAME, ParquetImages, is_prepared, read_manifest, split_manifest
from sqz.data.transforms import ImageTransform, Normalization, SkippedImage, normalize_batch

__all__ = ["ImageLoader", "check_data_url", "load_split", "make_loader", "num_classes_of"]

log = logging.getLogger(__name__)


class _CollateImages:
    """Stack the decodable images of a batch and normalise them; report the rest."""

    def __init__(self, normalization: Normalization) -> None:
        self.normalization = normalization

    def __call__(self, items: list[tuple[Any, int]]) -> tuple[torch.Tensor | None, torch.Tensor, list[SkippedImage]]:
        images = [x for x, _ in items if not isinstance(x, SkippedImage)]
        labels = [y for x, y in items if not isinstance(x, SkippedImage)]
        skipped = [x for x, _ in items if isinstance(x, SkippedImage)]
        batch = normalize_batch(torch.stack(images), self.normalization) if images else None
        return batch, torch.tensor(labels, dtype=torch.int64), skipped


class ImageLoader:
    """A DataLoader over FolderImages/ParquetImages that yields ``(inputs, targets)`` like
    any other, drops undecodable images, and keeps the last pass's ``skipped`` list."""

    def __init__(self, loader: DataLoader) -> None:
        self.loader = loader
        self.skipped: list[SkippedImage] = []
        self._passes = 0

    @property
    def dataset(self) -> Dataset:
        return self.loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if isinstance(self.dataset, ParquetImages):
            self.dataset.set_epoch(self._passes)  # a fresh shuffle per pass, reproducible
        self._passes += 1
        self.skipped = []
        for inputs, targets, skipped in self.loader:
            for item in skipped:
                log.warning("skipped %s: %s", item.path, item.reason)
            self.skipped.extend(skipped)
            if inputs is not None:
                yield inputs, targets


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, sampler: Sampler | None = None,
                generator: torch.Generator | None = None, num_workers: int = 0, drop_last: bool = False):  # fmt: skip
    """A DataLoader for any dataset of :func:`load_split`; image datasets get an
    :class:`ImageLoader` (corrupt files skipped and counted, batched normalisation)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset  # a rank's share of FolderImages
    if not isinstance(base, (FolderImages, ParquetImages)):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          generator=generator, num_workers=num_workers, drop_last=drop_last)  # fmt: skip
    options: dict[str, Any] = {}
    if not isinstance(dataset, IterableDataset):
        options = {"shuffle": shuffle and sampler is None, "sampler": sampler, "generator": generator}
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
        collate_fn=_CollateImages(base.transform.normalization), **options,
    )  # fmt: skip
    return ImageLoader(loader)


def _is_parquet(url: str) -> bool:
    # Anything remote is a prepared dataset (only those can live on S3); a local folder is
    # one once dataset.json is there.
    return not storage.is_local(url) or is_prepared(url)


def check_data_url(url: str, splits: Sequence[str] = SPLITS, *, option: str = "--data") -> None:
    """Raise a one-line ValueError before any work if ``url`` cannot be a dataset with
    ``splits``: unknown scheme, missing folder or split, empty class folder, missing
    ground truth, or an s3:// prefix that is not a prepared dataset."""
    if url in BUILTIN_DATASETS:
        return
    storage.check_url(url, option=option)  # the scheme decides: local, file:// or s3://
    try:
        if _is_parquet(url):
            manifest = read_manifest(url)
            for split in splits:
                split_manifest(manifest, url, split)
            return
        root = storage.local_path(url)
        if os.path.exists(os.path.join(root, PLAN_NAME)):
            read_manifest(url)  # an unfinished prepare: says so, and how to resume
        check_folder(root, splits)
    except (ValueError, OSError) as exc:
        message = str(exc)
        raise ValueError(message if message.startswith(option) else f"{option}: {message}") from None


def _transform(config: DataConfig, split: Split) -> ImageTransform:
    return ImageTransform(train=split == "train", image_size=config.image_size, normalization=config.normalization)


def load_split(config: DataConfig, split: Split, *, rank: int = 0, world_size: int = 1) -> Dataset:
    """The ``split`` of the dataset ``config.url`` names; the same config gives the same
    split. ``rank``/``world_size`` shard a prepared dataset (other kinds use a sampler)."""
    check_data_url(config.url, splits=(split,))
    if config.url in BUILTIN_DATASETS:
        return load_builtin(config, split)
    if _is_parquet(config.url):
        return ParquetImages(config.url, split, _transform(config, split), shuffle=split == "train",
                             seed=config.seed, rank=rank, world_size=world_size)  # fmt: skip
    return FolderImages(scan_split(storage.local_path(config.url), split), _transform(config, split))


def num_classes_of(config: DataConfig) -> int:
    if config.url in BUILTIN_DATASETS:
        return BUILTIN_CLASSES
    if _is_parquet(config.url):
        return len(read_manifest(config.url)["classes"])
    check_data_url(config.url, splits=())
    return len(dataset_classes(storage.local_path(config.url)))
