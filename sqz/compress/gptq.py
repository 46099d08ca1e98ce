"""GPTQ/OPTQ assignment of weights to a fixed codebook, with error compensation.

Nearest-centroid assignment rounds every weight on its own. GPTQ (Frantar et al. 2022,
"OPTQ") rounds a layer's input columns one at a time and moves the not yet rounded
columns of the same output rows to cancel the rounding's effect on the layer's output:
it minimises ``||(W - Q) X||^2`` over the calibration inputs ``X`` greedily, with the
Hessian ``H = X X^T`` of that objective (the unfolded conv inputs: in_ch*kh*kw dims).
Here the grid is not uniform but the layer's k-means codebook, and, as SparseGPT, a
pruned weight (exactly 0.0 in the layer) is "rounded" to 0.0 whatever compensation moved
onto it: the sparsity pattern never changes (unless ``prune`` asks for more zeros), and
a kept weight is never assigned 0.0.

- ``input_hessians``: H of every conv/linear layer in one pass (inputs from one model).
- ``gptq_assign``: one layer's labels into a codebook (columns in decreasing H-diagonal
  order, "act order"; lazy batches of ``block_size`` columns); optionally pruning a share
  of the kept weights as well, chosen and compensated as SparseGPT does (measured on the
  released model: it costs far more fidelity per byte saved than fewer bits, docs/fidelity.md).
- ``refit_codebook``: the codebook values that minimise the same objective for fixed labels
  (a k x k least-squares system).
- ``gptq_``: every layer of a model already clustered by ``quantize_``; the inputs come
  from the dense model in one pass, or (``sequential``) from the model whose earlier
  layers are already re-assigned, one layer at a time.

Plain torch: no Ray, no Prefect.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sqz.compress.kmeans import SharedWeights
from sqz.compress.prune import prunable_parameters

__all__ = ["check_gptq_options", "input_hessians", "gptq_assign", "refit_codebook", "gptq_", "GPTQ_INPUTS"]

GPTQ_INPUTS = ("sequential", "dense")
# Entries of one bincount chunk in refit_codebook (two int64/float64 arrays of this size).
_REFIT_CHUNK = 4_000_000


def check_gptq_options(*, damp: float, block_size: int, inputs: str = "sequential", images: int = 1,
                       prune: float = 0.0) -> None:  # fmt: skip
    """One-line ValueError for a bad GPTQ option (called before any work)."""
    if not (prune >= 0 and prune < 1):
        raise ValueError(f"gptq prune: must be in [0, 1) (a share of the kept weights), got {prune}")
    if not (damp > 0 and damp < 1):
        raise ValueError(f"gptq damp: must be in (0, 1) (a share of the mean Hessian diagonal), got {damp}")
    if block_size < 1:
        raise ValueError(f"gptq block_size: must be at least 1, got {block_size}")
    if inputs not in GPTQ_INPUTS:
        raise ValueError(f"gptq inputs: must be sequential or dense, got {inputs!r}")
    if images < 1:
        raise ValueError(f"gptq images: must be at least 1, got {images}")


def _columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as (in_dims, positions): each column is what one output position
    sees, in the order of ``weight.flatten(1)`` (in_ch, kh, kw)."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1]).T
    assert isinstance(module, nn.Conv2d)
    if module.groups != 1:
        raise ValueError(f"gptq: grouped convolutions are not supported (groups={module.groups})")
    if isinstance(module.padding, str):
        raise ValueError("gptq: string padding is not supported")
    if module.kernel_size == (1, 1) and module.stride == (1, 1) and module.padding == (0, 0):
        return x.transpose(0, 1).reshape(x.shape[1], -1)
    if module.padding_mode != "zeros":
        raise ValueError(f"gptq: padding_mode {module.padding_mode!r} is not supported")
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


class _StopForward(Exception):
    """Raised by a hook once the inputs it needs are seen: the rest of the forward is waste."""


def _modules_of(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    return {name: modules[name.removesuffix(".weight")] for name in names}


@torch.no_grad()
def input_hessians(model: nn.Module, batches: Iterable[torch.Tensor], names: Iterable[str] | None = None,
                   *, stop_after: str | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """``X X^T / positions`` (float64) of each named weight's layer input over ``batches``
    (model-ready tensors). ``names``: parameter names (default: every conv/linear weight).
    ``stop_after``: a name whose input is the last one needed (the forward stops there)."""
    names = list(prunable_parameters(model) if names is None else names)
    modules = _modules_of(model, names)
    sums = {name: torch.zeros(0, dtype=torch.float64) for name in names}
    counts = dict.fromkeys(names, 0)
    handles = []

    def hook_for(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = _columns(module, args[0].detach()).double()
            sums[name] = x @ x.T if counts[name] == 0 else sums[name] + x @ x.T
            counts[name] += x.shape[1]
            if name == stop_after:
                raise _StopForward

        return hook

    was_training = model.training
    model.eval()
    try:
        for name, module in modules.items():
            handles.append(module.register_forward_pre_hook(hook_for(name)))
        for batch in batches:
            try:
                model(batch.to(next(model.parameters()).device))
            except _StopForward:
                pass
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not all(counts.values()):
        raise ValueError(f"gptq: no inputs reached {', '.join(n for n, c in counts.items() if not c)}")
    return {name: (sums[name] / counts[name]).cpu() for name in names}


def _damped_inverse_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``: its row j holds the
    compensation weights of column j onto the later columns (GPTQ's Hinv)."""
    h = hessian.double().clone()
    diagonal = h.diagonal()
    mean = float(diagonal.mean())
    if not mean > 0:  # no signal at all: identity (GPTQ then equals nearest rounding)
        h = torch.eye(h.shape[0], dtype=torch.float64)
        mean = 1.0
    # A dead input (always 0) has no curvature; GPTQ gives it a unit diagonal.
    diagonal[diagonal <= 0] = mean
    for scale in (1.0, 10.0, 100.0):
        damped = h + (damp * scale * mean) * torch.eye(h.shape[0], dtype=torch.float64)
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
    raise ValueError("gptq: the layer's Hessian is not positive definite even when damped 100x")


def _nearest(values: torch.Tensor, sorted_values: torch.Tensor, midpoints: torch.Tensor) -> torch.Tensor:
    """Index into ``sorted_values`` of each value's nearest (ties to the lower)."""
    return torch.searchsorted(midpoints, values.contiguous(), right=False).clamp_max(len(sorted_values) - 1)


@torch.no_grad()
def gptq_assign(weight: torch.Tensor, hessian: torch.Tensor, codebook: torch.Tensor, *, damp: float = 0.01,
                block_size: int = 128, act_order: bool = True, prune: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Labels (int64, ``weight``'s shape) into ``codebook`` (entry 0 is 0.0, the pruned
    weights') for a ``(rows, cols)`` weight (a conv's flattened to (out, in*kh*kw)) whose
    input Hessian is ``hessian`` (cols x cols). A weight equal to 0.0 gets label 0; every
    other weight gets a label >= 1, chosen greedily column by column with the rounding
    error of earlier columns compensated (GPTQ). ``prune`` in [0, 1): that share of each
    block's kept weights is pruned as well (label 0), those with the least OBS saliency
    ``w^2 / Hinv_jj^2`` after the compensation so far (SparseGPT's mask selection), and
    their error compensated like a rounding error."""
    check_gptq_options(damp=damp, block_size=block_size, prune=prune)
    if weight.dim() != 2:
        raise ValueError(f"gptq_assign: weight must be 2-D (rows, cols), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"gptq_assign: hessian of shape {tuple(hessian.shape)} for a weight with {cols} columns")
    if codebook.dim() != 1 or len(codebook) < 1 or float(codebook[0]) != 0.0:
        raise ValueError("gptq_assign: codebook must be 1-D with entry 0 equal to 0.0")
    kept = weight != 0
    labels = torch.zeros(rows, cols, dtype=torch.int64)
    if len(codebook) == 1 or not bool(kept.any()):
        if bool(kept.any()):
            raise ValueError("gptq_assign: non-zero weights but no non-zero codebook entry")
        return labels
    values = codebook[1:].double()
    order = torch.argsort(values)
    sorted_values = values[order]
    midpoints = (sorted_values[:-1] + sorted_values[1:]) / 2

    perm = torch.argsort(hessian.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols)
    w = weight.detach().double().cpu()[:, perm].clone()
    mask = kept.cpu()[:, perm].clone()
    hinv = _damped_inverse_factor(hessian.cpu()[perm][:, perm], damp)
    picked = torch.zeros(rows, cols, dtype=torch.int64)
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        errors = torch.zeros_like(block)
        hinv_block = hinv[start:end, start:end]
        if prune > 0:
            mask[:, start:end] = _pruned_block(mask[:, start:end], block, hinv_block.diagonal(), prune)
        for i in range(end - start):
            column = block[:, i]
            index = _nearest(column, sorted_values, midpoints)
            keep = mask[:, start + i]
            quantized = torch.where(keep, sorted_values[index], torch.zeros_like(column))
            picked[:, start + i] = torch.where(keep, order[index] + 1, torch.zeros_like(index))
            error = (column - quantized) / hinv_block[i, i]
            block[:, i:] -= error.unsqueeze(1) * hinv_block[i, i:].unsqueeze(0)
            errors[:, i] = error
        w[:, end:] -= errors @ hinv[start:end, end:]
    labels[:, perm] = picked
    return labels


def _pruned_block(mask: torch.Tensor, block: torch.Tensor, hinv_diagonal: torch.Tensor, share: float) -> torch.Tensor:
    """``mask`` without the ``share`` of its kept entries whose removal costs the layer's
    output least (OBS saliency w^2 / Hinv_jj^2)."""
    count = int(round(share * int(mask.sum())))
    if count < 1:
        return mask
    saliency = (block**2 / hinv_diagonal.unsqueeze(0) ** 2).masked_fill(~mask, float("inf"))
    pruned = mask.clone().reshape(-1)
    pruned[torch.topk(saliency.flatten(), count, largest=False).indices] = False
    return pruned.view_as(mask)


@torch.no_grad()
def refit_codebook(weight: torch.Tensor, hessian: torch.Tensor, codebook: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The codebook (entry 0 kept at 0.0) minimising ``sum_rows (w - c[l]) H (w - c[l])^T``
    for fixed ``labels``: the layer's output error on the calibration inputs. A k x k
    linear system (``A c = b``, A from H summed over label pairs); an entry no weight uses
    keeps its value."""
    rows, cols = weight.shape
    k = len(codebook)
    h = hessian.double().cpu()
    w = weight.detach().double().cpu()
    lab = labels.reshape(rows, cols).cpu()
    b = torch.bincount(lab.flatten(), weights=(w @ h).flatten(), minlength=k)
    a = torch.zeros(k * k, dtype=torch.float64)
    chunk = max(1, _REFIT_CHUNK // (cols * cols))
    flat_h = h.flatten()
    for start in range(0, rows, chunk):
        part = lab[start : start + chunk]
        pairs = (part.unsqueeze(2) * k + part.unsqueeze(1)).flatten()
        a += torch.bincount(pairs, weights=flat_h.repeat(len(part)), minlength=k * k)
    a = a.view(k, k)[1:, 1:]
    old = codebook[1:].double().cpu()
    # A tiny ridge towards the old values: an unused entry (zero row) keeps its value and
    # near-collinear entries stay put instead of swinging apart.
    ridge = 1e-6 * float(a.diagonal().mean()) if float(a.diagonal().mean()) > 0 else 1.0
    solved = torch.linalg.solve(a + ridge * torch.eye(k - 1, dtype=torch.float64), b[1:] + ridge * old)
    used = torch.bincount(lab.flatten(), minlength=k)[1:] > 0
    new = torch.where(used & torch.isfinite(solved), solved, old)
    return torch.cat([torch.zeros(1, dtype=codebook.dtype), new.to(codebook.dtype)])


def _layer_error(weight: torch.Tensor, quantized: torch.Tensor, hessian: torch.Tensor) -> float:
    d = (weight.double() - quantized.double()).flatten(1)
    return float(((d @ hessian.double()) * d).sum())


@torch.no_grad()
def gptq_(model: nn.Module, shared: Mapping[str, SharedWeights], original: Mapping[str, torch.Tensor],
          inputs: torch.Tensor, *, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
          batch_size: int = 16, inputs_from: str = "sequential", damp: float = 0.01, block_size: int = 128,
          refit: bool = True, rounds: int = 1, prune: Mapping[str, float] | None = None,
          log: Callable[[str], None] = lambda _: None) -> dict[str, dict[str, float]]:  # fmt: skip
    """Re-assign every layer of ``shared`` (``quantize_``'s result on ``model``) by GPTQ
    against its ``original`` (pre-clustering) weights, keeping each layer's codebook (then
    refitting it for the new labels with ``refit``); the model's weights become
    ``codebook[labels]``. ``inputs``: calibration images, turned into model input by
    ``prepare`` in batches of ``batch_size``. ``inputs_from``: "dense" (every Hessian from
    the original model in one pass) or "sequential" (layer by layer, from ``model`` with
    its earlier layers already re-assigned). ``rounds`` > 1 alternates: assign again to
    the refitted codebook, refit again. Pruned zeros stay exactly zero. ``prune``: per
    layer name, a share of its kept weights pruned as well (``gptq_assign``'s ``prune``).
    Returns per layer the output error ``tr((W-Q) H (W-Q)^T)`` of nearest and of GPTQ."""
    check_gptq_options(damp=damp, block_size=block_size, inputs=inputs_from, images=len(inputs))
    if rounds < 1:
        raise ValueError(f"gptq rounds: must be at least 1, got {rounds}")
    shares = dict(prune or {})
    for share in shares.values():
        check_gptq_options(damp=damp, block_size=block_size, prune=share)
    params = prunable_parameters(model)
    unknown = sorted(set(shared) - set(params)) + sorted(set(shared) - set(original)) + sorted(set(shares) - set(shared))
    if unknown:
        raise ValueError(f"gptq: unknown or missing layer(s) {', '.join(unknown[:3])}")

    def batches() -> Iterable[torch.Tensor]:
        for i in range(0, len(inputs), batch_size):
            yield inputs[i : i + batch_size] if prepare is None else prepare(inputs[i : i + batch_size])

    names = [name for name in params if name in shared]  # network order
    hessians: dict[str, torch.Tensor] = {}
    if inputs_from == "dense":
        reference = copy.deepcopy(model)
        for name, p in prunable_parameters(reference).items():
            if name in original:
                p.copy_(original[name])
        hessians = input_hessians(reference, batches(), names)
    report: dict[str, dict[str, float]] = {}
    for name in names:
        weight, layer = params[name], shared[name]
        hessian = hessians.pop(name) if inputs_from == "dense" else input_hessians(model, batches(), [name], stop_after=name)[name]
        dense = original[name].detach().cpu()
        flat = dense.flatten(1)
        nearest_error = _layer_error(flat, layer.weight().flatten(1), hessian)
        for _ in range(rounds):
            labels = gptq_assign(flat, hessian, layer.codebook, damp=damp, block_size=block_size,
                                 prune=shares.get(name, 0.0))
            codebook = refit_codebook(flat, hessian, layer.codebook, labels) if refit else layer.codebook
            layer.labels.copy_(labels.view_as(layer.labels))
            layer.codebook.copy_(codebook)
        weight.copy_(layer.weight().to(weight.device, weight.dtype))
        report[name] = {"nearest": nearest_error, "gptq": _layer_error(flat, layer.weight().flatten(1), hessian)}
        log(f"gptq {name}: output error {report[name]['gptq'] / max(nearest_error, 1e-30):.3f} x nearest's")
    return report
