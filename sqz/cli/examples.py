"""One example line (or a few) per `sqz` command, shown at the end of its ``--help`` and
in the docs' command reference (docs/render.py), kept here in one place rather than in
each command's module. Every example must parse (tests/test_docs.py parses each one)."""

from __future__ import annotations

import argparse

__all__ = ["EXAMPLES", "attach_examples", "walk_parsers"]

RUN = "./sqz-runs/run-0123abcd4567"  # the shape of a run folder `sqz run` prints
RELEASED_NET = "../shared/models/squeezenet-deep-compression/compressed_SqueezeNet.net"

# Keyed by the command path after `sqz` ("" is `sqz` itself).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "": (
        "sqz run                                   # the demo: digits, local Ray, ./sqz-runs",
        "sqz run --help                            # every option of one command",
    ),
    "run": (
        "sqz run                                   # what `make demo` runs",
        "sqz run --thresholds 0.33,0.25 --bits 8,6 --storage s3://bucket/runs --s3-endpoint http://127.0.0.1:9000",
        "sqz run --data s3://bucket/imagenet --model squeezenet1_0 --image-size 224 --workers 8 "
        "--ray-address ray://head:10001 --storage s3://bucket/runs",
    ),
    "train": (
        "sqz train --epochs 12",
        "sqz train --data ./imagenet --model squeezenet1_0 --workers 8 --gpus-per-worker 1 "
        "--ray-address ray://head:10001 --storage s3://bucket/runs",
    ),
    "sweep": (
        f"sqz sweep --checkpoint {RUN} --prune-mode density --thresholds 0.33,0.25 --bits 8,6",
        "sqz sweep --checkpoint model.safetensors --thresholds 0.3,0.6,0.9,1.2 --bits 8,6 --max-concurrent 2",
    ),
    "sensitivity": (f"sqz sensitivity --checkpoint {RUN} --images 512",),
    "eval": ("sqz eval released.sqz --data ./imagenet --split val",),
    "import-dc": (
        f"sqz import-dc {RELEASED_NET} released.sqz            # lossless",
        f"sqz import-dc {RELEASED_NET} small.sqz --calibrate photos --size-budget 430000",
    ),
    "data": ("sqz data prepare ./imagenet s3://bucket/imagenet",),
    "data prepare": (
        "sqz data prepare ./imagenet s3://bucket/imagenet --s3-endpoint http://127.0.0.1:9000",
        "sqz data prepare ./imagenet ./imagenet-parquet --max-side none",
    ),
    "report": (f"sqz report {RUN} --max-drop 1",),
    "inspect": ("sqz inspect released.sqz",),
    "models": ("sqz models --with released.sqz",),
    "runs": ("sqz runs ls ./sqz-runs",),
    "runs ls": ("sqz runs ls s3://bucket/runs --s3-endpoint http://127.0.0.1:9000",),
    "runs show": (f"sqz runs show {RUN} --json",),
    "runs rm": (f"sqz runs rm {RUN}",),
}


def walk_parsers(parser: argparse.ArgumentParser, path: str = ""):
    """Yields (command path, parser) for ``parser`` and every subcommand below it, in the
    order they were added."""
    yield path, parser
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from walk_parsers(child, f"{path} {name}".strip())


def attach_examples(parser: argparse.ArgumentParser) -> None:
    """Gives every parser under ``parser`` its examples (``Parser.examples``, printed
    after the options by ``--help``)."""
    for path, each in walk_parsers(parser):
        each.examples = EXAMPLES.get(path, ())
