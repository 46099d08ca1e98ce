"""Prepared datasets: a folder or ``s3://`` prefix holding ``dataset.json`` and
``<split>/part-*.parquet`` shards (JPEG bytes + label), as ``sqz data prepare``
(:mod:`sqz.data.prepare`) writes them. Read here with pyarrow, without Ray; Ray Data
streams the same shards in :mod:`sqz.distributed.stream`.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import Any, Iterator

import torch
from torch.utils.data import IterableDataset

from sqz import storage
from sqz.data.imagenet import Split
from sqz.data.gpu import EncodedImage
from sqz.data.transforms import CorruptImageError, ImageTransform, SkippedImage

__all__ = [
    "MANIFEST_NAME",
    "PLAN_NAME",
    "MANIFEST_FORMAT",
    "MANIFEST_VERSION",
    "ParquetImages",
    "is_prepared",
    "read_manifest",
    "split_manifest",
]

MANIFEST_NAME = "dataset.json"  # written last by `sqz data prepare`: the dataset is complete
PLAN_NAME = "_prepare.json"  # written first: a prepare has started here
MANIFEST_FORMAT = "sqz.parquet-images"
MANIFEST_VERSION = 1


def is_prepared(url: str) -> bool:
    """Whether ``url`` holds a complete prepared dataset (dataset.json is written last)."""
    return storage.exists(storage.join(url, MANIFEST_NAME))


def read_manifest(url: str) -> dict[str, Any]:
    """dataset.json of a prepared dataset, checked enough that readers can trust it."""
    manifest_url = storage.join(url, MANIFEST_NAME)
    try:
        manifest = json.loads(storage.read_bytes(manifest_url))
    except FileNotFoundError:
        raise ValueError(f"{url} is not a prepared dataset (no {MANIFEST_NAME}; run `sqz data prepare`, "
                         "or rerun it if it was interrupted)") from None  # fmt: skip
    except json.JSONDecodeError as exc:
        raise ValueError(f"{manifest_url}: not JSON ({exc})") from None
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"{manifest_url}: not a {MANIFEST_FORMAT} v{MANIFEST_VERSION} manifest")
    return manifest


def split_manifest(manifest: dict[str, Any], url: str, split: str) -> dict[str, Any]:
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(f"{url} has no {split} split (it has: {', '.join(sorted(splits)) or 'none'})")
    return splits[split]


class ParquetImages(IterableDataset):
    """One split of a prepared dataset, read with pyarrow (no Ray): row groups are the unit
    of work, dealt to ranks (``rank``/``world_size``) and then to DataLoader workers. With
    ``shuffle``, the row groups and the rows inside each are permuted per epoch."""

    def __init__(self, url: str, split: Split, transform: ImageTransform, *, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        manifest = read_manifest(url)
        entry = split_manifest(manifest, url, split)
        self.url, self.split, self.transform = url, split, transform
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.classes = list(manifest["classes"])
        group = int(manifest["row_group_rows"])
        # (shard url, row group, rows): all known from the manifest, no footer reads.
        self.units = [
            (storage.join(url, shard["path"]), g, min(group, shard["rows"] - g * group))
            for shard in entry["shards"]
            for g in range(-(-shard["rows"] // group))
        ]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_units(self) -> list[tuple[str, int, int]]:
        units = list(self.units)
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(units)  # same order on every rank
        return units[self.rank :: self.world_size]

    def __len__(self) -> int:
        return sum(rows for _, _, rows in self._my_units())

    def __iter__(self) -> Iterator[tuple[torch.Tensor | SkippedImage, int]]:
        import pyarrow.parquet as pq

        units = self._my_units()
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            units = units[worker.id :: worker.num_workers]
        rng = random.Random(self.seed * 7_919 + self.epoch * 104_729 + self.rank)
        for shard_url, group, _ in units:
            fs, path = storage.resolve(shard_url)
            with fs.open_input_file(path) as f:
                table = pq.ParquetFile(f).read_row_group(group, columns=["image", "label", "path"])
            images, labels, paths = (table.column(c).to_pylist() for c in ("image", "label", "path"))
            order = list(range(len(labels)))
            if self.shuffle:
                rng.shuffle(order)
            for i in order:
                try:
                    yield _with_path(self.transform(images[i]), paths[i]), labels[i]
                except CorruptImageError as exc:
                    yield SkippedImage(paths[i], str(exc)), labels[i]


def _with_path(item: Any, path: str) -> Any:
    """GPU-path items carry their file's path, so a failure on the GPU names the file."""
    return dataclasses.replace(item, path=path) if isinstance(item, EncodedImage) else item
