"""Frozen configuration dataclasses, one per stage.

Every stage takes its config object rather than loose keyword arguments, so a run's whole
behaviour is one JSON-serialisable value: it goes into manifest.json and its hash is the
run id (sqz.runs.manifest.pipeline_run_id: same config, same id, so a rerun resumes
instead of duplicating). This is the ground floor: it imports no other sqz module.

The configs are pydantic dataclasses: each field declares its type and range, checked on
construction (also by ``dataclasses.replace``), and the few rules that tie fields together
are model validators. Lists become tuples and numbers their declared type (1 -> 1.0 for a
float), so a config read back from JSON equals the one written. A bad value raises a
ValueError of one line naming the field, e.g. ``epochs: must be at least 1, got 0``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import json
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, NonNegativeFloat, PositiveFloat, ValidationError, model_validator
from pydantic.dataclasses import dataclass as pydantic_dataclass

__all__ = [
    "DataConfig",
    "TrainConfig",
    "PruneConfig",
    "QuantConfig",
    "ImportOptions",
    "SweepConfig",
    "SensitivityConfig",
    "PipelineConfig",
    "config_to_dict",
    "config_from_dict",
    "TRAIN_RECIPES",
    "RETRAIN_LR_FACTOR",
    "BUILTIN_DATASETS",
    "BUILTIN_CLASSES",
]

PruneMode = Literal["std", "absolute", "density"]
KMeansMethod = Literal["auto", "exact", "lloyd"]
TrialScheduler = Literal["fifo", "asha"]
PruneSchedule = Literal["oneshot", "gradual"]
RetrainLrSchedule = Literal["constant", "rewind"]
RetrainLoss = Literal["distill", "task"]
Optimizer = Literal["sgd", "adamw"]

AtLeast1 = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Bits = Annotated[int, Field(ge=1, le=8)]  # codebook index width: 2..256 shared values
# A grid must have at least one point.
Thresholds = Annotated[tuple[float, ...], Field(min_length=1)]
BitGrid = Annotated[tuple[Bits, ...], Field(min_length=1)]

# Unknown keywords are errors (a typo must not fall back to a default); no infinity or
# NaN in any float field (none has a meaning for either).
_SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False)


def _phrase(error: dict[str, Any]) -> str:
    """pydantic's description of one failed constraint, as "must be ..." words."""
    ctx = error.get("ctx", {})
    kind = error["type"]
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}"
    if kind == "greater_than":
        return f"must be greater than {ctx['gt']}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}"
    if kind == "less_than":
        return f"must be less than {ctx['lt']}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    message = error["msg"]
    return "must be " + message.removeprefix("Input should be ") if message.startswith("Input should be ") else message


def _path(loc: tuple[Any, ...]) -> str:
    """("sweep", "bits", 1) -> "sweep.bits[1]"."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f"{'.' if text else ''}{part}"
    return text


def _one_line(name: str, exc: ValidationError) -> str:
    """Every problem of a ValidationError on one line, each naming its field."""
    errors = exc.errors(include_url=False)
    # A tuple whose items failed also reports itself too short (it counts the valid ones).
    failed_items = {error["loc"][:-1] for error in errors if error["loc"] and isinstance(error["loc"][-1], int)}
    problems, unknown = [], {}
    for error in errors:
        loc = error["loc"]
        if error["type"] == "too_short" and loc in failed_items:
            continue
        if error["type"] == "unexpected_positional_argument":
            problems.append(f"{name}: too many positional arguments")
        elif error["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            unknown.setdefault(_path(loc[:-1]) or name, []).append(str(loc[-1]))
        elif error["type"] == "value_error" and "error" in error.get("ctx", {}):
            # A model validator's own message names its fields; a nested one gets its place.
            message = str(error["ctx"]["error"])
            problems.append(f"{_path(loc)}: {message}" if loc else message)
        else:
            problems.append(f"{_path(loc)}: {_phrase(error)}, got {error['input']!r}")
    problems += [f"{where}: unknown keys {sorted(keys)}" for where, keys in unknown.items()]
    return "; ".join(problems)


def _config(cls: type) -> type:
    """A frozen pydantic dataclass whose bad values raise a one-line ValueError (pydantic's
    ValidationError is a ValueError already, but of several lines)."""
    cls = pydantic_dataclass(frozen=True, config=_SETTINGS)(cls)
    validating_init = cls.__init__

    @functools.wraps(validating_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            validating_init(self, *args, **kwargs)
        except ValidationError as exc:
            raise ValueError(_one_line(cls.__name__, exc)) from None

    cls.__init__ = __init__
    return cls


# The data sets built into sqz.data (held in memory), here so that torch-free callers (the
# CLI's checks) know them and their class count without importing sqz.data.
BUILTIN_DATASETS = ("digits", "synthetic")
BUILTIN_CLASSES = 10  # both: the ten digits, ten synthetic patterns


@_config
class DataConfig:
    # "digits" (scikit-learn's bundled 8x8 digits), "synthetic", an ImageNet-layout folder,
    # or a prepared Parquet dataset (folder or s3://, see `sqz data prepare`)
    url: Annotated[str, Field(min_length=1)] = "digits"
    image_size: Annotated[int, Field(ge=8)] = 32  # digits are upsampled from 8x8 to this; images are cropped to it
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2  # held-out share of the digits/synthetic images
    batch_size: AtLeast1 = 32  # global batch; each Ray worker gets batch_size / workers
    seed: int = 0  # fixes the split, so every worker and every trial sees the same one
    # Image datasets only: "torchvision" (RGB, mean/std) or "caffe" (BGR, mean (104, 117,
    # 123) subtracted from 0..255 pixels), the convention of the released SqueezeNet.
    normalization: Literal["torchvision", "caffe"] = "torchvision"
    loader_workers: NonNegativeInt = 0  # DataLoader worker processes per training process (0: in-process)
    # digits/synthetic training images: a random shift of up to this many pixels each way
    # per image and pass (padding with the background), 0 = none. 1,437 training digits
    # are few; small shifts are the augmentation that keeps a digit a digit.
    shift_augment: NonNegativeInt = 0

    @model_validator(mode="after")
    def _shift_inside_the_image(self) -> DataConfig:
        if self.shift_augment >= self.image_size // 2:
            raise ValueError(f"shift_augment: must be in [0, image_size / 2), got {self.shift_augment}")
        return self


@_config
class TrainConfig:
    model: str = "squeezenet_small"  # registry name in sqz.models
    num_classes: Annotated[int, Field(ge=2)] = 10
    epochs: AtLeast1 = 8
    # SqueezeNet has no batch norm: from scratch on a small dataset, SGD sits on the
    # loss plateau for many epochs while AdamW leaves it in one or two. The released
    # v1.0 ImageNet recipe is optimizer="sgd", lr=0.04 (momentum 0.9, poly decay):
    # TRAIN_RECIPES["imagenet"].
    optimizer: Optimizer = "adamw"
    lr: PositiveFloat = 1e-3  # poly decay (power lr_power) to zero over the run, as the released v1.0
    momentum: float = 0.9  # SGD only
    weight_decay: float = 2e-4  # the released SqueezeNet v1.0 recipe
    workers: AtLeast1 = 2  # Ray Train data-parallel workers
    seed: int = 0
    lr_power: PositiveFloat = 1.0  # poly decay power; the released v1.0 solver uses 1.0 (linear)
    warmup_epochs: NonNegativeFloat = 0.0  # linear lr warm-up before the decay; 0 = none (the recipe has none)
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.0  # 0 = plain cross-entropy, as the recipe
    # Each worker's share of the global batch (DataConfig.batch_size / workers) is split
    # into this many micro-batches whose gradients are summed before one step: the same
    # global batch in less memory.
    accumulation_steps: AtLeast1 = 1
    # "default": the model builder's (torchvision's kaiming-uniform); "caffe_xavier": the
    # released v1.0's Caffe xavier filler, final conv N(0, 0.01).
    weight_init: Literal["default", "caffe_xavier"] = "default"
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 (else fp16) on GPU, off on CPU
    channels_last: bool | None = None  # None: on with a GPU, off on CPU
    compile: bool = False  # torch.compile the model (pays off on long GPU runs only)
    cpus_per_worker: PositiveFloat = 1.0
    gpus_per_worker: NonNegativeFloat = 0.0  # 0: CPU training (gloo); > 0: CUDA (nccl)
    checkpoint_every: AtLeast1 = 1  # epochs between checkpoints; the last epoch always checkpoints
    keep_checkpoints: AtLeast1 = 2  # the best K by validation top-1 are kept, and always the latest
    max_failures: Annotated[int, Field(ge=-1)] = 2  # worker-group restarts (from the latest checkpoint); -1: unlimited
    init_url: str | None = None  # start from these weights (.safetensors or .sqz) instead of init
    # Masked retraining: keep the zeros of this pruned model (.safetensors/.sqz weights,
    # or a .safetensors of bool masks) at zero after every step.
    masks_url: str | None = None

    @model_validator(mode="after")
    def _warmup_inside_the_run(self) -> TrainConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs: must be in [0, epochs={self.epochs}), got {self.warmup_epochs}")
        return self


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


@_config
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
    dense_below: NonNegativeInt = 0

    @model_validator(mode="after")
    def _amount_fits_the_mode(self) -> PruneConfig:
        # The error names what the amount means in this mode (the CLI's --thresholds).
        if self.mode == "density":
            if not 0.0 < self.amount <= 1.0:
                raise ValueError(f"density: must be in (0, 1], got {self.amount}")
        elif self.amount < 0:
            raise ValueError(f"threshold: must be >= 0, got {self.amount}")
        return self


@_config
class QuantConfig:
    bits: Bits = 8  # 2^bits shared values per layer (the codebook), pruned zeros excluded
    # "auto": exact optimal k-means (Lloyd only if a degenerate layer's exact table would
    # not fit); "lloyd": Lloyd with linear init, Deep Compression's choice; "exact": always.
    method: KMeansMethod = "auto"
    clusters: AtLeast1 | None = None  # fewer shared values than 2^bits ("8 clusters, 8-bit indices")
    # Per-layer overrides "GLOB=BITS" on module names, last match wins, e.g. "classifier.*=5".
    layer_bits: tuple[str, ...] = ()
    # Centroid fine-tuning on the task loss (labels) after clustering; 0 disables it. Off by
    # default: distillation (below) measured better on digits (2 bits: 90.8% vs 86.1%).
    finetune_epochs: NonNegativeInt = 0
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
    distill_steps: NonNegativeInt = 45
    distill_lr: PositiveFloat = 1e-3
    calibration_batches: AtLeast1 = 8  # training batches the Fisher pass, GPTQ and distillation use
    # How each weight picks its shared value: "nearest" centroid, or "gptq": GPTQ's
    # column-by-column rounding with the error compensated on the layer's later columns,
    # from each layer's inputs on the calibration batches (sqz.compress.gptq; the codebook
    # is refitted to the new labels before any distillation).
    assign: Literal["nearest", "gptq"] = "nearest"

    @model_validator(mode="after")
    def _clusters_and_overrides_fit(self) -> QuantConfig:
        if self.clusters is not None and self.clusters > 2**self.bits:
            raise ValueError(f"clusters: must be an integer in 1..2^bits={2**self.bits}, got {self.clusters!r}")
        self._layer_overrides()  # raises for a malformed one
        return self

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


@dataclasses.dataclass(frozen=True)
class ImportOptions:
    """`sqz import-dc`'s options (sqz.import_dc runs them). A plain dataclass here, with
    no torch import, so that the CLI shows its defaults without loading torch."""

    bits: int | None = None  # re-cluster at this width (None: keep the released codebooks, unless a budget)
    method: str = "exact"
    calibrate: str | None = None  # photos | a folder of images | a prepared dataset
    size_budget: int | None = None  # bytes; per-layer widths from sqz.import_dc.BUDGET_BITS
    weighting: str = "fisher"  # with calibrate: "fisher" or "none" (weight MSE)
    # The defaults are what bench/bench_fidelity.py measured: after GPTQ assignment (whose
    # codebooks are already refitted to the layer outputs) 32 distillation steps lost 4.3
    # points of top-1 agreement at <= 430,000 B (92.4 -> 88.1%, held-out KL 0.024 -> 0.031)
    # and gained 1.0 at <= 372,000 B (81.9 -> 82.9%, KL 0.107 -> 0.108), so none by default;
    # with --assign nearest, 32 steps gained (84.3 -> 87.1% at <= 430,000 B).
    distill_steps: int = 0  # with calibrate: centroid fine-tuning steps (0: none)
    distill_lr: float = 1e-4
    distill_batch: int = 16
    calibration_images: int = 384  # calibration crops used (a fixed subset)
    fisher_images: int = 256  # of those, the ones the Fisher pass sees
    # With calibrate: how each weight picks its shared value once the codebook is fitted.
    # "nearest": the closest centroid; "gptq": GPTQ's column-by-column rounding with the
    # error compensated on the later columns of the layer (sqz.compress.gptq). gptq with
    # the dense model's layer inputs measured best (bench_fidelity.py; docs/fidelity.md).
    assign: str = "gptq"
    gptq_inputs: str = "dense"  # layer inputs from the dense model (one pass), or "sequential" (the re-assigned earlier layers')
    gptq_refit: bool = True  # refit each codebook to the GPTQ labels (least squares on the layer output)
    gptq_images: int = 128  # of the calibration crops, the ones the layer Hessians see
    gptq_damp: float = 0.01  # Hessian dampening, a share of its mean diagonal
    # Assign + refit rounds per layer: 3 measured lower held-out KL than 1 at both budgets
    # (bench_fidelity.py: 0.024 -> 0.023 at <= 430,000 B, 0.107 -> 0.080 at <= 372,000 B).
    gptq_rounds: int = 3
    # With calibrate and size_budget: of the calibration crops, the ones on which each
    # layer's KL is measured (that layer alone at 4 bits, GPTQ-assigned, one forward pass
    # per layer) to scale its predicted costs before the allocator compares layers; 0: the
    # Fisher-weighted errors unscaled. Off by default: measured (docs/benchmarks.md, import-dc-2026-12-04-budget-kl), 96 crops lowered
    # the held-out KL at both budgets and raised top-5 overlap, but left top-1 agreement
    # equal at 430,000 B and lost 2.9 points of it at 372,000 B, for ~4 more minutes.
    budget_kl_images: int = 0
    # With calibrate and size_budget: "measured" chooses the widths by greedy removal of
    # bits where the KL measured on calibration crops rises least per byte saved, and never
    # returns worse than the best uniform width at no more bytes (sqz.allocate); "fisher":
    # the knapsack over Fisher-predicted costs (above). Without calibrate: always "fisher".
    allocator: str = "measured"
    allocator_images: int = 64  # calibration crops the greedy measures its KLs on
    check_images: int = 128  # other calibration crops, the check against uniform widths
    # Fidelity is also reported on the held-out crops whose dense top-1 probability is at
    # least this (there a flip is a changed answer, not a near-tie's coin toss).
    confident: float = 0.5
    seed: int = 0
    quant: QuantConfig = field(init=False)

    def __post_init__(self) -> None:
        if self.bits is not None and not 1 <= self.bits <= 8:
            raise ValueError(f"--bits: must be in 1..8, got {self.bits}")
        object.__setattr__(self, "quant", QuantConfig(bits=self.bits or 8, method=self.method))  # validates the method
        if self.size_budget is not None and not (int(self.size_budget) == self.size_budget and self.size_budget > 0):
            raise ValueError(f"--size-budget: must be a positive number of bytes, got {self.size_budget}")
        if self.weighting not in ("fisher", "none"):
            raise ValueError(f"--weighting: must be fisher or none, got {self.weighting!r}")
        if self.distill_steps < 0:
            raise ValueError(f"--distill-steps: must be >= 0, got {self.distill_steps}")
        if not self.distill_lr > 0:
            raise ValueError(f"--distill-lr: must be positive, got {self.distill_lr}")
        if self.distill_batch < 1 or self.calibration_images < 1 or self.fisher_images < 1:
            raise ValueError("--calibration-images/--fisher-images/distill batch: must be at least 1")
        if self.assign not in ("nearest", "gptq"):
            raise ValueError(f"--assign: must be nearest or gptq, got {self.assign!r}")
        if self.gptq_inputs not in ("sequential", "dense"):
            raise ValueError(f"--gptq-inputs: must be sequential or dense, got {self.gptq_inputs!r}")
        if self.gptq_images < 1:
            raise ValueError(f"--gptq-images: must be at least 1, got {self.gptq_images}")
        if self.budget_kl_images < 0:
            raise ValueError(f"--budget-kl-images: must be >= 0, got {self.budget_kl_images}")
        if self.budget_kl_images and (self.calibrate is None or self.size_budget is None):
            raise ValueError("--budget-kl-images: needs --calibrate and --size-budget (it scales the budget's per-layer "
                             "costs by a KL measured on calibration images)")  # fmt: skip
        if self.gptq_rounds < 1:
            raise ValueError(f"--gptq-rounds: must be at least 1, got {self.gptq_rounds}")
        if self.allocator not in ("measured", "fisher"):
            raise ValueError(f"--allocator: must be measured or fisher, got {self.allocator!r}")
        if self.allocator_images < 1 or self.check_images < 1:
            raise ValueError("--allocator-images/check images: must be at least 1")
        if not (isinstance(self.confident, (int, float)) and 0 < self.confident < 1):
            raise ValueError(f"--confident: the dense top-1 probability threshold must lie in (0, 1), got {self.confident}")
        if self.uses_measured_allocator and (self.distill_steps > 0 or (self.assign == "gptq" and self.gptq_inputs != "dense")):
            raise ValueError("--allocator measured: the file is assembled from the widths it measured, which needs "
                             "--distill-steps 0 and GPTQ from dense inputs (or --assign nearest); use --allocator fisher")  # fmt: skip
        if not 0 < self.gptq_damp < 1:
            raise ValueError(f"--gptq-damp: must be in (0, 1), got {self.gptq_damp}")
        if self.calibrate is not None:
            # Whether the source exists is for the caller to check (sqz.fidelity.check_calibration_source):
            # a config names its inputs, it does not read them.
            if not self.calibrate.strip():
                raise ValueError("--calibrate: must not be empty; give photos, a folder of images or a prepared dataset")
            if self.bits is None and self.size_budget is None:
                raise ValueError("--calibrate: give --bits or --size-budget (the released codebooks are kept as they are otherwise)")

    @property
    def uses_fisher(self) -> bool:
        return self.calibrate is not None and self.weighting == "fisher"

    @property
    def uses_distillation(self) -> bool:
        return self.calibrate is not None and self.distill_steps > 0

    @property
    def uses_gptq(self) -> bool:
        return self.calibrate is not None and self.assign == "gptq"

    @property
    def uses_measured_allocator(self) -> bool:
        return self.calibrate is not None and self.size_budget is not None and self.allocator == "measured"


def _check_thresholds(mode: PruneMode, thresholds: tuple[float, ...], dense_below: int) -> None:
    for t in thresholds:
        PruneConfig(mode=mode, amount=t, dense_below=dense_below)  # raises naming threshold or density


@_config
class SweepConfig:
    # Quality parameters q (threshold = q x layer std) x bit widths: one trial per pair.
    thresholds: Thresholds = (0.3, 0.6, 0.9)
    bits: BitGrid = (8, 5)
    prune_mode: PruneMode = "std"
    retrain_epochs: NonNegativeInt = 2  # the paper retrains 3 epochs on ImageNet; digits need fewer
    # Retrain with the training optimizer at a fraction of its lr (Deep Compression uses
    # about 1/100 with SGD; AdamW's per-weight scaling needs a larger share).
    retrain_optimizer: Optimizer = "adamw"
    retrain_lr: PositiveFloat = 1e-4
    max_concurrent: AtLeast1 = 2
    max_top1_drop: NonNegativeFloat = 0.5  # points of top-1 the chosen variant may lose vs baseline (the paper: none)
    quant: QuantConfig = field(default_factory=QuantConfig)
    # Ray resources of one trial: its torch uses that many threads; on GPU clusters a
    # share of a GPU (0.5 packs two trials per device: digits-sized models leave it idle).
    cpus_per_trial: PositiveFloat = 1.0
    gpus_per_trial: NonNegativeFloat = 0.0
    # "asha" stops retrains whose per-epoch top-1 trails the other trials' at the same
    # epoch (asynchronous successive halving): worth it when retrains are long.
    scheduler: TrialScheduler = "fifo"
    # Per-layer mode: thresholds x bits become each layer's candidate levels, and one trial
    # runs per target: an allowed top-1 drop (points, predicted from the sensitivity table)
    # or a file-size budget (bytes). The per-layer choice is the smallest (or most accurate)
    # combination of per-layer levels that meets the target.
    per_layer: bool = False
    max_drops: tuple[NonNegativeFloat, ...] = ()
    size_budgets: tuple[AtLeast1, ...] = ()
    sensitivity_images: AtLeast1 = 512  # fixed validation subset the sensitivity curves use
    # How a trial reaches its pruning target (the same per-layer densities either way):
    # "gradual" tightens the masks by Zhu & Gupta's cubic schedule every prune_frequency
    # optimizer steps over the first prune_ramp share of the retrain budget, then recovers
    # at the final masks; "oneshot" cuts everything before retraining (Deep Compression's).
    # With no retraining both are one-shot.
    prune_schedule: PruneSchedule = "gradual"
    prune_frequency: AtLeast1 = 10
    prune_ramp: Annotated[float, Field(gt=0, le=1)] = 0.5  # a share of the retrain budget
    # Retrain budget in optimizer steps (tiny datasets make "N epochs" meaningless); None:
    # retrain_epochs passes over the training split instead.
    retrain_steps: NonNegativeInt | None = None
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
    dense_below: NonNegativeInt = 10_000

    @model_validator(mode="after")
    def _options_fit_together(self) -> SweepConfig:
        _check_thresholds(self.prune_mode, self.thresholds, self.dense_below)
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ValueError(f"gpus_per_trial: above 1 it must be a whole number, got {self.gpus_per_trial}")
        budget = self.retrain_steps if self.retrain_steps is not None else self.retrain_epochs
        if self.scheduler == "asha" and not budget:
            raise ValueError("scheduler: asha needs a retrain budget (it stops trials between retrain rounds)")
        if self.per_layer and not (self.max_drops or self.size_budgets):
            raise ValueError("per_layer: give at least one target (max_drops or size_budgets)")
        if not self.per_layer and (self.max_drops or self.size_budgets):
            raise ValueError("max_drops/size_budgets: targets are only used with per_layer")
        if self.retrain_steps:
            ramp = max(1, round(self.prune_ramp * self.retrain_steps))
            if self.prune_schedule == "gradual" and self.prune_frequency > ramp:
                raise ValueError(f"prune_frequency: {self.prune_frequency} steps is longer than the pruning ramp "
                                 f"({ramp} of {self.retrain_steps} retrain steps)")  # fmt: skip
        return self


@_config
class SensitivityConfig:
    """Per-layer sensitivity: each layer alone pruned at each threshold (others intact),
    and alone quantized at each bit width; top-1 on a fixed validation subset."""

    thresholds: Thresholds = (0.3, 0.6, 0.9, 1.2, 1.5)
    bits: BitGrid = (8, 6, 5, 4, 3)
    prune_mode: PruneMode = "std"
    images: AtLeast1 = 512  # a fixed subset keeps each point fast; the same images for every point
    max_concurrent: AtLeast1 = 2
    cpus_per_task: PositiveFloat = 1.0
    quant: QuantConfig = field(default_factory=QuantConfig)  # the k-means method and its options

    @model_validator(mode="after")
    def _thresholds_fit_the_mode(self) -> SensitivityConfig:
        # The sweep's grid rules, with the sweep's default dense_below.
        _check_thresholds(self.prune_mode, self.thresholds, SweepConfig.dense_below)
        return self


@_config
class PipelineConfig:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    storage_url: str = "./sqz-runs"  # root; the run lives under <storage_url>/<run_id>/


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`: nested configs from their dicts, lists to tuples;
    unknown keys are an error, not silently dropped."""
    return cls(**values)
