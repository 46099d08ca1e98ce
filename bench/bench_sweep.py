"""Sweep throughput: trials per minute for a 4 x 2 grid (thresholds x bits) on the digits
model, with 1 and with 2 concurrent Ray Tune trials (one CPU each), on one local Ray.
Each concurrency level sweeps into a fresh run folder, so nothing is reused. Figures
only, no asserts; the load average is printed because other work on the machine moves them.

    .venv/bin/python bench/bench_sweep.py [--checkpoint model.safetensors] [--retrain-epochs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _train_baseline(epochs: int) -> bytes:
    import torch
    from safetensors.torch import save
    from torch.utils.data import DataLoader

    from sqz import engine
    from sqz.config import DataConfig
    from sqz.data import load_split
    from sqz.models import build_model

    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    loader = DataLoader(load_split(DataConfig(), "train"), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    optimizer = engine.make_optimizer(model.parameters(), "adamw", lr=5e-4, weight_decay=2e-4)  # 1e-3 can stall at chance
    for _ in range(epochs):
        engine.train_one_epoch(model, loader, optimizer)
    return save(model.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="digits squeezenet_small safetensors (default: train one, 4 epochs)")
    parser.add_argument("--storage", default=".work/bench-sweep", help="where the benchmark runs go")
    parser.add_argument("--thresholds", default="0.3,0.6,0.9,1.2")
    parser.add_argument("--bits", default="8,6")
    parser.add_argument("--retrain-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--concurrency", default="1,2", help="concurrent trials to compare")
    parser.add_argument("--record", action="store_true", help="write bench/results/sweep.json (bench/results.py)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from sqz import storage
    from sqz.config import DataConfig, QuantConfig, SweepConfig
    from sqz.distributed.cluster import ray_session
    from sqz.distributed.sweep import sweep
    from sqz.runs import RunLayout

    baseline = storage.read_bytes(args.checkpoint) if args.checkpoint else _train_baseline(4)
    thresholds = tuple(float(t) for t in args.thresholds.split(","))
    bits = tuple(int(b) for b in args.bits.split(","))
    levels = [int(c) for c in args.concurrency.split(",")]
    arch = {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}
    results = []
    with ray_session(workdir=".", num_cpus=max(levels)):
        for concurrent in levels:
            config = SweepConfig(thresholds=thresholds, bits=bits, retrain_epochs=args.retrain_epochs,
                                 quant=QuantConfig(finetune_epochs=args.finetune_epochs),
                                 max_concurrent=concurrent, cpus_per_trial=1.0)  # fmt: skip
            layout = RunLayout(storage.join(storage.absolute(args.storage), f"bench-{int(time.time())}-c{concurrent}"))
            storage.write_bytes(layout.baseline_url, baseline)
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            rows = sweep(layout, config, DataConfig(), arch)
            wall = time.perf_counter() - start
            results.append((concurrent, len(rows), wall, statistics.mean(r["wall_s"] for r in rows), load_before, os.getloadavg()[0]))

    print(f"\nsqz sweep throughput: {len(thresholds)} x {len(bits)} grid, digits squeezenet_small, retrain "
          f"{args.retrain_epochs} + fine-tune {args.finetune_epochs} epoch(s), 1 CPU per trial, {os.cpu_count()} CPU(s)")  # fmt: skip
    print(f"{'concurrent':>10} {'trials':>6} {'wall s':>8} {'trials/min':>10} {'mean trial s':>12} {'load 1m before/after':>21}")
    for concurrent, trials, wall, mean_trial, before, after in results:
        print(f"{concurrent:>10} {trials:>6} {wall:>8.1f} {60 * trials / wall:>10.2f} {mean_trial:>12.1f} {before:>10.2f}/{after:<10.2f}")
    if len(results) >= 2:
        base = results[0][1] / results[0][2]
        for concurrent, trials, wall, *_ in results[1:]:
            print(f"speed-up {concurrent} vs {results[0][0]} concurrent: {trials / wall / base:.2f}x trials per minute")
    if args.record:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from results import record

        figures = {
            "title": "Sweep throughput: concurrent Ray Tune trials on one machine",
            "tables": [{"title": f"{len(thresholds)} x {len(bits)} grid, digits squeezenet_small, retrain {args.retrain_epochs} + "
                                 f"fine-tune {args.finetune_epochs} epoch(s), 1 CPU per trial, {os.cpu_count()} CPU(s)",
                        "columns": ["concurrent", "trials", "wall s", "trials/min", "mean trial s", "load 1m before", "load 1m after"],
                        "rows": [[c, n, round(w, 1), round(60 * n / w, 2), round(m, 1), round(b, 2), round(a, 2)]
                                 for c, n, w, m, b, a in results]}],
        }  # fmt: skip
        print(f"recorded {record('sweep', figures, command='python bench/bench_sweep.py ' + ' '.join(sys.argv[1:]))}")


if __name__ == "__main__":
    main()
