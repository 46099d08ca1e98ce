"""The plain training and evaluation loops: one process, plain torch.

Ray Train calls these per worker; a notebook calls them directly. Pruning masks and
centroid fine-tuning hook into the optimizer (see sqz.compress), so these loops never
need to know about compression.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

__all__ = ["EpochStats", "EvalResult", "make_optimizer", "train_one_epoch", "evaluate", "poly_lr"]


@dataclass(frozen=True)
class EpochStats:
    loss: float
    images: int
    wall_s: float
    data_wait_s: float  # time spent waiting for the next batch, apart from compute

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


def make_optimizer(
    params: Iterable[torch.nn.Parameter], name: str, *, lr: float, momentum: float = 0.9, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: must be sgd or adamw, got {name!r}")


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    device: torch.device | str = "cpu",
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    lr_at_step: Callable[[], float] | None = None,
) -> EpochStats:
    """One pass over ``loader``. ``lr_at_step`` (if given) sets the lr before each step."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    model.train()
    total_loss, images, data_wait = 0.0, 0, 0.0
    start = time.perf_counter()
    waiting_since = start
    for inputs, targets in loader:
        data_wait += time.perf_counter() - waiting_since
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if lr_at_step is not None:
            lr = lr_at_step()
            for group in optimizer.param_groups:
                group["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(targets)
        images += len(targets)
        waiting_since = time.perf_counter()
    wall = time.perf_counter() - start
    return EpochStats(loss=total_loss / max(images, 1), images=images, wall_s=wall, data_wait_s=data_wait)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    device: torch.device | str = "cpu",
) -> EvalResult:
    """Top-1/top-5 accuracy in percent. Under torch.distributed the counts of all ranks
    are summed, so every rank returns the accuracy over the whole split."""
    model.eval()
    counts = torch.zeros(3, dtype=torch.float64)  # correct@1, correct@5, images
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices  # (N, k)
        hits = topk.eq(targets.unsqueeze(1))
        counts[0] += hits[:, 0].sum().item()
        counts[1] += hits.any(dim=1).sum().item()
        counts[2] += len(targets)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(counts)
    n = int(counts[2].item())
    if n == 0:
        raise ValueError("evaluate: the data loader yielded no images")
    return EvalResult(top1=100.0 * counts[0].item() / n, top5=100.0 * counts[1].item() / n, images=n)
