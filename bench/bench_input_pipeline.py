"""Training input pipeline speed: images per second per core of decode + RandomResizedCrop
+ flip to a batch, on generated ImageNet-size JPEGs (about 500x375, quality 90, about
110 kB each: ImageNet's average file), in four parts:

  1. decoders per DCT scale: CPU ms per image of TorchCodec, torchvision.io and PIL at
     full size and (PIL's draft, the only one that offers it) at 1/2, 1/4, 1/8;
  2. --max-side: bytes, CPU ms per training crop, and the share of 224-px crops that
     come out upsampled, for shards re-encoded at each longer side N;
  3. pipelines (Parquet shards + DataLoader): original size or pre-resized, full or
     reduced decode, uint8 batches (normalised on the GPU) or normalised on the CPU;
     the folder reader and torchvision's ImageFolder as they were;
  4. the Ray Data path (read_parquet -> map_batches decode, as Ray Train uses it);
  5. with --gpu-train, on a CUDA machine: end-to-end training images/s of squeezenet1_0
     (bf16, channels_last) fed by the GPU decode path and by the CPU decode path on all
     the machine's cores, beside the same model on batches staged on the GPU (the
     ceiling), each with its data-wait share.

Per core: images per CPU-second spent by every process of the pipeline (the consumer and
DataLoader workers via getrusage, Ray's tasks via Ray Data's own stats), which barely
moves when other jobs share the machine; and wall images/s divided by the cores given to
decoding (pin the run to one core, `taskset -c 1`, to make that one honest too). Each
pipeline runs a warm-up pass, then timed passes; the best is shown. Figures only.

    taskset -c 1 .venv/bin/python bench/bench_input_pipeline.py [--images 1024] [--cores 1]
    python bench/bench_input_pipeline.py --gpu-train --no-ray --sweep-sides "" --images 2048   # on a GPU machine
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import math
import os
import re
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

# Every table the parts print, as bench/results.py records it (--record).
TABLES: list[dict] = []

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


def _timed_pass(pipeline: Pipeline) -> tuple[int, float, float]:
    """(images, wall s, CPU s of every process involved) of one pass."""
    cpu, start, images = _cpu_seconds(), time.perf_counter(), 0
    for inputs, _ in pipeline.make():  # exhausting a DataLoader joins (reaps) its workers
        images += len(inputs)
    wall = time.perf_counter() - start
    cpu = _cpu_seconds() - cpu
    if pipeline.last_ray_dataset is not None:
        cpu += _ray_task_cpu_seconds(pipeline.last_ray_dataset().get_stats_summary())
    return images, wall, cpu


def _ray_task_cpu_seconds(summary) -> float:
    """CPU time of every Ray Data task of the execution (list, read, decode operators)."""
    own = sum(op.cpu_time.sum for op in summary.operators_stats if op.cpu_time is not None)
    return own + sum(_ray_task_cpu_seconds(parent) for parent in summary.parents)


def _write_photo_like_jpegs(root: str, classes: list[str], per_class: int, grain: float) -> None:
    """ImageNet-size JPEGs: the tests' generated pictures plus fine grain, which brings a
    500x375 quality-90 file to ImageNet's average of about 110 kB (entropy decoding is
    most of a JPEG's decode time, so the byte count matters as much as the size)."""
    import numpy as np
    from PIL import Image

    from imagegen import _pixels

    rng = np.random.default_rng(0)
    for label, wnid in enumerate(classes):
        os.makedirs(os.path.join(root, "train", wnid), exist_ok=True)
        for i in range(per_class):
            width, height = (int(v) for v in np.array([500, 375]) + rng.integers(-40, 41, size=2))
            pixels = _pixels(rng, label, width, height).astype(np.float32) + rng.normal(scale=grain, size=(height, width, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
                os.path.join(root, "train", wnid, f"{wnid}_{i}.JPEG"), "JPEG", quality=90)  # fmt: skip


def _cpu_ms_per_item(work: Callable[[Any], Any], items: list, repeats: int = 3) -> float:
    """Best of ``repeats`` CPU ms per item (this thread only: other jobs do not count)."""
    best = math.inf
    for _ in range(repeats):
        start = time.thread_time()
        for item in items:
            work(item)
        best = min(best, (time.thread_time() - start) / len(items))
    return 1000 * best


def decoders_per_scale(jpegs: list[bytes]) -> None:
    import numpy as np
    import torch
    from PIL import Image
    from torchcodec.decoders import decode_jpeg as torchcodec_decode
    from torchvision.io import decode_jpeg as torchvision_decode

    def pil(scale: int) -> Callable[[bytes], Any]:
        def decode(data: bytes) -> Any:
            image = Image.open(io.BytesIO(data))
            if scale > 1:
                image.draft("RGB", (image.width // scale, image.height // scale))
            return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)

        return decode

    decoders: dict[str, dict[int, Callable[[bytes], Any]]] = {
        "TorchCodec decode_jpeg": {1: lambda data: torchcodec_decode(data)},
        "torchvision.io decode_jpeg": {1: lambda data: torchvision_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))},
        "PIL (draft below 1/1)": {scale: pil(scale) for scale in (1, 2, 4, 8)},
    }  # fmt: skip
    print("\n1. decoders: CPU ms per image to a uint8 (3, H, W) tensor, at each DCT scale")
    print(f"{'decoder':30} " + " ".join(f"{'1/' + str(s):>8}" for s in (1, 2, 4, 8)))
    table = {name: {s: _cpu_ms_per_item(f, jpegs) for s, f in by_scale.items()} for name, by_scale in decoders.items()}
    for name, row in table.items():
        print(f"{name:30} " + " ".join(f"{row[s]:8.2f}" if s in row else f"{'n/a':>8}" for s in (1, 2, 4, 8)))
    winners = {s: min((row[s], name) for name, row in table.items() if s in row)[1] for s in (1, 2, 4, 8)}
    print("winner per scale: " + ", ".join(f"1/{s} {name}" for s, name in winners.items()))
    TABLES.append({"title": "part 1, decoders: CPU ms per image to a uint8 (3, H, W) tensor, at each DCT scale",
                   "columns": ["decoder", "1/1", "1/2", "1/4", "1/8"],
                   "rows": [[name] + [round(row[s], 2) if s in row else "n/a" for s in (1, 2, 4, 8)] for name, row in table.items()]})  # fmt: skip


def max_side_sweep(jpegs: list[bytes], sides: list[int], size: int, quality: int) -> None:
    import torch
    from PIL import Image
    from torchvision.transforms import RandomResizedCrop

    from sqz.data import ImageTransform
    from sqz.data.prepare import shrink_image_bytes

    print(f"\n2. --max-side N (quality {quality}): stored bytes, CPU ms per {size}-px training crop (reduced decode),"
          f" share of crops upsampled (box shorter than {size} px)")  # fmt: skip
    print(f"{'N':>8} {'kB/img':>7} {'ms/img':>7} {'img/CPU-s':>9} {'upsampled':>9}")
    transform = ImageTransform(train=True, image_size=size)
    torch.manual_seed(0)
    rows = []
    TABLES.append({"title": f"part 2, --max-side N (quality {quality}): stored bytes, CPU ms per {size}-px training crop "
                            f"(reduced decode), share of crops upsampled",
                   "columns": ["N", "kB/img", "ms/img", "img/CPU-s", "upsampled"], "rows": rows})  # fmt: skip
    for side in [0, *sides]:
        stored = [shrink_image_bytes(data, side, quality) or data if side else data for data in jpegs]
        upsampled = total = 0
        for data in stored:
            header = Image.open(io.BytesIO(data))
            for _ in range(50):
                _, _, height, width = RandomResizedCrop.get_params(header, [0.08, 1.0], [3 / 4, 4 / 3])
                upsampled, total = upsampled + (min(height, width) < size), total + 1
        ms = _cpu_ms_per_item(transform, stored)
        print(f"{side or 'original':>8} {sum(map(len, stored)) / len(stored) / 1e3:7.0f} {ms:7.2f} {1000 / ms:9.0f} "
              f"{100 * upsampled / total:8.0f}%", flush=True)  # fmt: skip
        rows.append([side or "original", round(sum(map(len, stored)) / len(stored) / 1e3), round(ms, 2), round(1000 / ms),
                     f"{100 * upsampled / total:.0f}%"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".work/bench-input-110k", help="generated images and shards go here (reused)")
    parser.add_argument("--images", type=int, default=1024, help="training images to generate (default 1024)")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--grain", type=float, default=22.0, help="noise added to reach ~110 kB per file (default 22)")
    parser.add_argument("--cores", type=int, default=1, help="DataLoader workers / Ray CPUs for decoding (default 1)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--size", type=int, default=224, help="crop size (default 224)")
    parser.add_argument("--max-side", type=int, default=384, help="longer side of the pre-resized shards (default 384)")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--sweep-sides", default="512,448,384,320,256", help="max sides of part 2 ('' skips it)")
    parser.add_argument("--passes", type=int, default=2, help="timed passes per pipeline (default 2)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Data path")
    parser.add_argument("--gpu-train", action="store_true", help="part 5: training images/s on CUDA (skips 3)")
    parser.add_argument("--gpu-batch", type=int, default=256, help="part 5: batch size (default 256)")
    parser.add_argument("--gpu-epochs", type=int, default=3, help="part 5: passes per feed, the first is warm-up")
    parser.add_argument("--record", action="store_true",
                        help="write bench/results/input-pipeline.json (input-pipeline-gpu-<device>.json with --gpu-train)")  # fmt: skip
    args = parser.parse_args()
    measure(args)
    if args.record:
        _record(args)


def _record(args: argparse.Namespace) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from results import record

    headline = {}
    for table in TABLES:
        if table["title"].startswith("part 3"):
            best = max(table["rows"], key=lambda row: row[1])
            headline[f"CPU input pipeline, best path ({best[0]}), per core"] = f"{best[1]:,} img/CPU-s"
        if table["title"].startswith("part 5"):
            for row in table["rows"]:
                if row[0].startswith("GPU decode"):
                    headline["training squeezenet1_0 fed by the GPU decode path"] = f"{row[1]:,} img/s"
    name = "input-pipeline"
    if args.gpu_train:
        import torch

        name += "-gpu-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    figures = {"title": "Input pipeline: images per second per core" + (" and GPU training feed" if args.gpu_train else ""),
               "headline": headline, "tables": TABLES, "load_average_1m": round(os.getloadavg()[0], 2)}  # fmt: skip
    command = "python bench/bench_input_pipeline.py " + " ".join(sys.argv[1:])
    print(f"recorded {record(name, figures, command=command)}")


def measure(args: argparse.Namespace) -> None:

    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from sqz.config import DataConfig
    from sqz.data import load_split, make_loader, read_manifest
    from sqz.data.loaders import _CollateImages
    from sqz.data.prepare import prepare
    from imagegen import synthetic_wnids

    torch.set_num_threads(1)  # the consumer: one thread, as a training process per core would be
    src = os.path.join(args.workdir, "src")
    per_class = max(1, args.images // args.classes)
    marker = os.path.join(src, f".generated-{args.classes}x{per_class}-grain{args.grain:g}")
    if not os.path.exists(marker):
        start = time.perf_counter()
        _write_photo_like_jpegs(src, synthetic_wnids(args.classes), per_class, args.grain)
        open(marker, "w").close()
        print(f"generated {args.classes * per_class} JPEGs in {time.perf_counter() - start:.1f} s")
    shards = os.path.join(args.workdir, f"parquet-{args.classes}x{per_class}-grain{args.grain:g}")  # one per source
    original = os.path.join(shards, "original")
    resized = os.path.join(shards, f"max{args.max_side}-q{args.jpeg_quality}")
    prepare(src, original, shard_mb=32, workers=2, progress=False)
    prepare(src, resized, shard_mb=32, workers=2, progress=False, max_side=args.max_side, jpeg_quality=args.jpeg_quality)
    sizes = {url: read_manifest(url)["splits"]["train"] for url in (original, resized)}
    n = sizes[original]["images"]
    kb = {url: sum(s["bytes"] for s in entry["shards"]) / entry["images"] / 1e3 for url, entry in sizes.items()}
    print(f"{n} JPEGs of about 500x375, quality 90, {kb[original]:.0f} kB each ({kb[resized]:.0f} kB at max side "
          f"{args.max_side}); {args.cores} decode core(s), batch {args.batch_size}, crop {args.size}; "
          f"torch {torch.__version__}; this machine has {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")  # fmt: skip

    train_dir = os.path.join(src, "train")
    jpegs = [open(os.path.join(train_dir, wnid, name), "rb").read()
             for wnid in sorted(os.listdir(train_dir))[:2] for name in sorted(os.listdir(os.path.join(train_dir, wnid)))[:20]]  # fmt: skip
    decoders_per_scale(jpegs)
    if args.sweep_sides:
        max_side_sweep(jpegs, [int(s) for s in args.sweep_sides.split(",")], args.size, args.jpeg_quality)

    def parquet(url: str, *, reduced: bool, on_gpu: bool) -> Callable[[], Iterable]:
        dataset = load_split(DataConfig(url=url, image_size=args.size, batch_size=args.batch_size), "train")
        dataset.transform = dataclasses.replace(dataset.transform, reduced_decode=reduced)
        # uint8 batches are what a GPU trainer takes (normalised there); otherwise the
        # workers normalise, as for training on the CPU.
        collate = _CollateImages(None if on_gpu else "torchvision")
        return lambda: ((inputs, targets) for inputs, targets, _ in DataLoader(
            dataset, batch_size=args.batch_size, num_workers=args.cores, collate_fn=collate))  # fmt: skip

    classic = datasets.ImageFolder(train_dir, transform=transforms.Compose([
        transforms.RandomResizedCrop(args.size), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]))  # fmt: skip
    folder_cfg = DataConfig(url=src, image_size=args.size, batch_size=args.batch_size)
    side = f"max side {args.max_side}"
    pipelines = [
        Pipeline("original, full decode, uint8", parquet(original, reduced=False, on_gpu=True)),
        Pipeline("original, reduced decode, uint8", parquet(original, reduced=True, on_gpu=True)),
        Pipeline(f"{side}, full decode, uint8", parquet(resized, reduced=False, on_gpu=True)),
        Pipeline(f"{side}, reduced decode, uint8", parquet(resized, reduced=True, on_gpu=True)),
        Pipeline("original, full decode, CPU-normalised", parquet(original, reduced=False, on_gpu=False)),
        Pipeline(f"{side}, reduced decode, CPU-normalised", parquet(resized, reduced=True, on_gpu=False)),
        Pipeline("sqz folder reader (CPU-normalised)", lambda: make_loader(
            load_split(folder_cfg, "train"), batch_size=args.batch_size, shuffle=True, num_workers=args.cores)),
        Pipeline("torchvision ImageFolder", lambda: DataLoader(
            classic, batch_size=args.batch_size, shuffle=True, num_workers=args.cores)),
    ]  # fmt: skip

    def run(pipelines: list[Pipeline], title: str) -> None:
        rows = []
        TABLES.append({"title": title, "columns": ["pipeline", "img/CPU-s", "img/s/core", "CPU ms/img", "load 1m"], "rows": rows})
        for pipeline in pipelines:
            _timed_pass(pipeline)  # warm-up: worker start, page cache, Ray operators
            best = max((_timed_pass(pipeline) for _ in range(args.passes)), key=lambda r: r[0] / r[1])
            images, wall, cpu = best
            print(f"{pipeline.name:42} {images / cpu:10.0f} {images / wall / args.cores:11.0f} {1000 * cpu / images:10.2f}"
                  f"  {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
            rows.append([pipeline.name, round(images / cpu), round(images / wall / args.cores), round(1000 * cpu / images, 2),
                         round(os.getloadavg()[0], 1)])  # fmt: skip

    if args.gpu_train:
        gpu_training(args, resized)
        return
    print(f"\n3. pipelines: Parquet shards + DataLoader ({args.cores} worker(s)), then the readers as they were")
    print(f"{'pipeline':42} {'img/CPU-s':>10} {'img/s/core':>11} {'CPU ms/img':>10}  load")
    run(pipelines, f"part 3, pipelines: Parquet shards + DataLoader ({args.cores} worker(s)), then the readers as they were; "
                   f"{n} JPEGs of about 500x375 ({kb[original]:.0f} kB; {kb[resized]:.0f} kB at max side {args.max_side}), "
                   f"batch {args.batch_size}, crop {args.size}")  # fmt: skip
    if args.no_ray:
        return

    from sqz.distributed.cluster import ray_session

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    logging.getLogger("ray").setLevel(logging.WARNING)
    with ray_session(workdir=args.workdir, num_cpus=args.cores):
        import ray.data

        from sqz.distributed.stream import StreamedBatches, image_dataset

        ray.data.DataContext.get_current().enable_progress_bars = False
        current: dict[str, Any] = {}

        def ray_batches(url: str) -> Callable[[], StreamedBatches]:
            def make() -> StreamedBatches:
                current["dataset"] = image_dataset(DataConfig(url=url, image_size=args.size), "train")
                return StreamedBatches(current["dataset"], batch_size=args.batch_size, normalization="torchvision",
                                       shuffle_buffer=2 * args.batch_size)  # fmt: skip

            return make

        print(f"\n4. Ray Data: read_parquet -> map_batches decode on {args.cores} Ray CPU(s), CPU-normalised batches")
        print(f"{'pipeline':42} {'img/CPU-s':>10} {'img/s/core':>11} {'CPU ms/img':>10}  load")
        run([Pipeline("Ray Data, original, reduced decode", ray_batches(original), lambda: current["dataset"]),
             Pipeline(f"Ray Data, {side}, reduced decode", ray_batches(resized), lambda: current["dataset"])],
            f"part 4, Ray Data: read_parquet -> map_batches decode on {args.cores} Ray CPU(s), CPU-normalised batches")  # fmt: skip


def gpu_training(args: argparse.Namespace, url: str) -> None:
    """Part 5: the same model and optimizer fed three ways; images/s of the passes after
    the first (cuDNN autotuning, worker start-up), and the share of wall time spent
    waiting for data."""
    import torch

    from sqz import engine
    from sqz.config import DataConfig
    from sqz.data import load_split, make_loader
    from sqz.data.gpu import check_gpu_decode
    from sqz.models import build_model

    check_gpu_decode()
    torch.backends.cudnn.benchmark = True
    cores = os.cpu_count() or 1
    config = DataConfig(url=url, image_size=args.size, batch_size=args.gpu_batch)
    model = build_model("squeezenet1_0", num_classes=1000).cuda().to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
    staged = [(torch.randn(args.gpu_batch, 3, args.size, args.size, device="cuda").to(memory_format=torch.channels_last),
               torch.randint(0, 1000, (args.gpu_batch,), device="cuda")) for _ in range(8)]  # fmt: skip
    steps = max(1, len(load_split(config, "train")) // args.gpu_batch)
    feeds = {
        "staged on the GPU (ceiling)": lambda: (staged[i % len(staged)] for i in range(steps)),
        "GPU decode (nvJPEG), uint8 bytes in": lambda: make_loader(
            load_split(config, "train", decode="gpu"), batch_size=args.gpu_batch, shuffle=True, num_workers=cores,
            device="cuda", dtype=torch.bfloat16, channels_last=True),
        f"CPU decode, {cores} workers, uint8 batches": lambda: make_loader(
            load_split(config, "train"), batch_size=args.gpu_batch, shuffle=True, num_workers=cores,
            device="cuda", dtype=torch.bfloat16, channels_last=True),
    }  # fmt: skip
    print(f"\n5. training squeezenet1_0 on {torch.cuda.get_device_name()} from {url} (bf16 autocast, channels_last, "
          f"batch {args.gpu_batch}, {cores} CPUs; {time.strftime('%Y-%m-%d')})")  # fmt: skip
    print(f"{'feed':42} {'img/s':>8} {'data wait':>10}")
    rows = []
    TABLES.append({"title": f"part 5, training squeezenet1_0 on {torch.cuda.get_device_name()} (bf16 autocast, channels_last, "
                            f"batch {args.gpu_batch}, {cores} CPUs)", "columns": ["feed", "img/s", "data wait"], "rows": rows})  # fmt: skip
    for name, make in feeds.items():
        stats = [engine.train_one_epoch(model, make(), optimizer, device="cuda", amp_dtype=torch.bfloat16,
                                        channels_last=True) for _ in range(args.gpu_epochs)]  # fmt: skip
        timed = stats[1:] or stats
        images, wall, wait = (sum(getattr(s, a) for s in timed) for a in ("images", "wall_s", "data_wait_s"))
        print(f"{name:42} {images / wall:8.0f} {100 * wait / wall:9.0f}%", flush=True)
        rows.append([name, round(images / wall), f"{100 * wait / wall:.0f}%"])


if __name__ == "__main__":
    main()
