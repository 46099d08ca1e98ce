"""``sqz data prepare SRC DEST_URL``: an ImageNet-layout folder -> Parquet shards.

Each split becomes ``<DEST>/<split>/part-NNNNN-of-MMMMM.parquet`` files of a few hundred
MB (columns ``image``: the file's bytes as stored, ``label``: int32 class index,
``path``: the file's path inside the split), written through :mod:`sqz.storage`, so DEST
may be a folder or an ``s3://`` prefix. Readers (:class:`sqz.data.parquet.ParquetImages`, Ray Data
in :mod:`sqz.distributed.stream`) need nothing but DEST: no local copy of the images.

Resumable and idempotent. The shard plan (which file goes to which shard) is a pure
function of the source listing and the options; its digest goes to ``_prepare.json``
first. Every shard is written whole or not at all (storage.write_bytes), so a rerun
skips the shards already there and writes the rest; ``dataset.json``, written last, marks
the dataset complete. A rerun against a DEST holding a different plan is an error, not a
silent mix of two datasets.

With ``max_side`` N, an image whose longer side exceeds N is shrunk to fit N x N (aspect
kept) and re-encoded as a JPEG of quality ``jpeg_quality``: fewer bytes to store, read and
decode per image (FFCV's max-resolution idea). Smaller images are stored as they are.
The manifest records N and the quality (``max_side``/``jpeg_quality``, null for shards
of the original files).

Every image is decoded once here with the readers' own decoder; a file that does not
decode is left out and listed (in the shard's Parquet metadata and in dataset.json), as
are files that are not images at all. Train shards hold a seeded permutation of the
files, so a shard mixes all classes and a streaming reader needs only a small shuffle
buffer; val shards keep the sorted order.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sqz import storage
from sqz.data.imagenet import SPLITS, SplitIndex, scan_split
from sqz.data.parquet import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION, PLAN_NAME, read_manifest
from sqz.data.transforms import CorruptImageError, decode_image_bytes

_log = logging.getLogger("sqz.data")

__all__ = ["SHARD_SCHEMA", "DEFAULT_JPEG_QUALITY", "ShardPlan", "plan_shards", "prepare", "check_prepare_inputs",
           "shrink_image_bytes"]

SHARD_SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int32()), ("path", pa.string())])
_CORRUPT_KEY = b"sqz.skipped_corrupt"
# FFCV's ImageNet datasets are written at JPEG quality 90 (ffcv-imagenet's README).
DEFAULT_JPEG_QUALITY = 90


@dataclass(frozen=True)
class ShardPlan:
    split: str
    number: int
    count: int
    members: tuple[int, ...]  # indices into the split's SplitIndex

    @property
    def path(self) -> str:  # relative to DEST
        return f"{self.split}/part-{self.number:05d}-of-{self.count:05d}.parquet"


def plan_shards(index: SplitIndex, split: str, *, shard_bytes: int, seed: int) -> tuple[list[ShardPlan], list[int]]:
    """Cut the split into shards of about ``shard_bytes`` of source files each (train in a
    seeded permutation, val in sorted order). Returns the shards and the file sizes."""
    sizes = [os.stat(os.path.join(index.split_dir, name)).st_size for name in index.files]
    order = np.random.default_rng(seed).permutation(len(sizes)) if split == "train" else np.arange(len(sizes))
    groups: list[list[int]] = [[]]
    filled = 0
    for i in order.tolist():
        if groups[-1] and filled + sizes[i] > shard_bytes:
            groups.append([])
            filled = 0
        groups[-1].append(i)
        filled += sizes[i]
    return [ShardPlan(split, n, len(groups), tuple(g)) for n, g in enumerate(groups)], sizes


def _plan_digest(classes: Sequence[str], plans: dict[str, list[ShardPlan]], indexes: dict[str, SplitIndex],
                 sizes: dict[str, list[int]], row_group_rows: int, reencode: list[int] | None) -> str:  # fmt: skip
    # Re-encoding joins the digest only when asked for, so that shards of the original
    # files prepared before it existed keep their digest and still resume.
    head = [MANIFEST_FORMAT, MANIFEST_VERSION, list(classes), row_group_rows] + ([reencode] if reencode else [])
    digest = hashlib.sha256(json.dumps(head).encode())
    for split, shards in plans.items():
        index = indexes[split]
        for shard in shards:
            digest.update(f"\n{shard.path}".encode())
            for i in shard.members:
                digest.update(f"\n{index.files[i]}\t{sizes[split][i]}\t{index.labels[i]}".encode())
    return digest.hexdigest()


def shrink_image_bytes(data: bytes, max_side: int, jpeg_quality: int) -> bytes | None:
    """The image re-encoded as a JPEG of ``jpeg_quality`` that fits ``max_side`` x
    ``max_side`` (aspect kept), or None if it already fits (or is not an image PIL knows:
    the readers' decoder judges those). CorruptImageError if it does not decode."""
    from PIL import Image

    try:
        image = Image.open(io.BytesIO(data))
    except (OSError, ValueError, SyntaxError):
        return None
    if max(image.size) <= max_side:
        return None
    try:
        # thumbnail() lets libjpeg-turbo decode a large JPEG at a reduced DCT scale (down
        # to twice the target, reducing_gap) before resampling: cheap and still sharp.
        image.thumbnail((max_side, max_side), Image.Resampling.BICUBIC)
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")  # CMYK, palette, alpha: what the readers make of them
        out = io.BytesIO()
        image.save(out, "JPEG", quality=jpeg_quality)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or damaged data
        raise CorruptImageError(str(exc) or type(exc).__name__) from None
    return out.getvalue()


def _read_checked(path: str, max_side: int | None, jpeg_quality: int) -> tuple[bytes | None, str]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        if max_side is not None:
            data = shrink_image_bytes(data, max_side, jpeg_quality) or data
        decode_image_bytes(data)  # the readers' decoder: what passes here, they can read
        return data, ""
    except (OSError, CorruptImageError) as exc:
        return None, str(exc) or type(exc).__name__


def _shard_bytes(index: SplitIndex, shard: ShardPlan, pool: ThreadPoolExecutor, row_group_rows: int, on_image,
                 max_side: int | None, jpeg_quality: int) -> tuple[bytes, int, list[dict[str, str]]]:  # fmt: skip
    images, labels, paths, corrupt = [], [], [], []
    names = [index.files[i] for i in shard.members]
    read = functools.partial(_read_checked, max_side=max_side, jpeg_quality=jpeg_quality)
    for i, name, (data, reason) in zip(shard.members, names,
                                      pool.map(read, [os.path.join(index.split_dir, n) for n in names])):  # fmt: skip
        if data is None:
            corrupt.append({"path": name, "reason": reason})
        else:
            images.append(data)
            labels.append(index.labels[i])
            paths.append(name)
        on_image()
    schema = SHARD_SCHEMA.with_metadata({_CORRUPT_KEY: json.dumps(corrupt).encode()})
    table = pa.table({"image": images, "label": labels, "path": paths}, schema=schema)
    buffer = io.BytesIO()
    # JPEG bytes do not compress: store them as they are, compress only the small columns.
    pq.write_table(table, buffer, row_group_size=row_group_rows, use_dictionary=["path"],
                   compression={"image": "NONE", "label": "SNAPPY", "path": "SNAPPY"})  # fmt: skip
    return buffer.getvalue(), len(images), corrupt


def _existing_shard(url: str) -> tuple[int, list[dict[str, str]]] | None:
    """(rows, corrupt list) of a shard already written, or None if it is not there."""
    if not storage.exists(url):
        return None
    fs, path = storage.resolve(url)
    with fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        metadata = parquet.schema_arrow.metadata or {}
        return parquet.metadata.num_rows, json.loads(metadata.get(_CORRUPT_KEY, b"[]"))


def check_reencoding(max_side: int | None, jpeg_quality: int | None) -> None:
    """A one-line ValueError naming the option for a size or quality that cannot be."""
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1):
        raise ValueError(f"--max-side: must be a whole number of pixels >= 1 (or none: keep the original "
                         f"sizes), got {max_side!r}")  # fmt: skip
    if jpeg_quality is not None and (isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int)
                                     or not 1 <= jpeg_quality <= 100):  # fmt: skip
        raise ValueError(f"--jpeg-quality: must be a whole number in 1..100, got {jpeg_quality!r}")
    if jpeg_quality is not None and max_side is None:
        raise ValueError("--jpeg-quality: only re-encoded images have a quality; give --max-side too")


def _checked_source(src: str, dest_url: str, splits: Sequence[str] | None, shard_mb: float, row_group_rows: int,
                    workers: int) -> tuple[str, list[str]]:  # fmt: skip
    """The local source folder and the splits to convert; a ValueError naming the option otherwise."""
    storage.check_url(dest_url, option="DEST_URL")
    if not storage.is_local(src):
        raise ValueError(f"SRC: must be a local folder (the ImageNet layout), got {src!r}")
    src = storage.local_path(src)
    if not os.path.isdir(src):
        raise ValueError(f"SRC: no such dataset folder: {src}")
    if shard_mb <= 0 or row_group_rows < 1 or workers < 1:
        raise ValueError("shard_mb, row_group_rows and workers must be positive")
    if splits is None:
        splits = [s for s in SPLITS if os.path.isdir(os.path.join(src, s))]
        if not splits:
            raise ValueError(f"SRC: {src} has neither train/ nor val/ (expected the ImageNet layout)")
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"--splits: must be train and/or val, got {split!r}")
    return src, list(splits)


def check_prepare_inputs(src: str, dest_url: str, splits: Sequence[str] | None = None, *, shard_mb: float = 256.0,
                         workers: int = 4, max_side: int | None = None, jpeg_quality: int | None = None) -> None:  # fmt: skip
    """What :func:`prepare` refuses before it reads an image (SRC missing or not the
    ImageNet layout, DEST_URL, the options), for a caller to check before work starts."""
    check_reencoding(max_side, jpeg_quality)
    _checked_source(src, dest_url, splits, shard_mb, 1, workers)


def _claim_destination(dest_url: str, digest: str, plan_record: dict[str, Any]) -> dict[str, Any] | None:
    """Claims ``dest_url`` for this plan, or finds our own earlier run there: returns its
    manifest if that run completed, None if shards remain to write. Another plan's shards
    there are refused."""
    plan_url = storage.join(dest_url, PLAN_NAME)
    if storage.exists(plan_url):
        earlier = json.loads(storage.read_bytes(plan_url)).get("plan_digest")
        if earlier != digest:
            raise ValueError(f"DEST_URL: {dest_url} holds shards of a different plan (other source files, "
                             "splits, shard size, --max-side or --jpeg-quality); use an empty destination")  # fmt: skip
    else:
        storage.write_bytes(plan_url, json.dumps({"plan_digest": digest, **plan_record}, indent=2).encode())
    if storage.exists(storage.join(dest_url, MANIFEST_NAME)):
        manifest = read_manifest(dest_url)
        if manifest.get("plan_digest") == digest:
            return manifest
    return None


def _write_missing_shards(dest_url: str, indexes: dict[str, SplitIndex], plans: dict[str, list[ShardPlan]], *,
                          row_group_rows: int, workers: int, progress: bool, max_side: int | None,
                          jpeg_quality: int) -> tuple[dict[str, Any], int, int]:  # fmt: skip
    """Writes every planned shard not already complete at ``dest_url``, one at a time (each
    is a few hundred MB in memory). Returns the manifest's per-split entries and the
    counts of shards written and found."""
    from tqdm import tqdm

    total = sum(len(index) for index in indexes.values())
    manifest_splits: dict[str, Any] = {}
    written = reused = 0
    with tqdm(total=total, unit="img", desc="prepare", disable=not progress, dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(max_workers=workers) as pool:  # fmt: skip
        for split, shards in plans.items():
            index = indexes[split]
            entries, corrupt_all = [], []
            for shard in shards:
                url = storage.join(dest_url, shard.path)
                existing = _existing_shard(url)
                if existing is None:
                    data, rows, corrupt = _shard_bytes(index, shard, pool, row_group_rows, lambda: bar.update(1),
                                                       max_side, jpeg_quality)  # fmt: skip
                    storage.write_bytes(url, data)
                    size, written = len(data), written + 1
                else:
                    rows, corrupt = existing
                    size, reused = storage.size_of(url), reused + 1
                    bar.update(len(shard.members))
                entries.append({"path": shard.path, "rows": rows, "bytes": size})
                corrupt_all.extend(corrupt)
            manifest_splits[split] = {
                "images": sum(e["rows"] for e in entries),
                "shards": entries,
                "skipped_corrupt": corrupt_all,
                "skipped_non_image": list(index.non_images),
            }
    return manifest_splits, written, reused


def prepare(
    src: str,
    dest_url: str,
    *,
    splits: Sequence[str] | None = None,
    shard_mb: float = 256.0,
    row_group_rows: int = 256,
    workers: int = 4,
    seed: int = 0,
    progress: bool = True,
    max_side: int | None = None,
    jpeg_quality: int | None = None,
) -> dict[str, Any]:
    """Convert ``src`` (ImageNet layout) into Parquet shards at ``dest_url``; returns the
    manifest (also written as ``<dest_url>/dataset.json``). ``max_side`` None keeps every
    file as it is; ``jpeg_quality`` defaults to DEFAULT_JPEG_QUALITY with a ``max_side``.
    See the module docstring."""
    check_reencoding(max_side, jpeg_quality)
    src, splits = _checked_source(src, dest_url, splits, shard_mb, row_group_rows, workers)
    if max_side is not None and jpeg_quality is None:
        jpeg_quality = DEFAULT_JPEG_QUALITY

    # 1. Plan: list every split, cut it into shards; nothing is written yet.
    indexes = {split: scan_split(src, split) for split in splits}  # ValueErrors name the problem
    classes = next(iter(indexes.values())).classes
    plans, sizes = {}, {}
    for split, index in indexes.items():
        plans[split], sizes[split] = plan_shards(index, split, shard_bytes=int(shard_mb * 1e6), seed=seed)
    reencode = [max_side, jpeg_quality] if max_side is not None else None
    digest = _plan_digest(classes, plans, indexes, sizes, row_group_rows, reencode)

    # 2. Claim DEST for this plan, or find our own earlier, interrupted (or finished) run there.
    plan_record = {"source": os.path.abspath(src), "splits": splits, "shard_mb": shard_mb,
                   "row_group_rows": row_group_rows, "seed": seed, "max_side": max_side,
                   "jpeg_quality": jpeg_quality}  # fmt: skip
    finished = _claim_destination(dest_url, digest, plan_record)
    if finished is not None:
        _log.info("%s: already complete (%s images), nothing to do", dest_url,
                  f"{sum(s['images'] for s in finished['splits'].values()):,}")  # fmt: skip
        return finished

    # 3. Write the missing shards.
    manifest_splits, written, reused = _write_missing_shards(
        dest_url, indexes, plans, row_group_rows=row_group_rows, workers=workers, progress=progress,
        max_side=max_side, jpeg_quality=jpeg_quality or DEFAULT_JPEG_QUALITY)  # fmt: skip

    # 4. dataset.json last: its presence means every shard it lists is complete.
    manifest = {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "plan_digest": digest,
        "classes": list(classes), "row_group_rows": row_group_rows, "max_side": max_side,
        "jpeg_quality": jpeg_quality, "splits": manifest_splits,
    }  # fmt: skip
    storage.write_bytes(storage.join(dest_url, MANIFEST_NAME), json.dumps(manifest, indent=1).encode())
    for split, entry in manifest_splits.items():
        _log.info("%s: %s images in %d shard(s); skipped %d corrupt, %d non-image file(s)", split,
                  f"{entry['images']:,}", len(entry["shards"]), len(entry["skipped_corrupt"]),
                  len(entry["skipped_non_image"]))  # fmt: skip
    _log.info("%s: %d shard(s) written, %d already there", dest_url, written, reused)
    return manifest
