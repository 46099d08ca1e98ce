"""End-to-end demo timings: runs the demo's pipeline (a fresh run id each time, so nothing
is reused) and prints the wall seconds of each stage. Figures only, no asserts.

    make bench        # or: .venv/bin/python bench/bench_pipeline.py [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default=".work/bench", help="where the benchmark runs go")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--record", action="store_true", help="write bench/results/pipeline.json (bench/results.py)")
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
    if args.record:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from results import record

        stages = [[stage, round(seconds, 1)] for stage, seconds in summary["stage_seconds"].items()]
        other = total - sum(summary["stage_seconds"].values())
        figures = {
            "title": "End-to-end demo pipeline: wall seconds per stage",
            "tables": [{"title": f"the demo's pipeline ({args.epochs} epochs) on {os.cpu_count()} CPU(s), {len(summary['trials'])} trials",
                        "columns": ["stage", "wall s"], "rows": stages + [["prefect+other", round(other, 1)], ["total", round(total, 1)]]}],
            "load_average_1m": round(os.getloadavg()[0], 2),
        }  # fmt: skip
        print(f"recorded {record('pipeline', figures, command='python bench/bench_pipeline.py ' + ' '.join(sys.argv[1:]))}")


if __name__ == "__main__":
    main()
