"""`sqz sweep`: sweep pruning thresholds x bit widths of an existing checkpoint, as the
sweep_checkpoint flow.

A sweep's run folder is ``<storage>/sweep-<digest>``, the digest taken over the
checkpoint's bytes, the model and the data (sqz.runs.manifest.sweep_run_id), so `sqz
sensitivity`, a grid sweep and a `--per-layer` sweep of the same checkpoint share one
folder (and one Pareto plot), and the same command run again resumes: it runs only the
trials without a row yet.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqz.cli.args import bits_list, list_of, non_negative_float, number, positive_float, positive_int, thresholds_list
from sqz.cli.flowrun import run_flow
from sqz.cli.options import (add_location_options, add_quant_options, add_retrain_options, check_local_gpus, local_ray_cpus,
                             quant_config, retrain_settings, use_s3_endpoint)  # fmt: skip
from sqz.cli.report import print_report

__all__ = ["add_parser", "add_checkpoint_options", "command", "plan_checkpoint_run"]


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """What `sqz sweep` and `sqz sensitivity` share: the checkpoint, its model and data,
    where the run goes, and how thresholds are read."""
    parser.add_argument("--checkpoint", required=True,
                        help="the trained model: a .safetensors state dict (path or s3:// URL), or a `sqz run` folder")  # fmt: skip
    parser.add_argument("--model", default=None, help="model name from `sqz models` (default: the run's, else squeezenet_small)")
    parser.add_argument("--data", default=None, help="digits | synthetic | a folder with train/ and val/ (default: the run's, else digits)")
    add_location_options(parser, run_id_help="run folder name (default: sweep-<digest of checkpoint, model, data>)")
    parser.add_argument("--prune-mode", choices=["std", "absolute", "density"], default="std",
                        help="how thresholds are read: q x layer std, absolute |w|, or kept density (default: std)")  # fmt: skip
    parser.add_argument("--max-concurrent", type=positive_int, default=2, help="trials (or sensitivity units) at once (default: 2)")


def add_parser(sub: Any) -> None:
    sweep = sub.add_parser("sweep", help="sweep pruning thresholds x bit widths of a trained checkpoint with Ray Tune",
                           description="One Ray Tune trial per grid point: load the checkpoint, prune, retrain with "
                           "masks, k-means quantize with centroid fine-tuning, encode .sqz, measure its bytes, evaluate. "
                           "Rerunning the same command runs only the trials still missing. Ends with the Pareto table.")  # fmt: skip
    add_checkpoint_options(sweep)
    sweep.add_argument("--thresholds", type=thresholds_list, default=(0.3, 0.6, 0.9, 1.2),
                       help="pruning thresholds, comma-separated (q x layer std by default; default: 0.3,0.6,0.9,1.2)")  # fmt: skip
    sweep.add_argument("--bits", type=bits_list, default=(8, 6), help="bit widths, comma-separated, each in 1..8 (default: 8,6)")
    add_retrain_options(sweep)
    add_quant_options(sweep)
    sweep.add_argument("--cpus-per-trial", type=positive_float, default=1.0, help="CPUs per trial; its torch threads (default: 1)")
    sweep.add_argument("--gpus-per-trial", type=non_negative_float, default=0.0, help="GPU share per trial, e.g. 0.5 (default: 0, CPU)")
    sweep.add_argument("--asha", action="store_true", help="stop retrains that trail the others early (ASHA scheduler)")
    sweep.add_argument("--per-layer", action="store_true",
                       help="choose a threshold and bit width per layer from the sensitivity analysis (run first if missing); "
                       "the thresholds and bits become each layer's candidates, one trial per target")  # fmt: skip
    sweep.add_argument("--max-drops", type=list_of(non_negative_float), default=None,
                       help="per-layer targets: predicted top-1 drops in points, comma-separated (default with --per-layer: 0.5,1,2,4)")  # fmt: skip
    sweep.add_argument("--size-budgets", type=list_of(number(int, minimum=1)), default=None,
                       help="per-layer targets: file-size budgets in bytes, comma-separated")  # fmt: skip
    sweep.add_argument("--sensitivity-images", type=positive_int, default=512, help="validation images for the sensitivity curves (default: 512)")
    sweep.add_argument("--max-drop", type=non_negative_float, default=0.5, help="top-1 points the named smallest model may lose (default: 0.5)")


def plan_checkpoint_run(args: argparse.Namespace) -> dict[str, Any]:
    from sqz.runs.claims import plan_sweep_run
    from sqz.storage import check_writable_folder

    use_s3_endpoint(args)  # the checkpoint and --storage may be on that endpoint
    check_writable_folder(args.storage, option="--storage")
    return plan_sweep_run(args.storage, args.checkpoint, run_id=args.run_id, data_url=args.data, model=args.model)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def command(args: argparse.Namespace) -> int:
    from sqz.architectures import check_sweep_densities
    from sqz.config import SweepConfig, config_to_dict
    from sqz.runs.claims import plan_sweep_trials

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
    check_local_gpus(args, sweep_cfg.gpus_per_trial, "--gpus-per-trial", "a trial")
    plan = plan_sweep_trials(plan_checkpoint_run(args), sweep_cfg)  # every conflict fails here, before any work
    # The checkpoint's model is known now: a density it cannot reach fails here, not in every trial.
    check_sweep_densities(sweep_cfg, plan["arch"], option="--thresholds", dense_option="--dense-below")

    def flow():
        from flows.sweep_flow import sweep_checkpoint

        return sweep_checkpoint

    try:
        summary = run_flow(flow, f"{plan['run_id']}/sweep", plan=plan, sweep_config=config_to_dict(sweep_cfg),
                           ray_address=args.ray_address, max_drop=args.max_drop, shared_mount=args.shared_mount,
                           num_cpus=local_ray_cpus(sweep_cfg.cpus_per_trial))  # fmt: skip
    except RuntimeError as exc:  # trials failed or the sweep was interrupted: rerunning resumes it
        print(f"sqz sweep: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    print_report(summary)
    return 0
