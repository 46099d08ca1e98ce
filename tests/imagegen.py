"""Generated JPEG folders in the ImageNet layout, for tests and bench/bench_input_pipeline.py.

Each class has its own colour and stripe orientation, with smooth random texture on top,
so the files are real JPEGs of ImageNet-like size and byte count (a 500x375 image at
quality 90 is roughly 50-100 kB) and a classifier can tell the classes apart.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

__all__ = ["synthetic_wnids", "write_image", "write_imagenet_folder"]


def synthetic_wnids(count: int) -> list[str]:
    """WordNet-style ids (``n00000000``...) that sort in numeric order."""
    return [f"n{i:08d}" for i in range(count)]


def _pixels(rng: np.random.Generator, label: int, width: int, height: int) -> np.ndarray:
    from PIL import Image

    hue = np.array([(label * 67) % 256, (label * 151 + 80) % 256, (label * 37 + 160) % 256], dtype=np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = np.pi * (label % 8) / 8
    stripes = 40 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (6 + label % 5))
    coarse = rng.normal(size=(height // 25 + 1, width // 25 + 1, 3)).astype(np.float32)
    texture = np.asarray(Image.fromarray(((coarse + 3) * 40).clip(0, 255).astype(np.uint8)).resize((width, height), Image.BICUBIC), dtype=np.float32)
    image = 0.5 * hue + 0.35 * texture + stripes[..., None] + rng.normal(scale=10, size=(height, width, 3))
    return image.clip(0, 255).astype(np.uint8)  # (H, W, 3) RGB


def write_image(path: str, rng: np.random.Generator, label: int, size: tuple[int, int] = (500, 375), quality: int = 90) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(_pixels(rng, label, *size)).save(path, "JPEG", quality=quality)


def write_imagenet_folder(
    root: str,
    *,
    classes: Sequence[str],
    per_class: dict[str, int] | int,
    splits: Sequence[str] = ("train", "val"),
    size: tuple[int, int] = (500, 375),
    seed: int = 0,
) -> list[str]:
    """Write ``<root>/<split>/<wnid>/<wnid>_<i>.JPEG``; returns the paths written."""
    rng = np.random.default_rng(seed)
    written = []
    for split in splits:
        for label, wnid in enumerate(classes):
            count = per_class if isinstance(per_class, int) else per_class[split]
            for i in range(count):
                path = os.path.join(root, split, wnid, f"{wnid}_{split}_{i}.JPEG")
                # Sizes vary a little around ``size``, as real photos do.
                jitter = rng.integers(-40, 41, size=2)
                write_image(path, rng, label, (int(size[0] + jitter[0]), int(size[1] + jitter[1])))
                written.append(path)
    return written
