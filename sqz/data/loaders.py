"""Entry points over every kind of dataset ``data_url`` names: check it, load a split,
count its classes, and batch it.

A file that cannot be read or decoded is skipped and counted, never fatal: the loaders
here return :class:`ImageLoader`, whose ``skipped`` lists the pass's casualties.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Iterator, Literal, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset

from sqz import storage
from sqz.config import DataConfig
from sqz.data.gpu import EncodedImages
from sqz.data.builtin import BUILTIN_CLASSES, BUILTIN_DATASETS, load_builtin
from sqz.data.imagenet import SPLITS, FolderImages, Split, check_folder, dataset_classes, scan_split
from sqz.data.parquet import PLAN_NAME, ParquetImages, is_prepared, read_manifest, split_manifest
from sqz.data.transforms import ImageTransform, Normalization, SkippedImage, normalize_batch

Decode = Literal["cpu", "gpu"]

__all__ = ["ImageLoader", "check_data_url", "load_split", "make_loader", "num_classes_of"]

log = logging.getLogger(__name__)


class _CollateImages:
    """Stack the decodable images of a batch (and normalise them, unless a GPU will);
    report the rest."""

    def __init__(self, normalization: Normalization | None) -> None:
        self.normalization = normalization  # None: uint8 batches, normalised on the device

    def __call__(self, items: list[tuple[Any, int]]) -> tuple[torch.Tensor | None, torch.Tensor, list[SkippedImage]]:
        images = [x for x, _ in items if not isinstance(x, SkippedImage)]
        labels = [y for x, y in items if not isinstance(x, SkippedImage)]
        skipped = [x for x, _ in items if isinstance(x, SkippedImage)]
        batch = torch.stack(images) if images else None
        if batch is not None and self.normalization is not None:
            batch = normalize_batch(batch, self.normalization)
        return batch, torch.tensor(labels, dtype=torch.int64), skipped


class ImageLoader:
    """A DataLoader over FolderImages/ParquetImages that yields ``(inputs, targets)`` like
    any other, drops undecodable images, and keeps the last pass's ``skipped`` list.

    With a CUDA ``device``, uint8 batches (a quarter of float32's bytes) leave pinned
    memory with non-blocking copies and are normalised on the GPU, as ``dtype`` and
    optionally channels_last; otherwise the workers normalise, as before."""

    def __init__(self, loader: DataLoader, *, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False) -> None:  # fmt: skip
        self.loader = loader
        self.device = torch.device(device) if device is not None else None
        self.dtype, self.channels_last = dtype, channels_last
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
            if inputs is None:
                continue
            if inputs.dtype == torch.uint8:  # normalised here, on the device
                inputs = normalize_batch(inputs.to(self.device, non_blocking=True), self.dataset_normalization,
                                         dtype=self.dtype, channels_last=self.channels_last)  # fmt: skip
                targets = targets.to(self.device, non_blocking=True)
            yield inputs, targets

    @property
    def dataset_normalization(self) -> Normalization:
        base = self.dataset.dataset if isinstance(self.dataset, Subset) else self.dataset
        return base.transform.normalization


def make_loader(dataset: Dataset, *, batch_size: int, shuffle: bool = False, sampler: Sampler | None = None,
                generator: torch.Generator | None = None, num_workers: int = 0, drop_last: bool = False,
                device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                channels_last: bool = False, prefetch_batches: int = 2):  # fmt: skip
    """A DataLoader for any dataset of :func:`load_split`; image datasets get an
    :class:`ImageLoader` (corrupt files skipped and counted, batched normalisation), or a
    :class:`sqz.data.gpu.GpuBatches` for a dataset loaded with ``decode="gpu"`` (which
    decodes ``prefetch_batches`` ahead). With a CUDA ``device`` the batches arrive there
    normalised, as ``dtype``, channels_last if asked."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset  # a rank's share of FolderImages
    if not isinstance(base, (FolderImages, ParquetImages)):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                          generator=generator, num_workers=num_workers, drop_last=drop_last)  # fmt: skip
    options: dict[str, Any] = {}
    if not isinstance(dataset, IterableDataset):
        options = {"shuffle": shuffle and sampler is None, "sampler": sampler, "generator": generator}
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if isinstance(base.transform, EncodedImages):
        from sqz.data.gpu import GpuBatches, collate_encoded

        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                            collate_fn=collate_encoded, **options)  # fmt: skip
        return GpuBatches(loader, base.transform.transform, device or "cpu", dtype=dtype, channels_last=channels_last,
                          prefetch=prefetch_batches)  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, drop_last=drop_last, pin_memory=on_gpu,
        collate_fn=_CollateImages(None if on_gpu else base.transform.normalization), **options,
    )  # fmt: skip
    return ImageLoader(loader, device=device if on_gpu else None, dtype=dtype, channels_last=channels_last)


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


def _transform(config: DataConfig, split: Split, decode: Decode) -> ImageTransform | EncodedImages:
    transform = ImageTransform(train=split == "train", image_size=config.image_size, normalization=config.normalization)
    if decode not in ("cpu", "gpu"):
        raise ValueError(f"--decode: must be cpu or gpu, got {decode!r}")
    return EncodedImages(transform) if decode == "gpu" else transform


def load_split(config: DataConfig, split: Split, *, rank: int = 0, world_size: int = 1, decode: Decode = "cpu") -> Dataset:
    """The ``split`` of the dataset ``config.url`` names; the same config gives the same
    split. ``rank``/``world_size`` shard a prepared dataset (other kinds use a sampler).
    ``decode="gpu"``: image items are bytes, decoded and cropped on the GPU by the loader
    (see :mod:`sqz.data.gpu`); built-in sets are tensors already and ignore it."""
    check_data_url(config.url, splits=(split,))
    if config.url in BUILTIN_DATASETS:
        return load_builtin(config, split)
    if _is_parquet(config.url):
        return ParquetImages(config.url, split, _transform(config, split, decode), shuffle=split == "train",
                             seed=config.seed, rank=rank, world_size=world_size)  # fmt: skip
    return FolderImages(scan_split(storage.local_path(config.url), split), _transform(config, split, decode))


def num_classes_of(config: DataConfig) -> int:
    if config.url in BUILTIN_DATASETS:
        return BUILTIN_CLASSES
    if _is_parquet(config.url):
        return len(read_manifest(config.url)["classes"])
    check_data_url(config.url, splits=())
    return len(dataset_classes(storage.local_path(config.url)))
