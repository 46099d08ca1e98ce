"""Magnitude pruning whose masks survive training.

Like torch.nn.utils.prune, the mask travels with the weight rather than with the loop:
``attach_masks_`` hooks the optimizer so that after every step pruned weights, and their
momentum, are exactly zero again. Unlike torch.nn.utils.prune it keeps the plain
``weight`` parameter, so state_dict keys stay torchvision-compatible.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sqz.config import PruneConfig

__all__ = ["prunable_parameters", "layer_thresholds", "compute_masks", "prune_", "apply_masks_", "attach_masks_", "density"]

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
    thresholds = {}
    for name, weight in prunable_parameters(model).items():
        w = weight.detach().abs().flatten()
        if config.mode == "absolute":
            thresholds[name] = config.amount
        elif config.mode == "std":
            thresholds[name] = config.amount * weight.detach().std().item()
        else:  # density: keep the largest ``amount`` share of this layer's weights
            keep = max(1, round(config.amount * w.numel()))
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

    @torch.no_grad()
    def _reapply(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for param, mask in masked:
            keep = mask.to(param.dtype)
            param.mul_(keep)
            for buffer in opt.state.get(param, {}).values():
                if torch.is_tensor(buffer) and buffer.shape == param.shape:
                    buffer.mul_(keep)

    return optimizer.register_step_post_hook(_reapply)


def density(model: nn.Module) -> float:
    """Share of non-zero entries over all prunable weights."""
    weights = list(prunable_parameters(model).values())
    total = sum(w.numel() for w in weights)
    nonzero = sum(int(torch.count_nonzero(w).item()) for w in weights)
    return nonzero / total if total else 1.0
