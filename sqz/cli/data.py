"""`sqz data prepare`: an ImageNet-layout folder as Parquet shards, as the
prepare_dataset flow."""

from __future__ import annotations

import argparse
from typing import Any

from sqz.cli.args import list_of, number, one_of, positive_float, positive_int
from sqz.cli.flowrun import run_flow
from sqz.cli.options import add_s3_endpoint, use_s3_endpoint

__all__ = ["add_parser", "command", "DEFAULT_MAX_SIDE"]

# Longer side of the stored images: the largest that still makes the evaluation resize
# (shorter side 256 for 224 crops) a downscale for 4:3 and 3:2 photos, and measured by
# bench/bench_input_pipeline.py (docs/imagenet.md) cheaper to decode than
# ImageNet-size originals. `--max-side none` stores the files as they are.
DEFAULT_MAX_SIDE = 384
DEFAULT_JPEG_QUALITY = 90  # FFCV's ImageNet datasets' quality; sqz.data.prepare has the same default


def _max_side(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    try:
        return number(int, minimum=1)(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (or none: keep the original sizes)") from None


_max_side.__name__ = "max side"


def add_parser(sub: Any, parser_class: type) -> None:
    data = sub.add_parser("data", help="dataset tools: prepare Parquet shards from an ImageNet-layout folder")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=parser_class)
    prepare = data_sub.add_parser(
        "prepare", help="convert an ImageNet-layout folder into Parquet shards (local or s3://)",
        description="Write SRC's train/ and val/ as Parquet shards of JPEG bytes + label under DEST_URL, with "
        "dataset.json last. Resumable and idempotent: a rerun skips the shards already written.",
    )  # fmt: skip
    prepare.add_argument("src", help="folder with train/<wnid>/*.JPEG and val/ (class folders, or flat + ground truth)")
    prepare.add_argument("dest_url", help="where the shards go: a local path or s3://bucket/prefix")
    prepare.add_argument("--splits", type=list_of(one_of("train", "val")), default=None,
                         help="splits to convert, comma-separated (default: those SRC has)")  # fmt: skip
    prepare.add_argument("--shard-mb", type=positive_float, default=256.0, help="source bytes per shard, in MB (default: 256)")
    prepare.add_argument("--workers", type=positive_int, default=4, help="threads reading and checking images (default: 4)")
    prepare.add_argument("--max-side", type=_max_side, default=DEFAULT_MAX_SIDE, metavar="N",
                         help=f"re-encode images whose longer side exceeds N pixels to fit N x N (default: "
                         f"{DEFAULT_MAX_SIDE}); 'none' stores every file as it is")  # fmt: skip
    prepare.add_argument("--jpeg-quality", type=number(int, minimum=1, maximum=100), default=None, metavar="Q",
                         help=f"JPEG quality 1..100 of re-encoded images (default: {DEFAULT_JPEG_QUALITY})")  # fmt: skip
    add_s3_endpoint(prepare)
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")


def command(args: argparse.Namespace) -> int:
    from sqz.data.prepare import check_prepare_inputs
    from sqz.storage import check_writable_folder

    use_s3_endpoint(args)  # before the checks: DEST_URL may be on that endpoint
    check_writable_folder(args.dest_url, option="DEST_URL")
    if args.jpeg_quality is not None and args.max_side is None:
        raise ValueError("--jpeg-quality: only re-encoded images have a quality, and --max-side none re-encodes none")
    # A missing or non-ImageNet SRC: one line here, not in a flow run after Prefect's start-up.
    check_prepare_inputs(args.src, args.dest_url, args.splits, shard_mb=args.shard_mb, workers=args.workers,
                         max_side=args.max_side, jpeg_quality=args.jpeg_quality)  # fmt: skip

    def flow():
        from flows.data_flow import prepare_dataset

        return prepare_dataset

    name = f"prepare-{args.dest_url.rstrip('/').rsplit('/', 1)[-1]}"
    run_flow(flow, name, src=args.src, dest_url=args.dest_url, splits=list(args.splits) if args.splits else None,
             shard_mb=args.shard_mb, workers=args.workers, progress=not args.no_progress, max_side=args.max_side,
             jpeg_quality=args.jpeg_quality)  # fmt: skip
    return 0
