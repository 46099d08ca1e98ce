"""`sqz sweep`, `sqz sensitivity` and `sqz report`: sweeps of an existing checkpoint.

Registered by sqz/cli.py. Like the rest of the CLI, every bad value is a one-line error
before Ray starts; Ray (sqz.distributed) is imported only once the work begins.

A sweep's run folder is ``<storage>/sweep-<digest>``, the digest taken over the
checkpoint's bytes, the model and the data, so `sqz sensitivity`, a grid sweep and a
`--per-layer` sweep of the same checkpoint share one folder (and one Pareto plot), and
the same command run again resumes: it runs only the trials without a row yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
from typing import Any, Callable

from sqz.cli import _list_of, _non_negative_int, _positive_int, add_retrain_options, retrain_settings

__all__ = ["add_parsers", "add_report_options", "cmd_sweep", "cmd_sensitivity", "cmd_report"]


def _floats(option: str, check: Callable[[float], str | None]) -> Callable[[str], tuple]:
    return _list_of(float, option, check)


def _ints(option: str, check: Callable[[int], str | None]) -> Callable[[str], tuple]:
    return _list_of(int, option, check)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _threshold_check(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _bits_check(value: int) -> str | None:
    return None if 1 <= value <= 8 else "must be in 1..8"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="the trained model: a .safetensors state dict (path or s3:// URL), or a `sqz run` folder")  # fmt: skip
    parser.add_argument("--model", default=None, help="model name from `sqz models` (default: the run's, else squeezenet_small)")
    parser.add_argument("--data", default=None, help="digits | synthetic | a folder with train/ and val/ (default: the run's, else digits)")
    parser.add_argument("--storage", default="./sqz-runs", help="root URL for runs: a local path or s3://bucket/prefix (default: ./sqz-runs)")
    parser.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)")
    parser.add_argument("--run-id", default=None, help="run folder name (default: sweep-<digest of checkpoint, model, data>)")
    parser.add_argument("--ray-address", default=None, help="Ray cluster to use (ray://host:10001 or auto); default: start a local Ray")
    parser.add_argument("--prune-mode", choices=["std", "absolute", "density"], default="std",
                        help="how thresholds are read: q x layer std, absolute |w|, or kept density (default: std)")  # fmt: skip
    parser.add_argument("--max-concurrent", type=_positive_int, default=2, help="trials (or sensitivity units) at once (default: 2)")


def add_quant_options(parser: argparse.ArgumentParser) -> None:
    """The quantization step's options (k-means weighting, centroid fine-tuning and
    distillation), shared by `sqz run` and `sqz sweep`; their defaults are QuantConfig's."""
    from sqz.config import QuantConfig

    default = QuantConfig()
    parser.add_argument("--finetune-epochs", type=_non_negative_int, default=default.finetune_epochs,
                        help=f"centroid fine-tuning epochs on the task loss per trial (default: {default.finetune_epochs})")  # fmt: skip
    parser.add_argument("--weighting", choices=["fisher", "none"], default=default.weighting,
                        help="k-means error weighting: fisher (diagonal Fisher of the retrained model on calibration "
                        f"batches) or none (weight MSE) (default: {default.weighting})")  # fmt: skip
    parser.add_argument("--distill-steps", type=_non_negative_int, default=default.distill_steps,
                        help="centroid fine-tuning steps by distillation from the retrained dense model, codebooks only "
                        f"(default: {default.distill_steps})")  # fmt: skip
    parser.add_argument("--distill-lr", type=_positive_float, default=default.distill_lr,
                        help=f"Adam lr of the centroid distillation (default: {default.distill_lr:g})")  # fmt: skip
    parser.add_argument("--calibration-batches", type=_positive_int, default=default.calibration_batches,
                        help=f"training batches the Fisher pass and distillation use (default: {default.calibration_batches})")  # fmt: skip


def quant_config(args: argparse.Namespace) -> Any:
    from sqz.config import QuantConfig

    return QuantConfig(finetune_epochs=args.finetune_epochs, weighting=args.weighting, distill_steps=args.distill_steps,
                       distill_lr=args.distill_lr, calibration_batches=args.calibration_batches)  # fmt: skip


def add_parsers(sub: Any) -> None:
    """Add `sweep` and `sensitivity` to the `sqz` subcommands."""
    sweep = sub.add_parser("sweep", help="sweep pruning thresholds x bit widths of a trained checkpoint with Ray Tune",
                           description="One Ray Tune trial per grid point: load the checkpoint, prune, retrain with "
                           "masks, k-means quantize with centroid fine-tuning, encode .sqz, measure its bytes, evaluate. "
                           "Rerunning the same command runs only the trials still missing. Ends with the Pareto table.")  # fmt: skip
    _add_common(sweep)
    sweep.add_argument("--thresholds", type=_floats("--thresholds", _threshold_check), default=(0.3, 0.6, 0.9, 1.2),
                       help="pruning thresholds, comma-separated (q x layer std by default; default: 0.3,0.6,0.9,1.2)")  # fmt: skip
    sweep.add_argument("--bits", type=_ints("--bits", _bits_check), default=(8, 6),
                       help="bit widths, comma-separated, each in 1..8 (default: 8,6)")  # fmt: skip
    add_retrain_options(sweep)
    add_quant_options(sweep)
    sweep.add_argument("--cpus-per-trial", type=_positive_float, default=1.0, help="CPUs per trial; its torch threads (default: 1)")
    sweep.add_argument("--gpus-per-trial", type=_non_negative_float, default=0.0, help="GPU share per trial, e.g. 0.5 (default: 0, CPU)")
    sweep.add_argument("--asha", action="store_true", help="stop retrains that trail the others early (ASHA scheduler)")
    sweep.add_argument("--per-layer", action="store_true",
                       help="choose a threshold and bit width per layer from the sensitivity analysis (run first if missing); "
                       "the thresholds and bits become each layer's candidates, one trial per target")  # fmt: skip
    sweep.add_argument("--max-drops", type=_floats("--max-drops", lambda v: None if v >= 0 else "must be >= 0"), default=None,
                       help="per-layer targets: predicted top-1 drops in points, comma-separated (default with --per-layer: 0.5,1,2,4)")  # fmt: skip
    sweep.add_argument("--size-budgets", type=_ints("--size-budgets", lambda v: None if v >= 1 else "must be >= 1"), default=None,
                       help="per-layer targets: file-size budgets in bytes, comma-separated")  # fmt: skip
    sweep.add_argument("--sensitivity-images", type=_positive_int, default=512, help="validation images for the sensitivity curves (default: 512)")
    sweep.add_argument("--max-drop", type=_non_negative_float, default=0.5, help="top-1 points the named smallest model may lose (default: 0.5)")

    sens = sub.add_parser("sensitivity", help="per-layer accuracy vs pruning threshold and vs bits, in parallel on Ray",
                          description="For each conv/linear layer alone: top-1 on a fixed validation subset with the "
                          "layer pruned at each threshold, and quantized at each bit width; plus every layer's encoded "
                          "bytes at each (threshold, bits). Written to the run's `sensitivity` Parquet table.")  # fmt: skip
    _add_common(sens)
    sens.add_argument("--thresholds", type=_floats("--thresholds", _threshold_check), default=(0.3, 0.6, 0.9, 1.2, 1.5),
                      help="pruning thresholds, comma-separated (default: 0.3,0.6,0.9,1.2,1.5)")  # fmt: skip
    sens.add_argument("--bits", type=_ints("--bits", _bits_check), default=(8, 6, 5, 4, 3),
                      help="bit widths, comma-separated, each in 1..8 (default: 8,6,5,4,3)")  # fmt: skip
    sens.add_argument("--images", type=_positive_int, default=512, help="validation images to evaluate on (default: 512)")
    sens.add_argument("--cpus-per-task", type=_positive_float, default=1.0, help="CPUs per unit of work (default: 1)")


def add_report_options(report: argparse.ArgumentParser) -> None:
    report.add_argument("--max-drop", type=_non_negative_float, default=None,
                        help="top-1 points the named smallest model may lose (default: the run's, else 1.0)")  # fmt: skip


# ------------------------------------------------------------------ shared set-up


def _source(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(URL of the checkpoint's safetensors, the source run's manifest or {})."""
    from sqz import storage

    storage.check_url(args.checkpoint, option="--checkpoint")
    if args.checkpoint.endswith(".safetensors"):
        return args.checkpoint, {}
    baseline_url = storage.join(args.checkpoint, "models", "baseline.safetensors")
    if not storage.exists(baseline_url):
        raise ValueError(f"--checkpoint: {args.checkpoint} is neither a .safetensors file nor a run folder with models/baseline.safetensors")
    manifest_url = storage.join(args.checkpoint, "manifest.json")
    return baseline_url, json.loads(storage.read_bytes(manifest_url)) if storage.exists(manifest_url) else {}


def _prepare(args: argparse.Namespace) -> tuple[Any, dict[str, Any], Any, bytes, dict[str, Any]]:
    """Validate the shared options, read and check the checkpoint, place the run folder.
    Returns (layout, arch, data config, baseline bytes, manifest so far)."""
    from safetensors.torch import load as load_safetensors

    from sqz import storage
    from sqz.config import DataConfig, config_from_dict, config_to_dict
    from sqz.data import check_data_url, num_classes_of
    from sqz.models import build_model, list_models
    from sqz.runs import RunLayout

    storage.check_url(args.storage, option="--storage")
    if args.run_id is not None and not args.run_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--run-id: {args.run_id!r} must be letters, digits, '-' or '_'")
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint  # inherited by Ray's workers
    checkpoint_url, source = _source(args)
    source_config = source.get("config", {})
    if args.data is not None:
        check_data_url(args.data)
        data = DataConfig(url=args.data)
    elif "data" in source or "data" in source_config:
        data = config_from_dict(DataConfig, source.get("data") or source_config["data"])
    else:
        data = DataConfig(url="digits")
    model_name = args.model or source.get("arch", {}).get("name") or source_config.get("train", {}).get("model") or "squeezenet_small"
    if model_name not in list_models():
        raise ValueError(f"--model: unknown model {model_name!r}; choose one of {', '.join(list_models())}")
    arch = {"name": model_name, "kwargs": {"num_classes": num_classes_of(data)}}
    baseline = storage.read_bytes(checkpoint_url)
    try:
        build_model(model_name, **arch["kwargs"]).load_state_dict(load_safetensors(baseline))
    except Exception as exc:  # a wrong file, model or class count: say which, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--checkpoint: {checkpoint_url} does not load into {model_name} with "
                         f"{arch['kwargs']['num_classes']} classes: {first[:200]}") from None  # fmt: skip
    digest = hashlib.sha256(baseline).hexdigest()
    key = json.dumps({"checkpoint_sha256": digest, "arch": arch, "data": config_to_dict(data)}, sort_keys=True)
    run_id = args.run_id or f"sweep-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    layout = RunLayout(storage.join(storage.absolute(args.storage), run_id))
    manifest = json.loads(storage.read_bytes(layout.manifest_url)) if storage.exists(layout.manifest_url) else {}
    if manifest and manifest.get("kind") != "sweep":
        raise ValueError(f"--run-id: {run_id} is a `sqz run` folder; sweeps of a checkpoint go in their own run")
    if manifest.get("checkpoint_sha256", digest) != digest:
        raise ValueError(f"--run-id: run {run_id} was made from another checkpoint; choose a new --run-id")
    if not storage.exists(layout.baseline_url):
        storage.write_bytes(layout.baseline_url, baseline)
    from sqz import __version__

    manifest.update(run_id=run_id, kind="sweep", sqz_version=__version__, python=platform.python_version(),
                    checkpoint_url=checkpoint_url, checkpoint_sha256=digest, arch=arch, data=config_to_dict(data))  # fmt: skip
    if source_config.get("train") or source.get("train"):  # the baseline's training: what lr rewinding replays
        manifest["train"] = source_config.get("train") or source.get("train")
    return layout, arch, data, baseline, manifest


def _write_manifest(layout: Any, manifest: dict[str, Any]) -> None:
    from sqz import storage

    storage.write_bytes(layout.manifest_url, json.dumps(manifest, indent=2, sort_keys=True).encode())


def _evaluate_baseline(layout: Any, arch: dict[str, Any], data: Any, baseline: bytes) -> None:
    """The baseline's validation accuracy, once per run (the `evaluations` table)."""
    from safetensors.torch import load as load_safetensors
    from torch.utils.data import DataLoader

    from sqz import engine, metrics
    from sqz.data import load_split
    from sqz.models import build_model

    rows = metrics.read_table(layout.run_url, "evaluations").to_pylist()
    if any(r["model"] == "baseline" and r["split"] == "val" for r in rows):
        return
    model = build_model(arch["name"], **arch["kwargs"])
    model.load_state_dict(load_safetensors(baseline))
    result = engine.evaluate(model, DataLoader(load_split(data, "val"), batch_size=256))
    row = {"run_id": layout.run_id, "model": "baseline", "dataset": data.url, "split": "val",
           "top1": result.top1, "top5": result.top5, "images": result.images}  # fmt: skip
    metrics.write_rows(layout.run_url, "evaluations", [row], writer_id="baseline-val")


def _print_and_write_report(layout: Any, max_drop: float) -> None:
    from sqz import metrics
    from sqz.report import format_run_summary, load_run, write_run_report

    baseline, trials = load_run(layout.run_url)
    finished = {t["trial_id"] for t in trials}
    stopped = len({r["trial_id"] for r in metrics.read_table(layout.run_url, "sweep_stopped").to_pylist()} - finished)
    print(format_run_summary(layout.run_id, baseline, trials, max_drop, stopped=stopped), flush=True)
    if trials:
        summary = write_run_report(layout.report_url, run_id=layout.run_id, baseline=baseline, trials=trials, max_drop=max_drop)
        print(f"pareto plot: {summary['plot_url']}\nreport: {summary['report_url']}", flush=True)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ------------------------------------------------------------------ commands


# The settings that shape a trial's result under one grid-point name.
_TRIAL_SETTINGS = ("retrain_epochs", "retrain_lr", "retrain_optimizer", "quant", "retrain_steps", "prune_schedule",
                   "prune_frequency", "prune_ramp", "retrain_lr_schedule", "retrain_loss", "dense_below")  # fmt: skip


def cmd_sweep(args: argparse.Namespace) -> int:
    from sqz.config import QuantConfig, SweepConfig, config_to_dict

    max_drops = args.max_drops if args.max_drops is not None else ((0.5, 1.0, 2.0, 4.0) if args.per_layer and not args.size_budgets else ())
    if not args.per_layer and (args.max_drops or args.size_budgets):
        raise ValueError("--max-drops/--size-budgets: targets are only used with --per-layer")
    sweep_cfg = SweepConfig(
        thresholds=args.thresholds, bits=args.bits, prune_mode=args.prune_mode, **retrain_settings(args),
        max_concurrent=args.max_concurrent, max_top1_drop=args.max_drop,
        quant=quant_config(args), cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial, scheduler="asha" if args.asha else "fifo", per_layer=args.per_layer,
        max_drops=max_drops, size_budgets=args.size_budgets or (), sensitivity_images=args.sensitivity_images,
    )  # fmt: skip
    layout, arch, data, baseline, manifest = _prepare(args)
    # Trials of one run share a row table keyed by grid point, so the settings that shape a
    # trial's result must not change under them: a different retrain needs another run.
    settings = {k: v for k, v in config_to_dict(sweep_cfg).items()
                if k in _TRIAL_SETTINGS}  # fmt: skip
    earlier = manifest.get("trial_settings")
    # A run swept before a setting existed had its default then: compare only what it recorded.
    if earlier is not None and any(k in earlier and earlier[k] != settings[k] for k in settings):
        changed = ", ".join(f"{k}={earlier.get(k)!r}" for k in settings if k in earlier and earlier[k] != settings[k])
        raise ValueError(f"--retrain-*/--prune-*/--finetune-epochs/--weighting/--distill-*: run {layout.run_id} was swept with "
                         f"{changed}; keep them or choose a new --run-id")  # fmt: skip
    if sweep_cfg.retrain_lr_schedule == "rewind":
        from sqz.config import config_from_dict, TrainConfig

        source_train = manifest.get("train")
        if not source_train:
            raise ValueError("--lr-rewind: needs the baseline's training schedule; give a `sqz run` folder as --checkpoint")
        config_from_dict(TrainConfig, source_train)
    manifest["trial_settings"] = settings
    _write_manifest(layout, manifest)
    _evaluate_baseline(layout, arch, data, baseline)
    print(f"[sqz] sweep run {layout.run_id} -> {layout.run_url}", flush=True)

    from sqz.distributed.cluster import ray_session
    from sqz.distributed.sweep import sweep

    try:
        with ray_session(args.ray_address, workdir="."):
            sweep(layout, sweep_cfg, data, arch)
    except RuntimeError as exc:
        print(f"sqz sweep: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    _print_and_write_report(layout, args.max_drop)
    return 0


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from sqz.config import SensitivityConfig

    config = SensitivityConfig(thresholds=args.thresholds, bits=args.bits, prune_mode=args.prune_mode,
                               images=args.images, max_concurrent=args.max_concurrent,
                               cpus_per_task=args.cpus_per_task)  # fmt: skip
    layout, arch, data, _, manifest = _prepare(args)
    _write_manifest(layout, manifest)
    print(f"[sqz] sensitivity run {layout.run_id} -> {layout.run_url}", flush=True)

    from sqz.distributed.cluster import ray_session
    from sqz.distributed.sensitivity import run_sensitivity

    try:
        with ray_session(args.ray_address, workdir="."):
            rows = run_sensitivity(layout, config, data, arch)
    except RuntimeError as exc:
        print(f"sqz sensitivity: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    from sqz.compress.prune import prunable_parameters
    from sqz.models import build_model

    print(format_sensitivity(rows, config, list(prunable_parameters(build_model(arch["name"], **arch["kwargs"])))))
    return 0


def format_sensitivity(rows: list[dict[str, Any]], config: Any, layers: list[str]) -> str:
    """One line per layer, in network order: weights, then the top-1 change (points) per
    threshold and per bit width."""
    from sqz.sensitivity import prune_levels

    base = next(r for r in rows if r["kind"] == "baseline")
    levels, widths = prune_levels(config), [int(b) for b in config.bits]
    curves: dict[str, dict[Any, float]] = {}
    for r in rows:
        if r["kind"] in ("prune", "bits") and r["images"] == base["images"]:
            key = ("t", r["threshold"]) if r["kind"] == "prune" else ("b", r["bits"])
            curves.setdefault(r["layer"], {"weights": r["weights"]})[key] = r["top1"] - base["top1"]
    header = f"{'layer':34} {'weights':>8} " + " ".join(f"{'t=' + format(t, 'g'):>6}" for t in levels)
    header += "  " + " ".join(f"{'b=' + str(b):>6}" for b in widths)
    lines = [f"baseline top-1 {base['top1']:.2f} on {base['images']} validation images; "
             f"entries: top-1 change in points with only that layer pruned (t) or quantized (b)", header]  # fmt: skip
    for layer in (name for name in layers if name in curves):
        curve = curves[layer]
        line = f"{layer:34} {curve['weights']:>8,} " + " ".join(f"{curve.get(('t', t), float('nan')):>+6.1f}" for t in levels)
        lines.append(line + "  " + " ".join(f"{curve.get(('b', b), float('nan')):>+6.1f}" for b in widths))
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from sqz import storage
    from sqz.runs import RunLayout

    manifest_url = storage.join(args.run_url, "manifest.json")
    if not storage.exists(manifest_url):
        raise ValueError(f"run_url: {args.run_url} is not a run folder (no manifest.json)")
    manifest = json.loads(storage.read_bytes(manifest_url))
    max_drop = args.max_drop
    if max_drop is None:
        max_drop = float(manifest.get("config", {}).get("sweep", {}).get("max_top1_drop", 1.0))
    _print_and_write_report(RunLayout(storage.absolute(args.run_url)), max_drop)
    return 0
