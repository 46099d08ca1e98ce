"""Magnitude pruning whose masks survive training.

Like torch.nn.utils.prune, the mask travels with the weight rather than with the loop:
``attach_masks_`` hooks the optimizer so that after every step pruned weights, and their
momentum, are exactly zero again. Unlike torch.nn.utils.prune it keeps the plain
``weight`` parameter, so state_dict keys stay torchvision-compatible.

Two ways to reach a target: one-shot (``prune_`` then ``attach_masks_``: everything is cut
before retraining starts) or gradual (``GradualPruner``: Zhu & Gupta's cubic schedule, the
masks tightened every few optimizer steps while the network trains, so it adapts to each
small cut instead of recovering from one large one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from sqz.config import PruneConfig

__all__ = [
    "prunable_parameters",
    "layer_thresholds",
    "compute_masks",
    "prune_",
    "apply_masks_",
    "attach_masks_",
    "density",
    "mask_densities",
    "cubic_sparsity",
    "GradualSchedule",
    "GradualPruner",
]

Masks = dict[str, torch.Tensor]  # parameter name -> bool tensor, True = kept


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Conv and linear weights: the tensors Deep Compression prunes and shares.
    Biases (and any 1-D tensor) stay dense: they are a rounding error in size."""
    return {
        f"{name}.weight": module.weight
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    }


def layer_thresholds(model: nn.Module, config: PruneConfig) -> dict[str, float]:
    """Per-layer magnitude below which weights are pruned (the same value for every layer
    when ``config.scope == "global"``)."""
    if config.scope == "global" and config.mode != "absolute":
        pooled = torch.cat([w.detach().flatten() for w in prunable_parameters(model).values()])
        if config.mode == "std":
            threshold = config.amount * pooled.std().item()
        else:
            magnitudes = pooled.abs()
            keep = max(1, round(config.amount * magnitudes.numel()))
            threshold = torch.topk(magnitudes, keep).values[-1].item() if keep < magnitudes.numel() else 0.0
        return dict.fromkeys(prunable_parameters(model), threshold)
    params = prunable_parameters(model)
    dense = {name for name, weight in params.items() if weight.numel() <= config.dense_below}
    kept_share = config.amount
    if config.mode == "density" and dense:
        # The dense layers keep all their weights: the others keep less, so that the
        # model as a whole still keeps ``amount`` of its weights.
        total = sum(w.numel() for w in params.values())
        dense_weights = sum(params[name].numel() for name in dense)
        if dense_weights >= total:
            kept_share = 1.0
        else:
            kept_share = (config.amount * total - dense_weights) / (total - dense_weights)
            if kept_share <= 0:
                raise ValueError(f"density: {config.amount:g} keeps fewer weights than the layers of <= "
                                 f"{config.dense_below:,} weights hold ({dense_weights:,} of {total:,}); "
                                 "raise the density or lower dense_below")  # fmt: skip
    thresholds = {}
    for name, weight in params.items():
        w = weight.detach().abs().flatten()
        if name in dense:
            thresholds[name] = 0.0
        elif config.mode == "absolute":
            thresholds[name] = config.amount
        elif config.mode == "std":
            thresholds[name] = config.amount * weight.detach().std().item()
        else:  # density: keep the largest share of this layer's weights
            keep = max(1, round(kept_share * w.numel()))
            thresholds[name] = torch.topk(w, keep).values[-1].item() if keep < w.numel() else 0.0
    return thresholds


def compute_masks(model: nn.Module, config: PruneConfig) -> Masks:
    thresholds = layer_thresholds(model, config)
    masks = {}
    for name, weight in prunable_parameters(model).items():
        w = weight.detach().abs()
        # Density mode keeps weights equal to the k-th largest; the others prune strictly below.
        masks[name] = w >= thresholds[name] if config.mode == "density" else w > thresholds[name]
        if thresholds[name] == 0.0:
            masks[name] = w != 0  # nothing pruned beyond what is already zero
    return masks


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def prune_(model: nn.Module, config: PruneConfig) -> Masks:
    """Prune ``model`` in place; returns the masks. Calling it again on a pruned model
    prunes further (iterative pruning): already-zero weights stay pruned."""
    masks = compute_masks(model, config)
    apply_masks_(model, masks)
    return masks


def attach_masks_(model: nn.Module, optimizer: torch.optim.Optimizer, masks: Masks) -> Any:
    """Keep pruned weights at exactly zero through training with ``optimizer``.

    Returns a handle whose ``remove()`` detaches the hook. After each step the weights
    and every per-parameter optimizer buffer of the same shape (momentum, Adam moments)
    are multiplied by the mask, so neither the gradient nor momentum revives a weight.
    """
    params = dict(model.named_parameters())
    masked = [(params[name], mask) for name, mask in masks.items()]
    apply_masks_(model, masks)

    def _reapply(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        _zero_pruned_(opt, masked)

    return optimizer.register_step_post_hook(_reapply)


@torch.no_grad()
def _zero_pruned_(optimizer: torch.optim.Optimizer, masked: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Pruned weights and their per-parameter optimizer buffers (momentum, Adam moments)
    back to exactly zero, so neither the gradient nor momentum revives a weight."""
    for param, mask in masked:
        keep = mask.to(param.dtype)
        param.mul_(keep)
        for buffer in optimizer.state.get(param, {}).values():
            if torch.is_tensor(buffer) and buffer.shape == param.shape:
                buffer.mul_(keep)


def density(model: nn.Module) -> float:
    """Share of non-zero entries over all prunable weights."""
    weights = list(prunable_parameters(model).values())
    total = sum(w.numel() for w in weights)
    nonzero = sum(int(torch.count_nonzero(w).item()) for w in weights)
    return nonzero / total if total else 1.0


def mask_densities(masks: Masks) -> dict[str, float]:
    """Kept share of each masked tensor: what one-shot masks leave, as gradual targets."""
    return {name: float(mask.float().mean().item()) for name, mask in masks.items()}


def cubic_sparsity(step: int, *, final: float, initial: float, begin_step: int, ramp_steps: int, frequency: int) -> float:
    """Zhu & Gupta (2017, "To prune, or not to prune"), eq. 1:
    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3, evaluated at the last mask update
    t0 + k dt <= ``step``; ``n dt`` is ``ramp_steps`` rounded down to whole updates, so the
    final update lands inside the ramp and reaches ``final`` exactly. Fast cuts early,
    while the network is redundant; small ones near the target."""
    updates = max(1, ramp_steps // frequency)  # n
    if step < begin_step:
        return 0.0  # the schedule has not started
    k = min((step - begin_step) // frequency, updates)
    return final + (initial - final) * (1.0 - k / updates) ** 3


@dataclass(frozen=True)
class GradualSchedule:
    """When and how far ``GradualPruner`` tightens the masks.

    ``final_densities``: kept share (0..1) per parameter name at the end of the ramp (per-layer
    targets, e.g. from the sensitivity table or from one-shot masks). Masks are recomputed
    every ``frequency`` optimizer steps from ``begin_step`` until ``begin_step +
    ramp_steps``; after that they stay fixed (recovery at the final sparsity).
    """

    final_densities: Mapping[str, float]
    ramp_steps: int
    frequency: int
    begin_step: int = 0
    initial_sparsity: float = 0.0

    def __post_init__(self) -> None:
        if not self.final_densities:
            raise ValueError("final_densities: no layer to prune")
        for name, kept in self.final_densities.items():
            # 0 is allowed: one-shot masks at a high threshold can empty a layer, and gradual
            # takes their densities as targets.
            if not (math.isfinite(kept) and 0.0 <= kept <= 1.0):
                raise ValueError(f"final_densities: {name} must be in [0, 1], got {kept}")
        if not (isinstance(self.frequency, int) and self.frequency >= 1):
            raise ValueError(f"prune_frequency: must be a positive number of steps, got {self.frequency!r}")
        if not (isinstance(self.ramp_steps, int) and self.ramp_steps >= 1):
            raise ValueError(f"ramp_steps: must be a positive number of steps, got {self.ramp_steps!r}")
        if self.frequency > self.ramp_steps:
            raise ValueError(f"prune_frequency: {self.frequency} steps is longer than the {self.ramp_steps}-step ramp "
                             "(no mask update would happen before its end)")  # fmt: skip
        if self.begin_step < 0:
            raise ValueError(f"begin_step: must be >= 0, got {self.begin_step}")
        if not 0.0 <= self.initial_sparsity < 1.0:
            raise ValueError(f"initial_sparsity: must be in [0, 1), got {self.initial_sparsity}")

    @property
    def end_step(self) -> int:
        """The step of the last mask update (the target is reached there)."""
        return self.begin_step + max(1, self.ramp_steps // self.frequency) * self.frequency

    def updates_at(self, step: int) -> bool:
        return self.begin_step <= step <= self.end_step and (step - self.begin_step) % self.frequency == 0

    def densities_at(self, step: int) -> dict[str, float]:
        """Each layer's kept share after the mask update at or before ``step``. A layer
        whose target is above 1 - initial_sparsity is never pruned below its target."""
        densities = {}
        for name, kept in self.final_densities.items():
            initial = min(self.initial_sparsity, 1.0 - kept)
            sparsity = cubic_sparsity(step, final=1.0 - kept, initial=initial, begin_step=self.begin_step,
                                      ramp_steps=self.ramp_steps, frequency=self.frequency)  # fmt: skip
            densities[name] = 1.0 - sparsity
        return densities


class GradualPruner:
    """Gradual magnitude pruning as an optimizer hook (Zhu & Gupta's cubic schedule).

    After every ``optimizer.step()`` the pruned weights (and their optimizer buffers) are
    exactly zero again, as with ``attach_masks_``; on the schedule's update steps the
    masks are first tightened to that step's density: each layer keeps its largest
    magnitudes among the weights it still has, so a pruned weight never comes back and
    every layer holds exactly round(density x size) weights.

        pruner = GradualPruner(model, optimizer, GradualSchedule(targets, ramp_steps=200, frequency=10))
        ...train...; pruner.remove()   # pruner.masks: the final masks
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: GradualSchedule) -> None:
        params = prunable_parameters(model)
        unknown = sorted(set(schedule.final_densities) - set(params))
        if unknown:
            raise ValueError(f"final_densities: unknown layer(s) {', '.join(unknown[:3])}")
        self.schedule = schedule
        self.step = 0
        self._params = {name: params[name] for name in schedule.final_densities}
        self.masks: Masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in self._params.items()}
        self._optimizer = optimizer
        if schedule.updates_at(0):
            self._tighten(0)
        _zero_pruned_(optimizer, self._masked())
        self._handle = optimizer.register_step_post_hook(self._after_step)

    def _masked(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self._params[name], mask) for name, mask in self.masks.items()]

    @torch.no_grad()
    def _tighten(self, step: int) -> None:
        for name, kept_share in self.schedule.densities_at(step).items():
            weight, mask = self._params[name], self.masks[name]
            # Never more than the layer still has: masks only shrink.
            keep = min(round(kept_share * weight.numel()), int(mask.sum().item()))
            if keep == int(mask.sum().item()):
                continue
            scores = weight.detach().abs().flatten().masked_fill(~mask.flatten(), -1.0)
            new = torch.zeros(weight.numel(), dtype=torch.bool, device=weight.device)
            new[torch.topk(scores, keep, sorted=False).indices] = True
            self.masks[name] = new.view_as(mask)

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        if self.schedule.updates_at(self.step):
            self._tighten(self.step)
        _zero_pruned_(optimizer, self._masked())

    @property
    def finished(self) -> bool:
        """True once the final mask update has happened."""
        return self.step >= self.schedule.end_step

    def remove(self) -> None:
        self._handle.remove()
