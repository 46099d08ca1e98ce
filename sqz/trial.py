"""One compression trial, plain torch: prune -> masked retrain -> k-means -> fine-tune
centroids -> encode .sqz -> evaluate the decoded file. Ray Tune runs many of these; a
notebook can run one."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from safetensors.torch import load as load_safetensors

from sqz import engine, storage
from sqz.compress import codec
from sqz.compress.kmeans import CodebookSGD, quantize_
from sqz.compress.prune import attach_masks_, density, prune_
from sqz.config import DataConfig, PruneConfig, QuantConfig
from sqz.data import load_split, make_loader
from sqz.models import build_model
from sqz.report import ALEXNET_FLOAT32_BYTES

__all__ = ["TrialSpec", "trial_id", "compress_and_evaluate"]


@dataclass(frozen=True)
class TrialSpec:
    prune: PruneConfig
    quant: QuantConfig
    retrain_epochs: int
    retrain_lr: float
    retrain_optimizer: str = "adamw"


def trial_id(prune: PruneConfig, bits: int) -> str:
    """Stable name of a grid point: the same point always maps to the same files."""
    return f"{prune.mode}{prune.amount:g}-b{bits}"


def _loaders(data: DataConfig) -> tuple[Iterable, Iterable]:
    generator = torch.Generator().manual_seed(data.seed)
    train = make_loader(load_split(data, "train"), batch_size=data.batch_size, shuffle=True, generator=generator,
                        num_workers=data.loader_workers)  # fmt: skip
    val = make_loader(load_split(data, "val"), batch_size=256, num_workers=data.loader_workers)
    return train, val


def compress_and_evaluate(
    *,
    baseline: bytes,
    arch: dict[str, Any],
    data: DataConfig,
    spec: TrialSpec,
    model_url: str,
    run_id: str,
) -> dict[str, Any]:
    """Run one trial from the baseline's safetensors bytes; returns its sweep_trials row.
    The accuracy reported is the decoded .sqz file's, so the row proves the bytes."""
    start = time.perf_counter()
    torch.manual_seed(data.seed)
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    model.load_state_dict(load_safetensors(baseline))
    train_loader, val_loader = _loaders(data)

    masks = prune_(model, spec.prune)
    if spec.retrain_epochs:
        optimizer = engine.make_optimizer(model.parameters(), spec.retrain_optimizer, lr=spec.retrain_lr)
        attach_masks_(model, optimizer, masks)
        for _ in range(spec.retrain_epochs):
            engine.train_one_epoch(model, train_loader, optimizer)

    shared = quantize_(model, spec.quant)
    if spec.quant.finetune_epochs:
        optimizer = CodebookSGD(model, shared, lr=spec.quant.finetune_lr)
        for _ in range(spec.quant.finetune_epochs):
            engine.train_one_epoch(model, train_loader, optimizer)

    name = trial_id(spec.prune, spec.quant.bits)
    encoded = codec.encode(model, meta={"run_id": run_id, "trial_id": name})
    storage.write_bytes(model_url, encoded)
    result = engine.evaluate(codec.decode(encoded), val_loader)
    return {
        "run_id": run_id,
        "trial_id": name,
        "prune_mode": spec.prune.mode,
        "threshold": spec.prune.amount,
        "bits": spec.quant.bits,
        "density": density(model),
        "size_bytes": storage.size_of(model_url),
        "top1": result.top1,
        "top5": result.top5,
        "ratio_vs_alexnet_32bit": ALEXNET_FLOAT32_BYTES / len(encoded),
        "model_url": model_url,
        "wall_s": time.perf_counter() - start,
    }
