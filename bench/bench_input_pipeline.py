"""Training input pipeline speed: images per second per core of decode + RandomResizedCrop
+ flip to a normalised tensor batch, on the same generated ImageNet-like JPEGs (about
500x375), for

  1. torchvision ImageFolder + DataLoader (PIL decode, the classic recipe);
  2. sqz's folder reader + DataLoader (TorchCodec decode, uint8 crops, batched normalise);
  3. sqz's Parquet shards + DataLoader (pyarrow reads, same decode);
  4. sqz's Parquet shards + Ray Data (read_parquet -> map_batches decode, as Ray Train uses it).

Two per-core figures: wall images/s divided by the cores given to decoding (DataLoader
workers, or Ray CPUs), and images per CPU-second actually spent by every process of the
pipeline (the consumer and DataLoader workers via getrusage, Ray's tasks via Ray Data's
own stats) - what a core buys, which barely moves when other jobs share the machine.
Each pipeline runs a warm-up pass, then timed passes; the best is shown. Then two
pipelines feed a real training step (engine.train_one_epoch), whose data-wait is
reported apart from compute. Figures only, no asserts.

    .venv/bin/python bench/bench_input_pipeline.py [--images 2048] [--cores 1] [--train-images 128]
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# The generated JPEGs are the tests' (tests/imagegen.py): test data, not part of sqz.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))


def _cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (DataLoader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Pipeline:
    name: str
    make: Callable[[], Iterable]  # a fresh iterable of (inputs, targets) for one pass
    last_ray_dataset: Callable[[], Any] | None = None  # Ray: the dataset the last pass ran


def _timed_pass(pipeline: Pipeline) -> tuple[int, float, float, float]:
    """(images, wall s, CPU s of every process involved, s to the first batch) of one pass."""
    cpu, start, images, first = _cpu_seconds(), time.perf_counter(), 0, 0.0
    for inputs, _ in pipeline.make():  # exhausting a DataLoader joins (reaps) its workers
        first = first or time.perf_counter() - start
        images += len(inputs)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    if pipeline.last_ray_dataset is not None:
        cpu += _ray_task_cpu_seconds(pipeline.last_ray_dataset().get_stats_summary())
    return images, wall, cpu, first


def _ray_task_cpu_seconds(summary) -> float:
    """CPU time of every Ray Data task of the execution (list, read, decode operators)."""
    own = sum(op.cpu_time.sum for op in summary.operators_stats if op.cpu_time is not None)
    return own + sum(_ray_task_cpu_seconds(parent) for parent in summary.parents)


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".work/bench-input", help="generated images and shards go here (reused)")
    parser.add_argument("--images", type=int, default=2048, help="training images to generate (default 2048)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--cores", type=int, default=1, help="DataLoader workers / Ray CPUs for decoding (default 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="crop size (default 224)")
    parser.add_argument("--passes", type=int, default=2, help="timed passes per pipeline (default 2)")
    parser.add_argument("--train-model", default="squeezenet1_1", help="model for the data-wait pass")
    parser.add_argument("--train-images", type=int, default=128, help="images in the data-wait pass (0: skip it)")
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    from sqz import engine
    from sqz.config import DataConfig
    from sqz.data import load_split, make_loader, read_manifest
    from sqz.data.prepare import prepare
    from sqz.models import build_model
    from imagegen import synthetic_wnids, write_imagenet_folder

    torch.set_num_threads(1)  # the consumer: one thread, as a training process per core would be
    src, dest = os.path.join(args.workdir, "src"), os.path.join(args.workdir, "parquet")
    per_class = max(1, args.images // args.classes)
    marker = os.path.join(src, f".generated-{args.classes}x{per_class}")
    if not os.path.exists(marker):
        start = time.perf_counter()
        write_imagenet_folder(src, classes=synthetic_wnids(args.classes), per_class=per_class, splits=("train",))
        open(marker, "w").close()
        print(f"generated {args.classes * per_class} JPEGs in {time.perf_counter() - start:.1f} s")
    prepare(src, dest, shard_mb=32, workers=2, progress=False)
    manifest = read_manifest(dest)
    train = manifest["splits"]["train"]
    n, mb = train["images"], sum(s["bytes"] for s in train["shards"]) / 1e6
    print(f"{n} JPEGs of about 500x375, {mb / n * 1000:.0f} kB each, {len(train['shards'])} Parquet shard(s); "
          f"{args.cores} decode core(s), batch {args.batch_size}, crop {args.size}; this machine has "
          f"{os.cpu_count()} CPUs")  # fmt: skip

    classic = datasets.ImageFolder(os.path.join(src, "train"), transform=transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]))  # fmt: skip
    folder_cfg = DataConfig(url=src, image_size=args.size, batch_size=args.batch_size)
    parquet_cfg = DataConfig(url=dest, image_size=args.size, batch_size=args.batch_size)
    pipelines = [
        Pipeline("torchvision ImageFolder + DataLoader", lambda: DataLoader(
            classic, batch_size=args.batch_size, shuffle=True, num_workers=args.cores)),
        Pipeline("sqz folder + DataLoader", lambda: make_loader(
            load_split(folder_cfg, "train"), batch_size=args.batch_size, shuffle=True, num_workers=args.cores)),
        Pipeline("sqz Parquet + DataLoader", lambda: make_loader(
            load_split(parquet_cfg, "train"), batch_size=args.batch_size, num_workers=args.cores)),
    ]  # fmt: skip

    from sqz.distributed.cluster import ray_session

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    rates: dict[str, float] = {}
    with ray_session(workdir=args.workdir, num_cpus=args.cores):
        import ray.data

        from sqz.distributed.stream import StreamedBatches, image_dataset

        ray.data.DataContext.get_current().enable_progress_bars = False
        current: dict[str, Any] = {}

        def ray_batches(limit: int | None = None) -> StreamedBatches:
            dataset = image_dataset(parquet_cfg, "train")
            current["dataset"] = dataset = dataset.limit(limit) if limit else dataset
            return StreamedBatches(dataset, batch_size=args.batch_size, normalization="torchvision",
                                   shuffle_buffer=2 * args.batch_size)  # fmt: skip

        pipelines.append(Pipeline("sqz Parquet + Ray Data", ray_batches, lambda: current["dataset"]))
        print(f"\n{'pipeline':38} {'img/s':>7} {'img/s/core':>11} {'img/CPU-s':>10} {'CPU ms/img':>10} "
              f"{'1st batch s':>11}  load avg")  # fmt: skip
        for pipeline in pipelines:
            _timed_pass(pipeline)  # warm-up: worker start, page cache, Ray operators
            best = None
            for _ in range(args.passes):
                load = _load()
                images, wall, cpu, first = _timed_pass(pipeline)
                if best is None or images / wall > best[0] / best[1]:
                    best = (images, wall, cpu, first, load)
            images, wall, cpu, first, load = best
            rates[pipeline.name] = images / wall
            print(f"{pipeline.name:38} {images / wall:7.1f} {images / wall / args.cores:11.1f} {images / cpu:10.1f} "
                  f"{1000 * cpu / images:10.2f} {first:11.2f}  {load:.1f}", flush=True)  # fmt: skip

        if args.train_images:
            print(f"\ntraining step ({args.train_model}, {args.train_images} images, batch {args.batch_size}, "
                  "1 compute thread): data wait apart from compute")  # fmt: skip
            print(f"{'pipeline':38} {'wall s':>7} {'data wait s':>12} {'compute s':>10} {'img/s':>7}")
            torch.manual_seed(0)
            model = build_model(args.train_model, num_classes=args.classes)
            optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
            subset = Subset(classic, range(min(args.train_images, len(classic))))
            feeds = {
                "torchvision ImageFolder + DataLoader": lambda: DataLoader(
                    subset, batch_size=args.batch_size, shuffle=True, num_workers=args.cores),
                "sqz Parquet + Ray Data": lambda: ray_batches(limit=args.train_images),
            }  # fmt: skip
            for name, make in feeds.items():
                stats = engine.train_one_epoch(model, make(), optimizer)
                print(f"{name:38} {stats.wall_s:7.1f} {stats.data_wait_s:12.2f} "
                      f"{stats.wall_s - stats.data_wait_s:10.1f} {stats.images_per_s:7.1f}", flush=True)  # fmt: skip
    base = rates["torchvision ImageFolder + DataLoader"]
    print("\nwall img/s per core vs torchvision ImageFolder + DataLoader: "
          + ", ".join(f"{name} {rate / base:.2f}x" for name, rate in rates.items() if rate is not base))


if __name__ == "__main__":
    main()
