"""Datasets: scikit-learn's digits, synthetic patterns, ImageNet-layout folders, and the
Parquet shards ``sqz data prepare`` makes of them (on local disk or S3).

``data_url`` names the source:

- ``digits``: the 1,797 8x8 handwritten digits that ship inside scikit-learn, upsampled to
  ``image_size`` and repeated to 3 channels (no download, so it works offline and in CI);
- ``synthetic``: class-conditional noise patterns generated from a seed;
- a folder in the ILSVRC2012 layout: ``train/<wnid>/*.JPEG`` and either
  ``val/<wnid>/*.JPEG`` or a flat ``val/*.JPEG`` with ground truth beside it (see
  :func:`flat_val_ground_truth` for the three accepted forms);
- a prepared dataset: a folder or ``s3://`` prefix holding ``dataset.json`` and
  ``<split>/part-*.parquet`` (JPEG bytes + label), read here without Ray, or streamed by
  Ray Data in :mod:`sqz.distributed.stream`.

The class index is the position of the wnid in the sorted wnids, as torchvision's
ImageFolder orders them, so labels line up with torchvision-trained weights.

Images are decoded (libjpeg-turbo via TorchCodec) and cropped one at a time to a
uint8 ``(3, S, S)`` tensor, in DataLoader workers or Ray Data tasks; normalisation runs
once per batch (:func:`normalize_batch`), so uint8, not float32, crosses processes.
A file that cannot be read or decoded is skipped and counted, never fatal: the
loaders here return :class:`ImageLoader`, whose ``skipped`` lists the pass's casualties.
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, Subset, TensorDataset

from sqz import storage
from sqz.config import DataConfig

__all__ = [
    "BUILTIN_DATASETS",
    "IMAGE_EXTENSIONS",
    "NORMALIZATIONS",
    "CAFFE_MEAN_BGR",
    "MANIFEST_NAME",
    "CorruptImageError",
    "SkippedImage",
    "ImageTransform",
    "SplitIndex",
    "FolderImages",
    "ParquetImages",
    "ImageLoader",
    "decode_image_bytes",
    "normalize_batch",
    "dataset_classes",
    "flat_val_ground_truth",
    "scan_split",
    "is_prepared",
    "read_manifest",
    "check_data_url",
    "load_split",
    "make_loader",
    "num_classes_of",
]

log = logging.getLogger(__name__)

BUILTIN_DATASETS = ("digits", "synthetic")
Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")
Normalization = Literal["torchvision", "caffe"]
NORMALIZATIONS: tuple[Normalization, ...] = ("torchvision", "caffe")

# The extensions torchvision's ImageFolder accepts; any other file is skipped and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Digits pixels are in [0, 1] after scaling: map them to roughly zero mean, unit range.
_DIGITS_MEAN, _DIGITS_STD = 0.5, 0.5
# torchvision's ImageNet normalisation (RGB, pixels scaled to [0, 1]).
_TORCHVISION_MEAN, _TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Caffe's convention, which the released SqueezeNet and Deep Compression models expect:
# BGR channel order, 0..255 pixels, these per-channel means subtracted, no std division.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)

MANIFEST_NAME = "dataset.json"  # written last by `sqz data prepare`: the dataset is complete
PLAN_NAME = "_prepare.json"  # written first: a prepare has started here
MANIFEST_FORMAT = "sqz.parquet-images"
MANIFEST_VERSION = 1


class CorruptImageError(ValueError):
    """The bytes of one image file cannot be decoded."""


@dataclass(frozen=True)
class SkippedImage:
    """Stands in for an image that could not be read or decoded; the collate drops it."""

    path: str
    reason: str


# ---------------------------------------------------------------- decode, crop, normalise


# Native decoders prefix their messages with "<function>, <source file>:<line>, ".
_NATIVE_PREFIX = re.compile(r"^\w+, \S+:\d+, ")


@functools.lru_cache(maxsize=1)
def _decoder():
    """TorchCodec's decode_image (libjpeg-turbo and friends; the successor of
    torchvision.io's decoders, deprecated in torchvision 0.29), else torchvision.io's."""
    try:
        from torchcodec.decoders import decode_image

        return lambda data: decode_image(data, mode="RGB")
    except ImportError:
        from torchvision.io import ImageReadMode, decode_image

        # bytearray: torch wants a writable buffer (the copy is ~100 kB).
        return lambda data: decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def decode_image_bytes(data: bytes) -> torch.Tensor:
    """JPEG/PNG/WebP/GIF bytes -> uint8 RGB ``(3, H, W)``; grey and CMYK are converted."""
    if not data:
        raise CorruptImageError("empty file")
    try:
        image = _decoder()(data)
    except (RuntimeError, ValueError) as exc:
        lines = str(exc).strip().splitlines() or ["cannot decode"]
        raise CorruptImageError(_NATIVE_PREFIX.sub("", lines[-1])) from None
    if image.dim() == 4:  # animated GIF/WebP: the first frame
        image = image[0]
    return image


@dataclass(frozen=True)
class ImageTransform:
    """Decode + crop one image to uint8 ``(3, S, S)``; normalisation is per batch.

    Training: RandomResizedCrop(S) (scale 0.08-1, torchvision's defaults) + horizontal
    flip, for both conventions. Evaluation, ``torchvision``: shorter side resized to
    S x 256/224, centre crop S (224 -> 256, torchvision's reference). Evaluation,
    ``caffe``: the image warped to a square of S x 256/227 (Caffe's ImageNet LMDBs were
    256 x 256 regardless of aspect), centre crop S (227 -> 256, the paper's setting).
    """

    train: bool
    image_size: int = 224
    normalization: Normalization = "torchvision"

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size: must be at least 8, got {self.image_size}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization: must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")

    @functools.cached_property
    def _crop(self):  # built once per process; cached_property is fine on frozen dataclasses
        from torchvision.transforms import v2

        size = self.image_size
        if self.train:
            return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        if self.normalization == "caffe":
            side = round(size * 256 / 227)
            return v2.Compose([v2.Resize((side, side), antialias=True), v2.CenterCrop(size)])
        return v2.Compose([v2.Resize(int(size * 256 / 224), antialias=True), v2.CenterCrop(size)])

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        return self._crop(image)  # (3, S, S) uint8

    def __call__(self, data: bytes) -> torch.Tensor:
        return self.crop(decode_image_bytes(data))


def normalize_batch(images: torch.Tensor, normalization: Normalization) -> torch.Tensor:
    """uint8 ``(N, 3, S, S)`` RGB -> float32 model input in the chosen convention."""
    # One conversion pass, then in-place ops: 3x faster than (x / 255 - mean) / std,
    # which allocates a float batch per step (0.9 ms per 224px image on one core).
    if normalization == "caffe":
        return images.flip(1).float().sub_(torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1))  # RGB -> BGR
    if normalization == "torchvision":
        mean, std = torch.tensor(_TORCHVISION_MEAN).view(1, 3, 1, 1), torch.tensor(_TORCHVISION_STD).view(1, 3, 1, 1)
        return images.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)
    raise ValueError(f"normalization: must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")


# ---------------------------------------------------------------- ImageNet folder layouts


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _visible(name: str) -> bool:
    # Hidden entries (.DS_Store, .ipynb_checkpoints) are neither classes nor samples:
    # a hidden folder counted as a class would shift every later label.
    return not name.startswith(".")


def _class_dirs(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and _visible(e.name))


def _walk_files(folder: str) -> list[str]:
    """Visible files under ``folder`` (recursively, as torchvision), relative, sorted."""
    found = []
    for parent, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found.extend(os.path.relpath(os.path.join(parent, f), folder) for f in files if _visible(f))
    return sorted(p.replace(os.sep, "/") for p in found)


@dataclass(frozen=True)
class GroundTruth:
    """Labels of a flat ``val/`` folder: file name -> wnid, and the wnids it knows."""

    source: str
    wnid_of: dict[str, str]
    classes: tuple[str, ...]


_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})\.", re.IGNORECASE)
DEVKIT_DIR = os.path.join("ILSVRC2012_devkit_t12", "data")


def _labels_txt(path: str) -> dict[str, str]:
    wnid_of = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != 2:
                raise ValueError(f"{path}:{number}: expected '<file name> <wnid>', got {line!r}")
            wnid_of[parts[0]] = parts[1]
    return wnid_of


def _loc_val_solution(path: str) -> dict[str, str]:
    wnid_of = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"ImageId", "PredictionString"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected the columns ImageId,PredictionString (Kaggle's LOC_val_solution.csv)")
        for row in reader:
            boxes = row["PredictionString"].split()
            if not boxes:
                raise ValueError(f"{path}: {row['ImageId']} has an empty PredictionString")
            wnid_of[row["ImageId"]] = boxes[0]  # "<wnid> x0 y0 x1 y1 <wnid> ...": one class per image
    return wnid_of


def _devkit(devkit_data: str, val_names: Sequence[str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """ILSVRC2012_validation_ground_truth.txt holds, per validation image in file-number
    order, a 1-based ILSVRC2012_ID; meta.mat maps those ids to wnids. The ids follow the
    devkit's own synset order, NOT the sorted wnids, so they cannot be used as labels."""
    from scipy.io import loadmat

    meta_path = os.path.join(devkit_data, "meta.mat")
    truth_path = os.path.join(devkit_data, "ILSVRC2012_validation_ground_truth.txt")
    for path in (meta_path, truth_path):
        if not os.path.isfile(path):
            raise ValueError(f"devkit: {path} is missing")
    try:
        synsets = loadmat(meta_path, squeeze_me=True)["synsets"]
        # Leaves (num_children == 0) are the 1000 classes; the rest are WordNet ancestors.
        wnid_by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise ValueError(f"devkit: {meta_path} is not the ILSVRC2012 meta.mat ({exc})") from None
    with open(truth_path) as f:
        ids = [int(line) for line in f if line.strip()]
    wnid_of = {}
    for name in val_names:
        match = _VAL_NUMBER.search(name)
        if not match:
            raise ValueError(f"devkit: val/{name} is not named ILSVRC2012_val_<8 digits>, so it has no ground-truth line")
        number = int(match.group(1))
        if not 1 <= number <= len(ids):
            raise ValueError(f"devkit: val/{name} is image {number}, but the ground truth has {len(ids)} lines")
        if ids[number - 1] not in wnid_by_id:
            raise ValueError(f"devkit: ILSVRC2012_ID {ids[number - 1]} of val/{name} is not a class in meta.mat")
        wnid_of[name] = wnid_by_id[ids[number - 1]]
    return wnid_of, tuple(sorted(wnid_by_id.values()))


def flat_val_ground_truth(root: str) -> GroundTruth:
    """Ground truth of a flat ``<root>/val/``, from the first of these found in ``root``:

    1. ``val_labels.txt``: one ``<file name> <wnid>`` per line (space or comma);
    2. ``LOC_val_solution.csv``: Kaggle's ``ImageId,PredictionString`` (first wnid wins);
    3. ``ILSVRC2012_devkit_t12/data/``: the official devkit's ``meta.mat`` and
       ``ILSVRC2012_validation_ground_truth.txt`` (image i -> line i -> ILSVRC id -> wnid).
    """
    val_dir = os.path.join(root, "val")
    names = [n for n in _walk_files(val_dir) if _is_image(n)]
    txt, loc = os.path.join(root, "val_labels.txt"), os.path.join(root, "LOC_val_solution.csv")
    if os.path.isfile(txt):
        source, wnid_of = txt, _labels_txt(txt)
        classes = tuple(sorted(set(wnid_of.values())))
    elif os.path.isfile(loc):
        # Kaggle's ImageId has no extension; key by the stem and look names up the same way.
        source, by_stem = loc, _loc_val_solution(loc)
        wnid_of = {n: by_stem[os.path.splitext(os.path.basename(n))[0]] for n in names
                   if os.path.splitext(os.path.basename(n))[0] in by_stem}  # fmt: skip
        classes = tuple(sorted(set(by_stem.values())))
    elif os.path.isdir(os.path.join(root, DEVKIT_DIR)):
        source = os.path.join(root, DEVKIT_DIR)
        wnid_of, classes = _devkit(source, names)
    else:
        raise ValueError(
            f"{val_dir} holds images directly but {root} has no ground truth for them: give val_labels.txt, "
            f"LOC_val_solution.csv or {DEVKIT_DIR}/ (meta.mat + ILSVRC2012_validation_ground_truth.txt)"
        )
    missing = [n for n in names if n not in wnid_of]
    if missing:
        raise ValueError(f"{source}: no label for {len(missing)} file(s) in val/, e.g. {missing[0]}")
    return GroundTruth(source=source, wnid_of=wnid_of, classes=classes)


def _split_is_flat(split_dir: str) -> bool:
    return not _class_dirs(split_dir)


def dataset_classes(root: str) -> tuple[str, ...]:
    """The dataset's wnids in label order: train/'s class folders, else val/'s, else the
    flat val/'s ground truth."""
    for split in SPLITS:
        split_dir = os.path.join(root, split)
        if os.path.isdir(split_dir) and not _split_is_flat(split_dir):
            return tuple(_class_dirs(split_dir))
    if os.path.isdir(os.path.join(root, "val")):
        return flat_val_ground_truth(root).classes
    raise ValueError(f"{root} has neither train/<wnid>/ nor val/ (expected the ImageNet layout)")


@dataclass(frozen=True)
class SplitIndex:
    """Every file of one split, in a fixed order: what both readers and prepare use."""

    split_dir: str
    classes: tuple[str, ...]
    files: tuple[str, ...]  # relative to split_dir, '/'-separated
    labels: tuple[int, ...]
    non_images: tuple[str, ...] = field(default=())  # skipped: not an image by extension

    def __len__(self) -> int:
        return len(self.files)


def scan_split(root: str, split: Split) -> SplitIndex:
    """List a split of an ImageNet-layout folder; a missing split or an empty class
    folder is a ValueError naming it."""
    if split not in SPLITS:
        raise ValueError(f"split: must be train or val, got {split!r}")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        raise ValueError(f"{root} has no {split}/ folder (expected the ImageNet layout)")
    classes = dataset_classes(root)
    index_of = {wnid: i for i, wnid in enumerate(classes)}
    files, labels, non_images = [], [], []
    if _split_is_flat(split_dir):
        if split == "train":
            raise ValueError(f"{split_dir} has no class folders (expected train/<wnid>/*.JPEG)")
        truth = flat_val_ground_truth(root)
        for name in _walk_files(split_dir):
            if not _is_image(name):
                non_images.append(name)
                continue
            wnid = truth.wnid_of[name]
            if wnid not in index_of:
                raise ValueError(f"{truth.source}: val/{name} is labelled {wnid}, which is not a class of train/")
            files.append(name)
            labels.append(index_of[wnid])
    else:
        for wnid in _class_dirs(split_dir):
            if wnid not in index_of:
                raise ValueError(f"{split}/{wnid}/ is not a class of train/ (a label would have no meaning)")
            names = _walk_files(os.path.join(split_dir, wnid))
            images = [n for n in names if _is_image(n)]
            if not images:
                raise ValueError(f"{split_dir}/{wnid}/ has no image files (an empty class folder)")
            files.extend(f"{wnid}/{n}" for n in images)
            labels.extend([index_of[wnid]] * len(images))
            non_images.extend(f"{wnid}/{n}" for n in names if not _is_image(n))
    if not files:
        raise ValueError(f"{split_dir} has no image files")
    return SplitIndex(split_dir, classes, tuple(files), tuple(labels), tuple(non_images))


class FolderImages(Dataset):
    """One split of an ImageNet-layout folder; items are ``(uint8 (3, S, S), label)``,
    or ``(SkippedImage, label)`` for a file that cannot be read or decoded."""

    def __init__(self, index: SplitIndex, transform: ImageTransform) -> None:
        self.index, self.transform = index, transform
        self.classes = list(index.classes)
        self.targets = list(index.labels)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | SkippedImage, int]:
        name, label = self.index.files[i], self.index.labels[i]
        try:
            with open(os.path.join(self.index.split_dir, name), "rb") as f:
                return self.transform(f.read()), label
        except (OSError, CorruptImageError) as exc:
            return SkippedImage(name, str(exc)), label


# ---------------------------------------------------------------- prepared Parquet shards


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


def _split_manifest(manifest: dict[str, Any], url: str, split: str) -> dict[str, Any]:
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
        entry = _split_manifest(manifest, url, split)
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
                    yield self.transform(images[i]), labels[i]
                except CorruptImageError as exc:
                    yield SkippedImage(paths[i], str(exc)), labels[i]


# ---------------------------------------------------------------- loaders


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


# ---------------------------------------------------------------- builtin datasets


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
    images = (images - _DIGITS_MEAN) / _DIGITS_STD
    return images, torch.from_numpy(digits.target.astype(np.int64))


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


# ---------------------------------------------------------------- entry points


def _local_root(url: str) -> str:
    return url.removeprefix("file://")


def check_data_url(url: str, splits: Sequence[str] = SPLITS, *, option: str = "--data") -> None:
    """Raise a one-line ValueError before any work if ``url`` cannot be a dataset with
    ``splits``: unknown scheme, missing folder or split, empty class folder, missing
    ground truth, or an s3:// prefix that is not a prepared dataset."""
    if url in BUILTIN_DATASETS:
        return
    storage.check_url(url, option=option)  # the scheme decides: local, file:// or s3://
    try:
        if not storage.is_local(url) or is_prepared(url):
            manifest = read_manifest(url)
            for split in splits:
                _split_manifest(manifest, url, split)
            return
        root = _local_root(url)
        if not os.path.isdir(root):
            raise ValueError(f"no such dataset folder: {root}")
        if os.path.exists(os.path.join(root, PLAN_NAME)):
            read_manifest(url)  # an unfinished prepare: says so, and how to resume
        for split in splits:
            split_dir = os.path.join(root, split)
            if not os.path.isdir(split_dir):
                raise ValueError(f"{root} has no {split}/ folder (expected the ImageNet layout)")
            if _split_is_flat(split_dir):
                if split == "train":
                    raise ValueError(f"{split_dir} has no class folders (expected train/<wnid>/*.JPEG)")
                flat_val_ground_truth(root)
                continue
            for wnid in _class_dirs(split_dir):
                # Cheap: stops at the first image file of each class folder.
                with os.scandir(os.path.join(split_dir, wnid)) as entries:
                    if not any(_is_image(e.name) or e.is_dir() for e in entries if _visible(e.name)):
                        raise ValueError(f"{split_dir}/{wnid}/ has no image files (an empty class folder)")
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
        if config.url == "digits":
            images, labels = _digits_tensors(config.image_size)
        else:
            images, labels = _synthetic_tensors(config.image_size, config.seed)
        train_idx, val_idx = _stratified_split(labels.numpy(), config.val_fraction, config.seed)
        idx = torch.from_numpy(train_idx if split == "train" else val_idx)
        if split == "train" and config.shift_augment:
            return ShiftedTensors(images[idx], labels[idx], config.shift_augment)
        return TensorDataset(images[idx], labels[idx])
    if not storage.is_local(config.url) or is_prepared(config.url):
        return ParquetImages(config.url, split, _transform(config, split), shuffle=split == "train",
                             seed=config.seed, rank=rank, world_size=world_size)  # fmt: skip
    return FolderImages(scan_split(_local_root(config.url), split), _transform(config, split))


def num_classes_of(config: DataConfig) -> int:
    if config.url in BUILTIN_DATASETS:
        return 10
    if not storage.is_local(config.url) or is_prepared(config.url):
        return len(read_manifest(config.url)["classes"])
    check_data_url(config.url, splits=())
    return len(dataset_classes(_local_root(config.url)))
