"""Data-parallel training with Ray Train's TorchTrainer around the plain engine loop.

Ray is only the launcher: each worker runs ``engine.train_one_epoch`` / ``engine.evaluate``
on its shard; Ray Train provides the process group (gloo on CPU, nccl on GPU), checkpoint
storage, restarts after a worker dies (``FailureConfig``) and resumption of an interrupted
run (same storage path and run name: Ray Train V2 reloads its checkpoint list from there).

Checkpoints (``sqz.checkpoint``: safetensors + JSON, no pickle) are reported every
``checkpoint_every`` epochs and on the last; Ray keeps the best ``keep_checkpoints`` by
validation top-1 and always the latest. Rank 0 writes one ``train_epochs`` row per epoch.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
# Ray Train's own torch backend and its process-group helpers (not public API): the
# embedded Ray's file rendezvous (_FileRendezvousBackend) reuses them as they are.
from ray.train.torch.config import _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend
from safetensors.torch import save
from torch.utils.data import DistributedSampler, Subset, TensorDataset

from sqz import engine, metrics, storage
from sqz.logs import format_eta, terminal_bar
from sqz.checkpoint import check_start_files, load_training_state, read_masks, read_weights, save_training_state
from sqz.compress.prune import attach_masks_
from sqz.config import DataConfig, TrainConfig, config_from_dict, config_to_dict
from sqz.data import load_split, make_loader, read_manifest
from sqz.distributed import stream
from sqz.distributed.cluster import is_embedded, quiet_exit_in_finalizers
from sqz.distributed.follow import RowFollower
from sqz.models import build_model, count_parameters
from sqz.runs import RunLayout

__all__ = ["TrainResult", "train", "per_worker_batch", "EpochWatcher", "format_eta"]

RUN_NAME = "ray-train"  # Ray Train's experiment folder under <run>/train/; fixed so reruns resume
_log = logging.getLogger("sqz.train")


@dataclass(frozen=True)
class TrainResult:
    baseline_url: str
    parameters: int
    size_bytes: int
    top1: float
    top5: float
    epochs: int


def per_worker_batch(train_cfg: TrainConfig, data_cfg: DataConfig) -> int:
    """The micro-batch each worker feeds per forward pass: global batch / workers /
    accumulation steps. Raises if that is below one image."""
    micro = data_cfg.batch_size // train_cfg.workers // train_cfg.accumulation_steps
    if micro < 1:
        raise ValueError(
            f"batch_size: {data_cfg.batch_size} is smaller than workers x accumulation_steps "
            f"({train_cfg.workers} x {train_cfg.accumulation_steps})"
        )
    return micro


def _build(train_cfg: TrainConfig, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, bool]:
    """Model (initialised, on ``device``), optimizer, grad scaler and whether to use
    channels_last: the same on every worker, before any checkpoint is loaded."""
    torch.manual_seed(train_cfg.seed)  # same initial weights on every worker
    model = build_model(train_cfg.model, num_classes=train_cfg.num_classes)
    if train_cfg.weight_init == "caffe_xavier":
        engine.caffe_xavier_init_(model)
    if train_cfg.init_url:
        model.load_state_dict(read_weights(train_cfg.init_url))
    masks = read_masks(train_cfg.masks_url, model) if train_cfg.masks_url else None
    channels_last = engine.resolve_channels_last(train_cfg.channels_last, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    optimizer = engine.make_optimizer(model.parameters(), train_cfg.optimizer, lr=train_cfg.lr,
                                      momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)  # fmt: skip
    scaler = engine.make_grad_scaler(engine.resolve_amp(train_cfg.amp, device), device)
    if masks is not None:
        # The hook sits on the optimizer, so DDP, AMP and accumulation need not know.
        attach_masks_(model, optimizer, {name: mask.to(device) for name, mask in masks.items()})
    return model, optimizer, scaler, channels_last


def _loaders(train_cfg: TrainConfig, data_cfg: DataConfig, rank: int, world: int, use_cuda: bool):
    """(sampler or None, train batches, val loader, train images per epoch on this worker)."""
    batch = per_worker_batch(train_cfg, data_cfg)
    if stream.is_streamed(data_cfg):
        # Parquet shards: Ray Data decodes in parallel tasks and Ray Train hands each
        # worker its own stream (equal shares); validation is an exact share per rank.
        train_loader = stream.worker_shard(data_cfg, batch_size=batch)
        val_loader = make_loader(load_split(data_cfg, "val", rank=rank, world_size=world), batch_size=256,
                                 num_workers=data_cfg.loader_workers)  # fmt: skip
        return None, train_loader, val_loader, read_manifest(data_cfg.url)["splits"]["train"]["images"] // world
    train_set, val_set = load_split(data_cfg, "train"), load_split(data_cfg, "val")
    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=data_cfg.seed)
    # In-memory tensors need no loader processes; decoding JPEGs does.
    in_memory = isinstance(train_set, TensorDataset)
    workers = 0 if in_memory else (data_cfg.loader_workers or max(1, min(8, int(train_cfg.cpus_per_worker))))
    train_loader = make_loader(train_set, batch_size=batch, sampler=sampler, num_workers=workers)
    # Disjoint, unpadded shards so the all-reduced counts are exact over the split.
    val_loader = make_loader(Subset(val_set, range(rank, len(val_set), world)), batch_size=256, num_workers=workers)
    return sampler, train_loader, val_loader, len(sampler)


def _progress_bar(enabled: bool, total: int, description: str):
    """A per-epoch bar drawn on the driver's terminal (Ray forwards tqdm_ray's state)."""
    if not enabled:
        return None
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(total=total, desc=description, unit="img")


def _train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    quiet_exit_in_finalizers()
    train_cfg: TrainConfig = config_from_dict(TrainConfig, loop_config["train"])
    data_cfg: DataConfig = config_from_dict(DataConfig, loop_config["data"])
    run_url, run_id = loop_config["run_url"], loop_config["run_id"]
    for name, value in loop_config.get("storage_env", {}).items():
        os.environ.setdefault(name, value)  # the worker's own setting wins
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    amp_dtype = engine.resolve_amp(train_cfg.amp, device)

    model, optimizer, scaler, channels_last = _build(train_cfg, device)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            start_epoch = load_training_state(directory, model, optimizer, scaler=scaler)["epoch"] + 1
        if rank == 0:
            _log.info("resuming from the checkpoint of epoch %d/%d", start_epoch, train_cfg.epochs)
    ddp_model = ray.train.torch.prepare_model(model)
    if train_cfg.compile:
        ddp_model = torch.compile(ddp_model)

    sampler, train_loader, val_loader, images_per_epoch = _loaders(train_cfg, data_cfg, rank, world, device.type == "cuda")
    steps_per_epoch = math.ceil(math.ceil(images_per_epoch / per_worker_batch(train_cfg, data_cfg)) / train_cfg.accumulation_steps)

    total_steps = train_cfg.epochs * steps_per_epoch
    warmup_steps = round(train_cfg.warmup_epochs * steps_per_epoch)
    step = start_epoch * steps_per_epoch

    def lr_at_step() -> float:
        nonlocal step
        step += 1
        return engine.scheduled_lr(train_cfg.lr, step - 1, total_steps, power=train_cfg.lr_power, warmup_steps=warmup_steps)

    loss_fn = partial(torch.nn.functional.cross_entropy, label_smoothing=train_cfg.label_smoothing)
    # Which Ray nodes this training runs on, recorded in every epoch row.
    node_id = ray.get_runtime_context().get_node_id()
    nodes: list[Any] = [None] * world
    torch.distributed.all_gather_object(nodes, node_id)
    worker_node_ids = ",".join(sorted(set(nodes)))
    for epoch in range(start_epoch, train_cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        bar = _progress_bar(loop_config.get("progress", False) and rank == 0, images_per_epoch * world,
                            f"epoch {epoch + 1}/{train_cfg.epochs}")  # fmt: skip
        stats = engine.train_one_epoch(
            ddp_model, train_loader, optimizer, device=device, loss_fn=loss_fn, lr_at_step=lr_at_step,
            amp_dtype=amp_dtype, scaler=scaler, channels_last=channels_last,
            accumulation_steps=train_cfg.accumulation_steps,
            on_batch=(lambda n: bar.update(n * world)) if bar is not None else None,
        )  # fmt: skip
        if bar is not None:
            bar.close()
        result = engine.evaluate(ddp_model, val_loader, device=device, amp_dtype=amp_dtype, channels_last=channels_last)
        row = _epoch_row(run_id, epoch, optimizer, stats, result, epoch_start, node_id, worker_node_ids, world, device)
        _report_epoch(row, run_url, rank, last=epoch == train_cfg.epochs - 1, every=train_cfg.checkpoint_every,
                      model=model, optimizer=optimizer, scaler=scaler)  # fmt: skip


def _epoch_row(run_id: str, epoch: int, optimizer: torch.optim.Optimizer, stats: engine.EpochStats,
               result: engine.EvalResult, epoch_start: float, node_id: str, worker_node_ids: str, world: int,
               device: torch.device) -> dict[str, Any]:  # fmt: skip
    """The train_epochs row of an epoch: loss averaged over every worker's images, speed
    from the slowest worker (a collective: every rank calls it)."""
    sums = torch.tensor([stats.loss * stats.images, stats.images, stats.data_wait_s], dtype=torch.float64, device=device)
    slowest = torch.tensor([stats.wall_s], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(sums)
    torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
    loss_sum, images, data_wait = sums.tolist()
    return {
        "run_id": run_id, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
        "loss": loss_sum / images, "top1": result.top1, "top5": result.top5,
        "images_per_s": images / slowest.item(), "data_wait_s": data_wait / world,
        "wall_s": time.perf_counter() - epoch_start, "node_id": node_id, "worker_node_ids": worker_node_ids,
    }  # fmt: skip


def _report_epoch(row: dict[str, Any], run_url: str, rank: int, *, last: bool, every: int, model: torch.nn.Module,
                  optimizer: torch.optim.Optimizer, scaler: Any) -> None:  # fmt: skip
    """Reports the epoch to Ray Train; rank 0 also writes its row and, every ``every``
    epochs and at the last, the checkpoint that a resumed run starts from."""
    if rank != 0:
        ray.train.report(row)
        return
    # One row file per epoch: a rerun of the epoch replaces it, never duplicates.
    metrics.write_rows(run_url, "train_epochs", [row], writer_id=f"epoch-{row['epoch']:04d}")
    if not (last or (row["epoch"] + 1) % every == 0):
        ray.train.report(row)
        return
    with tempfile.TemporaryDirectory() as directory:
        save_training_state(directory, model, optimizer, scaler=scaler,
                            progress={"epoch": row["epoch"], "top1": row["top1"], "top5": row["top5"]})  # fmt: skip
        ray.train.report(row, checkpoint=Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"checkpoint_epoch-{row['epoch']:04d}")  # fmt: skip


class EpochWatcher(RowFollower):
    """Follows the run's ``train_epochs`` rows from the driver while Ray Train runs.

    Rank 0 writes one row per epoch into the run's storage; the driver reads them back
    and logs one line per epoch (so the line reaches the driver's log handlers, e.g. the
    flow run's log in the Prefect UI, which a worker's output never does) and calls
    ``on_epoch`` with the progress: epoch k of n, images/s, ETA. Epochs finished by an
    earlier, interrupted run count as done and are not announced again."""

    thread_name = "sqz-epoch-watcher"

    def __init__(self, run_url: str, epochs: int, on_epoch: Callable[[dict[str, Any]], None] | None = None,
                 interval_s: float = 2.0, bar: bool = False) -> None:  # fmt: skip
        super().__init__(interval_s)
        self.run_url, self.epochs, self.on_epoch = run_url, epochs, on_epoch
        self.seen = {row["epoch"] for row in self._rows()}
        self.bar = terminal_bar(epochs, "train", "epoch", initial=len(self.seen)) if bar else None
        self.wall_s: list[float] = []

    def _rows(self) -> list[dict[str, Any]]:
        return metrics.read_table(self.run_url, "train_epochs").to_pylist()

    def poll(self) -> list[dict[str, Any]]:
        """Announce the epochs written since the last poll; returns their progress records."""
        announced = []
        for row in sorted((r for r in self._rows() if r["epoch"] not in self.seen), key=lambda r: r["epoch"]):
            self.seen.add(row["epoch"])
            self.wall_s.append(row["wall_s"])
            left = self.epochs - len(self.seen)
            progress = {
                "epoch": row["epoch"] + 1, "epochs": self.epochs, "loss": row["loss"], "top1": row["top1"],
                "top5": row["top5"], "lr": row["lr"], "images_per_s": row["images_per_s"], "wall_s": row["wall_s"],
                "eta_s": left * sum(self.wall_s) / len(self.wall_s),
            }  # fmt: skip
            # The share of the epoch spent waiting for input: an input-bound run shows at once.
            data_wait = row["data_wait_s"] / row["wall_s"] if row["wall_s"] > 0 else 0.0
            _log.info("epoch %d/%d: loss %.3f, top-1 %.2f, top-5 %.2f, lr %.3g, %.0f img/s, data wait %.0f%%, %.1f s, "
                      "ETA %s", progress["epoch"], self.epochs, row["loss"], row["top1"], row["top5"], row["lr"],
                      row["images_per_s"], 100 * data_wait, row["wall_s"], format_eta(progress["eta_s"]))  # fmt: skip
            if self.on_epoch is not None:
                self.on_epoch(progress)
            if self.bar is not None:
                self.bar.update(1)
            announced.append(progress)
        return announced

    def __exit__(self, *exc_info: Any) -> None:
        super().__exit__(*exc_info)
        if self.bar is not None:
            self.bar.close()


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


class _FileRendezvousBackend(_TorchBackend):
    """Ray Train's torch backend with the workers meeting through a file instead of a
    TCPStore: torch binds the TCPStore of rank 0 to every interface (no option narrows it),
    which would be the one socket the loopback-only embedded Ray opens to the network. All
    workers of the embedded Ray share this machine's disk."""

    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        rendezvous = os.path.join(tempfile.gettempdir(), f"sqz-rendezvous-{uuid.uuid4().hex}")
        backend = "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend, world_rank=rank,
                                                   world_size=len(worker_group), init_method=f"file://{rendezvous}",
                                                   timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])  # fmt: skip


class _FileRendezvous(TorchConfig):
    @property
    def backend_cls(self) -> type:
        return _FileRendezvousBackend


def train(layout: RunLayout, train_cfg: TrainConfig, data_cfg: DataConfig, *, progress: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:  # fmt: skip
    """Train the run's baseline and write models/baseline.safetensors. A finished
    training is reused as is; an interrupted one resumes from its latest checkpoint.
    ``progress`` draws a per-epoch progress bar (for an interactive terminal); the driver
    logs a line per epoch and calls ``on_epoch`` with its progress (see EpochWatcher)."""
    done = _finished(layout, train_cfg)
    if done is not None:
        _log.info("reusing the finished baseline at %s", layout.baseline_url)
        return done
    check_start_files(train_cfg)  # one-line errors before any worker starts
    per_worker_batch(train_cfg, data_cfg)
    fs, path = storage.resolve(layout.train_url)
    resources = {"CPU": train_cfg.cpus_per_worker}
    if train_cfg.gpus_per_worker:
        resources["GPU"] = train_cfg.gpus_per_worker
    batch = per_worker_batch(train_cfg, data_cfg)
    _log.info("%s, %d worker(s) x %s, global batch %d (%d x %d x %d accumulated), %d epochs -> %s", train_cfg.model,
              train_cfg.workers, resources, batch * train_cfg.workers * train_cfg.accumulation_steps,
              train_cfg.workers, batch, train_cfg.accumulation_steps, train_cfg.epochs, layout.train_url)  # fmt: skip
    datasets, dataset_config = stream.trainer_datasets(data_cfg)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        torch_config=_FileRendezvous() if is_embedded() else None,
        datasets=datasets,
        dataset_config=dataset_config,
        train_loop_config={
            "train": config_to_dict(train_cfg), "data": config_to_dict(data_cfg),
            "run_url": layout.run_url, "run_id": layout.run_id, "progress": progress,
            # The driver's S3 endpoint (e.g. from --s3-endpoint) must reach workers on other
            # machines, which read the data and write metrics themselves.
            "storage_env": storage.s3_settings_env(),
        },  # fmt: skip
        scaling_config=ScalingConfig(num_workers=train_cfg.workers, use_gpu=train_cfg.gpus_per_worker > 0,
                                     resources_per_worker=resources),  # fmt: skip
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=path,
            storage_filesystem=fs,
            checkpoint_config=CheckpointConfig(num_to_keep=train_cfg.keep_checkpoints,
                                               checkpoint_score_attribute="top1", checkpoint_score_order="max"),  # fmt: skip
            failure_config=FailureConfig(max_failures=train_cfg.max_failures),
            # Ray Train's own INFO lines (every report, every checkpoint) drown the epoch lines.
            logging_config=LoggingConfig(log_level="WARNING"),
            # Ray Train turns a worker's print into a log record, which mangles the
            # progress bar's state lines that Ray forwards to the driver's terminal.
            worker_runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}} if progress else None,
        ),
    )
    # An epochs bar on a terminal, unless the workers already draw per-epoch image bars.
    with EpochWatcher(layout.run_url, train_cfg.epochs, on_epoch, bar=not progress):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training under {layout.train_url} finished without a checkpoint")
    model = build_model(train_cfg.model, num_classes=train_cfg.num_classes)
    with result.checkpoint.as_directory() as directory:
        load_training_state(directory, model)
    storage.write_bytes(layout.baseline_url, save(model.state_dict()))
    done = _finished(layout, train_cfg)
    if done is None:
        raise RuntimeError(f"training under {layout.train_url} ended before its {train_cfg.epochs} epochs")
    return done
