"""ImageNet-layout folders: ``train/<wnid>/*.JPEG`` and either ``val/<wnid>/*.JPEG`` or a
flat ``val/*.JPEG`` with ground truth beside it (see :func:`flat_val_ground_truth` for
the three accepted forms).

The class index is the position of the wnid in the sorted wnids, as torchvision's
ImageFolder orders them, so labels line up with torchvision-trained weights.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch.utils.data import Dataset

from sqz.data.gpu import EncodedImage
from sqz.data.transforms import CorruptImageError, ImageTransform, SkippedImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Split",
    "GroundTruth",
    "SplitIndex",
    "FolderImages",
    "check_folder",
    "dataset_classes",
    "flat_val_ground_truth",
    "scan_split",
]

Split = Literal["train", "val"]
SPLITS: tuple[Split, ...] = ("train", "val")

# The extensions torchvision's ImageFolder accepts; any other file is skipped and counted.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


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
                return _with_path(self.transform(f.read()), name), label
        except (OSError, CorruptImageError) as exc:
            return SkippedImage(name, str(exc)), label


def check_folder(root: str, splits: Sequence[str] = SPLITS) -> None:
    """ValueError if ``root`` is not an ImageNet-layout folder with ``splits``: missing
    folder or split, a train/ without class folders, an empty class folder, or a flat
    val/ without ground truth. Cheap: it stops at the first image of each class."""
    if not os.path.isdir(root):
        raise ValueError(f"no such dataset folder: {root}")
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
            with os.scandir(os.path.join(split_dir, wnid)) as entries:
                if not any(_is_image(e.name) or e.is_dir() for e in entries if _visible(e.name)):
                    raise ValueError(f"{split_dir}/{wnid}/ has no image files (an empty class folder)")


def _with_path(item: Any, path: str) -> Any:
    """GPU-path items carry their file's path, so a failure on the GPU names the file."""
    return dataclasses.replace(item, path=path) if isinstance(item, EncodedImage) else item
