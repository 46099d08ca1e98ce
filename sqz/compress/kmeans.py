"""Weight sharing: per-layer 1-D k-means over the surviving (non-zero) weights.

Lloyd's algorithm with linear initialisation (evenly spaced between the layer's min and
max weight) is Deep Compression's choice: it keeps centroids on the large, rare weights
that density-based initialisations miss. In 1-D the clusters are contiguous runs of the
sorted values, so each iteration is a searchsorted plus prefix sums: O(n log k).
Lloyd stops at a local optimum; ``method="exact"`` runs the optimal dynamic program of
:mod:`sqz.compress.exact_kmeans` instead, and ``"auto"`` (the default) uses it too,
falling back to Lloyd only in the degenerate case whose exact table would not fit
(:data:`~sqz.compress.exact_kmeans.MAX_EXACT_CELLS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sqz.compress.prune import prunable_parameters
from sqz.config import QuantConfig

__all__ = ["kmeans_1d", "lloyd_kmeans_1d", "within_cluster_sse", "SharedWeights", "quantize_", "CodebookSGD", "CodebookAdam", "kl_divergence",
           "distill_codebooks_"]


def kmeans_1d(values: np.ndarray, k: int, *, method: str = "auto",
              weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Cluster ``values`` into at most ``k`` groups. Returns (centroids ascending, labels)
    with ``values[i]`` represented by ``centroids[labels[i]]``; empty clusters are dropped.
    ``method``: "lloyd" (linear init), "exact" (optimal DP), "auto" (exact where it fits).
    ``weights`` (positive, one per value; e.g. a Fisher importance) makes the objective the
    weighted SSE and each centroid its members' weighted mean."""
    from sqz.compress.exact_kmeans import ExactKMeansUnavailable, exact_kmeans_1d

    if method not in ("auto", "exact", "lloyd"):
        raise ValueError(f"kmeans method: must be auto, exact or lloyd, got {method!r}")
    if method in ("exact", "auto"):
        try:
            return exact_kmeans_1d(values, k, weights=weights)
        except ExactKMeansUnavailable:
            if method == "exact":
                raise
    return lloyd_kmeans_1d(values, k, weights=weights)


def within_cluster_sse(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
                       weights: np.ndarray | None = None) -> float:  # fmt: skip
    """Sum of (weighted) squared distances of each value to its centroid (what k-means minimises)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    squared = (x - np.asarray(centroids, dtype=np.float64)[labels]) ** 2
    return float((squared if weights is None else squared * np.asarray(weights, dtype=np.float64).ravel()).sum())


def lloyd_kmeans_1d(values: np.ndarray, k: int, *, max_iter: int = 300,
                    weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Lloyd's algorithm from linear initialisation (Deep Compression's choice); with
    ``weights``, each update is the members' weighted mean."""
    from sqz.compress.exact_kmeans import check_weights

    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("kmeans_1d: no values to cluster")
    if k < 1:
        raise ValueError(f"kmeans_1d: k must be at least 1, got {k}")
    w = check_weights(weights, x.size)
    w = np.ones_like(x) if w is None else w
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    n = sorted_x.size
    prefix = np.concatenate([[0.0], np.cumsum(sorted_x * w[order])])
    mass = np.concatenate([[0.0], np.cumsum(w[order])])
    centroids = np.linspace(sorted_x[0], sorted_x[-1], k)
    for _ in range(max_iter):
        bounds = (centroids[:-1] + centroids[1:]) / 2
        cuts = np.searchsorted(sorted_x, bounds, side="right")  # first index of clusters 1..k-1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [n]])
        counts = ends - starts
        means = (prefix[ends] - prefix[starts]) / np.where(counts > 0, mass[ends] - mass[starts], 1.0)
        updated = np.sort(np.where(counts > 0, means, centroids))
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    bounds = (centroids[:-1] + centroids[1:]) / 2
    labels = np.searchsorted(bounds, x, side="left")
    used = np.unique(labels)
    remap = np.full(k, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    # Centroids are the exact means of their members (one last update with final labels).
    sums = np.bincount(labels, weights=x * w, minlength=k)[used]
    sizes = np.bincount(labels, weights=w, minlength=k)[used]
    return sums / sizes, remap[labels]


@dataclass
class SharedWeights:
    """One layer after weight sharing: ``weight == codebook[labels]`` with label 0 the
    pruned weights, whose codebook entry is fixed at 0.0 (as in the released .net file)."""

    codebook: torch.Tensor  # (k + 1,) float32, entry 0 is 0.0
    labels: torch.Tensor  # same shape as the weight, int64 in 0..k

    def weight(self) -> torch.Tensor:
        return self.codebook[self.labels]


# Importance below this share of the layer's mean counts as this: weighted k-means needs
# positive weights, and a weight with no measured importance still deserves a centroid
# nearby rather than none at all.
IMPORTANCE_FLOOR = 1e-6


def _layer_weights(importance: torch.Tensor | None, name: str, weight: torch.Tensor, nonzero: torch.Tensor) -> np.ndarray | None:
    if importance is None:
        return None
    if tuple(importance.shape) != tuple(weight.shape):
        raise ValueError(f"importance: {name} has shape {tuple(importance.shape)}, its weight {tuple(weight.shape)}")
    values = importance.detach().flatten().cpu().double()[nonzero]
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()):
        raise ValueError(f"importance: {name} must be finite and >= 0")
    mean = float(values.mean()) if values.numel() else 0.0
    if mean <= 0:
        return None  # nothing measured for this layer: plain k-means
    return values.clamp_min(IMPORTANCE_FLOOR * mean).numpy()


@torch.no_grad()
def quantize_(model: nn.Module, config: QuantConfig, *,
              importance: Mapping[str, torch.Tensor] | None = None) -> dict[str, SharedWeights]:  # fmt: skip
    """Replace each conv/linear weight by its nearest of at most 2^bits shared values
    (``config.bits_for(layer)``, at most ``config.clusters`` when given). Zeros (pruned
    weights) are not clustered and stay exactly 0.0.

    ``importance`` (parameter name -> a tensor of the weight's shape, >= 0, e.g.
    ``sqz.fidelity.fisher_importance``) weights each value's squared error in the
    clustering; a layer it does not name is clustered by plain squared error."""
    parameters = prunable_parameters(model)
    unknown = sorted(set(importance or {}) - set(parameters))
    if unknown:
        raise ValueError(f"importance: unknown parameter(s) {', '.join(unknown[:3])}")
    shared: dict[str, SharedWeights] = {}
    for name, weight in parameters.items():
        k = config.clusters_for(name.removesuffix(".weight"))
        flat = weight.detach().flatten().cpu()
        nonzero = flat != 0
        labels = torch.zeros(flat.numel(), dtype=torch.int64)
        if bool(nonzero.any()):
            weights = _layer_weights((importance or {}).get(name), name, weight, nonzero)
            centroids, member_labels = kmeans_1d(flat[nonzero].double().numpy(), k, method=config.method, weights=weights)
            codebook = torch.cat([torch.zeros(1), torch.from_numpy(centroids).float()])
            labels[nonzero] = torch.from_numpy(member_labels) + 1
        else:
            codebook = torch.zeros(1)
        labels = labels.view_as(weight)
        shared[name] = SharedWeights(codebook=codebook, labels=labels)
        weight.copy_(shared[name].weight().to(weight.device, weight.dtype))
    return shared


class CodebookSGD(torch.optim.Optimizer):
    """Centroid fine-tuning: the codebooks are the parameters, the assignments stay fixed.

    Use it as the optimizer of ``engine.train_one_epoch``: backward fills the ordinary
    weight gradients; ``step`` turns them into each centroid's gradient (the sum of its
    members' gradients, Deep Compression Sec. 3.2), updates the centroids, and writes
    ``codebook[labels]`` back into the weights. Entry 0 (pruned) never moves.
    """

    def __init__(self, model: nn.Module, shared: dict[str, SharedWeights], lr: float) -> None:
        if lr <= 0:
            raise ValueError(f"finetune lr: must be positive, got {lr}")
        self._model = model
        params = dict(model.named_parameters())
        self._layers = [(params[name], layer) for name, layer in shared.items()]
        super().__init__([layer.codebook for _, layer in self._layers], {"lr": lr})

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._model.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch's signature
        lr = self.param_groups[0]["lr"]
        for weight, layer in self._layers:
            if weight.grad is None:
                continue
            grad = weight.grad.detach().flatten().to(layer.codebook.dtype).cpu()
            centroid_grad = torch.zeros_like(layer.codebook).index_add_(0, layer.labels.flatten(), grad)
            centroid_grad[0] = 0.0  # the pruned entry stays exactly zero
            layer.codebook.sub_(lr * centroid_grad)
            weight.copy_(layer.weight().to(weight.device, weight.dtype))
        return None


class CodebookAdam(torch.optim.Adam):
    """Adam on the codebooks, assignments fixed (what distillation uses).

    Like :class:`CodebookSGD`, ``step`` first turns the weight gradients into centroid
    gradients (the sum over each centroid's members: the chain rule through
    ``codebook[labels]``); Adam's per-centroid step size then copes with centroids whose
    member counts differ by orders of magnitude, which plain SGD's single lr cannot.
    Entry 0 (the pruned weights) never moves.
    """

    def __init__(self, model: nn.Module, shared: dict[str, SharedWeights], lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"distill lr: must be positive, got {lr}")
        self._model = model
        params = dict(model.named_parameters())
        self._layers = [(params[name], layer) for name, layer in shared.items()]
        for _, layer in self._layers:
            layer.codebook.requires_grad_(False)  # filled by hand from the weights' gradients
        super().__init__([layer.codebook for _, layer in self._layers], lr=lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._model.zero_grad(set_to_none=set_to_none)
        for _, layer in self._layers:
            layer.codebook.grad = None

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D401 - torch's signature
        for weight, layer in self._layers:
            if weight.grad is None:
                continue
            grad = weight.grad.detach().flatten().to(layer.codebook.dtype).cpu()
            centroid_grad = torch.zeros_like(layer.codebook).index_add_(0, layer.labels.flatten(), grad)
            centroid_grad[0] = 0.0
            layer.codebook.grad = centroid_grad
        super().step()
        for weight, layer in self._layers:
            layer.codebook[0] = 0.0  # Adam's state never reaches it (zero gradient), kept exact regardless
            weight.copy_(layer.weight().to(weight.device, weight.dtype))
        return None


def kl_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """Per-example KL(teacher || student) of the softmax distributions, in nats."""
    teacher_log = F.log_softmax(teacher_logits.float(), dim=1)
    return (teacher_log.exp() * (teacher_log - F.log_softmax(student_logits.float(), dim=1))).sum(1)


def distill_codebooks_(model: nn.Module, shared: Mapping[str, SharedWeights], inputs: torch.Tensor,
                       teacher_logits: torch.Tensor, *, steps: int, lr: float, batch_size: int = 16,
                       prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
                       temperature: float = 1.0, seed: int = 0) -> list[float]:  # fmt: skip
    """Centroid fine-tuning by distillation: only the codebooks move, so that the model's
    logits match ``teacher_logits`` (the dense model's, on the same ``inputs``; no labels).
    Loss KL(teacher || student) at ``temperature``; Adam on the centroids
    (:class:`CodebookAdam`); ``steps`` batches of ``batch_size`` drawn without replacement,
    reshuffled each pass. ``prepare`` turns a batch of ``inputs`` into model input (e.g.
    uint8 images -> normalised floats). Assignments and the zero entry never change.
    Returns the per-step losses."""
    if steps < 0:
        raise ValueError(f"distill steps: must be >= 0, got {steps}")
    if batch_size < 1:
        raise ValueError(f"distill batch_size: must be at least 1, got {batch_size}")
    if len(inputs) != len(teacher_logits):
        raise ValueError(f"distill: {len(inputs)} inputs but {len(teacher_logits)} teacher logits")
    if steps == 0 or len(inputs) == 0:
        return []
    optimizer = CodebookAdam(model, dict(shared), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # dropout would make the matched function noisy; the deployed one has none
    losses, order = [], torch.empty(0, dtype=torch.int64)
    for _ in range(steps):
        if len(order) < min(batch_size, len(inputs)):
            order = torch.cat([order, torch.randperm(len(inputs), generator=generator)])
        pick, order = order[:batch_size], order[batch_size:]
        x = inputs[pick] if prepare is None else prepare(inputs[pick])
        optimizer.zero_grad()
        student = model(x.to(device)).float() / temperature
        loss = kl_divergence(teacher_logits[pick].to(device) / temperature, student).mean() * temperature**2
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    optimizer.zero_grad()
    model.train(was_training)
    return losses
