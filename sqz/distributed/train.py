"""Data-parallel training with Ray Train's TorchTrainer around the plain engine loop.

Each worker runs ``engine.train_one_epoch`` / ``engine.evaluate`` on its shard; Ray Train
provides the process group (gloo on CPU), checkpoint storage and restarts. A checkpoint
(safetensors weights + the optimizer's tensors, read back with weights_only=True) is
reported every epoch, so a rerun with the same run folder resumes at the next epoch.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from safetensors.torch import load_file, save, save_file
from torch.utils.data import DistributedSampler, Subset

from sqz import engine, metrics, storage
from sqz.config import DataConfig, TrainConfig, config_from_dict, config_to_dict
from sqz.data import load_split, make_loader, read_manifest
from sqz.distributed import stream
from sqz.models import build_model, count_parameters
from sqz.runs import RunLayout

__all__ = ["TrainResult", "train"]

# Where S3 is (not who may read it): the driver's endpoint (e.g. from --s3-endpoint) must
# reach workers on other machines, which read the data and write metrics themselves.
# Credentials are never forwarded; each machine brings its own.
_STORAGE_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class TrainResult:
    baseline_url: str
    parameters: int
    size_bytes: int
    top1: float
    top5: float
    epochs: int


def _save_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> None:
    save_file(model.state_dict(), os.path.join(directory, "model.safetensors"))
    torch.save(optimizer.state_dict(), os.path.join(directory, "optimizer.pt"))
    with open(os.path.join(directory, "progress.json"), "w") as f:
        json.dump({"epoch": epoch}, f)


def _load_checkpoint(directory: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    optimizer.load_state_dict(torch.load(os.path.join(directory, "optimizer.pt"), weights_only=True))
    with open(os.path.join(directory, "progress.json")) as f:
        return int(json.load(f)["epoch"])


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    train_cfg: TrainConfig = config_from_dict(TrainConfig, loop_config["train"])
    data_cfg: DataConfig = config_from_dict(DataConfig, loop_config["data"])
    run_url, run_id = loop_config["run_url"], loop_config["run_id"]
    for name, value in loop_config.get("storage_env", {}).items():
        os.environ.setdefault(name, value)  # the worker's own setting wins
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()

    torch.manual_seed(train_cfg.seed)  # same initial weights on every worker
    model = build_model(train_cfg.model, num_classes=train_cfg.num_classes)
    optimizer = engine.make_optimizer(model.parameters(), train_cfg.optimizer, lr=train_cfg.lr,
                                      momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)  # fmt: skip
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            start_epoch = _load_checkpoint(directory, model, optimizer) + 1
    ddp_model = ray.train.torch.prepare_model(model)

    per_worker = max(1, data_cfg.batch_size // world)
    sampler = None
    if stream.is_streamed(data_cfg):
        # Parquet shards: Ray Data decodes in parallel tasks and Ray Train hands each
        # worker its own stream (equal shares); validation is an exact share per rank.
        train_loader = stream.worker_shard(data_cfg, batch_size=per_worker)
        val_loader = make_loader(load_split(data_cfg, "val", rank=rank, world_size=world), batch_size=256,
                                 num_workers=data_cfg.loader_workers)  # fmt: skip
        steps_per_epoch = -(-(read_manifest(data_cfg.url)["splits"]["train"]["images"] // world) // per_worker)
    else:
        train_set, val_set = load_split(data_cfg, "train"), load_split(data_cfg, "val")
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=data_cfg.seed)
        train_loader = make_loader(train_set, batch_size=per_worker, sampler=sampler, num_workers=data_cfg.loader_workers)
        # Disjoint, unpadded shards so the all-reduced counts are exact over the split.
        val_loader = make_loader(Subset(val_set, range(rank, len(val_set), world)), batch_size=256,
                                 num_workers=data_cfg.loader_workers)  # fmt: skip
        steps_per_epoch = len(train_loader)

    total_steps = train_cfg.epochs * steps_per_epoch
    step = start_epoch * steps_per_epoch

    def lr_at_step() -> float:
        nonlocal step
        step += 1
        return engine.poly_lr(train_cfg.lr, step - 1, total_steps)

    for epoch in range(start_epoch, train_cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        stats = engine.train_one_epoch(ddp_model, train_loader, optimizer, lr_at_step=lr_at_step)
        result = engine.evaluate(ddp_model, val_loader)
        totals = torch.tensor([stats.loss * stats.images, stats.images, stats.data_wait_s], dtype=torch.float64)
        torch.distributed.all_reduce(totals)
        wall = time.perf_counter() - epoch_start
        row = {
            "run_id": run_id, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
            "loss": totals[0].item() / totals[1].item(), "top1": result.top1, "top5": result.top5,
            "images_per_s": totals[1].item() / stats.wall_s, "data_wait_s": totals[2].item() / world,
            "wall_s": wall,
        }  # fmt: skip
        with tempfile.TemporaryDirectory() as directory:
            if rank == 0:
                # One row file per epoch: a rerun of the epoch replaces it, never duplicates.
                metrics.write_rows(run_url, "train_epochs", [row], writer_id=f"epoch-{epoch:04d}")
                _save_checkpoint(directory, model, optimizer, epoch)
                ray.train.report(row, checkpoint=Checkpoint.from_directory(directory))
                print(f"[sqz] epoch {epoch + 1}/{train_cfg.epochs}: loss {row['loss']:.3f} "
                      f"top-1 {row['top1']:.2f} top-5 {row['top5']:.2f} "
                      f"{row['images_per_s']:.0f} img/s", flush=True)  # fmt: skip
            else:
                ray.train.report(row)


def _finished(layout: RunLayout, train_cfg: TrainConfig) -> TrainResult | None:
    """The result of an earlier, completed training of this run, if there is one."""
    if not storage.exists(layout.baseline_url):
        return None
    rows = metrics.read_table(layout.run_url, "train_epochs").to_pylist()
    if len({r["epoch"] for r in rows}) < train_cfg.epochs:
        return None
    last = max(rows, key=lambda r: r["epoch"])
    model = build_model(train_cfg.model, num_classes=train_cfg.num_classes)
    return TrainResult(
        baseline_url=layout.baseline_url, parameters=count_parameters(model),
        size_bytes=storage.size_of(layout.baseline_url), top1=last["top1"], top5=last["top5"],
        epochs=last["epoch"] + 1,
    )  # fmt: skip


def train(layout: RunLayout, train_cfg: TrainConfig, data_cfg: DataConfig) -> TrainResult:
    """Train the run's baseline and write models/baseline.safetensors. A finished
    training is reused as is; an interrupted one resumes from its latest checkpoint."""
    done = _finished(layout, train_cfg)
    if done is not None:
        print(f"[sqz] train: reusing the finished baseline at {layout.baseline_url}", flush=True)
        return done
    fs, path = storage.resolve(layout.train_url)
    datasets, dataset_config = stream.trainer_datasets(data_cfg)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        datasets=datasets,
        dataset_config=dataset_config,
        train_loop_config={
            "train": config_to_dict(train_cfg), "data": config_to_dict(data_cfg),
            "run_url": layout.run_url, "run_id": layout.run_id,
            "storage_env": {k: os.environ[k] for k in _STORAGE_ENV if k in os.environ},
        },  # fmt: skip
        scaling_config=ScalingConfig(num_workers=train_cfg.workers, use_gpu=False),
        run_config=RunConfig(
            name="ray-train",
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training under {layout.train_url} finished without a checkpoint")
    model = build_model(train_cfg.model, num_classes=train_cfg.num_classes)
    with result.checkpoint.as_directory() as directory:
        model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    storage.write_bytes(layout.baseline_url, save(model.state_dict()))
    done = _finished(layout, train_cfg)
    if done is None:
        raise RuntimeError(f"training under {layout.train_url} ended before its {train_cfg.epochs} epochs")
    return done
