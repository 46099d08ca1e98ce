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

import numpy as np
import torch
from torch import nn

from sqz.compress.prune import prunable_parameters
from sqz.config import QuantConfig

__all__ = ["kmeans_1d", "lloyd_kmeans_1d", "within_cluster_sse", "SharedWeights", "quantize_", "CodebookSGD"]


def kmeans_1d(values: np.ndarray, k: int, *, method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Cluster ``values`` into at most ``k`` groups. Returns (centroids ascending, labels)
    with ``values[i]`` represented by ``centroids[labels[i]]``; empty clusters are dropped.
    ``method``: "lloyd" (linear init), "exact" (optimal DP), "auto" (exact where it fits)."""
    from sqz.compress.exact_kmeans import ExactKMeansUnavailable, exact_kmeans_1d

    if method not in ("auto", "exact", "lloyd"):
        raise ValueError(f"kmeans method: must be auto, exact or lloyd, got {method!r}")
    if method in ("exact", "auto"):
        try:
            return exact_kmeans_1d(values, k)
        except ExactKMeansUnavailable:
            if method == "exact":
                raise
    return lloyd_kmeans_1d(values, k)


def within_cluster_sse(values: np.ndarray, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of each value to its centroid (what k-means minimises)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return float(((x - np.asarray(centroids, dtype=np.float64)[labels]) ** 2).sum())


def lloyd_kmeans_1d(values: np.ndarray, k: int, *, max_iter: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm from linear initialisation (Deep Compression's choice)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("kmeans_1d: no values to cluster")
    if k < 1:
        raise ValueError(f"kmeans_1d: k must be at least 1, got {k}")
    sorted_x = np.sort(x)
    n = sorted_x.size
    prefix = np.concatenate([[0.0], np.cumsum(sorted_x)])
    centroids = np.linspace(sorted_x[0], sorted_x[-1], k)
    for _ in range(max_iter):
        bounds = (centroids[:-1] + centroids[1:]) / 2
        cuts = np.searchsorted(sorted_x, bounds, side="right")  # first index of clusters 1..k-1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [n]])
        counts = ends - starts
        means = (prefix[ends] - prefix[starts]) / np.maximum(counts, 1)
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
    sums = np.bincount(labels, weights=x, minlength=k)[used]
    sizes = np.bincount(labels, minlength=k)[used]
    return sums / sizes, remap[labels]


@dataclass
class SharedWeights:
    """One layer after weight sharing: ``weight == codebook[labels]`` with label 0 the
    pruned weights, whose codebook entry is fixed at 0.0 (as in the released .net file)."""

    codebook: torch.Tensor  # (k + 1,) float32, entry 0 is 0.0
    labels: torch.Tensor  # same shape as the weight, int64 in 0..k

    def weight(self) -> torch.Tensor:
        return self.codebook[self.labels]


@torch.no_grad()
def quantize_(model: nn.Module, config: QuantConfig) -> dict[str, SharedWeights]:
    """Replace each conv/linear weight by its nearest of at most 2^bits shared values
    (``config.bits_for(layer)``, at most ``config.clusters`` when given). Zeros (pruned
    weights) are not clustered and stay exactly 0.0."""
    shared: dict[str, SharedWeights] = {}
    for name, weight in prunable_parameters(model).items():
        k = config.clusters_for(name.removesuffix(".weight"))
        flat = weight.detach().flatten().cpu()
        nonzero = flat != 0
        labels = torch.zeros(flat.numel(), dtype=torch.int64)
        if bool(nonzero.any()):
            centroids, member_labels = kmeans_1d(flat[nonzero].double().numpy(), k, method=config.method)
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
