"""Training throughput: a plain single-process torch loop vs Ray Train with 1 and 2
workers, at the same global batch on the same synthetic 224x224 images; and, when a GPU
is present, images/s per GPU with AMP + channels_last vs plain float32. Figures only.

    .venv/bin/python bench/bench_train.py                 # CPU: plain vs Ray Train
    .venv/bin/python bench/bench_train.py --only gpu      # GPU: AMP + channels_last vs fp32

The plain loop and every Ray worker run the same ``engine.train_one_epoch``; images/s is
that of the second epoch (the first warms up allocators and threads), over the training
wall time of the slowest worker. The Ray runs use the real launcher (``sqz.distributed.
train.train``). Every process gets ``--threads`` torch threads (Ray sets a worker's
OMP_NUM_THREADS from its CPUs), so 1 worker has exactly the plain loop's compute and 2
workers have twice it. On a shared machine other load moves single figures a lot, so
the three set-ups are run in turn for ``--rounds`` rounds (all with the local Ray up),
and the best and the median are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqz import engine  # noqa: E402
from sqz.models import build_model  # noqa: E402


def plain_cpu(model_name: str, data_cfg, threads: int, epochs: int) -> list[float]:
    """images/s of each epoch after a warm-up epoch."""
    from sqz.data import load_split

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10)
    optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
    loader = DataLoader(load_split(data_cfg, "train"), batch_size=data_cfg.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    engine.train_one_epoch(model, loader, optimizer)  # warm-up epoch
    return [engine.train_one_epoch(model, loader, optimizer).images_per_s for _ in range(epochs)]


def ray_train(model_name: str, data_cfg, workers: int, threads_per_worker: int, epochs: int, run_url: str) -> tuple[list[float], float]:
    """(images/s of each epoch after the first, wall seconds of the whole fit incl. start-up)."""
    from sqz import metrics
    from sqz.config import TrainConfig
    from sqz.distributed.train import train
    from sqz.runs import RunLayout

    cfg = TrainConfig(model=model_name, epochs=epochs + 1, optimizer="sgd", lr=0.01, workers=workers,
                      cpus_per_worker=threads_per_worker, keep_checkpoints=1)  # fmt: skip
    layout = RunLayout(run_url)
    start = time.perf_counter()
    train(layout, cfg, data_cfg)
    wall = time.perf_counter() - start
    rows = metrics.read_table(layout.run_url, "train_epochs").to_pylist()
    return [r["images_per_s"] for r in rows if r["epoch"] >= 1], wall


def gpu(model_name: str, batch: int, steps: int, compile_model: bool) -> list[tuple[str, float, float]]:
    """Per setting: its name, images/s and the share of wall time spent waiting for data."""
    device = torch.device("cuda")
    # Batches made on the GPU beforehand and cycled: the figure is the GPU's training
    # throughput. Collating 256 224x224 images from a TensorDataset on the host each step
    # (the loader this used before) took longer than the step itself on an H200 (4.6-5.2k
    # images/s, AMP or not); decoding real images is bench_input_pipeline's.
    staged = [(torch.randn(batch, 3, 224, 224, device=device), torch.randint(0, 1000, (batch,), device=device))
              for _ in range(min(steps, 8))]  # fmt: skip
    loader = [staged[i % len(staged)] for i in range(steps)]
    results = []
    settings = [("fp32, NCHW", None, False), (f"AMP {engine.resolve_amp('auto', device)}, channels_last",
                                              engine.resolve_amp("auto", device), True)]  # fmt: skip
    for label, amp_dtype, channels_last in settings:
        torch.manual_seed(0)
        model = build_model(model_name, num_classes=1000).to(
            device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
        optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
        scaler = engine.make_grad_scaler(amp_dtype, device)
        runner = torch.compile(model) if compile_model else model
        options = dict(device=device, amp_dtype=amp_dtype, scaler=scaler, channels_last=channels_last)
        engine.train_one_epoch(runner, loader, optimizer, **options)  # warm-up (and compile)
        torch.cuda.synchronize()
        stats = engine.train_one_epoch(runner, loader, optimizer, **options)  # syncs at its end (loss.item)
        results.append((label + (", compiled" if compile_model else ""), stats.images_per_s, stats.data_wait_s / stats.wall_s))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["cpu", "gpu"], default=None, help="run one part (default: both, gpu if present)")
    parser.add_argument("--model", default="squeezenet1_1", help="model (default: squeezenet1_1, the cheaper of the two)")
    parser.add_argument("--batch", type=int, default=32, help="global batch on CPU (default: 32)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default: 1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of plain, Ray x1, Ray x2 (default: 2)")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per run, after one warm-up (default: 2)")
    parser.add_argument("--gpu-batch", type=int, default=256, help="batch per GPU (default: 256)")
    parser.add_argument("--gpu-steps", type=int, default=40, help="timed steps on the GPU (default: 40)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile on the GPU")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/train-cpu.json and train-gpu-<device>.json (bench/results.py)")  # fmt: skip
    args = parser.parse_args()

    if args.only in (None, "cpu"):
        from sqz.config import DataConfig

        threads = args.threads
        # 600 synthetic 224x224 images; half for training: 10 steps of 32 per epoch.
        data_cfg = DataConfig(url="synthetic", image_size=224, batch_size=args.batch, val_fraction=0.5)
        setups = [f"plain torch loop, 1 process x {threads} thr"] + [f"Ray Train, {w} worker(s) x {threads} thr" for w in (1, 2)]
        speeds: dict[str, list[float]] = {name: [] for name in setups}
        walls: dict[str, list[float]] = {name: [] for name in setups}
        from sqz.distributed.cluster import ray_session

        with tempfile.TemporaryDirectory(prefix="sqz-bench-") as storage, ray_session(workdir=storage, num_cpus=2 * threads):
            for round_ in range(args.rounds):
                speeds[setups[0]] += plain_cpu(args.model, data_cfg, threads, args.epochs)
                for workers, name in ((1, setups[1]), (2, setups[2])):
                    run_url = os.path.join(storage, f"ray-{workers}-{round_}")
                    epoch_speeds, wall = ray_train(args.model, data_cfg, workers, threads, args.epochs, run_url)
                    speeds[name] += epoch_speeds
                    walls[name].append(wall)
        base = max(speeds[setups[0]])
        print(f"\n{args.model}, synthetic 224x224, global batch {args.batch}, {os.cpu_count()} cores, "
              f"torch {torch.__version__}; {args.rounds} rounds x {args.epochs} timed epochs each")  # fmt: skip
        print(f"{'setup':36} {'best img/s':>10} {'vs plain':>9} {'median':>7} {'vs plain':>9} {'fit wall s':>10}")
        median_base = statistics.median(speeds[setups[0]])
        rows = []
        for name in setups:
            best, median = max(speeds[name]), statistics.median(speeds[name])
            wall = f"{statistics.median(walls[name]):10.1f}" if walls[name] else ""
            print(f"{name:36} {best:10.1f} {100 * (best / base - 1):+8.1f}% {median:7.1f} "
                  f"{100 * (median / median_base - 1):+8.1f}% {wall}")  # fmt: skip
            rows.append([name, round(best, 1), f"{100 * (best / base - 1):+.1f}%", round(median, 1),
                         f"{100 * (median / median_base - 1):+.1f}%", round(statistics.median(walls[name]), 1) if walls[name] else None])  # fmt: skip
        if args.record:
            _record("train-cpu", {
                "title": f"Training throughput on CPU: plain torch loop vs Ray Train ({args.model})",
                "tables": [{"title": f"{args.model}, synthetic 224x224, global batch {args.batch}, {os.cpu_count()} cores, "
                                     f"{args.rounds} rounds x {args.epochs} timed epochs each",
                            "columns": ["setup", "best img/s", "vs plain", "median", "vs plain", "fit wall s"], "rows": rows}],
                "load_average_1m": round(os.getloadavg()[0], 2),
            })  # fmt: skip

    if args.only == "gpu" or (args.only is None and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            sys.exit("bench_train: --only gpu needs CUDA; none on this machine")
        results = gpu(args.model, args.gpu_batch, args.gpu_steps, False)
        if args.compile:
            results += gpu(args.model, args.gpu_batch, args.gpu_steps, True)
        print(f"\n{args.model}, 224x224, batch {args.gpu_batch} on one {torch.cuda.get_device_name()}, "
              f"torch {torch.__version__}")  # fmt: skip
        print(f"{'setting':44} {'images/s':>9} {'vs fp32':>8} {'data wait':>10}")
        for name, speed, waiting in results:
            print(f"{name:44} {speed:9.0f} {speed / results[0][1]:7.2f}x {100 * waiting:9.1f}%")
        if args.record:
            device = torch.cuda.get_device_name()
            best_name, best_speed, _ = max(results, key=lambda r: r[1])
            _record(f"train-gpu-{re.sub(r'[^a-z0-9]+', '-', device.lower()).strip('-')}", {
                "title": f"Training throughput on one {device} ({args.model}, synthetic images staged on the GPU)",
                "headline": {f"training {args.model}, {best_name}, one GPU": f"{best_speed:,.0f} img/s"},
                "tables": [{"title": f"{args.model}, 224x224, batch {args.gpu_batch} (no input pipeline in the figure)",
                            "columns": ["setting", "images/s", "vs fp32", "data wait"],
                            "rows": [[n, round(v), f"{v / results[0][1]:.2f}x", f"{100 * w:.1f}%"] for n, v, w in results]}],
            })  # fmt: skip


def _record(name: str, figures: dict) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results import record

    print(f"recorded {record(name, figures, command='python bench/bench_train.py ' + ' '.join(sys.argv[1:]))}")


if __name__ == "__main__":
    main()
