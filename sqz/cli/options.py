"""Option groups several commands share, and the configs they build: retraining
(`run`, `sweep`), quantization (`run`, `sweep`), where runs go (`run`, `train`,
`sweep`, `sensitivity`)."""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from sqz.cli.args import non_negative_int, positive_float, positive_int, share

__all__ = ["DEFAULT_RETRAIN_STEPS", "DEFAULT_RETRAIN_LR", "add_retrain_options", "retrain_settings", "add_quant_options",
           "quant_config", "add_location_options", "add_s3_endpoint", "use_s3_endpoint", "local_ray_cpus",
           "check_local_gpus"]  # fmt: skip

# The retraining defaults of `sqz run` and `sqz sweep`: the best method measured on the
# digits (bench/bench_digits.py; docs/compression.md, "Pruning schedules and retraining budgets"): gradual pruning over a step
# budget. A step budget means the same work whatever the dataset's size.
DEFAULT_RETRAIN_STEPS = 600
DEFAULT_PRUNE_SCHEDULE = "gradual"
DEFAULT_RETRAIN_LR_SCHEDULE = "constant"
# 1e-4 (the old default) recovers too slowly from pruning to 25-33% in a few hundred steps.
DEFAULT_RETRAIN_LR = 5e-4


def add_s3_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--s3-endpoint", default=None,
                        help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)")  # fmt: skip


def use_s3_endpoint(args: argparse.Namespace) -> None:
    """--s3-endpoint for this process and the Ray workers it starts (they inherit it)."""
    from sqz.storage import set_s3_endpoint

    set_s3_endpoint(getattr(args, "s3_endpoint", None))


def add_location_options(parser: argparse.ArgumentParser, *, run_id_help: str) -> None:
    """--storage, --s3-endpoint, --run-id and --ray-address: where a run lives and runs."""
    parser.add_argument("--storage", default="./sqz-runs", help="root URL for runs: a local path or s3://bucket/prefix (default: ./sqz-runs)")
    add_s3_endpoint(parser)
    parser.add_argument("--run-id", default=None, help=run_id_help)
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to use (host:6379, ray://host:10001 or auto); default: start a local Ray")
    parser.add_argument("--shared-mount", action="store_true",
                        help="the local --storage path is a mount every Ray node shares (NFS, ...); without it a local "
                             "path is refused on a cluster of more than one node")  # fmt: skip


def local_ray_cpus(needed: float) -> int:
    """CPUs of the local Ray a command starts (without --ray-address): the machine's, or
    more if one unit of its work reserves more (oversubscribed, as `sqz train` does) so
    that Ray never waits forever for CPUs the machine does not have."""
    return max(os.cpu_count() or 1, math.ceil(needed))


def check_local_gpus(args: argparse.Namespace, needed: float, option: str, what: str) -> None:
    """Refuse, before anything starts, GPUs that the local Ray started here would not
    have: Ray would wait for them forever. A cluster (--ray-address) may add GPU nodes
    as it scales, so it is not asked."""
    if args.ray_address or needed <= 0:
        return
    import torch  # what the local Ray sees: CUDA_VISIBLE_DEVICES and the driver's devices

    have = torch.cuda.device_count()
    if needed > have:
        raise ValueError(f"{option}: {what} need(s) {needed:g} GPU(s) and this machine has {have}: the local Ray would "
                         "wait for them forever; give --ray-address of a cluster with GPUs, or 0 to run on CPUs")  # fmt: skip


def add_retrain_options(parser: argparse.ArgumentParser) -> None:
    """The prune-schedule and retrain-budget options shared by `sqz run` and `sqz sweep`."""
    from sqz.config import SweepConfig

    parser.add_argument("--prune-schedule", choices=["gradual", "oneshot"], default=DEFAULT_PRUNE_SCHEDULE,
                        help="gradual: Zhu & Gupta's cubic schedule tightens the masks during retraining; oneshot: "
                        f"cut everything first, then retrain (Deep Compression's) (default: {DEFAULT_PRUNE_SCHEDULE})")  # fmt: skip
    parser.add_argument("--retrain-steps", type=non_negative_int, default=None,
                        help=f"retrain budget per trial in optimizer steps (default: {DEFAULT_RETRAIN_STEPS}, "
                        "unless --retrain-epochs is given)")  # fmt: skip
    parser.add_argument("--retrain-epochs", type=non_negative_int, default=None,
                        help="retrain budget per trial in epochs instead of --retrain-steps")  # fmt: skip
    parser.add_argument("--retrain-lr", type=float, default=None,
                        help=f"retraining learning rate, AdamW (default: {DEFAULT_RETRAIN_LR:g}, the digits recipe's peak)")  # fmt: skip
    parser.add_argument("--lr-rewind", action=argparse.BooleanOptionalAction, default=DEFAULT_RETRAIN_LR_SCHEDULE == "rewind",
                        help="retrain on the last --retrain-steps of the original training's lr schedule (learning-rate "
                        "rewinding) instead of the constant --retrain-lr; needs a `sqz run` baseline")  # fmt: skip
    parser.add_argument("--retrain-loss", choices=["distill", "task"], default=SweepConfig.retrain_loss,
                        help="distill: KL to the unpruned baseline's logits; task: cross-entropy on the labels "
                        f"(default: {SweepConfig.retrain_loss})")  # fmt: skip
    parser.add_argument("--dense-below", type=non_negative_int, default=SweepConfig.dense_below,
                        help="layers with at most this many weights stay dense; with density thresholds the others "
                        f"are pruned harder to keep the same overall share (default: {SweepConfig.dense_below:,}; 0: none)")  # fmt: skip
    parser.add_argument("--prune-frequency", type=positive_int, default=10,
                        help="gradual: optimizer steps between mask updates (default: 10)")  # fmt: skip
    parser.add_argument("--prune-ramp", type=share, default=0.5,
                        help="gradual: share of the retrain budget over which sparsity ramps up to its target; the "
                        "rest retrains at the final masks (default: 0.5)")  # fmt: skip


def retrain_settings(args: argparse.Namespace) -> dict[str, Any]:
    """SweepConfig fields from :func:`add_retrain_options`' options."""
    if args.retrain_steps is not None and args.retrain_epochs is not None:
        raise ValueError("--retrain-steps/--retrain-epochs: give one retrain budget, not both")
    if args.retrain_lr is not None and not (math.isfinite(args.retrain_lr) and args.retrain_lr > 0):
        raise ValueError(f"--retrain-lr: must be positive, got {args.retrain_lr}")
    steps = args.retrain_steps if args.retrain_epochs is None else None
    if steps is None and args.retrain_epochs is None:
        steps = DEFAULT_RETRAIN_STEPS
    ramp = max(1, round(args.prune_ramp * steps)) if steps else 0
    if args.prune_schedule == "gradual" and steps and args.prune_frequency > ramp:
        raise ValueError(f"--prune-frequency: {args.prune_frequency} steps is longer than the pruning ramp "
                         f"({ramp} of --retrain-steps {steps}); lower it or raise --retrain-steps/--prune-ramp")  # fmt: skip
    settings: dict[str, Any] = {
        "retrain_steps": steps, "prune_schedule": args.prune_schedule, "prune_frequency": args.prune_frequency,
        "prune_ramp": args.prune_ramp, "retrain_lr_schedule": "rewind" if args.lr_rewind else "constant",
        "retrain_loss": args.retrain_loss, "dense_below": args.dense_below,
    }  # fmt: skip
    if args.retrain_epochs is not None:
        settings["retrain_epochs"] = args.retrain_epochs
    settings["retrain_lr"] = args.retrain_lr if args.retrain_lr is not None else DEFAULT_RETRAIN_LR
    return settings


def add_quant_options(parser: argparse.ArgumentParser) -> None:
    """The quantization step's options (k-means weighting, centroid fine-tuning and
    distillation), shared by `sqz run` and `sqz sweep`; their defaults are QuantConfig's."""
    from sqz.config import QuantConfig

    default = QuantConfig()
    parser.add_argument("--finetune-epochs", type=non_negative_int, default=default.finetune_epochs,
                        help=f"centroid fine-tuning epochs on the task loss per trial (default: {default.finetune_epochs})")  # fmt: skip
    parser.add_argument("--weighting", choices=["fisher", "none"], default=default.weighting,
                        help="k-means error weighting: fisher (diagonal Fisher of the retrained model on calibration "
                        f"batches) or none (weight MSE) (default: {default.weighting})")  # fmt: skip
    parser.add_argument("--distill-steps", type=non_negative_int, default=default.distill_steps,
                        help="centroid fine-tuning steps by distillation from the retrained dense model, codebooks only "
                        f"(default: {default.distill_steps})")  # fmt: skip
    parser.add_argument("--distill-lr", type=positive_float, default=default.distill_lr,
                        help=f"Adam lr of the centroid distillation (default: {default.distill_lr:g})")  # fmt: skip
    parser.add_argument("--calibration-batches", type=positive_int, default=default.calibration_batches,
                        help=f"training batches the Fisher pass, GPTQ and distillation use (default: {default.calibration_batches})")  # fmt: skip
    parser.add_argument("--assign", choices=["nearest", "gptq"], default=default.assign,
                        help="each weight takes its nearest shared value, or GPTQ's error-compensated choice from the "
                        f"layer's inputs on the calibration batches (default: {default.assign})")  # fmt: skip


def quant_config(args: argparse.Namespace) -> Any:
    from sqz.config import QuantConfig

    return QuantConfig(finetune_epochs=args.finetune_epochs, weighting=args.weighting, distill_steps=args.distill_steps,
                       distill_lr=args.distill_lr, calibration_batches=args.calibration_batches, assign=args.assign)  # fmt: skip
