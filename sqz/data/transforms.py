"""Decode, crop and normalise: image bytes -> uint8 ``(3, S, S)`` crops -> model input.

Images are decoded and cropped one at a time to a uint8 ``(3, S, S)`` tensor, in
DataLoader workers or Ray Data tasks; normalisation runs once per batch
(:func:`normalize_batch`), so uint8, not float32, crosses processes.

Decoding only what the crop needs. The crop is chosen on the image's size, which PIL
reads from the header without decoding; a JPEG whose crop region still has at least the
output size at 1/2, 1/4 or 1/8 scale is decoded at that scale by libjpeg-turbo in the
DCT domain (PIL's ``Image.draft``; neither TorchCodec nor torchvision.io decodes at a
reduced scale). Everything else is decoded at full size by TorchCodec, which
``bench/bench_input_pipeline.py`` measured faster than PIL at full size. The two paths
agree within the tolerance ``tests/test_imagenet_data.py`` states.
"""

from __future__ import annotations

import functools
import io
import math
import re
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "NORMALIZATIONS",
    "CAFFE_MEAN_BGR",
    "DCT_SCALES",
    "Normalization",
    "CorruptImageError",
    "SkippedImage",
    "ImageTransform",
    "decode_image_bytes",
    "decode_resized_crop",
    "normalize_batch",
]

Normalization = Literal["torchvision", "caffe"]
NORMALIZATIONS: tuple[Normalization, ...] = ("torchvision", "caffe")

# torchvision's ImageNet normalisation (RGB, pixels scaled to [0, 1]).
_TORCHVISION_MEAN, _TORCHVISION_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Caffe's convention, which the released SqueezeNet and Deep Compression models expect:
# BGR channel order, 0..255 pixels, these per-channel means subtracted, no std division.
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)
# The reductions libjpeg-turbo's DCT-domain scaling offers through PIL, largest first.
DCT_SCALES = (8, 4, 2, 1)
# torchvision's RandomResizedCrop defaults: area share and aspect ratio of the crop.
_CROP_SCALE, _CROP_RATIO = (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)


class CorruptImageError(ValueError):
    """The bytes of one image file cannot be decoded."""


@dataclass(frozen=True)
class SkippedImage:
    """Stands in for an image that could not be read or decoded; the collate drops it."""

    path: str
    reason: str


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


def _jpeg_header(data: bytes):
    """The PIL image of a JPEG's header (nothing decoded yet), or None for anything else."""
    from PIL import Image

    if data[:2] != b"\xff\xd8":
        return None
    try:
        header = Image.open(io.BytesIO(data))
    except (OSError, ValueError, SyntaxError):  # the full decoder names the problem
        return None
    return header if header.format == "JPEG" else None


def _dct_scale(largest: float) -> int:
    """The largest DCT reduction that is at most ``largest``."""
    return next(s for s in DCT_SCALES if s <= largest) if largest >= 1 else 1


def _decode_reduced(header, scale: int):
    """A JPEG decoded at 1/``scale`` in the DCT domain -> an RGB PIL image."""
    width, height = header.size
    header.draft("RGB", (width // scale, height // scale))  # PIL picks exactly 1/scale for this request
    try:
        header.load()
        return header.convert("RGB") if header.mode != "RGB" else header
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged entropy data
        raise CorruptImageError(str(exc) or type(exc).__name__) from None


def _to_tensor(image) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.array(image)).permute(2, 0, 1)  # (h, w, 3) copy -> (3, h, w) view


def decode_resized_crop(data: bytes, box: tuple[int, int, int, int], size: int, *, header=None) -> torch.Tensor:
    """The ``(top, left, height, width)`` box of the image, resized to uint8 ``(3, size,
    size)`` (bilinear, antialiased, as torchvision's RandomResizedCrop), decoding only as
    many pixels as the box needs: a JPEG at the smallest DCT scale at which the box still
    has ``size`` pixels each way."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as F

    top, left, height, width = box
    header = header if header is not None else _jpeg_header(data)
    scale = _dct_scale(min(height, width) / size) if header is not None else 1
    if scale == 1:
        return F.resized_crop(decode_image_bytes(data), top, left, height, width, [size, size], antialias=True)
    # The reduced pixel x covers original pixels [scale x, scale x + scale): PIL's resize
    # takes the box in those coordinates as floats, so no rounding shifts the crop.
    reduced_box = (left / scale, top / scale, (left + width) / scale, (top + height) / scale)
    return _to_tensor(_decode_reduced(header, scale).resize((size, size), Image.BILINEAR, box=reduced_box))


@dataclass(frozen=True)
class ImageTransform:
    """Decode + crop one image to uint8 ``(3, S, S)``; normalisation is per batch.

    Training: RandomResizedCrop(S) (scale 0.08-1, torchvision's defaults) + horizontal
    flip, for both conventions. Evaluation, ``torchvision``: shorter side resized to
    S x 256/224, centre crop S (224 -> 256, torchvision's reference). Evaluation,
    ``caffe``: the image warped to a square of S x 256/227 (Caffe's ImageNet LMDBs were
    256 x 256 regardless of aspect), centre crop S (227 -> 256, the paper's setting).

    ``reduced_decode`` decodes a JPEG at 1/2, 1/4 or 1/8 scale where the crop (training)
    or the resize (evaluation) still gets at least its output size from it; off, every
    image is decoded at full size (the reference path).
    """

    train: bool
    image_size: int = 224
    normalization: Normalization = "torchvision"
    reduced_decode: bool = True

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size: must be at least 8, got {self.image_size}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization: must be one of {', '.join(NORMALIZATIONS)}, got {self.normalization!r}")

    @property
    def _resize_to(self) -> tuple[int, ...]:
        """Evaluation: the Resize target, (shorter side,) or (height, width)."""
        if self.normalization == "caffe":
            side = round(self.image_size * 256 / 227)
            return side, side
        return (int(self.image_size * 256 / 224),)

    @functools.cached_property
    def _crop(self):  # built once per process; cached_property is fine on frozen dataclasses
        from torchvision.transforms import v2

        size = self.image_size
        if self.train:
            return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        return v2.Compose([v2.Resize(self._resize_to, antialias=True), v2.CenterCrop(size)])

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        """The full-size reference: a decoded uint8 ``(3, H, W)`` image -> ``(3, S, S)``."""
        return self._crop(image)  # (3, S, S) uint8

    def __call__(self, data: bytes) -> torch.Tensor:
        header = _jpeg_header(data) if self.reduced_decode else None
        if self.train:
            # torchvision's RandomResizedCrop + RandomHorizontalFlip as two plain calls (the
            # same random draws; v2's Compose cost ~0.3 ms more per image in the bench).
            from torchvision.transforms import RandomResizedCrop
            from torchvision.transforms.v2 import functional as F

            if header is None:
                image = decode_image_bytes(data)
                top, left, height, width = RandomResizedCrop.get_params(image, list(_CROP_SCALE), list(_CROP_RATIO))
                crop = F.resized_crop(image, top, left, height, width, [self.image_size] * 2, antialias=True)
            else:
                # The header's size is all get_params reads: the crop is chosen before decoding.
                box = RandomResizedCrop.get_params(header, list(_CROP_SCALE), list(_CROP_RATIO))
                crop = decode_resized_crop(data, box, self.image_size, header=header)
            return crop.flip(-1) if torch.rand(1).item() < 0.5 else crop
        if header is None:
            return self.crop(decode_image_bytes(data))
        width, height = header.size
        target = self._resize_to
        # Resize keeps the aspect (one target: the shorter side) or warps to (h, w).
        largest = min(width, height) / target[0] if len(target) == 1 else min(height / target[0], width / target[1])
        scale = _dct_scale(largest)
        return self._crop(decode_image_bytes(data) if scale == 1 else _to_tensor(_decode_reduced(header, scale)))


def normalize_batch(images: torch.Tensor, normalization: Normalization, *, dtype: torch.dtype = torch.float32,
                    channels_last: bool = False) -> torch.Tensor:  # fmt: skip
    """uint8 ``(N, 3, S, S)`` RGB -> model input in the chosen convention, on the device the
    batch is on (a GPU takes uint8 from the host: a quarter of float32's bytes), as
    ``dtype`` (e.g. bfloat16 for a bf16 run) and optionally channels_last."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization: must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if normalization == "caffe":
        images = images.flip(1)  # RGB -> BGR
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # One conversion pass, then in-place ops: 3x faster than (x / 255 - mean) / std,
    # which allocates a float batch per step (0.9 ms per 224px image on one core).
    out = images.to(torch.float32, memory_format=memory_format)
    if normalization == "caffe":
        out.sub_(torch.tensor(CAFFE_MEAN_BGR, device=out.device).view(1, 3, 1, 1))
    else:
        mean = torch.tensor(_TORCHVISION_MEAN, device=out.device).view(1, 3, 1, 1)
        std = torch.tensor(_TORCHVISION_STD, device=out.device).view(1, 3, 1, 1)
        out.mul_(1.0 / (255.0 * std)).sub_(mean / std)
    return out if dtype == torch.float32 else out.to(dtype)
