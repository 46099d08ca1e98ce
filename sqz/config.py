"""Frozen configuration dataclasses, one per stage, and the run id derived from them.

Every stage takes its config object rather than loose keyword arguments, so a run's whole
behaviour is one JSON-serialisable value: it goes into manifest.json and its hash is the
run id (same config, same id: a rerun resumes instead of duplicating).
"""

from __future__ import annotations

import dataclasses
import fnmatch
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
    "TRAIN_RECIPES",
    "RETRAIN_LR_FACTOR",
]

PruneMode = Literal["std", "absolute", "density"]
KMeansMethod = Literal["auto", "exact", "lloyd"]
TrialScheduler = Literal["fifo", "asha"]
PruneSchedule = Literal["oneshot", "gradual"]
RetrainLrSchedule = Literal["constant", "rewind"]
RetrainLoss = Literal["distill", "task"]


@dataclass(frozen=True)
class DataConfig:
    # "digits" (scikit-learn's bundled 8x8 digits), "synthetic", an ImageNet-layout folder,
    # or a prepared Parquet dataset (folder or s3://, see `sqz data prepare`)
    url: str = "digits"
    image_size: int = 32  # digits are upsampled from 8x8 to this; images are cropped to it
    val_fraction: float = 0.2  # held-out share of the digits/synthetic images
    batch_size: int = 32  # global batch; each Ray worker gets batch_size / workers
    seed: int = 0  # fixes the split, so every worker and every trial sees the same one
    # Image datasets only: "torchvision" (RGB, mean/std) or "caffe" (BGR, mean (104, 117,
    # 123) subtracted from 0..255 pixels), the convention of the released SqueezeNet.
    normalization: Literal["torchvision", "caffe"] = "torchvision"
    loader_workers: int = 0  # DataLoader worker processes per training process (0: in-process)
    # digits/synthetic training images: a random shift of up to this many pixels each way
    # per image and pass (padding with the background), 0 = none. 1,437 training digits
    # are few; small shifts are the augmentation that keeps a digit a digit.
    shift_augment: int = 0

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("data url: must not be empty")
        if self.normalization not in ("torchvision", "caffe"):
            raise ValueError(f"normalization: must be torchvision or caffe, got {self.normalization!r}")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers: must be >= 0, got {self.loader_workers}")
        if self.image_size < 8:
            raise ValueError(f"image_size: must be at least 8, got {self.image_size}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be at least 1, got {self.batch_size}")
        if not 0 <= self.shift_augment < self.image_size // 2:
            raise ValueError(f"shift_augment: must be in [0, image_size / 2), got {self.shift_augment}")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "squeezenet_small"  # registry name in sqz.models
    num_classes: int = 10
    epochs: int = 8
    # SqueezeNet has no batch norm: from scratch on a small dataset, SGD sits on the
    # loss plateau for many epochs while AdamW leaves it in one or two. The released
    # v1.0 ImageNet recipe is optimizer="sgd", lr=0.04 (momentum 0.9, poly decay):
    # TRAIN_RECIPES["imagenet"].
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3  # poly decay (power lr_power) to zero over the run, as the released v1.0
    momentum: float = 0.9  # SGD only
    weight_decay: float = 2e-4  # the released SqueezeNet v1.0 recipe
    workers: int = 2  # Ray Train data-parallel workers
    seed: int = 0
    lr_power: float = 1.0  # poly decay power; the released v1.0 solver uses 1.0 (linear)
    warmup_epochs: float = 0.0  # linear lr warm-up before the decay; 0 = none (the recipe has none)
    label_smoothing: float = 0.0  # 0 = plain cross-entropy, as the recipe
    # Each worker's share of the global batch (DataConfig.batch_size / workers) is split
    # into this many micro-batches whose gradients are summed before one step: the same
    # global batch in less memory.
    accumulation_steps: int = 1
    # "default": the model builder's (torchvision's kaiming-uniform); "caffe_xavier": the
    # released v1.0's Caffe xavier filler, final conv N(0, 0.01).
    weight_init: Literal["default", "caffe_xavier"] = "default"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (else fp16) on GPU, off on CPU
    channels_last: bool | None = None  # None: on with a GPU, off on CPU
    compile: bool = False  # torch.compile the model (pays off on long GPU runs only)
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # 0: CPU training (gloo); > 0: CUDA (nccl)
    checkpoint_every: int = 1  # epochs between checkpoints; the last epoch always checkpoints
    keep_checkpoints: int = 2  # the best K by validation top-1 are kept, and always the latest
    max_failures: int = 2  # worker-group restarts (from the latest checkpoint) before giving up
    init_url: str | None = None  # start from these weights (.safetensors or .sqz) instead of init
    # Masked retraining: keep the zeros of this pruned model (.safetensors/.sqz weights,
    # or a .safetensors of bool masks) at zero after every step.
    masks_url: str | None = None

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
        if not self.lr_power > 0:
            raise ValueError(f"lr_power: must be positive, got {self.lr_power}")
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.accumulation_steps < 1:
            raise ValueError(f"accumulation_steps: must be at least 1, got {self.accumulation_steps}")
        if self.weight_init not in ("default", "caffe_xavier"):
            raise ValueError(f"weight_init: must be default or caffe_xavier, got {self.weight_init!r}")
        if self.amp not in ("auto", "off", "bf16", "fp16"):
            raise ValueError(f"amp: must be auto, off, bf16 or fp16, got {self.amp!r}")
        if not self.cpus_per_worker > 0:
            raise ValueError(f"cpus_per_worker: must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker: must be >= 0, got {self.gpus_per_worker}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every: must be at least 1, got {self.checkpoint_every}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints: must be at least 1, got {self.keep_checkpoints}")
        if self.max_failures < -1:
            raise ValueError(f"max_failures: must be >= 0 (or -1: unlimited), got {self.max_failures}")


# Named training recipes: field overrides of DataConfig / TrainConfig, kept as data.
# "imagenet" is the released SqueezeNet v1.0 solver (Caffe): SGD momentum 0.9, weight
# decay 2e-4, lr 0.04 with poly decay (power 1.0) over the run, batch 512, ~68 epochs
# (170k iterations x 512 / 1.28M images), xavier init with the final conv N(0, 0.01);
# the crop is the model's input size (227 for v1.0). "digits" is the demo's defaults.
# Masked retraining uses the recipe's lr / 100 (Deep Compression) for retrain_epochs.
TRAIN_RECIPES: dict[str, dict[str, Any]] = {
    # BatchNorm-free SqueezeNet at AdamW 1e-3 kills its ReLUs on some seeds and batch
    # orders (the loss stays at ln 10 for good: seen single-process and under Ray DDP even
    # with a warm-up); a 5e-4 peak after a one-epoch warm-up has not. Batch 16 doubles the
    # steps per epoch; 12 epochs, weight decay 0.05 (AdamW's decoupled decay), label
    # smoothing 0.1 and +-2 px shifts regularise 1,437 training images.
    "digits": {
        "data": {"batch_size": 16, "shift_augment": 2},
        "train": {"epochs": 12, "lr": 5e-4, "warmup_epochs": 1.0, "weight_decay": 0.05, "label_smoothing": 0.1},
        "retrain_epochs": 2,
    },
    "imagenet": {
        "data": {"batch_size": 512},
        "train": {"optimizer": "sgd", "lr": 0.04, "momentum": 0.9, "weight_decay": 2e-4, "lr_power": 1.0,
                  "epochs": 68, "weight_init": "caffe_xavier"},
        "retrain_epochs": 3,
    },
}  # fmt: skip
RETRAIN_LR_FACTOR = 0.01  # Deep Compression retrains pruned nets at ~1/100 of the original lr


@dataclass(frozen=True)
class PruneConfig:
    # "std": per-layer threshold = amount x the layer's weight std (Deep Compression's
    # quality parameter); "absolute": |w| < amount is pruned; "density": keep that share.
    mode: PruneMode = "std"
    amount: float = 0.0
    # "layer": each layer gets its own threshold (its std, its density); "global": one
    # threshold over all prunable weights pooled (layers with small weights lose more).
    scope: Literal["layer", "global"] = "layer"
    # Layers with at most this many weights stay dense (0: none). They are a small share of
    # the bytes but carry the signal of thin layers (the stem, squeezes, a small classifier);
    # Deep Compression's released SqueezeNet keeps most of them near 100% too. In density
    # mode the other layers are pruned harder, so the model still keeps ``amount`` overall.
    dense_below: int = 0

    def __post_init__(self) -> None:
        if not (isinstance(self.dense_below, int) and self.dense_below >= 0):
            raise ValueError(f"dense_below: must be a whole number of weights >= 0, got {self.dense_below!r}")
        if self.mode not in ("std", "absolute", "density"):
            raise ValueError(f"prune mode: must be std, absolute or density, got {self.mode!r}")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"prune scope: must be layer or global, got {self.scope!r}")
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
    # "auto": exact optimal k-means (Lloyd only if a degenerate layer's exact table would
    # not fit); "lloyd": Lloyd with linear init, Deep Compression's choice; "exact": always.
    method: KMeansMethod = "auto"
    clusters: int | None = None  # fewer shared values than 2^bits ("8 clusters, 8-bit indices")
    # Per-layer overrides "GLOB=BITS" on module names, last match wins, e.g. "classifier.*=5".
    layer_bits: tuple[str, ...] = ()
    # Centroid fine-tuning on the task loss (labels) after clustering; 0 disables it. Off by
    # default: distillation (below) measured better on digits (2 bits: 90.8% vs 86.1%).
    finetune_epochs: int = 0
    finetune_lr: float = 1e-4  # a centroid's gradient sums many members': keep steps small
    # Weighted k-means: "fisher" weights each weight's squared error by its diagonal Fisher
    # (squared gradients on calibration batches, labels drawn from the dense model: the
    # second-order cost in KL to it); "none" is plain weight MSE, the default: on digits
    # the Fisher weighting measured no better (3 bits +0.3 pt, 2 bits -1.9 pt, both with
    # distillation), while on the released ImageNet model it helps (bench_fidelity.py).
    weighting: Literal["fisher", "none"] = "none"
    # Centroid fine-tuning by distillation: KL to the dense (pre-quantization) model's
    # logits on the calibration batches; Adam on the codebooks only. 0 disables it.
    # 45 steps of a 32-image batch cost about one digits epoch, as the task-loss epoch did.
    distill_steps: int = 45
    distill_lr: float = 1e-3
    calibration_batches: int = 8  # training batches the Fisher pass and distillation use

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"bits: must be in 1..8, got {self.bits}")
        if self.method not in ("auto", "exact", "lloyd"):
            raise ValueError(f"kmeans method: must be auto, exact or lloyd, got {self.method!r}")
        if self.clusters is not None and not (isinstance(self.clusters, int) and 1 <= self.clusters <= 2**self.bits):
            raise ValueError(f"clusters: must be an integer in 1..2^bits={2**self.bits}, got {self.clusters!r}")
        self._layer_overrides()  # validates
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs: must be >= 0, got {self.finetune_epochs}")
        if self.weighting not in ("fisher", "none"):
            raise ValueError(f"weighting: must be fisher or none, got {self.weighting!r}")
        if self.distill_steps < 0:
            raise ValueError(f"distill_steps: must be >= 0, got {self.distill_steps}")
        if not (math.isfinite(self.distill_lr) and self.distill_lr > 0):
            raise ValueError(f"distill_lr: must be positive, got {self.distill_lr}")
        if self.calibration_batches < 1:
            raise ValueError(f"calibration_batches: must be at least 1, got {self.calibration_batches}")

    def _layer_overrides(self) -> list[tuple[str, int]]:
        overrides = []
        for item in self.layer_bits:
            pattern, sep, bits = str(item).rpartition("=")
            if not sep or not pattern or not bits.strip().isdigit() or not 1 <= int(bits) <= 8:
                raise ValueError(f"layer_bits: expected GLOB=BITS with BITS in 1..8, got {item!r}")
            overrides.append((pattern.strip(), int(bits)))
        return overrides

    def bits_for(self, layer: str) -> int:
        """Bit width of ``layer`` (a module name such as "classifier.1")."""
        bits = self.bits
        for pattern, layer_bits in self._layer_overrides():
            if fnmatch.fnmatchcase(layer, pattern):
                bits = layer_bits
        return bits

    def clusters_for(self, layer: str) -> int:
        k = 2 ** self.bits_for(layer)
        return min(k, self.clusters) if self.clusters is not None else k


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
    max_top1_drop: float = 0.5  # points of top-1 the chosen variant may lose vs baseline (the paper: none)
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
    # How a trial reaches its pruning target (the same per-layer densities either way):
    # "gradual" tightens the masks by Zhu & Gupta's cubic schedule every prune_frequency
    # optimizer steps over the first prune_ramp share of the retrain budget, then recovers
    # at the final masks; "oneshot" cuts everything before retraining (Deep Compression's).
    # With no retraining both are one-shot.
    prune_schedule: PruneSchedule = "gradual"
    prune_frequency: int = 10
    prune_ramp: float = 0.5
    # Retrain budget in optimizer steps (tiny datasets make "N epochs" meaningless); None:
    # retrain_epochs passes over the training split instead.
    retrain_steps: int | None = None
    # "constant": retrain_lr throughout; "rewind": the original training's lr schedule over
    # its last retrain steps (Renda et al. 2020: learning-rate rewinding), which needs the
    # run's training config (a `sqz run` folder).
    retrain_lr_schedule: RetrainLrSchedule = "constant"
    # "distill": retrain on KL to the unpruned baseline's logits (its soft labels carry far
    # more than 1 of 10 hard labels); "task": cross-entropy on the labels. Measured on the
    # digits at 33% density, 600 gradual steps: 96.9 (distill) vs 95.6 (task) before k-means.
    retrain_loss: RetrainLoss = "distill"
    # Layers with at most this many weights stay dense (PruneConfig.dense_below); with
    # density thresholds the other layers are pruned harder to keep the same overall share.
    dense_below: int = 10_000

    def __post_init__(self) -> None:
        if not self.thresholds:
            raise ValueError("thresholds: the grid is empty")
        if not self.bits:
            raise ValueError("bits: the grid is empty")
        for t in self.thresholds:
            PruneConfig(mode=self.prune_mode, amount=t, dense_below=self.dense_below)  # raises with the option's name
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
        if self.scheduler == "asha" and not (self.retrain_steps if self.retrain_steps is not None else self.retrain_epochs):
            raise ValueError("scheduler: asha needs a retrain budget (it stops trials between retrain rounds)")
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
        if self.prune_schedule not in ("oneshot", "gradual"):
            raise ValueError(f"prune_schedule: must be oneshot or gradual, got {self.prune_schedule!r}")
        if not (isinstance(self.prune_frequency, int) and self.prune_frequency >= 1):
            raise ValueError(f"prune_frequency: must be a positive number of steps, got {self.prune_frequency!r}")
        if not (math.isfinite(self.prune_ramp) and 0.0 < self.prune_ramp <= 1.0):
            raise ValueError(f"prune_ramp: must be in (0, 1] (a share of the retrain budget), got {self.prune_ramp}")
        if self.retrain_steps is not None:
            if not isinstance(self.retrain_steps, int) or self.retrain_steps < 0:
                raise ValueError(f"retrain_steps: must be a whole number >= 0, got {self.retrain_steps!r}")
            ramp = max(1, round(self.prune_ramp * self.retrain_steps))
            if self.prune_schedule == "gradual" and self.retrain_steps and self.prune_frequency > ramp:
                raise ValueError(f"prune_frequency: {self.prune_frequency} steps is longer than the pruning ramp "
                                 f"({ramp} of {self.retrain_steps} retrain steps)")  # fmt: skip
        if self.retrain_loss not in ("distill", "task"):
            raise ValueError(f"retrain_loss: must be distill or task, got {self.retrain_loss!r}")
        if self.retrain_lr_schedule not in ("constant", "rewind"):
            raise ValueError(f"retrain_lr_schedule: must be constant or rewind, got {self.retrain_lr_schedule!r}")


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
    """Same config, same id: sqz.runs.manifest.pipeline_run_id, the one derivation."""
    from sqz.runs.manifest import pipeline_run_id  # sqz.runs imports this module

    return pipeline_run_id(config)
