"""The ``sqz`` command. The only sqz module that may import flows/ (lazily, per command),
so ``sqz --help`` and input errors answer without loading Ray or Prefect."""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, Sequence

from sqz.logs import configure_console

__all__ = ["main", "prefect_defaults"]


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line naming the option (no usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def _list_of(kind: Callable[[str], Any], option: str, check: Callable[[Any], str | None]) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        values = []
        for item in filter(None, (p.strip() for p in text.replace(" ", ",").split(","))):
            try:
                value = kind(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a valid {kind.__name__}") from None
            problem = check(value)
            if problem:
                raise argparse.ArgumentTypeError(f"{item}: {problem}")
            values.append(value)
        if not values:
            raise argparse.ArgumentTypeError("the list is empty")
        return tuple(values)

    parse.__name__ = option
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


# The retraining defaults of `sqz run` and `sqz sweep`: the best method measured on the
# digits (bench/bench_digits.py; README "Pruning schedules"): gradual pruning over a step
# budget. A step budget means the same work whatever the dataset's size.
DEFAULT_RETRAIN_STEPS = 600
DEFAULT_PRUNE_SCHEDULE = "gradual"
DEFAULT_RETRAIN_LR_SCHEDULE = "constant"
# 1e-4 (the old default) recovers too slowly from pruning to 25-33% in a few hundred steps.
DEFAULT_RETRAIN_LR = 5e-4


# `sqz run`'s default grid: the paper's 33% density and one step below it, at 8 and 6
# bits (bench/bench_digits.py measured these against the baseline); the report picks the
# smallest within --max-drop.
DEMO_DENSITIES = (0.33, 0.25)
DEMO_DENSITIES_TEXT = ",".join(f"{d:g}" for d in DEMO_DENSITIES)
DEMO_BITS = (8, 6)


def add_retrain_options(parser: argparse.ArgumentParser) -> None:
    """The prune-schedule and retrain-budget options shared by `sqz run` and `sqz sweep`."""
    from sqz.config import SweepConfig

    parser.add_argument("--prune-schedule", choices=["gradual", "oneshot"], default=DEFAULT_PRUNE_SCHEDULE,
                        help="gradual: Zhu & Gupta's cubic schedule tightens the masks during retraining; oneshot: "
                        f"cut everything first, then retrain (Deep Compression's) (default: {DEFAULT_PRUNE_SCHEDULE})")  # fmt: skip
    parser.add_argument("--retrain-steps", type=_non_negative_int, default=None,
                        help=f"retrain budget per trial in optimizer steps (default: {DEFAULT_RETRAIN_STEPS}, "
                        "unless --retrain-epochs is given)")  # fmt: skip
    parser.add_argument("--retrain-epochs", type=_non_negative_int, default=None,
                        help="retrain budget per trial in epochs instead of --retrain-steps")  # fmt: skip
    parser.add_argument("--retrain-lr", type=float, default=None,
                        help=f"retraining learning rate, AdamW (default: {DEFAULT_RETRAIN_LR:g}, the digits recipe's peak)")  # fmt: skip
    parser.add_argument("--lr-rewind", action=argparse.BooleanOptionalAction, default=DEFAULT_RETRAIN_LR_SCHEDULE == "rewind",
                        help="retrain on the last --retrain-steps of the original training's lr schedule (learning-rate "
                        "rewinding) instead of the constant --retrain-lr; needs a `sqz run` baseline")  # fmt: skip
    parser.add_argument("--retrain-loss", choices=["distill", "task"], default=SweepConfig.retrain_loss,
                        help="distill: KL to the unpruned baseline's logits; task: cross-entropy on the labels "
                        f"(default: {SweepConfig.retrain_loss})")  # fmt: skip
    parser.add_argument("--dense-below", type=_non_negative_int, default=SweepConfig.dense_below,
                        help="layers with at most this many weights stay dense; with density thresholds the others "
                        f"are pruned harder to keep the same overall share (default: {SweepConfig.dense_below:,}; 0: none)")  # fmt: skip
    parser.add_argument("--prune-frequency", type=_positive_int, default=10,
                        help="gradual: optimizer steps between mask updates (default: 10)")  # fmt: skip
    parser.add_argument("--prune-ramp", type=_share, default=0.5,
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


def _build_parser() -> argparse.ArgumentParser:
    from sqz import cli_sweep  # its commands; imports neither Ray nor Prefect until they run

    parser = _Parser(prog="sqz", description="SqueezeNet + Deep Compression: train with Ray Train, sweep "
                     "pruning x bits with Ray Tune, chained as Prefect flows, real bytes on disk.")  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the whole pipeline (train -> sweep -> report)",
                         description="Train a SqueezeNet, sweep pruning thresholds x bit widths, and report the "
                         "smallest variant within the accuracy budget. With no options: scikit-learn's digits, "
                         "a local Ray and Prefect's ephemeral API, results under ./sqz-runs/<run_id>/.")  # fmt: skip
    run.add_argument("--data", default="digits", help="digits | synthetic | an ImageNet-layout folder | a prepared dataset "
                     "(folder or s3://, see `sqz data prepare`) (default: digits)")  # fmt: skip
    run.add_argument("--image-size", type=_positive_int, default=None,
                     help="crop size (default: 32 for digits/synthetic, else 224; the paper uses 227)")  # fmt: skip
    run.add_argument("--normalize", choices=["torchvision", "caffe"], default="torchvision",
                     help="image input convention (default: torchvision)")  # fmt: skip
    run.add_argument("--storage", default="./sqz-runs", help="root URL for runs: a local path or s3://bucket/prefix (default: ./sqz-runs)")
    run.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)")
    run.add_argument("--model", default="squeezenet_small", help="model name from `sqz models` (default: squeezenet_small)")
    run.add_argument("--workers", type=_positive_int, default=2, help="Ray Train workers (default: 2)")
    run.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (default: the digits recipe's)")
    run.add_argument("--lr", type=float, default=None, help="training learning rate (default: the optimizer's)")
    run.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="training optimizer (default: adamw)")
    run.add_argument("--thresholds", type=_list_of(float, "--thresholds", lambda v: "must be >= 0" if not v >= 0 else None),
                     default=None, help="pruning thresholds, comma-separated, read by --prune-mode (default: "
                     f"{DEMO_DENSITIES_TEXT} kept density; with --prune-mode std: 0.3,0.6,0.9)")  # fmt: skip
    run.add_argument("--prune-mode", choices=["std", "absolute", "density"], default="density",
                     help="how thresholds are read: q x layer std, absolute |w|, or kept density (default: density)")  # fmt: skip
    run.add_argument("--bits", type=_list_of(int, "--bits", lambda v: None if 1 <= v <= 8 else "must be in 1..8"),
                     default=DEMO_BITS, help=f"bit widths, comma-separated, each in 1..8 (default: {','.join(map(str, DEMO_BITS))})")  # fmt: skip
    add_retrain_options(run)
    cli_sweep.add_quant_options(run)
    run.add_argument("--max-concurrent", type=_positive_int, default=2, help="sweep trials at once (default: 2)")
    run.add_argument("--max-drop", type=float, default=0.5, help="top-1 points the chosen variant may lose (default: 0.5)")
    run.add_argument("--ray-address", default=None, help="Ray cluster to use (ray://host:10001 or auto); default: start a local Ray")
    run.add_argument("--run-id", default=None, help="run folder name (default: derived from the config, so reruns resume)")

    inspect = sub.add_parser("inspect", help="print the per-layer byte account of a .sqz file")
    inspect.add_argument("file", help="path or s3:// URL of a .sqz file")

    report = sub.add_parser("report", help="print a run's Pareto table and the smallest model within --max-drop; "
                            "writes report.md and pareto.png")  # fmt: skip
    report.add_argument("run_url", help="the run folder, e.g. ./sqz-runs/run-0123abcd4567")
    cli_sweep.add_report_options(report)
    cli_sweep.add_parsers(sub)

    models = sub.add_parser("models", help="the paper's Table 2 as built: parameters, float32 MB, reduction vs AlexNet",
                            description="Parameters, float32 size and reduction vs 32-bit AlexNet of torchvision's "
                            "reference CNNs and every registered SqueezeNet, computed from the built architectures, "
                            "with published accuracies cited per row.")  # fmt: skip
    models.add_argument("--with", dest="with_files", action="append", default=[], metavar="FILE",
                        help="a compressed .sqz file (path or s3:// URL) whose real size joins the table; repeatable")  # fmt: skip

    _add_data_parser(sub)
    _add_eval_parser(sub)

    import_dc = sub.add_parser("import-dc", help="convert the released Deep Compression .net file to .sqz",
                               description="Read the Deep Compression authors' compressed_SqueezeNet.net into "
                               "squeezenet1_0 and re-encode the same weights, losslessly, as .sqz.")  # fmt: skip
    import_dc.add_argument("file", help="path or URL of compressed_SqueezeNet.net")
    import_dc.add_argument("out", help="path or URL of the .sqz file to write")
    import_dc.add_argument("--bits", type=_positive_int, default=None,
                           help="re-cluster each layer's non-zero weights into 2^BITS values (same sparsity) "
                           "instead of keeping the released 8-bit codebooks")  # fmt: skip
    import_dc.add_argument("--method", choices=["auto", "exact", "lloyd"], default="exact",
                           help="k-means for --bits (default: exact)")
    from sqz.import_dc import ImportOptions

    defaults = ImportOptions()
    import_dc.add_argument("--calibrate", default=None, metavar="SRC",
                           help="calibrate on images and report fidelity to the dense model on held-out ones: photos "
                           "(real photos shipped in scikit-image/scikit-learn/matplotlib), a folder of images, or a "
                           "prepared dataset (folder or s3://)")  # fmt: skip
    import_dc.add_argument("--size-budget", type=_positive_int, default=None, metavar="BYTES",
                           help="pick each layer's bits (3..8) so the file fits BYTES, maximising fidelity")  # fmt: skip
    import_dc.add_argument("--weighting", choices=["fisher", "none"], default=None,
                           help=f"with --calibrate: k-means error weighting (default: {defaults.weighting})")
    import_dc.add_argument("--distill-steps", type=_non_negative_int, default=None,
                           help=f"with --calibrate: centroid distillation steps (default: {defaults.distill_steps})")
    import_dc.add_argument("--distill-lr", type=float, default=defaults.distill_lr,
                           help=f"with --calibrate: Adam lr of the distillation (default: {defaults.distill_lr:g})")
    import_dc.add_argument("--calibration-images", type=_positive_int, default=defaults.calibration_images,
                           help=f"calibration images used, a fixed subset (default: {defaults.calibration_images})")
    import_dc.add_argument("--run", default=None, help="run URL whose fidelity table gets the row "
                           "(default: the output's run, else ./sqz-runs/evaluations)")  # fmt: skip

    from sqz.train_cli import add_train_parser  # its own module; imported late (it uses the helpers above)

    add_train_parser(sub)

    from sqz.runs_cli import add_runs_parser

    add_runs_parser(sub)
    return parser


def _add_data_parser(sub: Any) -> None:
    data = sub.add_parser("data", help="dataset tools: prepare Parquet shards from an ImageNet-layout folder")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    prepare = data_sub.add_parser(
        "prepare", help="convert an ImageNet-layout folder into Parquet shards (local or s3://)",
        description="Write SRC's train/ and val/ as Parquet shards of JPEG bytes + label under DEST_URL, with "
        "dataset.json last. Resumable and idempotent: a rerun skips the shards already written.",
    )  # fmt: skip
    prepare.add_argument("src", help="folder with train/<wnid>/*.JPEG and val/ (class folders, or flat + ground truth)")
    prepare.add_argument("dest_url", help="where the shards go: a local path or s3://bucket/prefix")
    prepare.add_argument("--splits", type=_list_of(str, "--splits", lambda v: None if v in ("train", "val") else "must be train or val"),
                         default=None, help="splits to convert, comma-separated (default: those SRC has)")  # fmt: skip
    prepare.add_argument("--shard-mb", type=float, default=256.0, help="source bytes per shard, in MB (default: 256)")
    prepare.add_argument("--workers", type=_positive_int, default=4, help="threads reading and checking images (default: 4)")
    prepare.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")
    prepare.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_eval_parser(sub: Any) -> None:
    evaluate = sub.add_parser(
        "eval", help="top-1/top-5 of a model file on a dataset; appends to the evaluations table",
        description="Evaluate a .sqz file (decoded) or dense safetensors weights on a dataset split, print top-1 "
        "and top-5, and write the row to <run>/metrics/evaluations/.",
    )  # fmt: skip
    evaluate.add_argument("model", help="a .sqz file or .safetensors weights (path or s3:// URL)")
    evaluate.add_argument("--data", required=True, help="digits | synthetic | an ImageNet-layout folder | a prepared dataset (folder or s3://)")
    evaluate.add_argument("--split", choices=["train", "val"], default="val", help="split to evaluate (default: val)")
    evaluate.add_argument("--arch", default=None, help="architecture of safetensors weights (default: from the run manifest)")
    evaluate.add_argument("--image-size", type=_positive_int, default=None, help="crop size (default: what the file records, else the model's)")
    evaluate.add_argument("--normalize", choices=["torchvision", "caffe"], default=None,
                          help="input convention (default: what the file records, else torchvision)")  # fmt: skip
    evaluate.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch (default: 64)")
    evaluate.add_argument("--workers", type=_non_negative_int, default=0, help="DataLoader worker processes (default: 0)")
    evaluate.add_argument("--run", default=None, help="run URL whose evaluations table gets the row "
                          "(default: the model's run, else ./sqz-runs/evaluations)")  # fmt: skip
    evaluate.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint (default: AWS_ENDPOINT_URL or AWS)")


def _pipeline_config(args: argparse.Namespace):
    from sqz.cli_sweep import quant_config
    from sqz.config import TRAIN_RECIPES, DataConfig, PipelineConfig, SweepConfig, TrainConfig
    from sqz.data import check_data_url, num_classes_of
    from sqz.models import list_models
    from sqz.storage import check_url

    check_data_url(args.data)
    check_url(args.storage, option="--storage")
    if args.model not in list_models():
        raise ValueError(f"--model: unknown model {args.model!r}; choose one of {', '.join(list_models())}")
    if args.run_id is not None and not args.run_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--run-id: {args.run_id!r} must be letters, digits, '-' or '_'")
    # `sqz run` trains with the digits recipe (TRAIN_RECIPES) on any data; SGD without --lr
    # gets the ImageNet recipe's 0.04.
    recipe = TRAIN_RECIPES["digits"]
    lr = args.lr if args.lr is not None else (recipe["train"].get("lr", 1e-3) if args.optimizer == "adamw" else 0.04)
    epochs = args.epochs or recipe["train"].get("epochs", TrainConfig().epochs)
    train_values = {**recipe["train"], "epochs": epochs, "optimizer": args.optimizer, "lr": lr}
    if train_values.get("warmup_epochs", 0.0) >= epochs:
        train_values["warmup_epochs"] = epochs / 8  # the recipe's warm-up would fill a short run: an eighth of it
    image_size = args.image_size or (32 if args.data in ("digits", "synthetic") else 224)
    data_values = dict(recipe["data"])
    if args.data not in ("digits", "synthetic"):
        data_values.pop("shift_augment", None)  # the in-memory datasets' augmentation
    data = DataConfig(**data_values, url=args.data, image_size=image_size, normalization=args.normalize)
    return PipelineConfig(
        data=data,
        train=TrainConfig(**train_values, model=args.model, num_classes=num_classes_of(data), workers=args.workers),
        sweep=SweepConfig(thresholds=args.thresholds or (DEMO_DENSITIES if args.prune_mode == "density" else (0.3, 0.6, 0.9)),
                          bits=args.bits, prune_mode=args.prune_mode,
                          **retrain_settings(args), max_concurrent=args.max_concurrent,
                          max_top1_drop=args.max_drop, quant=quant_config(args)),
        storage_url=args.storage,
    )  # fmt: skip


def _summary_table(summary: dict[str, Any]) -> str:
    from sqz.report import trials_table

    base, chosen = summary["baseline"], summary["chosen"]
    lines = [
        f"run {summary['run_id']}",
        f"baseline {base['model']}: {base['parameters']:,} parameters, {base['size_bytes']:,} bytes (float32), "
        f"top-1 {base['top1']:.2f}, top-5 {base['top5']:.2f}",
        trials_table(summary["trials"], chosen["trial_id"] if chosen else None),
    ]
    if chosen:
        lines.append(
            f"chosen: {chosen['trial_id']} - {chosen['size_bytes']:,} bytes, top-1 {chosen['top1']:.2f}, "
            f"{base['size_bytes'] / chosen['size_bytes']:.1f}x smaller than the float32 baseline "
            f"({chosen['ratio_vs_alexnet_32bit']:,.0f}x vs 32-bit AlexNet)"
        )
    else:
        lines.append("chosen: none within the accuracy budget")
    if "stage_seconds" in summary:
        lines.append("stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["stage_seconds"].items()))
    lines.append(f"report: {summary['report_url']}")
    return "\n".join(lines)


def prefect_defaults() -> None:
    """Environment Prefect reads at import; call before importing flows/ (CLI and bench)."""
    # The ephemeral API needs ~13 s to start on 2 cores, close to Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # sqz's own warnings (e.g. a storage operation retried) go to the flow run's logs too.
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sqz")
    if os.environ.get("PREFECT_HOME"):
        # Prefect creates its home without parents; a fresh ./.work/prefect would fail.
        os.makedirs(os.path.expanduser(os.environ["PREFECT_HOME"]), exist_ok=True)


def _cmd_run(args: argparse.Namespace) -> int:
    config = _pipeline_config(args)  # every bad value fails here, before Ray or Prefect start
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint  # inherited by Ray's workers
    prefect_defaults()
    from flows.pipeline_flow import squeeze_pipeline
    from sqz.config import config_to_dict

    summary = squeeze_pipeline(config=config_to_dict(config), run_id=args.run_id,
                               ray_address=args.ray_address, workdir=".")  # fmt: skip
    print(_summary_table(summary), flush=True)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from sqz import storage
    from sqz.compress.codec import header_bytes, layer_sizes

    data = storage.read_bytes(args.file)
    rows = layer_sizes(data)
    print(f"{'layer':32} {'shape':>16} {'weights':>9} {'nonzero':>9} {'bits':>4} {'codes':>8} {'indices':>8} {'other':>6} {'entropy':>9}  model (codes | positions | codebook)")
    for r in rows:
        models = " | ".join(m for m in (r["codes_model"], r["positions_model"], r["codebook_model"]) if m)
        print(f"{r['layer']:32} {r['shape']:>16} {r['weights']:>9,} {r['nonzero']:>9,} {r['bits']:>4} "
              f"{r['code_bytes']:>8,} {r['index_bytes']:>8,} {r['overhead_bytes']:>6,} {r['entropy_bound_bytes']:>9,.0f}  {models}")  # fmt: skip
    print(f"{'total':32} {'':>16} {sum(r['weights'] for r in rows):>9,} {sum(r['nonzero'] for r in rows):>9,} {'':>4} "
          f"{sum(r['code_bytes'] for r in rows):>8,} {sum(r['index_bytes'] for r in rows):>8,} "
          f"{sum(r['overhead_bytes'] for r in rows):>6,} {sum(r['entropy_bound_bytes'] for r in rows):>9,.0f}")  # fmt: skip
    print(f"format version {rows[0]['format_version'] if rows else '?'}; header {header_bytes(data):,} bytes; file: {len(data):,} bytes")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from sqz.cli_sweep import cmd_report

    return cmd_report(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from sqz.cli_sweep import cmd_sweep

    return cmd_sweep(args)


def _cmd_sensitivity(args: argparse.Namespace) -> int:
    from sqz.cli_sweep import cmd_sensitivity

    return cmd_sensitivity(args)


def _cmd_models(args: argparse.Namespace) -> int:
    from sqz import table2

    extra = [table2.compressed_row(url) for url in args.with_files]  # a bad file fails before printing
    print(table2.render(table2.architecture_rows() + extra))
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from sqz.data_prepare import prepare

    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint
    prepare(args.src, args.dest_url, splits=args.splits, shard_mb=args.shard_mb, workers=args.workers,
            progress=not args.no_progress)  # fmt: skip
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from sqz.evaluation import evaluate_file

    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint
    row = evaluate_file(args.model, args.data, split=args.split, arch=args.arch, image_size=args.image_size,
                        normalization=args.normalize, batch_size=args.batch_size, workers=args.workers,
                        run_url=args.run)  # fmt: skip
    print(f"{args.model} on {args.data} ({args.split}, {row['image_size']}px, {row['normalization']}): "
          f"top-1 {row['top1']:.2f}  top-5 {row['top5']:.2f}  over {row['images']:,} images, "
          f"{row['skipped']} unreadable skipped")  # fmt: skip
    print(f"row: {row['row_url']}")
    return 0


def _cmd_import_dc(args: argparse.Namespace) -> int:
    from sqz.import_dc import ImportOptions, import_to

    if args.calibrate is None and (args.weighting is not None or args.distill_steps is not None):
        raise ValueError("--weighting/--distill-steps: need --calibrate (the images they are computed on)")
    defaults = ImportOptions()
    options = ImportOptions(bits=args.bits, method=args.method, calibrate=args.calibrate, size_budget=args.size_budget,
                            weighting=args.weighting or defaults.weighting, distill_lr=args.distill_lr,
                            distill_steps=defaults.distill_steps if args.distill_steps is None else args.distill_steps,
                            calibration_images=args.calibration_images)  # fmt: skip  # every bad value fails here
    summary = import_to(args.file, args.out, options, run_url=args.run, log=lambda line: print(line, flush=True))
    reclustered = options.bits is not None or options.size_budget is not None
    if reclustered:
        how = (f"{options.weighting}-weighted" if options.calibrate else "weight-MSE") + f" {options.method} k-means"
        if options.uses_distillation:
            how += f", centroids distilled {options.distill_steps} steps"
        widths = (f"per-layer bits {dict(sorted(_count(summary['layer_bits']).items()))} (bits: layers)"
                  if summary["layer_bits"] else f"{options.bits} bits")  # fmt: skip
        print(f"re-clustered at {widths} ({how}): weight error {100 * summary['weight_error']:.2f}% "
              "(relative RMS over all weights)")  # fmt: skip
    what = "the re-clustered weights" if reclustered else "the released weights"
    print(f"{args.file}: {summary['source_bytes']:,} bytes -> {args.out}: {summary['size_bytes']:,} bytes "
          f"({100 * summary['size_bytes'] / summary['source_bytes']:.1f}%), decodes to {what} bit-exact: {summary['bit_exact']}")  # fmt: skip
    fid = summary["fidelity"]
    if fid is not None:
        print(f"fidelity vs the dense model on {fid['images']} held-out images ({args.calibrate}): top-1 agreement "
              f"{fid['top1_agreement']:.1f}%, top-5 overlap {fid['top5_overlap']:.1f}%, mean KL {fid['kl']:.4f}")  # fmt: skip
        print(f"row: {summary['row_url']}")
    return 0 if summary["bit_exact"] else 1


def _count(layer_bits: dict[str, int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for b in layer_bits.values():
        counts[b] = counts.get(b, 0) + 1
    return counts


def _cmd_train(args: argparse.Namespace) -> int:
    from sqz.train_cli import cmd_train

    return cmd_train(args)


_COMMANDS = {"run": _cmd_run, "import-dc": _cmd_import_dc, "inspect": _cmd_inspect, "report": _cmd_report, "models": _cmd_models,
             "train": _cmd_train, "data": _cmd_data, "eval": _cmd_eval, "sweep": _cmd_sweep,
             "sensitivity": _cmd_sensitivity}  # fmt: skip


def _cmd_runs(args: argparse.Namespace) -> int:
    from sqz.runs_cli import cmd_runs

    return cmd_runs(args)


_COMMANDS["runs"] = _cmd_runs


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_console()
    try:
        return _COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:
        # Bad input: one line naming what was wrong, no traceback.
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"sqz {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
