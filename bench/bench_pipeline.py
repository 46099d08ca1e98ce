"""End-to-end demo timings: runs the demo's pipeline (a fresh run id each time, so nothing
is reused) and prints the wall seconds of each stage. Figures only, no asserts.

    make bench        # or: .venv/bin/python bench/bench_pipeline.py [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=".work/bench", help="where the benchmark runs go")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    from sqz.cli import prefect_defaults

    prefect_defaults()

    from flows.pipeline_flow import squeeze_pipeline
    from sqz.config import PipelineConfig, TrainConfig, config_to_dict

    config = PipelineConfig(train=TrainConfig(epochs=args.epochs), storage_url=args.storage)
    start = time.perf_counter()
    summary = squeeze_pipeline(config=config_to_dict(config), run_id=f"bench-{int(time.time())}")
    total = time.perf_counter() - start
    print(f"\nsqz demo pipeline on {os.cpu_count()} CPU(s), {len(summary['trials'])} trials")
    print(f"{'stage':12} {'wall s':>8}")
    for stage, seconds in summary["stage_seconds"].items():
        print(f"{stage:12} {seconds:8.1f}")
    print(f"{'prefect+other':12} {total - sum(summary['stage_seconds'].values()):8.1f}")
    print(f"{'total':12} {total:8.1f}")


if __name__ == "__main__":
    main()
