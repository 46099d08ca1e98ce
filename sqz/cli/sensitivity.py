"""`sqz sensitivity`: per-layer accuracy vs pruning threshold and vs bits, in parallel on
Ray, as the sensitivity_analysis flow (in the checkpoint's run folder, as `sqz sweep`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqz.cli.args import bits_list, positive_float, positive_int, thresholds_list
from sqz.cli.flowrun import run_flow
from sqz.cli.options import local_ray_cpus
from sqz.cli.sweep import add_checkpoint_options, plan_checkpoint_run
from sqz.cli.tables import print_table

__all__ = ["add_parser", "command"]


def add_parser(sub: Any) -> None:
    sens = sub.add_parser("sensitivity", help="per-layer accuracy vs pruning threshold and vs bits, in parallel on Ray",
                          description="For each conv/linear layer alone: top-1 on a fixed validation subset with the "
                          "layer pruned at each threshold, and quantized at each bit width; plus every layer's encoded "
                          "bytes at each (threshold, bits). Written to the run's `sensitivity` Parquet table.")  # fmt: skip
    add_checkpoint_options(sens)
    sens.add_argument("--thresholds", type=thresholds_list, default=(0.3, 0.6, 0.9, 1.2, 1.5),
                      help="pruning thresholds, comma-separated (default: 0.3,0.6,0.9,1.2,1.5)")  # fmt: skip
    sens.add_argument("--bits", type=bits_list, default=(8, 6, 5, 4, 3),
                      help="bit widths, comma-separated, each in 1..8 (default: 8,6,5,4,3)")  # fmt: skip
    sens.add_argument("--images", type=positive_int, default=512, help="validation images to evaluate on (default: 512)")
    sens.add_argument("--cpus-per-task", type=positive_float, default=1.0, help="CPUs per unit of work (default: 1)")


def command(args: argparse.Namespace) -> int:
    from sqz.config import SensitivityConfig, config_to_dict

    config = SensitivityConfig(thresholds=args.thresholds, bits=args.bits, prune_mode=args.prune_mode,
                               images=args.images, max_concurrent=args.max_concurrent,
                               cpus_per_task=args.cpus_per_task)  # fmt: skip
    plan = plan_checkpoint_run(args)  # every conflict fails here, before any work

    def flow():
        from flows.sensitivity_flow import sensitivity_analysis

        return sensitivity_analysis

    try:
        table = run_flow(flow, f"{plan['run_id']}/sensitivity", plan=plan, sensitivity_config=config_to_dict(config),
                         ray_address=args.ray_address, num_cpus=local_ray_cpus(config.cpus_per_task))  # fmt: skip
    except RuntimeError as exc:
        text = str(exc).strip()
        print(f"sqz sensitivity: error: {text.splitlines()[0] if text else type(exc).__name__}", file=sys.stderr)
        return 1
    print(f"baseline top-1 {table['baseline_top1']:.2f} on {table['images']} validation images; "
          "entries: top-1 change in points with only that layer pruned (t) or quantized (b)")  # fmt: skip
    print_table(table["headers"], table["rows"])
    return 0
