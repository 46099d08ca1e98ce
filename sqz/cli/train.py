"""`sqz train`: data-parallel training (or masked retraining) with Ray Train, as the
train_model flow.

A bad option answers in one line before Prefect or Ray start. The run lives under
``<storage>/<run_id>/`` like a pipeline run (manifest.json, train/, models/, metrics/),
so rerunning the same command resumes it from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sqz.cli.args import non_negative_float, non_negative_int, number, positive_float, positive_int
from sqz.cli.flowrun import run_flow
from sqz.cli.options import add_location_options, check_local_gpus, local_ray_cpus, use_s3_endpoint
from sqz.cli.tables import print_table

__all__ = ["add_parser", "command", "train_configs"]


def add_parser(sub: Any) -> None:
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
    add_location_options(p, run_id_help="run folder name (default: derived from the config, so reruns resume)")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray Train data-parallel workers (default: 2)")
    p.add_argument("--cpus-per-worker", type=positive_float, default=1.0, help="CPUs reserved per worker (default: 1)")
    p.add_argument("--gpus-per-worker", type=non_negative_float, default=0.0, help="GPUs per worker; > 0 trains on CUDA with nccl (default: 0)")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="global batch over all workers (default: the recipe's)")
    p.add_argument("--accumulation-steps", type=positive_int, default=1,
                   help="split each worker's batch into this many micro-batches, one step per batch (default: 1)")  # fmt: skip
    p.add_argument("--image-size", type=positive_int, default=None, help="input size (default: 32 for digits, the model's for imagenet)")
    p.add_argument("--optimizer", choices=["adamw", "sgd"], default=None, help="optimizer (default: the recipe's)")
    p.add_argument("--lr", type=positive_float, default=None, help="base learning rate (default: the recipe's; / 100 with --masks-from)")
    p.add_argument("--lr-power", type=positive_float, default=None, help="poly decay power (default: 1.0)")
    p.add_argument("--momentum", type=non_negative_float, default=None, help="SGD momentum (default: 0.9)")
    p.add_argument("--weight-decay", type=non_negative_float, default=None, help="weight decay (default: 2e-4)")
    p.add_argument("--warmup-epochs", type=non_negative_float, default=None, help="linear lr warm-up epochs (default: the recipe's)")
    p.add_argument("--label-smoothing", type=number(float, minimum=0, below=1), default=None, help="label smoothing (default: the recipe's)")
    p.add_argument("--weight-init", choices=["default", "caffe_xavier"], default=None,
                   help="initialisation (default: caffe_xavier for imagenet, the builder's otherwise)")  # fmt: skip
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], default="auto",
                   help="mixed precision (default: auto = bf16, else fp16, on GPU; off on CPU)")  # fmt: skip
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default: on with a GPU, off on CPU)")  # fmt: skip
    p.add_argument("--compile", action="store_true", help="torch.compile the model (default: off)")
    p.add_argument("--checkpoint-every", type=positive_int, default=1, help="epochs between checkpoints; the last always (default: 1)")
    p.add_argument("--keep-checkpoints", type=positive_int, default=2, help="keep the best K by val top-1, plus the latest (default: 2)")
    p.add_argument("--max-failures", type=non_negative_int, default=2, help="worker-group restarts from the latest checkpoint (default: 2)")
    p.add_argument("--init", default=None, help="start from these weights (.safetensors or .sqz, path or URL)")
    p.add_argument("--masks-from", default=None,
                   help="masked retraining: keep the zeros of this pruned model (.safetensors/.sqz weights, or bool "
                   "masks) at zero after every step; weights start from --init, else from this file")  # fmt: skip
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of init, split and shuffling (default: 0)")


def train_configs(args: argparse.Namespace):
    """(DataConfig, TrainConfig) from the options over the recipe; every bad value
    raises a ValueError naming its option, before anything starts."""
    from sqz.config import RETRAIN_LR_FACTOR, TRAIN_RECIPES, DataConfig, TrainConfig
    from sqz.data import BUILTIN_DATASETS, check_data_url, num_classes_of
    from sqz.models import MODEL_FACTS, list_models
    from sqz.runs.manifest import check_run_id
    from sqz.storage import check_url, check_writable_folder

    check_data_url(args.data)
    check_writable_folder(args.storage, option="--storage")
    for option, url in (("--init", args.init), ("--masks-from", args.masks_from)):
        if url is not None:
            check_url(url, option=option)
    check_run_id(args.run_id)
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
    check_local_gpus(args, train.workers * train.gpus_per_worker, "--gpus-per-worker", f"{train.workers} worker(s)")
    return data, train


def command(args: argparse.Namespace) -> int:
    from sqz.config import config_to_dict
    from sqz.runs.claims import plan_train_run

    use_s3_endpoint(args)  # before the checks: --storage, --init may be on that endpoint
    data, train = train_configs(args)
    plan = plan_train_run(args.storage, args.run_id, data, train)  # a conflicting earlier run fails here
    # A local Ray gets at least the CPUs the workers reserve, so it never waits forever.
    num_cpus = local_ray_cpus(train.workers * train.cpus_per_worker)

    def flow():
        from flows.train_flow import train_model

        return train_model

    result = run_flow(flow, f"{plan['run_id']}/train", run_url=plan["run_url"], train_config=config_to_dict(train),
                      data_config=config_to_dict(data), ray_address=args.ray_address, plan=plan, num_cpus=num_cpus, shared_mount=args.shared_mount,
                      progress=sys.stdout.isatty())  # fmt: skip
    print_table(["epoch", "lr", "loss", "top-1", "top-5", "img/s", "wait s", "wall s"],
                [[r["epoch"] + 1, f"{r['lr']:.3g}", f"{r['loss']:.3f}", f"{r['top1']:.2f}", f"{r['top5']:.2f}",
                  f"{r['images_per_s']:.0f}", f"{r['data_wait_s']:.1f}", f"{r['wall_s']:.1f}"] for r in result["epoch_rows"]],
                align="r" * 8)  # fmt: skip
    print(f"run {plan['run_id']}: {train.model} after {result['epochs']} "
          f"epochs: top-1 {result['top1']:.2f}, top-5 {result['top5']:.2f}; weights {result['baseline_url']} "
          f"({result['size_bytes']:,} bytes)")  # fmt: skip
    return 0
