"""GPU decode (``--decode gpu``): the CPU reads bytes only; JPEGs are decoded in batches by
nvJPEG and cropped, flipped, resized and normalised on the GPU.

    DataLoader workers       EncodedImages: bytes + cheap checks (header, end marker)
      -> collate             a list of EncodedImage per batch, labels, skipped files
    GpuBatches (trainer)     batched decode_jpeg(list, device="cuda") on a side stream,
                             the transform's own crop on each image (float, on the GPU),
                             normalise -> dtype (bf16) -> channels_last; `prefetch` ahead

A file is skipped and counted exactly where the CPU path skips it: the worker refuses
what is empty, not an image, or a JPEG cut short (no end-of-image marker after its scan
data), with the CPU path's reasons; a JPEG that nvJPEG cannot decode is decoded on the
CPU instead, and skipped only if that fails too, so the CPU decoder is the one judge.
Images nvJPEG is not for (PNG and the like, CMYK JPEGs) are decoded on the CPU in the
worker and travel as uint8 pixels. The same code runs with ``device="cpu"``: the tests
check its logic there, and on CUDA with the ``gpu`` marker.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch

from sqz.data.transforms import CorruptImageError, ImageTransform, SkippedImage, decode_image_bytes, normalize_batch

__all__ = ["EncodedImage", "EncodedImages", "GpuBatches", "check_gpu_decode"]


def check_gpu_decode() -> None:
    """A one-line ValueError when ``--decode gpu`` cannot run here."""
    if not torch.cuda.is_available():
        raise ValueError("--decode gpu: CUDA is not available on this machine (use --decode cpu)")


@dataclass(frozen=True)
class EncodedImage:
    """One image on its way to the GPU: JPEG bytes (uint8 ``(n,)``), or pixels the worker
    decoded because nvJPEG is not for them (uint8 ``(3, H, W)``)."""

    data: torch.Tensor
    path: str = ""

    @property
    def is_jpeg(self) -> bool:
        return self.data.dim() == 1


@dataclass(frozen=True)
class EncodedImages:
    """The dataset-side transform of the GPU path: bytes in, :class:`EncodedImage` out;
    ``transform`` is applied later, on the GPU, by :class:`GpuBatches`."""

    transform: ImageTransform

    @property
    def normalization(self):
        return self.transform.normalization

    def __call__(self, data: bytes) -> EncodedImage:
        from PIL import Image

        if not data:
            raise CorruptImageError("empty file")
        try:
            header = Image.open(io.BytesIO(data)) if data[:2] == b"\xff\xd8" else None
        except (OSError, ValueError, SyntaxError):
            header = None  # the CPU decoder below names the problem
        if header is None or header.format != "JPEG" or header.mode not in ("RGB", "L"):
            return EncodedImage(decode_image_bytes(data))  # PNG, CMYK...: pixels, as the CPU path makes them
        scan_start = header.tile[0][2]  # where the (first) scan's entropy-coded data begins
        # Entropy-coded data never holds FF D9 (an FF there is stuffed as FF 00), so a
        # JPEG without an end-of-image marker after its scan was cut short: the CPU
        # decoders call that truncated, and so does this path.
        if data.find(b"\xff\xd9", scan_start) < 0:
            raise CorruptImageError("image file is truncated (no end-of-image marker)")
        return EncodedImage(torch.frombuffer(bytearray(data), dtype=torch.uint8))


def collate_encoded(items: list[tuple[Any, int]]) -> tuple[list[EncodedImage], torch.Tensor, list[SkippedImage]]:
    images = [x for x, _ in items if not isinstance(x, SkippedImage)]
    labels = [y for x, y in items if not isinstance(x, SkippedImage)]
    skipped = [x for x, _ in items if isinstance(x, SkippedImage)]
    return images, torch.tensor(labels, dtype=torch.int64), skipped


@functools.lru_cache(maxsize=1)
def _decode_jpegs():
    """Batched JPEG decode (nvJPEG on CUDA): TorchCodec's, else torchvision.io's."""
    try:
        from torchcodec.decoders import decode_jpeg

        return lambda data, device: decode_jpeg(data, mode="RGB", device=device)
    except ImportError:
        from torchvision.io import ImageReadMode, decode_jpeg

        return lambda data, device: decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def decode_on(device: torch.device, images: list[EncodedImage]) -> tuple[list[torch.Tensor | None], list[SkippedImage]]:
    """uint8 ``(3, H, W)`` images on ``device`` (None where an image did not decode) and the
    skipped ones. One batched call; if it fails, image by image with the CPU decoder as
    the judge of what is corrupt."""
    decoded: list[torch.Tensor | None] = [None] * len(images)
    jpegs = [i for i, image in enumerate(images) if image.is_jpeg]
    for i, image in enumerate(images):
        if not image.is_jpeg:
            decoded[i] = image.data.to(device, non_blocking=True)
    skipped = []
    try:
        for i, pixels in zip(jpegs, _decode_jpegs()([images[i].data for i in jpegs], device) if jpegs else []):
            decoded[i] = pixels
    except (RuntimeError, ValueError):  # one bad JPEG fails the whole batch: find it
        for i in jpegs:
            try:
                decoded[i] = _decode_jpegs()(images[i].data, device)
            except (RuntimeError, ValueError):
                try:  # nvJPEG's limits are not the CPU decoder's: it decides
                    decoded[i] = decode_image_bytes(images[i].data.numpy().tobytes()).to(device)
                except CorruptImageError as exc:
                    skipped.append(SkippedImage(images[i].path, str(exc)))
    return decoded, skipped


class GpuBatches:
    """``(inputs, targets)`` on ``device`` from a DataLoader of encoded batches; ``skipped``
    lists the last pass's casualties, as :class:`sqz.data.ImageLoader` does.

    Decoding and augmenting run on a side CUDA stream, ``prefetch`` batches ahead of the
    one the caller trains on; the caller's stream waits for each batch before using it."""

    def __init__(self, loader: Iterable, transform: ImageTransform, device: torch.device | str, *,
                 dtype: torch.dtype = torch.float32, channels_last: bool = False, prefetch: int = 2) -> None:  # fmt: skip
        if prefetch < 1:
            raise ValueError(f"prefetch: must be at least 1, got {prefetch}")
        self.loader, self.transform, self.device = loader, transform, torch.device(device)
        self.dtype, self.channels_last, self.prefetch = dtype, channels_last, prefetch
        self.skipped: list[SkippedImage] = []

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self):
        return self.loader.dataset

    def _batch(self, images: list[EncodedImage], labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, list]:
        decoded, skipped = decode_on(self.device, images)
        kept = [i for i, pixels in enumerate(decoded) if pixels is not None]
        if not kept:
            return None, labels[:0], skipped
        # The CPU path's own crop (RandomResizedCrop + flip, or resize + centre crop), on
        # float pixels: antialiased resizing on CUDA takes float, not uint8.
        crops = torch.stack([self.transform.crop(decoded[i].float()) for i in kept])  # (n, 3, S, S) in 0..255
        inputs = normalize_batch(crops, self.transform.normalization, dtype=self.dtype, channels_last=self.channels_last)
        return inputs, labels[kept].to(self.device, non_blocking=True), skipped

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = []
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        batches = iter(self.loader)
        ready: collections.deque = collections.deque()

        def queue_next() -> None:
            item = next(batches, None)
            if item is None:
                return
            images, labels, skipped = item
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                ready.append((*self._batch(images, labels), skipped))

        for _ in range(self.prefetch):
            queue_next()
        while ready:
            inputs, targets, failed, skipped = ready.popleft()
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
                for tensor in (inputs, targets):
                    if tensor is not None:
                        tensor.record_stream(torch.cuda.current_stream(self.device))  # freed only after its use
            queue_next()
            self.skipped.extend(skipped + failed)
            if inputs is not None:
                yield inputs, targets
