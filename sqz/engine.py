"""The plain training and evaluation loops: one process, plain torch.

Ray Train calls these per worker; a notebook calls them directly. Pruning masks and
centroid fine-tuning hook into the optimizer (see sqz.compress), so these loops never
need to know about compression. The GPU speed-ups (autocast, channels_last, gradient
accumulation under DDP's ``no_sync``) are keyword options whose defaults give the plain
float32 step, so a caller that passes none of them gets exactly the loop it had.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Literal

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: core's config imports no other sqz module, engine needs none at run time
    from sqz.config import TrainConfig

__all__ = [
    "EpochStats",
    "EvalResult",
    "AmpSetting",
    "make_optimizer",
    "train_one_epoch",
    "evaluate",
    "poly_lr",
    "scheduled_lr",
    "resolve_amp",
    "resolve_channels_last",
    "make_grad_scaler",
    "caffe_xavier_init_",
]

AmpSetting = Literal["auto", "off", "bf16", "fp16"]


@dataclass(frozen=True)
class EpochStats:
    loss: float
    images: int
    wall_s: float
    data_wait_s: float  # time spent waiting for the next batch, apart from compute
    steps: int = 0  # optimizer steps taken (fewer than batches under gradient accumulation)

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class EvalResult:
    top1: float  # percent
    top5: float  # percent
    images: int


def poly_lr(base_lr: float, step: int, total_steps: int, power: float = 1.0) -> float:
    """Poly decay to zero over ``total_steps``, as the released SqueezeNet v1.0 solver."""
    return base_lr * (1.0 - min(step, total_steps) / max(total_steps, 1)) ** power


def scheduled_lr(base_lr: float, step: int, total_steps: int, *, power: float = 1.0, warmup_steps: int = 0) -> float:
    """Linear warm-up over the first ``warmup_steps`` (0: none), then poly decay to zero
    over the remaining steps. With no warm-up this is exactly :func:`poly_lr`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return poly_lr(base_lr, step - warmup_steps, total_steps - warmup_steps, power)


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: must be sgd or adamw, got {name!r}")


def resolve_amp(setting: AmpSetting, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``setting`` on ``device``; None means plain float32.

    "auto" is bf16 on a GPU that supports it, else fp16 on a GPU, and off on CPU: CPU
    autocast rarely speeds SqueezeNet up and would change the numbers. "bf16"/"fp16" are
    honoured on any device (the caller asked)."""
    device = torch.device(device)
    if setting == "off":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if setting != "auto":
        raise ValueError(f"amp: must be auto, off, bf16 or fp16, got {setting!r}")
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def resolve_channels_last(setting: bool | None, device: torch.device | str) -> bool:
    """``None`` means auto: NHWC on a GPU (tensor cores want it), NCHW on CPU."""
    if setting is None:
        return torch.device(device).type == "cuda"
    return bool(setting)


def make_grad_scaler(amp_dtype: torch.dtype | None, device: torch.device | str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling so small gradients do not underflow; bf16 and fp32 do not."""
    if amp_dtype != torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


@torch.no_grad()
def caffe_xavier_init_(model: nn.Module) -> nn.Module:
    """The released SqueezeNet v1.0 initialisation: Caffe's "xavier" filler, i.e.
    U(-sqrt(3 / fan_in), +sqrt(3 / fan_in)), for every conv/linear weight, except the
    last conv (the classifier) which is N(0, 0.01); biases zero."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for index, layer in enumerate(layers):
        if index == len(layers) - 1:
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
        else:
            fan_in = layer.weight[0].numel()  # in_channels x kh x kw
            bound = math.sqrt(3.0 / fan_in)
            nn.init.uniform_(layer.weight, -bound, bound)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return model


def _to_device(inputs: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    if channels_last and inputs.dim() == 4:
        return inputs.to(device, non_blocking=True, memory_format=torch.channels_last)
    return inputs.to(device, non_blocking=True)


def fit(model: nn.Module, loader, train_cfg: "TrainConfig") -> None:
    """Trains ``model`` in this process for ``train_cfg.epochs`` passes over ``loader`` with
    the config's optimizer, warm-up + poly schedule and label smoothing: a recipe's
    training without Ray (the tests' shared baseline, the benches' baselines)."""
    optimizer = make_optimizer(model.parameters(), train_cfg.optimizer, lr=train_cfg.lr,
                               momentum=train_cfg.momentum, weight_decay=train_cfg.weight_decay)  # fmt: skip
    total, warmup = train_cfg.epochs * len(loader), round(train_cfg.warmup_epochs * len(loader))
    steps = itertools.count()

    def lr_at_step() -> float:
        return scheduled_lr(train_cfg.lr, next(steps), total, power=train_cfg.lr_power, warmup_steps=warmup)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets, label_smoothing=train_cfg.label_smoothing)

    for _ in range(train_cfg.epochs):
        train_one_epoch(model, loader, optimizer, lr_at_step=lr_at_step, loss_fn=loss_fn)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lr_at_step: Callable[[], float] | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    channels_last: bool = False,
    accumulation_steps: int = 1,
    on_batch: Callable[[int], None] | None = None,
) -> EpochStats:
    """One pass over ``loader``.

    ``lr_at_step`` (if given) sets the lr before each optimizer step. With
    ``accumulation_steps`` k > 1, gradients of k consecutive batches are averaged before
    one step (the last group of an epoch may be shorter); under DDP the all-reduce runs
    only on the batch that steps. ``on_batch`` is called with each batch's image count
    (progress bars).
    """
    if accumulation_steps < 1:
        raise ValueError(f"accumulation_steps: must be at least 1, got {accumulation_steps}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = torch.device(device)
    no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel's
    model.train()
    # Summed on the device: a .item() per batch would stall the GPU queue every step.
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    images, data_wait, steps, pending = 0, 0.0, 0, 0
    start = time.perf_counter()
    batches = iter(loader)
    current = next(batches, None)
    data_wait += time.perf_counter() - start
    while current is not None:
        # Fetch one ahead so we know whether this batch is the epoch's last (it must step).
        waiting_since = time.perf_counter()
        upcoming = next(batches, None)
        data_wait += time.perf_counter() - waiting_since
        inputs, targets = current
        inputs, targets = _to_device(inputs, device, channels_last), targets.to(device, non_blocking=True)
        if pending == 0:
            if lr_at_step is not None:
                lr = lr_at_step()
                for group in optimizer.param_groups:
                    group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
        pending += 1
        steps_now = pending == accumulation_steps or upcoming is None
        sync = contextlib.nullcontext() if steps_now or no_sync is None else no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(inputs), targets)
            scaled = loss / accumulation_steps if accumulation_steps > 1 else loss
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if steps_now:
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            steps += 1
            pending = 0
        total_loss += loss.detach().to(torch.float64) * len(targets)
        images += len(targets)
        if on_batch is not None:
            on_batch(len(targets))
        current = upcoming
    loss_sum = total_loss.item()  # one device sync per epoch
    wall = time.perf_counter() - start
    return EpochStats(loss=loss_sum / max(images, 1), images=images, wall_s=wall, data_wait_s=data_wait, steps=steps)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> EvalResult:
    """Top-1/top-5 accuracy in percent. Under torch.distributed the counts of all ranks
    are summed, so every rank returns the accuracy over the whole split."""
    device = torch.device(device)
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64, device=device)  # correct@1, correct@5, images
    for inputs, targets in loader:
        inputs, targets = _to_device(inputs, device, channels_last), targets.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(inputs)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (N, k)
        hits = topk.eq(targets.unsqueeze(1))
        counts[0] += hits[:, 0].sum()
        counts[1] += hits.any(dim=1).sum()
        counts[2] += len(targets)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    counts = counts.cpu()
    n = int(counts[2].item())
    if n == 0:
        raise ValueError("evaluate: the data loader yielded no images")
    return EvalResult(top1=100.0 * counts[0].item() / n, top5=100.0 * counts[1].item() / n, images=n)
