"""Training checkpoints without pickle: safetensors for tensors, JSON for the rest.

A checkpoint directory holds

    model.safetensors       the bare model's state_dict (torchvision-compatible keys)
    optimizer.safetensors   every tensor of the optimizer's state_dict (momentum, Adam moments)
    state.json              the optimizer's structure (param groups, ids, scalars), the
                            GradScaler's state, and the progress (epoch, step, metrics)

The optimizer and scaler state go through torch's own ``state_dict()`` /
``load_state_dict()``; only their serialisation differs from ``torch.save``: the nested
dict is split into a JSON tree whose tensor leaves name entries of the safetensors file.
Reading either file runs no code, unlike unpickling.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import load_file, save_file

from sqz import storage

__all__ = [
    "pack_tree",
    "unpack_tree",
    "save_training_state",
    "load_training_state",
    "read_weights",
    "read_masks",
    "check_start_files",
    "CHECKPOINT_FORMAT",
]

CHECKPOINT_FORMAT = "sqz-train-checkpoint/1"
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE = "model.safetensors", "optimizer.safetensors", "state.json"


def pack_tree(tree: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested dict/list/tuple of tensors and JSON scalars into (a JSON-ready tree,
    {name: tensor}). Dicts with non-string keys (an optimizer's parameter ids) and tuples
    (Adam's betas) are tagged so that :func:`unpack_tree` restores them exactly."""
    tensors: dict[str, torch.Tensor] = {}

    def pack(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = node.detach().cpu().contiguous()
            return {"__tensor__": name}
        if isinstance(node, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in node):
                return {k: pack(v) for k, v in node.items()}
            return {"__items__": [[k, pack(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"__tuple__": [pack(v) for v in node]}
        if isinstance(node, list):
            return [pack(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"checkpoint: cannot store a {type(node).__name__} without pickle")

    return pack(tree), tensors


def unpack_tree(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack_tree`."""
    if isinstance(tree, list):
        return [unpack_tree(v, tensors) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if set(tree) == {"__tensor__"}:
        name = tree["__tensor__"]
        if name not in tensors:
            raise ValueError(f"checkpoint: state.json names tensor {name!r}, missing from {OPTIMIZER_FILE}")
        return tensors[name]
    if set(tree) == {"__items__"}:
        return {(tuple(k) if isinstance(k, list) else k): unpack_tree(v, tensors) for k, v in tree["__items__"]}
    if set(tree) == {"__tuple__"}:
        return tuple(unpack_tree(v, tensors) for v in tree["__tuple__"])
    return {k: unpack_tree(v, tensors) for k, v in tree.items()}


def save_training_state(
    directory: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    progress: dict[str, Any],
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Write a checkpoint of the bare (not DDP-wrapped, not compiled) ``model``."""
    # channels_last weights are strided views; safetensors stores contiguous bytes.
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, os.path.join(directory, MODEL_FILE))
    optimizer_tree, optimizer_tensors = pack_tree(optimizer.state_dict())
    save_file(optimizer_tensors, os.path.join(directory, OPTIMIZER_FILE))
    state = {
        "format": CHECKPOINT_FORMAT,
        "progress": progress,
        "optimizer": optimizer_tree,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    with open(os.path.join(directory, STATE_FILE), "w") as f:
        json.dump(state, f, indent=1)


def load_training_state(
    directory: str,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    scaler: torch.amp.GradScaler | None = None,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``/``scaler`` when given);
    returns its progress dict."""
    with open(os.path.join(directory, STATE_FILE)) as f:
        state = json.load(f)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {directory} is not a {CHECKPOINT_FORMAT} checkpoint")
    model.load_state_dict(load_file(os.path.join(directory, MODEL_FILE)))
    if optimizer is not None:
        tensors = load_file(os.path.join(directory, OPTIMIZER_FILE))
        optimizer.load_state_dict(unpack_tree(state["optimizer"], tensors))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state["progress"]


def read_weights(url: str) -> dict[str, torch.Tensor]:
    """A state_dict from a .safetensors file or a .sqz file (decoded), by URL."""
    from sqz.compress import codec

    data = storage.read_bytes(url)
    if data[: len(codec.MAGIC)] == codec.MAGIC:
        return codec.decode(data).state_dict()
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError) as exc:
        raise ValueError(f"{url}: neither a .sqz nor a .safetensors file ({exc})") from None


def read_masks(url: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Pruning masks for ``model`` (parameter name -> bool, True = kept) from ``url``:
    either a .safetensors of bool tensors (as ``sqz.compress.compute_masks`` returns), or
    the weights of a pruned model (.safetensors or .sqz), whose zeros are the pruned."""
    from sqz.compress.prune import prunable_parameters

    tensors = read_weights(url)
    prunable = prunable_parameters(model)
    if tensors and all(t.dtype == torch.bool for t in tensors.values()):
        masks = tensors
    else:
        missing = sorted(set(prunable) - set(tensors))
        if missing:
            raise ValueError(f"{url}: no weights for {missing[0]} (and {len(missing) - 1} more) of the model")
        masks = {name: tensors[name] != 0 for name in prunable}
    for name, mask in masks.items():
        if name not in prunable:
            raise ValueError(f"{url}: mask {name!r} names no prunable weight of the model")
        if mask.shape != prunable[name].shape:
            raise ValueError(f"{url}: mask {name!r} has shape {tuple(mask.shape)}, the weight {tuple(prunable[name].shape)}")
    return masks


def check_start_files(train_cfg: Any) -> None:
    """One-line ValueErrors, before a training starts, if its --init / --masks-from
    files (``TrainConfig.init_url`` / ``masks_url``) are missing or do not fit the model."""
    from sqz.models import build_model

    for option, url in (("--masks-from", train_cfg.masks_url), ("--init", train_cfg.init_url)):
        if url and not storage.exists(url):
            raise ValueError(f"{option}: no such file: {url}")
    model = build_model(train_cfg.model, num_classes=train_cfg.num_classes)
    if train_cfg.init_url:
        weights = read_weights(train_cfg.init_url)
        if weights and all(t.dtype == torch.bool for t in weights.values()):
            raise ValueError(f"--init: {train_cfg.init_url} holds pruning masks, not weights; give the weights with --init")
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ValueError(f"--init: {train_cfg.init_url} does not fit {train_cfg.model}: {lines[-1]}") from None
    if train_cfg.masks_url:
        read_masks(train_cfg.masks_url, model)
