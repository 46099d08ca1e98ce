"""Frozen configuration dataclasses, one per stage, and the run id derived from them.

Every stage takes its config object rather than loose keyword arguments, so a run's whole
behaviour is one JSON-serialisable value: it goes into manifest.json and its hash is the
run id (same config, same id: a rerun resumes instead of duplicating).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "DataConfig",
    "TrainConfig",
    "PruneConfig",
    "QuantConfig",
    "SweepConfig",
    "SensitivityConfig",
    "PipelineConfig",
    "config_to_dict",
    "config_from_dict",
    "derive_run_id",
]

PruneMode = Literal["std", "absolute", "density"]
KMeansMethod = Literal["lloyd"]
TrialScheduler = Literal["fifo", "asha"]


@dataclass(frozen=True)
class DataConfig:
    url: str = "digits"  # "digits" (scikit-learn's bundled 8x8 digits), "synthetic", or a folder
    image_size: int = 32  # digits are upsampled from 8x8 to this, as RGB
    val_fraction: float = 0.2  # held-out share of the digits/synthetic images
    batch_size: int = 32  # global batch; each Ray worker gets batch_size / workers
    seed: int = 0  # fixes the split, so every worker and every trial sees the same one

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("data url: must not be empty")
        if self.image_size < 8:
            raise ValueError(f"image_size: must be at least 8, got {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "squeezenet_small"  # registry name in sqz.models
    num_classes: int = 10
    epochs: int = 8
    # SqueezeNet has no batch norm: from scratch on a small dataset, SGD sits on the
    # loss plateau for many epochs while AdamW leaves it in one or two. The released
    # v1.0 ImageNet recipe is optimizer="sgd", lr=0.04 (momentum 0.9, poly decay).
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3  # poly decay (power 1.0) to zero over the run, as the released v1.0
    momentum: float = 0.9  # SGD only
    weight_decay: float = 2e-4  # the released SqueezeNet v1.0 recipe
    workers: int = 2  # Ray Train data-parallel workers
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs: must be at least 1, got {self.epochs}")
        if self.lr <= 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer: must be sgd or adamw, got {self.optimizer!r}")
        if self.workers < 1:
            raise ValueError(f"workers: must be at least 1, got {self.workers}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes: must be at least 2, got {self.num_classes}")


@dataclass(frozen=True)
class PruneConfig:
    # "std": per-layer threshold = amount x the layer's weight std (Deep Compression's
    # quality parameter); "absolute": |w| < amount is pruned; "density": keep that share.
    mode: PruneMode = "std"
    amount: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in ("std", "absolute", "density"):
            raise ValueError(f"prune mode: must be std, absolute or density, got {self.mode!r}")
        if not math.isfinite(self.amount):
            raise ValueError(f"threshold: must be finite, got {self.amount}")
        if self.mode == "density":
            if not 0.0 < self.amount <= 1.0:
                raise ValueError(f"density: must be in (0, 1], got {self.amount}")
        elif self.amount < 0:
            raise ValueError(f"threshold: must be >= 0, got {self.amount}")


@dataclass(frozen=True)
class QuantConfig:
    bits: int = 8  # 2^bits shared values per layer (the codebook), pruned zeros excluded
    method: KMeansMethod = "lloyd"  # Lloyd with linear init, as in Deep Compression
    finetune_epochs: int = 1  # centroid fine-tuning after clustering; 0 disables it
    finetune_lr: float = 1e-4  # a centroid's gradient sums many members': keep steps small

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits: must be in 1..8, got {self.bits}")
        if self.method not in ("lloyd",):
            raise ValueError(f"kmeans method: must be lloyd, got {self.method!r}")
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs: must be >= 0, got {self.finetune_epochs}")


@dataclass(frozen=True)
class SweepConfig:
    # Quality parameters q (threshold = q x layer std) x bit widths: one trial per pair.
    thresholds: tuple[float, ...] = (0.3, 0.6, 0.9)
    bits: tuple[int, ...] = (8, 5)
    prune_mode: PruneMode = "std"
    retrain_epochs: int = 2  # the paper retrains 3 epochs on ImageNet; digits need fewer
    # Retrain with the training optimizer at a fraction of its lr (Deep Compression uses
    # about 1/100 with SGD; AdamW's per-weight scaling needs a larger share).
    retrain_optimizer: Literal["sgd", "adamw"] = "adamw"
    retrain_lr: float = 1e-4
    max_concurrent: int = 2
    max_top1_drop: float = 1.0  # points of top-1 the chosen variant may lose vs baseline
    quant: QuantConfig = field(default_factory=QuantConfig)
    # Ray resources of one trial: its torch uses that many threads; on GPU clusters a
    # share of a GPU (0.5 packs two trials per device: digits-sized models leave it idle).
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    # "asha" stops retrains whose per-epoch top-1 trails the other trials' at the same
    # epoch (asynchronous successive halving): worth it when retrains are long.
    scheduler: TrialScheduler = "fifo"
    # Per-layer mode: thresholds x bits become each layer's candidate levels, and one trial
    # runs per target: an allowed top-1 drop (points, predicted from the sensitivity table)
    # or a file-size budget (bytes). The per-layer choice is the smallest (or most accurate)
    # combination of per-layer levels that meets the target.
    per_layer: bool = False
    max_drops: tuple[float, ...] = ()
    size_budgets: tuple[int, ...] = ()
    sensitivity_images: int = 512  # fixed validation subset the sensitivity curves use

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise ValueError("thresholds: the grid is empty")
        if not self.bits:
            raise ValueError("bits: the grid is empty")
        for t in self.thresholds:
            PruneConfig(mode=self.prune_mode, amount=t)  # raises with the option's name
        for b in self.bits:
            if not 1 <= int(b) <= 8:
                raise ValueError(f"bits: must be in 1..8, got {b}")
        if self.retrain_optimizer not in ("sgd", "adamw"):
            raise ValueError(f"retrain_optimizer: must be sgd or adamw, got {self.retrain_optimizer!r}")
        if self.retrain_lr <= 0:
            raise ValueError(f"retrain_lr: must be positive, got {self.retrain_lr}")
        if self.retrain_epochs < 0:
            raise ValueError(f"retrain_epochs: must be >= 0, got {self.retrain_epochs}")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent: must be at least 1, got {self.max_concurrent}")
        if self.max_top1_drop < 0:
            raise ValueError(f"max_top1_drop: must be >= 0, got {self.max_top1_drop}")
        if not (math.isfinite(self.cpus_per_trial) and self.cpus_per_trial > 0):
            raise ValueError(f"cpus_per_trial: must be positive, got {self.cpus_per_trial}")
        if not (math.isfinite(self.gpus_per_trial) and self.gpus_per_trial >= 0):
            raise ValueError(f"gpus_per_trial: must be >= 0, got {self.gpus_per_trial}")
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial: above 1 it must be a whole number, got {self.gpus_per_trial}")
        if self.scheduler not in ("fifo", "asha"):
            raise ValueError(f"scheduler: must be fifo or asha, got {self.scheduler!r}")
        if self.scheduler == "asha" and self.retrain_epochs < 1:
            raise ValueError("scheduler: asha needs retrain_epochs >= 1 (it stops trials between retrain epochs)")
        for drop in self.max_drops:
            if not (math.isfinite(drop) and drop >= 0):
                raise ValueError(f"max_drops: must be >= 0, got {drop}")
        for budget in self.size_budgets:
            if int(budget) != budget or budget < 1:
                raise ValueError(f"size_budgets: must be a positive number of bytes, got {budget}")
        if self.per_layer and not (self.max_drops or self.size_budgets):
            raise ValueError("per_layer: give at least one target (max_drops or size_budgets)")
        if not self.per_layer and (self.max_drops or self.size_budgets):
            raise ValueError("max_drops/size_budgets: targets are only used with per_layer")
        if self.sensitivity_images < 1:
            raise ValueError(f"sensitivity_images: must be at least 1, got {self.sensitivity_images}")


@dataclass(frozen=True)
class SensitivityConfig:
    """Per-layer sensitivity: each layer alone pruned at each threshold (others intact),
    and alone quantized at each bit width; top-1 on a fixed validation subset."""

    thresholds: tuple[float, ...] = (0.3, 0.6, 0.9, 1.2, 1.5)
    bits: tuple[int, ...] = (8, 6, 5, 4, 3)
    prune_mode: PruneMode = "std"
    images: int = 512  # a fixed subset keeps each point fast; the same images for every point
    max_concurrent: int = 2
    cpus_per_task: float = 1.0
    quant: QuantConfig = field(default_factory=QuantConfig)  # the k-means method and its options

    def __post_init__(self) -> None:
        SweepConfig(thresholds=self.thresholds, bits=self.bits, prune_mode=self.prune_mode)  # same grid rules
        if self.images < 1:
            raise ValueError(f"images: must be at least 1, got {self.images}")
        if self.max_concurrent < 1:
            raise ValueError(f"max_concurrent: must be at least 1, got {self.max_concurrent}")
        if not (math.isfinite(self.cpus_per_task) and self.cpus_per_task > 0):
            raise ValueError(f"cpus_per_task: must be positive, got {self.cpus_per_task}")


@dataclass(frozen=True)
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    storage_url: str = "./sqz-runs"  # root; the run lives under <storage_url>/<run_id>/


_NESTED = {
    "PipelineConfig": {"data": DataConfig, "train": TrainConfig, "sweep": SweepConfig},
    "SweepConfig": {"quant": QuantConfig},
    "SensitivityConfig": {"quant": QuantConfig},
}


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`; unknown keys are an error, not silently dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    kwargs = {}
    nested = _NESTED.get(cls.__name__, {})
    for key, value in values.items():
        if key in nested and isinstance(value, dict):
            value = config_from_dict(nested[key], value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def derive_run_id(config: PipelineConfig) -> str:
    """Same config, same id. The storage root is left out: moving a run keeps its id."""
    payload = config_to_dict(config)
    payload.pop("storage_url", None)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"run-{digest[:12]}"
