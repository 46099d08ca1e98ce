"""Per-layer sensitivity and the per-layer choice of thresholds and bit widths.

Deep Compression picks each layer's pruning threshold from a sensitivity curve: prune
that layer alone, measure accuracy (its Fig. 6). This module measures, for each
conv/linear layer alone, top-1 on a fixed validation subset

- with the layer pruned at each threshold (the other layers intact), and
- with the layer quantized at each bit width (the other layers intact),

and the real encoded bytes of each layer at every (threshold, bits) pair, read from the
.sqz byte account (``codec.layer_sizes``). ``choose_layer_settings`` then picks one
(threshold, bits) per layer: the smallest file whose predicted top-1 drop (the sum of
the layers' drops, counted in images of the subset) stays within a bound, or the most
accurate one within a byte budget. That is a multiple-choice knapsack; with drops in
whole images it is solved exactly by dynamic programming.

Every function here is plain torch; ``sqz.distributed.sensitivity`` runs the per-layer
and per-(threshold, bits) units in parallel on Ray and stores the rows in the
``sensitivity`` table.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from sqz.compress import codec
from sqz.compress.kmeans import quantize_
from sqz.compress.prune import prunable_parameters, prune_
from sqz.config import DataConfig, PruneConfig, SensitivityConfig
from sqz.data import load_split

__all__ = [
    "no_prune_level",
    "prune_levels",
    "fixed_subset",
    "baseline_row",
    "layer_curves",
    "layer_sizes_at",
    "missing_units",
    "LayerChoice",
    "choose_layer_settings",
    "per_layer_trial_id",
]

_EVAL_BATCH = 256


def no_prune_level(mode: str) -> float:
    """The prune amount that removes nothing: keep everything in density mode, else 0."""
    return 1.0 if mode == "density" else 0.0


def prune_levels(config: SensitivityConfig) -> list[float]:
    """The configured thresholds, each once, in order. Include the no-pruning level
    (``no_prune_level``) to let the per-layer choice leave a layer dense."""
    return list(dict.fromkeys(float(t) for t in config.thresholds))


def fixed_subset(data: DataConfig, images: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` validation images chosen by ``data.seed``: the same ones for every
    layer, level and rerun, so drops are comparable image for image."""
    val = load_split(data, "val")
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(data.seed))[:images]
    pairs = [val[int(i)] for i in order]
    return torch.stack([p[0] for p in pairs]), torch.as_tensor([int(p[1]) for p in pairs])


def _hits(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (N, k)
    hits = top.eq(targets.unsqueeze(1))
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


class _LayerProbe:
    """Logits of the model with one layer changed, recomputing only from that layer on.

    For torchvision-style models (``features`` Sequential, then ``classifier``) the input
    of the changed layer's block is computed once and cached; every level then runs the
    rest of the network only. Used only where it reproduces the full forward exactly;
    otherwise each evaluation is a full forward.
    """

    def __init__(self, model: nn.Module, inputs: torch.Tensor, layer: str) -> None:
        self._model = model
        self._batches = list(inputs.split(_EVAL_BATCH))
        self._prefix: list[torch.Tensor] | None = None
        self._suffix: Callable[[torch.Tensor], torch.Tensor] | None = None
        features, classifier = getattr(model, "features", None), getattr(model, "classifier", None)
        head = layer.split(".")
        if not (isinstance(features, nn.Sequential) and isinstance(classifier, nn.Module)):
            return
        if head[0] == "features" and head[1].isdigit():
            start = int(head[1])
            run_prefix, rest = features[:start], features[start:]
            suffix = lambda x: torch.flatten(classifier(rest(x)), 1)  # noqa: E731
        elif head[0] == "classifier":
            run_prefix = features
            suffix = lambda x: torch.flatten(classifier(x), 1)  # noqa: E731
        else:
            return
        with torch.no_grad():
            model.eval()
            prefix = [run_prefix(batch) for batch in self._batches]
            if all(torch.equal(suffix(p), model(b)) for p, b in zip(prefix, self._batches)):
                self._prefix, self._suffix = prefix, suffix

    @torch.no_grad()
    def score(self, targets: torch.Tensor) -> tuple[int, int]:
        """(top-1 hits, top-5 hits) of the model as it is now."""
        self._model.eval()
        if self._prefix is not None and self._suffix is not None:
            logits = torch.cat([self._suffix(p) for p in self._prefix])
        else:
            logits = torch.cat([self._model(b) for b in self._batches])
        return _hits(logits, targets)


def _row(run_id: str, layer: str, kind: str, mode: str, **values: Any) -> dict[str, Any]:
    row = {"run_id": run_id, "layer": layer, "kind": kind, "prune_mode": mode}
    correct, images = values.get("correct"), values.get("images")
    if correct is not None:
        values.update(top1=100.0 * correct / images, top5=100.0 * values.pop("correct5") / images)
    return {**row, **values}


@torch.no_grad()
def baseline_row(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, run_id: str, prune_mode: str) -> dict[str, Any]:
    """The unchanged model on the subset: the reference every drop is measured from."""
    model.eval()
    logits = torch.cat([model(b) for b in inputs.split(_EVAL_BATCH)])
    top1, top5 = _hits(logits, targets)
    weights = sum(p.numel() for p in prunable_parameters(model).values())
    return _row(run_id, "", "baseline", prune_mode, weights=weights, nonzero=weights, correct=top1,
                correct5=top5, images=len(targets))  # fmt: skip


def layer_curves(
    model: nn.Module,
    layer: str,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: SensitivityConfig,
    *,
    run_id: str,
) -> list[dict[str, Any]]:
    """Rows "prune" (this layer alone at each level) and "bits" (this layer alone at each
    bit width). ``model`` is left as it was."""
    params = prunable_parameters(model)
    if layer not in params:
        raise ValueError(f"layer: {layer!r} is not a conv/linear weight of the model")
    weight = params[layer]
    module = nn.Sequential(model.get_submodule(layer.rsplit(".", 1)[0]))  # that layer alone, not a copy
    original = weight.detach().clone()
    probe = _LayerProbe(model, inputs, layer)
    rows = []
    try:
        for level in prune_levels(config):
            start = time.perf_counter()
            prune_(module, PruneConfig(mode=config.prune_mode, amount=level))
            top1, top5 = probe.score(targets)
            rows.append(_row(run_id, layer, "prune", config.prune_mode, threshold=level, weights=weight.numel(),
                             nonzero=int(torch.count_nonzero(weight)), correct=top1, correct5=top5,
                             images=len(targets), wall_s=time.perf_counter() - start))  # fmt: skip
            weight.data.copy_(original)
        for bits in config.bits:
            start = time.perf_counter()
            quantize_(module, dataclasses.replace(config.quant, bits=int(bits)))
            top1, top5 = probe.score(targets)
            rows.append(_row(run_id, layer, "bits", config.prune_mode, bits=int(bits), weights=weight.numel(),
                             nonzero=int(torch.count_nonzero(weight)), correct=top1, correct5=top5,
                             images=len(targets), wall_s=time.perf_counter() - start))  # fmt: skip
            weight.data.copy_(original)
    finally:
        weight.data.copy_(original)
    return rows


def layer_sizes_at(model: nn.Module, level: float, bits: int, config: SensitivityConfig, *, run_id: str) -> list[dict[str, Any]]:
    """Real bytes with every layer pruned at ``level`` and quantized at ``bits``: one
    "size" row per layer (its streams and codebook in the .sqz byte account) and one
    "file" row (the whole file). Pruning thresholds and k-means are per layer, so each
    layer's bytes are what it would cost alone at these settings."""
    start = time.perf_counter()
    compressed = copy.deepcopy(model)
    prune_(compressed, PruneConfig(mode=config.prune_mode, amount=level))
    quantize_(compressed, dataclasses.replace(config.quant, bits=int(bits)))
    data = codec.encode(compressed)
    layers = set(prunable_parameters(compressed))
    rows = [
        _row(run_id, r["layer"], "size", config.prune_mode, threshold=level, bits=int(bits), weights=r["weights"],
             nonzero=r["nonzero"], size_bytes=r["code_bytes"] + r["index_bytes"] + r["overhead_bytes"])
        for r in codec.layer_sizes(data)
        if r["layer"] in layers
    ]  # fmt: skip
    nonzero = sum(r["nonzero"] for r in rows)
    weights = sum(r["weights"] for r in rows)
    rows.append(_row(run_id, "", "file", config.prune_mode, threshold=level, bits=int(bits), weights=weights,
                     nonzero=nonzero, size_bytes=len(data), wall_s=time.perf_counter() - start))  # fmt: skip
    return rows


def missing_units(
    rows: Iterable[dict[str, Any]], layers: Sequence[str], config: SensitivityConfig, images: int
) -> tuple[bool, list[str], list[tuple[float, int]]]:
    """What a sensitivity table still lacks for ``config`` on a subset of ``images``:
    (baseline missing?, layers with incomplete curves, (level, bits) pairs without sizes).
    Rows measured on another number of images do not count."""
    rows = [r for r in rows if r["prune_mode"] == config.prune_mode]
    want = {("prune", level) for level in prune_levels(config)} | {("bits", int(b)) for b in config.bits}
    have: dict[str, set] = {layer: set() for layer in layers}
    for r in rows:
        if r["kind"] in ("prune", "bits") and r["images"] == images and r["layer"] in have:
            have[r["layer"]].add(("prune", r["threshold"]) if r["kind"] == "prune" else ("bits", r["bits"]))
    sized = {(r["threshold"], r["bits"]) for r in rows if r["kind"] == "file"}
    need_baseline = not any(r["kind"] == "baseline" and r["images"] == images for r in rows)
    layers_todo = [layer for layer in layers if not want <= have[layer]]
    pairs_todo = [(level, int(b)) for level in prune_levels(config) for b in config.bits if (level, int(b)) not in sized]
    return need_baseline, layers_todo, pairs_todo


@dataclass(frozen=True)
class LayerChoice:
    """One (threshold, bits) per layer, with what the sensitivity table predicts for it."""

    target: str  # "drop<=1" (points of top-1) or "bytes<=40000"
    amounts: dict[str, float]
    bits: dict[str, int]
    predicted_bytes: int  # whole .sqz file
    predicted_drop: float  # points of top-1 on the subset, before retraining

    def settings(self) -> dict[str, dict[str, Any]]:
        return {layer: {"threshold": self.amounts[layer], "bits": self.bits[layer]} for layer in sorted(self.amounts)}


def per_layer_trial_id(choice: LayerChoice) -> str:
    """A readable, stable name: the target plus a digest of the settings, so a changed
    choice never reuses an earlier trial's row."""
    digest = hashlib.sha256(json.dumps(choice.settings(), sort_keys=True).encode()).hexdigest()[:8]
    label = choice.target.replace("<=", "").replace(" ", "")
    return f"pl-{label}-{digest}"


@dataclass(frozen=True)
class _LayerOptions:
    """A sensitivity table read for the chooser: per layer, every measured (level, bits,
    drop in images, layer bytes); the rest of the file (header, biases); the subset size."""

    images: int
    layers: list[str]
    options: list[list[tuple[float, int, int, int]]]
    overhead: int


def _layer_options(rows: Sequence[dict[str, Any]], config: SensitivityConfig) -> _LayerOptions:
    mode = config.prune_mode
    rows = [r for r in rows if r["prune_mode"] == mode]
    baselines = [r for r in rows if r["kind"] == "baseline"]
    if not baselines:
        raise ValueError("sensitivity: the table has no baseline row; run the sensitivity analysis first")
    base = max(baselines, key=lambda r: r["images"])  # one per mode; the rows name their subset size
    n, base_correct = int(base["images"]), int(base["correct"])
    levels, bit_widths = prune_levels(config), [int(b) for b in config.bits]

    prune_drop: dict[tuple[str, float], int] = {}
    bits_drop: dict[tuple[str, int], int] = {}
    sizes: dict[tuple[str, float, int], int] = {}
    files: dict[tuple[float, int], int] = {}
    for r in rows:
        if r["kind"] == "prune" and r["images"] == n:
            prune_drop[(r["layer"], r["threshold"])] = max(0, base_correct - int(r["correct"]))
        elif r["kind"] == "bits" and r["images"] == n:
            bits_drop[(r["layer"], r["bits"])] = max(0, base_correct - int(r["correct"]))
        elif r["kind"] == "size":
            sizes[(r["layer"], r["threshold"], r["bits"])] = int(r["size_bytes"])
        elif r["kind"] == "file":
            files[(r["threshold"], r["bits"])] = int(r["size_bytes"])
    layers = sorted({layer for layer, _ in prune_drop})
    options: list[list[tuple[float, int, int, int]]] = []
    for layer in layers:
        choices = [
            (level, b, prune_drop[(layer, level)] + bits_drop[(layer, b)], sizes[(layer, level, b)])
            for level in levels for b in bit_widths
            if (layer, level) in prune_drop and (layer, b) in bits_drop and (layer, level, b) in sizes
        ]  # fmt: skip
        if not choices:
            raise ValueError(f"sensitivity: no complete measurements for layer {layer}; rerun the sensitivity analysis")
        options.append(choices)
    if not layers:
        raise ValueError("sensitivity: the table has no per-layer curves; run the sensitivity analysis first")
    rest = [files[pair] - sum(sizes[(layer, *pair)] for layer in layers) for pair in files
            if all((layer, *pair) in sizes for layer in layers)]  # fmt: skip
    return _LayerOptions(n, layers, options, int(statistics.median(rest)) if rest else 0)


_UNREACHABLE = np.iinfo(np.int64).max // 4


def _fewest_bytes_per_drop(options: list[list[tuple[float, int, int, int]]], cap: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A knapsack over layers: ``best[d]``, the fewest layer bytes whose summed drop is
    exactly ``d`` images (``_UNREACHABLE`` where none is), and per layer ``arg[d]``, the
    option that reaches it."""
    best = np.full(cap + 1, _UNREACHABLE, dtype=np.int64)
    best[0] = 0
    picks = []
    for opts in options:
        nxt = np.full(cap + 1, _UNREACHABLE, dtype=np.int64)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        for index, (_, _, drop, size) in enumerate(opts):
            if drop > cap:
                continue
            shifted = np.full(cap + 1, _UNREACHABLE, dtype=np.int64)
            shifted[drop:] = best[: cap + 1 - drop] + size
            better = shifted < nxt
            nxt[better], arg[better] = shifted[better], index
        best = nxt
        picks.append(arg)
    return best, picks


def choose_layer_settings(
    rows: Sequence[dict[str, Any]],
    config: SensitivityConfig,
    *,
    max_drop: float | None = None,
    size_budget: int | None = None,
) -> LayerChoice:
    """Per-layer (threshold, bits) from a sensitivity table, for exactly one target:

    - ``max_drop``: the smallest file whose summed per-layer drop is at most ``max_drop``
      points of top-1 on the subset;
    - ``size_budget``: the smallest summed drop whose predicted file fits in
      ``size_budget`` bytes (ties: the smaller file).

    A layer's drop at (t, b) is its drop pruned alone at t plus its drop quantized alone
    at b, in whole images, gains counted as zero (noise must not pay for another layer's
    loss). The file is the layers' measured bytes plus the rest of the file (header,
    biases), taken from the measured whole files.
    """
    if (max_drop is None) == (size_budget is None):
        raise ValueError("choose_layer_settings: give exactly one of max_drop or size_budget")
    table = _layer_options(rows, config)
    n, options, overhead = table.images, table.options, table.overhead
    cap = sum(max(o[2] for o in opts) for opts in options)
    if max_drop is not None:
        cap = min(cap, int(np.floor(max_drop * n / 100.0 + 1e-9)))
    best, picks = _fewest_bytes_per_drop(options, cap)
    reachable = np.flatnonzero(best < _UNREACHABLE)
    if max_drop is not None:
        if reachable.size == 0:
            least = 100.0 * sum(min(o[2] for o in opts) for opts in options) / n
            raise ValueError(f"max_drops: no combination of these levels keeps the predicted top-1 drop within "
                             f"{max_drop:g} point(s); the least is {least:.2f}")  # fmt: skip
        total = int(reachable[np.argmin(best[reachable])])  # argmin keeps the smaller drop on ties
        target = f"drop<={max_drop:g}"
    else:
        fits = reachable[best[reachable] + overhead <= size_budget]
        if fits.size == 0:
            smallest = int(best[reachable].min()) + overhead
            raise ValueError(f"size_budgets: {size_budget:,} bytes is below the smallest file these levels reach ({smallest:,} bytes)")
        total = int(fits[0])
        target = f"bytes<={size_budget}"
    amounts, bits, d = {}, {}, total
    for layer, opts, arg in zip(reversed(table.layers), reversed(options), reversed(picks)):
        level, b, drop, _ = opts[int(arg[d])]
        amounts[layer], bits[layer] = level, b
        d -= drop
    return LayerChoice(target=target, amounts=amounts, bits=bits, predicted_bytes=int(best[total]) + overhead,
                       predicted_drop=100.0 * total / n)  # fmt: skip


def layer_change_table(rows: Sequence[dict[str, Any]], config: SensitivityConfig, arch: dict[str, Any]) -> dict[str, Any]:
    """The sensitivity rows as a table: one row per layer in network order, its weights,
    then the top-1 change (points) with only that layer pruned at each threshold (t=) and
    quantized at each bit width (b=). JSON-ready: {baseline_top1, images, headers, rows}."""
    from sqz.models import build_model

    base = next(r for r in rows if r["kind"] == "baseline")
    levels, widths = prune_levels(config), [int(b) for b in config.bits]
    curves: dict[str, dict[Any, float]] = {}
    for r in rows:
        if r["kind"] in ("prune", "bits") and r["images"] == base["images"]:
            key = ("t", r["threshold"]) if r["kind"] == "prune" else ("b", r["bits"])
            curves.setdefault(r["layer"], {"weights": r["weights"]})[key] = r["top1"] - base["top1"]
    layers = [name for name in prunable_parameters(build_model(arch["name"], **arch["kwargs"])) if name in curves]
    table = [[layer, f"{curves[layer]['weights']:,}"]
             + [f"{curves[layer].get(('t', t), float('nan')):+.1f}" for t in levels]
             + [f"{curves[layer].get(('b', b), float('nan')):+.1f}" for b in widths] for layer in layers]  # fmt: skip
    headers = ["layer", "weights", *(f"t={t:g}" for t in levels), *(f"b={b}" for b in widths)]
    return {"baseline_top1": base["top1"], "images": base["images"], "headers": headers, "rows": table}
