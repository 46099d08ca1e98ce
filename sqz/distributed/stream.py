"""Ray Data input: prepared Parquet shards (a folder or S3) -> decoded, cropped batches
per Ray Train worker, so a cluster never needs the images on local disk.

    ray.data.read_parquet(shards)                  # files dealt to read tasks (shuffled per epoch)
      .map_batches(DecodeCrop, num_gpus=0)         # parallel CPU tasks, on any node (CPU-only ones
                                                   # too): JPEG -> uint8 (3, S, S), reduced decode
    TorchTrainer(datasets={"train": ...})          # Ray Train splits it: one stream per worker
    ray.train.get_dataset_shard("train")           # inside the worker
      .iter_torch_batches(collate_fn=Normalize)    # background threads: uint8 -> float input

uint8 crops, not float tensors, travel through the object store (4x fewer bytes);
normalisation runs in the iterator's prefetch threads, apart from the training step, so
the engine's ``data_wait_s`` measures only what the step really waits for. A row that
does not decode comes through with ``ok = False`` and is dropped and counted at the end.
"""

from __future__ import annotations

import posixpath
from typing import Any, Iterator

import numpy as np
import ray
import ray.data
import ray.train
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from sqz import storage
from sqz.config import DataConfig
from sqz.data import CorruptImageError, ImageTransform, Normalization, is_prepared, normalize_batch, read_manifest

__all__ = ["DecodeCrop", "StreamedBatches", "image_dataset", "is_streamed", "trainer_datasets", "worker_shard"]

# Rows per decode task call: large enough to amortise the call, small enough to keep a
# 16-worker pipeline busy on a handful of shards.
_DECODE_BATCH = 32
_BLOCK_BYTES = 32 * 1024 * 1024


def is_streamed(data_cfg: DataConfig) -> bool:
    """Prepared Parquet datasets (local or S3) go through Ray Data in distributed training."""
    return data_cfg.url not in ("digits", "synthetic") and (not storage.is_local(data_cfg.url) or is_prepared(data_cfg.url))


class DecodeCrop:
    """map_batches function: ``{"image": bytes, "label"}`` -> uint8 ``(N, 3, S, S)`` crops
    and an ``ok`` flag per row."""

    def __init__(self, transform: ImageTransform) -> None:
        self.transform = transform

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = self.transform.image_size
        images = np.zeros((len(batch["label"]), 3, size, size), dtype=np.uint8)
        ok = np.ones(len(batch["label"]), dtype=bool)
        for i, data in enumerate(batch["image"]):
            try:
                images[i] = self.transform(bytes(data)).numpy()
            except CorruptImageError:
                ok[i] = False  # kept as a row so the consumer can count it
        # Other columns (e.g. "path", when read) pass through unchanged.
        return {**batch, "image": images, "label": batch["label"].astype(np.int64), "ok": ok}


def image_dataset(data_cfg: DataConfig, split: str) -> ray.data.Dataset:
    """The split's decoded, cropped rows as a (lazy) Ray Dataset."""
    manifest = read_manifest(data_cfg.url)
    if split not in manifest["splits"]:
        raise ValueError(f"{data_cfg.url} has no {split} split")
    fs, base = storage.resolve(data_cfg.url)
    paths = [posixpath.join(base, shard["path"]) for shard in manifest["splits"][split]["shards"] if shard["rows"]]
    train = split == "train"
    dataset = ray.data.read_parquet(paths, filesystem=fs, shuffle="files" if train else None)
    dataset = dataset.select_columns(["image", "label"])  # pushed down into the Parquet read
    # Blocks of 32 MiB instead of Ray's 128: decoding starts (and the first batch arrives)
    # after ~300 JPEGs rather than ~1,100, and in-flight crops take a quarter of the memory.
    dataset.context.target_max_block_size = _BLOCK_BYTES
    transform = ImageTransform(train=train, image_size=data_cfg.image_size, normalization=data_cfg.normalization)
    # One CPU and no GPU per decode task: Ray places them on any node with a free CPU,
    # CPU-only nodes included, and streams the crops to the GPU Train workers.
    return dataset.map_batches(DecodeCrop(transform), batch_size=_DECODE_BATCH, batch_format="numpy",
                               num_cpus=1, num_gpus=0)  # fmt: skip


class _Normalize(NumpyBatchCollateFn):
    def __init__(self, normalization: Normalization) -> None:
        super().__init__()
        self.normalization = normalization

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ok = np.asarray(batch["ok"], dtype=bool)
        # Boolean indexing copies, so torch gets writable arrays (Ray's are read-only views).
        images = torch.from_numpy(np.asarray(batch["image"])[ok])  # (n_ok, 3, S, S) uint8
        labels = torch.from_numpy(np.asarray(batch["label"], dtype=np.int64)[ok])
        return normalize_batch(images, self.normalization), labels, torch.tensor(int((~ok).sum()))


class StreamedBatches:
    """``(inputs, targets)`` batches from a Ray DataIterator or Dataset, for the engine's
    loops; ``skipped`` counts the rows of the last pass that did not decode."""

    def __init__(self, source: Any, *, batch_size: int, normalization: Normalization,
                 shuffle_buffer: int | None = None, prefetch_batches: int = 2) -> None:  # fmt: skip
        self.source, self.batch_size, self.normalization = source, batch_size, normalization
        # A small local shuffle on top of shuffled files and shards that already mix classes.
        self.shuffle_buffer = max(shuffle_buffer, batch_size) if shuffle_buffer else None
        self.prefetch_batches = prefetch_batches
        self.skipped = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = 0
        batches = self.source.iter_torch_batches(
            batch_size=self.batch_size, collate_fn=_Normalize(self.normalization),
            local_shuffle_buffer_size=self.shuffle_buffer, prefetch_batches=self.prefetch_batches,
        )  # fmt: skip
        for inputs, targets, skipped in batches:
            self.skipped += int(skipped)
            if len(targets):
                yield inputs, targets


def trainer_datasets(data_cfg: DataConfig) -> tuple[dict[str, ray.data.Dataset] | None, ray.train.DataConfig | None]:
    """``datasets`` and ``dataset_config`` for a TorchTrainer: the train split is split
    across workers by Ray Train; validation is read per rank without Ray Data (an exact,
    unpadded share each, see sqz.data.ParquetImages). (None, None) for other datasets."""
    if not is_streamed(data_cfg):
        return None, None
    train = image_dataset(data_cfg, "train")
    train.context.enable_progress_bars = False  # redrawn bars from the split coordinator swamp the epoch log
    return {"train": train}, ray.train.DataConfig(datasets_to_split=["train"])


def worker_shard(data_cfg: DataConfig, *, batch_size: int, name: str = "train") -> StreamedBatches:
    """Inside a Ray Train worker: this worker's stream of the dataset passed as ``name``."""
    shard = ray.train.get_dataset_shard(name)
    if shard is None:
        raise RuntimeError(f"no dataset {name!r} was passed to the trainer")
    return StreamedBatches(shard, batch_size=batch_size, normalization=data_cfg.normalization,
                           shuffle_buffer=4 * batch_size)  # fmt: skip
