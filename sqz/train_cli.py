"""``sqz train``: data-parallel training (or masked retraining) with Ray Train, alone.

Registered by ``sqz.cli``; Ray is imported only once the input has been checked, so a
bad option answers in one line without starting anything. The run lives under
``<storage>/<run_id>/`` like a pipeline run (manifest.json, train/, models/, metrics/),
so rerunning the same command resumes it from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from typing import Any

from sqz.cli import _non_negative_int, _positive_int

__all__ = ["add_train_parser", "cmd_train", "train_configs", "train_run_id"]


def _number(check: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = {"positive": value > 0, ">=0": value >= 0, "[0,1)": 0 <= value < 1}[check]
        if not ok or not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be {'in [0, 1)' if check == '[0,1)' else check}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def add_train_parser(sub: Any) -> None:
    from sqz.config import TRAIN_RECIPES

    p = sub.add_parser(
        "train", help="train (or retrain with pruning masks) a SqueezeNet with Ray Train",
        description="Data-parallel training with Ray Train (DDP: gloo on CPU, nccl on GPU), checkpointed to "
        "--storage every epoch; rerunning the same command resumes. Recipes: 'imagenet' is the released "
        "SqueezeNet v1.0 solver (SGD momentum 0.9, weight decay 2e-4, lr 0.04 poly power 1, global batch 512, "
        "68 epochs, Caffe xavier init) and is the default for a folder dataset (ImageNet layout); 'digits' is "
        "the demo's (AdamW 5e-4 after a one-epoch warm-up, batch 16, 12 epochs, weight decay 0.05, label smoothing 0.1, "
        "+-2 px shifts) and the default otherwise. Every option overrides its "
        "recipe. With --masks-from the default lr is the recipe's / 100 (Deep Compression's retraining).",
    )  # fmt: skip
    p.add_argument("--data", default="digits", help="digits | synthetic | a folder with train/ and val/ (default: digits)")
    p.add_argument("--recipe", choices=sorted(TRAIN_RECIPES), default=None,
                   help="training recipe (default: imagenet for a folder dataset, else digits)")  # fmt: skip
    p.add_argument("--model", default=None, help="model name from `sqz models` (default: squeezenet1_0 for imagenet, squeezenet_small for digits)")
    p.add_argument("--storage", default="./sqz-runs", help="root URL for runs: a local path or s3://bucket/prefix (default: ./sqz-runs)")
    p.add_argument("--s3-endpoint", default=None, help="S3-compatible endpoint, e.g. http://127.0.0.1:9000 (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--run-id", default=None, help="run folder name (default: derived from the config, so reruns resume)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to use (ray://host:10001 or auto); default: start a local Ray")
    p.add_argument("--workers", type=_positive_int, default=2, help="Ray Train data-parallel workers (default: 2)")
    p.add_argument("--cpus-per-worker", type=_number("positive"), default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=_number(">=0"), default=0.0, help="GPUs per worker; > 0 trains on CUDA with nccl (default: 0)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="global batch over all workers (default: the recipe's)")
    p.add_argument("--accumulation-steps", type=_positive_int, default=1,
                   help="split each worker's batch into this many micro-batches, one step per batch (default: 1)")  # fmt: skip
    p.add_argument("--image-size", type=_positive_int, default=None, help="input size (default: 32 for digits, the model's for imagenet)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default=None, help="optimizer (default: the recipe's)")
    p.add_argument("--lr", type=_number("positive"), default=None, help="base learning rate (default: the recipe's; / 100 with --masks-from)")
    p.add_argument("--lr-power", type=_number("positive"), default=None, help="poly decay power (default: 1.0)")
    p.add_argument("--momentum", type=_number(">=0"), default=None, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=_number(">=0"), default=None, help="weight decay (default: 2e-4)")
    p.add_argument("--warmup-epochs", type=_number(">=0"), default=None, help="linear lr warm-up epochs (default: the recipe's)")
    p.add_argument("--label-smoothing", type=_number("[0,1)"), default=None, help="label smoothing (default: the recipe's)")
    p.add_argument("--weight-init", choices=["default", "caffe_xavier"], default=None,
                   help="initialisation (default: caffe_xavier for imagenet, the builder's otherwise)")  # fmt: skip
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision (default: auto = bf16, else fp16, on GPU; off on CPU)")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on with a GPU, off on CPU)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    p.add_argument("--checkpoint-every", type=_positive_int, default=1, help="epochs between checkpoints; the last always (default: 1)")
    p.add_argument("--keep-checkpoints", type=_positive_int, default=2, help="keep the best K by val top-1, plus the latest (default: 2)")
    p.add_argument("--max-failures", type=_non_negative_int, default=2, help="worker-group restarts from the latest checkpoint (default: 2)")
    p.add_argument("--init", default=None, help="start from these weights (.safetensors or .sqz, path or URL)")
    p.add_argument("--masks-from", default=None,
                   help="masked retraining: keep the zeros of this pruned model (.safetensors/.sqz weights, or bool "
                   "masks) at zero after every step; weights start from --init, else from this file")  # fmt: skip
    p.add_argument("--seed", type=_non_negative_int, default=0, help="seed of init, split and shuffling (default: 0)")


def train_configs(args: argparse.Namespace):
    """(DataConfig, TrainConfig) from the options over the recipe; every bad value
    raises a ValueError naming its option, before anything starts."""
    from sqz.config import RETRAIN_LR_FACTOR, TRAIN_RECIPES, DataConfig, TrainConfig
    from sqz.data import BUILTIN_DATASETS, check_data_url, num_classes_of
    from sqz.models import MODEL_FACTS, list_models
    from sqz.storage import check_url

    check_data_url(args.data)
    check_url(args.storage, option="--storage")
    for option, url in (("--init", args.init), ("--masks-from", args.masks_from)):
        if url is not None:
            check_url(url, option=option)
    if args.run_id is not None and not args.run_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--run-id: {args.run_id!r} must be letters, digits, '-' or '_'")
    recipe_name = args.recipe or ("digits" if args.data in BUILTIN_DATASETS else "imagenet")
    recipe = TRAIN_RECIPES[recipe_name]
    model = args.model or ("squeezenet1_0" if recipe_name == "imagenet" else TrainConfig().model)
    if model not in list_models():
        raise ValueError(f"--model: unknown model {model!r}; choose one of {', '.join(list_models())}")
    image_size = args.image_size or (MODEL_FACTS[model].input_size if recipe_name == "imagenet" else DataConfig().image_size)
    retraining = args.masks_from is not None
    train_values: dict[str, Any] = {**recipe["train"], "model": model}
    if retraining:
        train_values["lr"] = train_values.get("lr", TrainConfig().lr) * RETRAIN_LR_FACTOR
        train_values["epochs"] = recipe["retrain_epochs"]
    if retraining:
        train_values["warmup_epochs"] = 0.0  # retraining starts from a trained model
    given = {
        "epochs": args.epochs, "optimizer": args.optimizer, "lr": args.lr, "lr_power": args.lr_power,
        "momentum": args.momentum, "weight_decay": args.weight_decay, "weight_init": args.weight_init,
        "warmup_epochs": args.warmup_epochs, "label_smoothing": args.label_smoothing,
    }  # fmt: skip
    train_values.update({k: v for k, v in given.items() if v is not None})
    epochs = train_values.get("epochs", TrainConfig().epochs)
    if args.warmup_epochs is None and train_values.get("warmup_epochs", 0.0) >= epochs:
        train_values["warmup_epochs"] = epochs / 8  # the recipe's warm-up would fill a short run: an eighth of it
    if train_values.get("warmup_epochs", 0.0) >= epochs:
        raise ValueError(f"--warmup-epochs: must be fewer than the {train_values.get('epochs', TrainConfig().epochs)} epochs")
    data_values = {**recipe["data"], "batch_size": args.batch_size or recipe["data"].get("batch_size", DataConfig().batch_size)}
    if args.data not in BUILTIN_DATASETS:
        data_values.pop("shift_augment", None)  # the in-memory datasets' augmentation
    data = DataConfig(**data_values, url=args.data, image_size=image_size, seed=args.seed)
    train = TrainConfig(
        **train_values, num_classes=num_classes_of(data), workers=args.workers, seed=args.seed,
        accumulation_steps=args.accumulation_steps, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
        max_failures=args.max_failures, init_url=args.init or args.masks_from, masks_url=args.masks_from,
    )  # fmt: skip
    if data.batch_size // train.workers // train.accumulation_steps < 1:
        raise ValueError(f"--batch-size: {data.batch_size} is smaller than --workers x --accumulation-steps")
    return data, train


def train_run_id(data: Any, train: Any) -> str:
    """Same data + training config, same id (the storage root is not part of it)."""
    from sqz.config import config_to_dict

    payload = {"data": config_to_dict(data), "train": config_to_dict(train)}
    return "train-" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def _claim_run(run_url: str, data: Any, train: Any) -> None:
    """Write the run's manifest, or check that an existing one has the same config: a
    resume with different settings would silently mix two trainings."""
    from sqz import __version__, storage
    from sqz.config import DataConfig, TrainConfig, config_from_dict, config_to_dict

    url = storage.join(run_url, "manifest.json")
    wanted = {"data": config_to_dict(data), "train": config_to_dict(train)}
    if storage.exists(url):
        existing = json.loads(storage.read_bytes(url)).get("config", {})
        for key, cls in (("data", DataConfig), ("train", TrainConfig)):
            had = config_to_dict(config_from_dict(cls, existing.get(key, {})))
            changed = sorted(k for k in wanted[key] if had.get(k) != wanted[key][k])
            if changed:
                name = changed[0]
                raise ValueError(f"--run-id: run {run_url} was started with {name}={had.get(name)!r}, not "
                                 f"{wanted[key][name]!r}; use another --run-id")  # fmt: skip
        return
    manifest = {"run_id": run_url.rstrip("/").rsplit("/", 1)[-1], "kind": "train", "sqz_version": __version__,
                "config": wanted}  # fmt: skip
    storage.write_bytes(url, json.dumps(manifest, indent=2, sort_keys=True).encode())


def cmd_train(args: argparse.Namespace) -> int:
    from sqz import storage
    from sqz.checkpoint import check_start_files
    from sqz.runs import RunLayout

    data, train = train_configs(args)
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL_S3"] = args.s3_endpoint  # inherited by Ray's workers
    check_start_files(train)
    layout = RunLayout(storage.join(storage.absolute(args.storage), args.run_id or train_run_id(data, train)))
    _claim_run(layout.run_url, data, train)

    from sqz import metrics
    from sqz.distributed.cluster import ray_session
    from sqz.distributed.train import train as run_training

    # A local Ray gets at least the CPUs the workers reserve, so it never waits forever.
    num_cpus = max(os.cpu_count() or 1, math.ceil(train.workers * train.cpus_per_worker))
    with ray_session(args.ray_address, workdir=".", num_cpus=num_cpus):
        result = run_training(layout, train, data, progress=sys.stdout.isatty())
    rows = sorted(metrics.read_table(layout.run_url, "train_epochs").to_pylist(), key=lambda r: r["epoch"])
    print(f"{'epoch':>5} {'lr':>9} {'loss':>7} {'top-1':>6} {'top-5':>6} {'img/s':>7} {'wait s':>6} {'wall s':>6}")
    for r in rows:
        print(f"{r['epoch'] + 1:>5} {r['lr']:>9.3g} {r['loss']:>7.3f} {r['top1']:>6.2f} {r['top5']:>6.2f} "
              f"{r['images_per_s']:>7.0f} {r['data_wait_s']:>6.1f} {r['wall_s']:>6.1f}")  # fmt: skip
    print(f"run {layout.run_id}: {train.model} after {result.epochs} epochs: top-1 {result.top1:.2f}, "
          f"top-5 {result.top5:.2f}; weights {result.baseline_url} ({result.size_bytes:,} bytes)")  # fmt: skip
    return 0
