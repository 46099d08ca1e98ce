"""One compression trial, plain torch: prune -> masked retrain -> k-means (optionally
Fisher-weighted) -> fine-tune centroids (distillation from the retrained dense model
and/or the task loss) -> encode .sqz -> evaluate the decoded file. Ray Tune runs many of these; a
notebook can run one.

A trial is either a grid point (one threshold and one bit width for every layer) or a
per-layer choice (``TrialSpec.layer_amounts`` / ``layer_bits``, picked by
``sqz.sensitivity.choose_layer_settings``). Per-layer settings go through the same public
``prune_`` / ``quantize_`` entry points, applied to one layer module at a time.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import itertools
import json
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from sqz import engine, storage
from sqz.compress import codec
from sqz.compress.gptq import gptq_
from sqz.compress.kmeans import CodebookSGD, SharedWeights, distill_codebooks_, quantize_
from sqz.compress.prune import (GradualPruner, GradualSchedule, apply_masks_, attach_masks_, compute_masks, density,
                                mask_densities, prunable_parameters, prune_)  # fmt: skip
from sqz.config import DataConfig, PruneConfig, QuantConfig
from sqz.data import load_split, make_loader
from sqz.fidelity import fisher_importance
from sqz.models import build_model
from sqz.report import ALEXNET_FLOAT32_BYTES

# GPTQ's layer inputs in a trial: from the retrained dense model in one pass (on the
# released model, bench_fidelity.py measured it as good as the sequential inputs, at a
# third of the time).
GPTQ_TRIAL_INPUTS = "dense"

__all__ = ["TrialSpec", "PhaseClock", "trial_id", "compress_and_evaluate", "layer_module", "prune_per_layer_", "quantize_per_layer_",
           "retrain_rounds", "target_masks", "RETRAIN_ROUNDS"]

# A step budget is retrained (and, under ASHA, reported) in this many equal rounds.
RETRAIN_ROUNDS = 4


@dataclass(frozen=True)
class TrialSpec:
    prune: PruneConfig
    quant: QuantConfig
    retrain_epochs: int
    retrain_lr: float
    retrain_optimizer: str = "adamw"
    # Per-layer overrides, parameter name -> prune amount / bit width; a layer not named
    # uses ``prune.amount`` / ``quant.bits``.
    layer_amounts: Mapping[str, float] | None = None
    layer_bits: Mapping[str, int] | None = None
    # How the pruning target is reached: "oneshot" cuts everything before retraining;
    # "gradual" reaches the same per-layer densities by Zhu & Gupta's cubic schedule, the
    # masks tightened every ``prune_frequency`` steps over the first ``prune_ramp`` share
    # of the retrain budget (the rest recovers at the final masks). No retraining: one-shot.
    prune_schedule: str = "oneshot"
    prune_frequency: int = 10
    prune_ramp: float = 0.5
    # Retrain budget in optimizer steps; None: ``retrain_epochs`` passes over the data.
    retrain_steps: int | None = None
    # Learning-rate rewinding (Renda et al. 2020): instead of the constant ``retrain_lr``,
    # retrain on the last steps of the original training's schedule, given as (base lr,
    # epochs, poly power); its total steps are epochs x this trial's batches per epoch.
    lr_rewind: tuple[float, int, float] | None = None
    # "task": cross-entropy on the labels; "distill": KL to the unpruned model's logits
    # (the baseline as loaded is the teacher; no labels are read).
    retrain_loss: str = "task"

    def __post_init__(self) -> None:
        if self.retrain_loss not in ("task", "distill"):
            raise ValueError(f"retrain_loss: must be task or distill, got {self.retrain_loss!r}")
        if self.prune_schedule not in ("oneshot", "gradual"):
            raise ValueError(f"prune_schedule: must be oneshot or gradual, got {self.prune_schedule!r}")
        if self.retrain_steps is not None and self.retrain_steps < 0:
            raise ValueError(f"retrain_steps: must be >= 0, got {self.retrain_steps}")
        if self.retrain_epochs < 0:
            raise ValueError(f"retrain_epochs: must be >= 0, got {self.retrain_epochs}")
        if self.prune_frequency < 1:
            raise ValueError(f"prune_frequency: must be at least 1 step, got {self.prune_frequency}")
        if not 0.0 < self.prune_ramp <= 1.0:
            raise ValueError(f"prune_ramp: must be in (0, 1], got {self.prune_ramp}")
        if self.lr_rewind is not None:
            lr, epochs, power = self.lr_rewind
            if not (lr > 0 and int(epochs) >= 1 and power > 0):
                raise ValueError(f"lr_rewind: (base lr > 0, epochs >= 1, power > 0), got {self.lr_rewind!r}")

    @property
    def per_layer(self) -> bool:
        return bool(self.layer_amounts or self.layer_bits)

    def total_retrain_steps(self, batches_per_epoch: int) -> int:
        return self.retrain_steps if self.retrain_steps is not None else self.retrain_epochs * batches_per_epoch

    def ramp_steps(self, batches_per_epoch: int) -> int:
        """Steps over which a gradual schedule tightens the masks."""
        return max(1, round(self.prune_ramp * self.total_retrain_steps(batches_per_epoch)))

    def check_budget(self, batches_per_epoch: int) -> None:
        """Options that only make sense against the budget, refused before any work."""
        total = self.total_retrain_steps(batches_per_epoch)
        if self.prune_schedule == "gradual" and total and self.prune_frequency > self.ramp_steps(batches_per_epoch):
            raise ValueError(f"prune_frequency: {self.prune_frequency} steps is longer than the pruning ramp "
                             f"({self.ramp_steps(batches_per_epoch)} of {total} retrain steps)")  # fmt: skip
        if self.lr_rewind is not None and total > int(self.lr_rewind[1]) * batches_per_epoch:
            raise ValueError(f"retrain_steps: rewinding {total} steps goes past the start of the original "
                             f"{int(self.lr_rewind[1]) * batches_per_epoch}-step training")  # fmt: skip


def retrain_rounds(spec: TrialSpec) -> int:
    """How many times a trial reports its retraining progress (``on_retrain_epoch``):
    once per epoch for an epoch budget, ``RETRAIN_ROUNDS`` for a step budget."""
    if spec.retrain_steps is None:
        return spec.retrain_epochs
    return min(RETRAIN_ROUNDS, spec.retrain_steps)


def trial_id(prune: PruneConfig, bits: int) -> str:
    """Stable name of a grid point: the same point always maps to the same files."""
    return f"{prune.mode}{prune.amount:g}-b{bits}"


def layer_module(model: nn.Module, parameter_name: str) -> nn.Module:
    """The conv/linear module owning ``parameter_name`` (e.g. "features.3.squeeze.weight")."""
    return model.get_submodule(parameter_name.rsplit(".", 1)[0])


def _alone(module: nn.Module) -> nn.Module:
    """A container holding only ``module`` (not a copy), so the model-level ``prune_`` and
    ``quantize_`` act on that one layer; its parameter is named "0.weight" inside."""
    return nn.Sequential(module)


def _check_layers(model: nn.Module, names: Mapping[str, Any] | None, what: str) -> None:
    unknown = sorted(set(names or {}) - set(prunable_parameters(model)))
    if unknown:
        raise ValueError(f"{what}: unknown layer(s) {', '.join(unknown[:3])}; the model's layers are its conv/linear weights")


def prune_per_layer_(model: nn.Module, default: PruneConfig, amounts: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
    """Prune each layer at its own amount (``amounts``, else ``default.amount``), in the
    mode of ``default``; returns the masks keyed by parameter name, as ``prune_``."""
    _check_layers(model, amounts, "layer_amounts")
    masks: dict[str, torch.Tensor] = {}  # parameter name -> bool, True = kept
    for name in prunable_parameters(model):
        config = PruneConfig(mode=default.mode, amount=(amounts or {}).get(name, default.amount))
        (mask,) = prune_(_alone(layer_module(model, name)), config).values()  # the one weight of this module
        masks[name] = mask
    return masks


def quantize_per_layer_(model: nn.Module, default: QuantConfig, bits: Mapping[str, int] | None = None, *,
                        importance: Mapping[str, torch.Tensor] | None = None) -> dict[str, SharedWeights]:  # fmt: skip
    """``quantize_`` with a bit width per layer (``bits``, else ``default.bits``); the
    k-means method and its options come from ``default``, the per-weight ``importance``
    (parameter name -> tensor) weights the clustering. Keys are parameter names."""
    _check_layers(model, bits, "layer_bits")
    shared: dict[str, SharedWeights] = {}
    for name in prunable_parameters(model):
        config = dataclasses.replace(default, bits=int((bits or {}).get(name, default.bits)))
        alone = {"0.weight": importance[name]} if importance and name in importance else None
        (layer,) = quantize_(_alone(layer_module(model, name)), config, importance=alone).values()
        shared[name] = layer
    return shared


def target_masks(model: nn.Module, spec: TrialSpec) -> dict[str, torch.Tensor]:
    """The masks one-shot pruning at ``spec``'s settings would apply, without applying
    them: one-shot applies them at once; gradual takes their per-layer densities as its
    targets, so both schedules end at the same sparsity."""
    if not spec.per_layer:
        return compute_masks(model, spec.prune)
    _check_layers(model, spec.layer_amounts, "layer_amounts")
    masks = {}
    for name in prunable_parameters(model):
        config = PruneConfig(mode=spec.prune.mode, amount=(spec.layer_amounts or {}).get(name, spec.prune.amount))
        (masks[name],) = compute_masks(_alone(layer_module(model, name)), config).values()
    return masks


def _batches_forever(loader: Iterable) -> Iterable:
    """The loader's batches epoch after epoch (each pass reshuffles), for step budgets."""
    while True:
        yield from loader


def _with_teacher_logits(batches: Iterable, teacher: nn.Module, device: torch.device | str) -> Iterable:
    """(inputs, the teacher's logits on them) in place of (inputs, labels)."""
    for inputs, _ in batches:
        with torch.no_grad():
            logits = teacher(inputs.to(device))
        yield inputs, logits  # outside no_grad: the consumer trains on this batch


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) on the class distributions, averaged over the batch."""
    return nn.functional.kl_div(nn.functional.log_softmax(logits.float(), dim=-1),
                                nn.functional.log_softmax(teacher_logits.float(), dim=-1),
                                log_target=True, reduction="batchmean")  # fmt: skip


def _retrain(model: nn.Module, spec: TrialSpec, masks: dict[str, torch.Tensor], train_loader: Any, val_loader: Any,
             device: torch.device | str, on_round: Callable[[int, engine.EvalResult], None] | None) -> None:  # fmt: skip
    """Masked retraining for the spec's budget: one-shot masks held by ``attach_masks_``,
    or gradual masks tightened by ``GradualPruner``; constant or rewound lr."""
    per_epoch = len(train_loader)
    total = spec.total_retrain_steps(per_epoch)
    gradual = spec.prune_schedule == "gradual" and total > 0
    teacher = copy.deepcopy(model).eval() if spec.retrain_loss == "distill" and total else None  # still unpruned
    if not gradual:
        apply_masks_(model, masks)
    if not total:
        return
    optimizer = engine.make_optimizer(model.parameters(), spec.retrain_optimizer, lr=spec.retrain_lr)
    if gradual:
        schedule = GradualSchedule(mask_densities(masks), ramp_steps=spec.ramp_steps(per_epoch), frequency=spec.prune_frequency)
        hook = GradualPruner(model, optimizer, schedule)
    else:
        hook = attach_masks_(model, optimizer, masks)
    lr_at_step = None
    if spec.lr_rewind is not None:
        base_lr, epochs, power = spec.lr_rewind
        original = int(epochs) * per_epoch
        step = original - total  # the original schedule's last ``total`` steps

        def lr_at_step() -> float:
            nonlocal step
            step += 1
            return engine.scheduled_lr(base_lr, step - 1, original, power=power)

    rounds = retrain_rounds(spec)
    stream = _batches_forever(train_loader)
    loss_fn = None
    if teacher is not None:
        stream, loss_fn = _with_teacher_logits(stream, teacher, device), distillation_loss
    done = 0
    for index in range(rounds):
        take = per_epoch if spec.retrain_steps is None else (total * (index + 1)) // rounds - done
        engine.train_one_epoch(model, itertools.islice(stream, take), optimizer, device=device, lr_at_step=lr_at_step,
                               loss_fn=loss_fn)  # fmt: skip
        done += take
        if on_round is not None:
            on_round(index, engine.evaluate(model, val_loader, device=device))
    hook.remove()
    apply_masks_(model, hook.masks if gradual else masks)


def _calibration(model: nn.Module, loader: Iterable, quant: QuantConfig, device: torch.device | str
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor] | None]:  # fmt: skip
    """(inputs, the dense model's logits on them, Fisher importance) from the first
    ``quant.calibration_batches`` training batches, each None when nothing needs it."""
    if quant.weighting == "none" and not quant.distill_steps and quant.assign == "nearest":
        return None, None, None
    batches = []
    for inputs, _ in loader:
        batches.append(inputs.to(device))
        if len(batches) == quant.calibration_batches:
            break
    importance = fisher_importance(model, batches, seed=0) if quant.weighting == "fisher" else None
    inputs = torch.cat(batches)
    teacher_logits = None
    if quant.distill_steps:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            teacher_logits = torch.cat([model(x).float() for x in batches])
        model.train(was_training)
    return inputs, teacher_logits, importance


@functools.lru_cache(maxsize=4)
def _split(data: DataConfig, split: str) -> Any:
    """A split, read once per process: Tune reuses a trial's process for the next trials,
    which read the same data (digits: ~0.1-0.4 s a trial saved; a folder dataset is a file
    list). Loaders, with their seeded shuffles, are still made per trial."""
    return load_split(data, split)


def _loaders(data: DataConfig) -> tuple[Iterable, Iterable]:
    generator = torch.Generator().manual_seed(data.seed)
    train = make_loader(_split(data, "train"), batch_size=data.batch_size, shuffle=True, generator=generator,
                        num_workers=data.loader_workers)  # fmt: skip
    val = make_loader(_split(data, "val"), batch_size=256, num_workers=data.loader_workers)
    return train, val


def _compress_weights_(model: nn.Module, spec: TrialSpec, train_loader: Iterable, data: DataConfig,
                       device: torch.device | str, phases: PhaseClock | None = None) -> None:  # fmt: skip
    """Clusters the retrained ``model`` per ``spec.quant`` in place: Fisher-weighted k-means
    (per layer with per-layer bits), then GPTQ assignment, codebook distillation and codebook
    fine-tuning, each where the spec asks for it."""
    phases = phases or PhaseClock()
    # The retrained dense model is the teacher: the Fisher weighting and the distillation
    # both look at it on a few training batches (their images only: no labels needed).
    calibration, teacher_logits, importance = _calibration(model, train_loader, spec.quant, device)
    original = {n: p.detach().clone() for n, p in prunable_parameters(model).items()} if spec.quant.assign == "gptq" else {}
    if spec.per_layer:
        shared = quantize_per_layer_(model, spec.quant, spec.layer_bits, importance=importance)
    else:
        shared = quantize_(model, spec.quant, importance=importance)
    if spec.quant.assign == "gptq":
        gptq_(model, shared, original, calibration, batch_size=data.batch_size, inputs_from=GPTQ_TRIAL_INPUTS)
    phases.lap("kmeans")
    if spec.quant.distill_steps:
        distill_codebooks_(model, shared, calibration, teacher_logits, steps=spec.quant.distill_steps,
                           lr=spec.quant.distill_lr, batch_size=data.batch_size, seed=data.seed)  # fmt: skip
    if spec.quant.finetune_epochs:
        optimizer = CodebookSGD(model, shared, lr=spec.quant.finetune_lr)
        for _ in range(spec.quant.finetune_epochs):
            engine.train_one_epoch(model, train_loader, optimizer, device=device)
    phases.lap("finetune")


class PhaseClock:
    """Seconds per phase of a trial, lap by lap (``lap(name)`` books the time since the
    previous lap under ``name``), and when the trial started (Unix time): what a trial's
    fixed cost is made of, and when a resumed sweep's first new trial began."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def as_json(self) -> str:
        return json.dumps({"started_at": round(self.started_at, 3), **{k: round(v, 4) for k, v in self.seconds.items()}})


def _trial_row(model: nn.Module, spec: TrialSpec, *, run_id: str, name: str, model_url: str, encoded: bytes,
               result: engine.EvalResult, wall_s: float, target: str | None) -> dict[str, Any]:  # fmt: skip
    """The trial's sweep_trials row, with every column, so what is returned equals what is read back."""
    row = {
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
        "wall_s": wall_s,
        "target": None,
        "layer_settings": None,
        "node_id": None,  # set by the Ray layer, which knows the node
        "phase_s": None,  # set last, when every phase is timed
    }
    if spec.per_layer:
        settings = {
            layer: {"threshold": float((spec.layer_amounts or {}).get(layer, spec.prune.amount)),
                    "bits": int((spec.layer_bits or {}).get(layer, spec.quant.bits))}
            for layer in prunable_parameters(model)
        }  # fmt: skip
        # One number cannot describe a per-layer trial: NaN threshold, the widest bit width.
        row.update(threshold=math.nan, bits=max(s["bits"] for s in settings.values()),
                   target=target, layer_settings=json.dumps(settings, sort_keys=True))  # fmt: skip
    return row


def compress_and_evaluate(
    *,
    baseline: bytes,
    arch: dict[str, Any],
    data: DataConfig,
    spec: TrialSpec,
    model_url: str,
    run_id: str,
    name: str | None = None,
    target: str | None = None,
    device: torch.device | str = "cpu",
    on_retrain_epoch: Callable[[int, engine.EvalResult], None] | None = None,
) -> dict[str, Any]:
    """Run one trial from the baseline's safetensors bytes; returns its sweep_trials row.
    The accuracy reported is the decoded .sqz file's, so the row proves the bytes.

    ``name`` overrides the grid point's trial id (per-layer trials); ``target`` is recorded
    with per-layer trials (the budget they were chosen for). ``on_retrain_epoch(epoch,
    result)``, if given, receives the validation accuracy after each retrain epoch (so a
    scheduler such as ASHA can stop a losing trial early); without it no extra evaluation
    is spent.
    """
    start = time.perf_counter()
    phases = PhaseClock()
    torch.manual_seed(data.seed)
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    model.load_state_dict(load_safetensors(baseline))
    model.to(device)
    phases.lap("load_checkpoint")
    train_loader, val_loader = _loaders(data)
    phases.lap("load_data")

    spec.check_budget(len(train_loader))
    _retrain(model, spec, target_masks(model, spec), train_loader, val_loader, device, on_retrain_epoch)
    phases.lap("prune_retrain")

    _compress_weights_(model, spec, train_loader, data, device, phases)

    name = name or trial_id(spec.prune, spec.quant.bits)
    encoded = codec.encode(model, meta={"run_id": run_id, "trial_id": name})
    phases.lap("encode")
    storage.write_bytes(model_url, encoded)
    phases.lap("write_model")
    result = engine.evaluate(codec.decode(encoded).to(device), val_loader, device=device)
    phases.lap("evaluate")
    row = _trial_row(model, spec, run_id=run_id, name=name, model_url=model_url, encoded=encoded, result=result,
                     wall_s=time.perf_counter() - start, target=target)  # fmt: skip
    row["phase_s"] = phases.as_json()
    return row
