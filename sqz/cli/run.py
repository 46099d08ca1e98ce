"""`sqz run`: the whole pipeline (train -> sweep -> report) as the squeeze_pipeline flow."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqz.cli.args import bits_list, positive_int, thresholds_list
from sqz.cli.flowrun import run_flow
from sqz.cli.options import (add_location_options, add_quant_options, add_retrain_options, local_ray_cpus, quant_config,
                             retrain_settings, use_s3_endpoint)  # fmt: skip
from sqz.cli.tables import print_table

__all__ = ["add_parser", "command", "pipeline_config", "DEMO_DENSITIES", "DEMO_BITS"]

# `sqz run`'s default grid: the paper's 33% density and one step below it, at 8 and 6
# bits (bench/bench_digits.py measured these against the baseline); the report picks the
# smallest within --max-drop.
DEMO_DENSITIES = (0.33, 0.25)
DEMO_DENSITIES_TEXT = ",".join(f"{d:g}" for d in DEMO_DENSITIES)
DEMO_BITS = (8, 6)


def add_parser(sub: Any) -> None:
    run = sub.add_parser("run", help="run the whole pipeline (train -> sweep -> report)",
                         description="Train a SqueezeNet, sweep pruning thresholds x bit widths, and report the "
                         "smallest variant within the accuracy budget. With no options: scikit-learn's digits, "
                         "a local Ray and Prefect's ephemeral API, results under ./sqz-runs/<run_id>/.")  # fmt: skip
    run.add_argument("--data", default="digits", help="digits | synthetic | an ImageNet-layout folder | a prepared dataset "
                     "(folder or s3://, see `sqz data prepare`) (default: digits)")  # fmt: skip
    run.add_argument("--image-size", type=positive_int, default=None,
                     help="crop size (default: 32 for digits/synthetic, else 224; the paper uses 227)")  # fmt: skip
    run.add_argument("--normalize", choices=["torchvision", "caffe"], default="torchvision",
                     help="image input convention (default: torchvision)")  # fmt: skip
    add_location_options(run, run_id_help="run folder name (default: derived from the config, so reruns resume)")
    run.add_argument("--model", default="squeezenet_small", help="model name from `sqz models` (default: squeezenet_small)")
    run.add_argument("--workers", type=positive_int, default=2, help="Ray Train workers (default: 2)")
    run.add_argument("--epochs", type=positive_int, default=None, help="training epochs (default: the digits recipe's)")
    run.add_argument("--lr", type=float, default=None, help="training learning rate (default: the optimizer's)")
    run.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="training optimizer (default: adamw)")
    run.add_argument("--thresholds", type=thresholds_list, default=None,
                     help="pruning thresholds, comma-separated, read by --prune-mode (default: "
                     f"{DEMO_DENSITIES_TEXT} kept density; with --prune-mode std: 0.3,0.6,0.9)")  # fmt: skip
    run.add_argument("--prune-mode", choices=["std", "absolute", "density"], default="density",
                     help="how thresholds are read: q x layer std, absolute |w|, or kept density (default: density)")  # fmt: skip
    run.add_argument("--bits", type=bits_list, default=DEMO_BITS,
                     help=f"bit widths, comma-separated, each in 1..8 (default: {','.join(map(str, DEMO_BITS))})")  # fmt: skip
    add_retrain_options(run)
    add_quant_options(run)
    run.add_argument("--max-concurrent", type=positive_int, default=2, help="sweep trials at once (default: 2)")
    run.add_argument("--max-drop", type=float, default=0.5, help="top-1 points the chosen variant may lose (default: 0.5)")


def pipeline_config(args: argparse.Namespace):
    """The PipelineConfig of `sqz run`'s options; every bad value is a ValueError here.
    For the built-in data sets nothing here imports torch: the refusal is immediate."""
    from sqz.architectures import check_model_name, check_sweep_densities
    from sqz.config import BUILTIN_CLASSES, BUILTIN_DATASETS, TRAIN_RECIPES, DataConfig, PipelineConfig, SweepConfig, TrainConfig
    from sqz.runs.manifest import check_run_id
    from sqz.storage import check_writable_folder

    builtin = args.data in BUILTIN_DATASETS
    if not builtin:
        from sqz.data import check_data_url  # torch: a folder or prepared data set is read

        check_data_url(args.data)
    check_writable_folder(args.storage, option="--storage")
    check_model_name(args.model, option="--model")
    check_run_id(args.run_id)
    # `sqz run` trains with the digits recipe (TRAIN_RECIPES) on any data; SGD without --lr
    # gets the ImageNet recipe's 0.04.
    recipe = TRAIN_RECIPES["digits"]
    lr = args.lr if args.lr is not None else (recipe["train"].get("lr", 1e-3) if args.optimizer == "adamw" else 0.04)
    epochs = args.epochs or recipe["train"].get("epochs", TrainConfig().epochs)
    train_values = {**recipe["train"], "epochs": epochs, "optimizer": args.optimizer, "lr": lr}
    if train_values.get("warmup_epochs", 0.0) >= epochs:
        train_values["warmup_epochs"] = epochs / 8  # the recipe's warm-up would fill a short run: an eighth of it
    image_size = args.image_size or (32 if builtin else 224)
    data_values = dict(recipe["data"])
    if not builtin:
        data_values.pop("shift_augment", None)  # the in-memory datasets' augmentation
    data = DataConfig(**data_values, url=args.data, image_size=image_size, normalization=args.normalize)
    if builtin:
        num_classes = BUILTIN_CLASSES
    else:
        from sqz.data import num_classes_of

        num_classes = num_classes_of(data)
    sweep = SweepConfig(thresholds=args.thresholds or (DEMO_DENSITIES if args.prune_mode == "density" else (0.3, 0.6, 0.9)),
                        bits=args.bits, prune_mode=args.prune_mode, **retrain_settings(args),
                        max_concurrent=args.max_concurrent, max_top1_drop=args.max_drop, quant=quant_config(args))  # fmt: skip
    # The model is known now: a density its small (dense) layers leave no room for fails
    # here, not in every trial after training.
    check_sweep_densities(sweep, {"name": args.model, "kwargs": {"num_classes": num_classes}},
                          option="--thresholds", dense_option="--dense-below")  # fmt: skip
    return PipelineConfig(
        data=data,
        train=TrainConfig(**train_values, model=args.model, num_classes=num_classes, workers=args.workers),
        sweep=sweep,
        storage_url=args.storage,
    )


def print_summary(summary: dict[str, Any]) -> None:
    from sqz.report import TRIAL_HEADERS, trial_rows

    base, chosen = summary["baseline"], summary["chosen"]
    print(f"run {summary['run_id']}")
    print(f"baseline {base['model']}: {base['parameters']:,} parameters, {base['size_bytes']:,} bytes (float32), "
          f"top-1 {base['top1']:.2f}, top-5 {base['top5']:.2f}")  # fmt: skip
    print_table(TRIAL_HEADERS, trial_rows(summary["trials"], chosen["trial_id"] if chosen else None), align="ll" + "r" * 6)
    if chosen:
        print(f"chosen: {chosen['trial_id']} - {chosen['size_bytes']:,} bytes, top-1 {chosen['top1']:.2f}, "
              f"{base['size_bytes'] / chosen['size_bytes']:.1f}x smaller than the float32 baseline "
              f"({chosen['ratio_vs_alexnet_32bit']:,.0f}x vs 32-bit AlexNet)")  # fmt: skip
    else:
        print("chosen: none within the accuracy budget")
    if "stage_seconds" in summary:
        print("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["stage_seconds"].items()))
    print(f"report: {summary['report_url']}", flush=True)


def command(args: argparse.Namespace) -> int:
    from sqz.config import config_to_dict
    from sqz.runs.manifest import pipeline_run_id

    use_s3_endpoint(args)  # before the checks: --storage may be on that endpoint
    config = pipeline_config(args)  # every bad value fails here, before Ray or Prefect start

    def flow():
        from flows.pipeline_flow import squeeze_pipeline

        return squeeze_pipeline

    # A local Ray gets at least the CPUs one training worker group or trial reserves, so it never waits forever.
    num_cpus = local_ray_cpus(max(config.train.workers * config.train.cpus_per_worker, config.sweep.cpus_per_trial))
    try:
        summary = run_flow(flow, f"{args.run_id or pipeline_run_id(config)}/pipeline", config=config_to_dict(config),
                           run_id=args.run_id, ray_address=args.ray_address, workdir=".", shared_mount=args.shared_mount,
                           num_cpus=num_cpus)  # fmt: skip
    except RuntimeError as exc:  # trials failed (each said so in one line) or the run was interrupted: rerunning resumes
        text = str(exc).strip()
        print(f"sqz run: error: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
        return 1
    print_summary(summary)
    return 0
