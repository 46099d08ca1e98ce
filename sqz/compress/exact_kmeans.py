"""Exact (globally optimal) 1-D k-means by dynamic programming, compiled with numba.

In 1-D an optimal clustering is a partition of the sorted values into contiguous runs, so
D[j][i] = min over m of D[j-1][m] + SSE(values m..i-1) with SSE from prefix sums in O(1).
The argmin is monotone in i (the cost is concave-Monge), which the divide-and-conquer
optimisation uses: O(n log n) per cluster count instead of O(n^2). The candidate window
is further tightened by the previous row's argmin (opt[j-1][i] <= opt[j][i]), which in
practice leaves only a few candidates per cell. Identical values are merged into one
weighted point first (an optimal clustering never splits them), which makes re-clustering
an already weight-shared layer nearly free.

numba rather than a C extension: it is a pip wheel on every platform torch supports,
and the 30-line kernel stays readable Python. The ``ckwrap`` package (Ckmeans.1d.dp) is
the reference implementation; bench/bench_compress.py times both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["exact_kmeans_1d", "MAX_EXACT_CELLS"]

# The backtracking table holds k x n int32 argmins: bound it (256 MB) rather than let a
# huge fully connected layer exhaust memory; quantize_'s "auto" falls back to Lloyd past it.
MAX_EXACT_CELLS = 64_000_000


@njit(cache=True, error_model="numpy")  # no zero-division checks: widths are >= 1
def _optimal_bounds(S0, S1, S2, k):  # pragma: no cover - compiled
    n = S0.size - 1
    args = np.zeros((k, n + 1), dtype=np.int32)
    prev = np.full(n + 1, np.inf)
    for i in range(1, n + 1):
        s = S1[i]
        c = S2[i] - s * s / S0[i]
        prev[i] = c if c > 0.0 else 0.0
    cur = np.full(n + 1, np.inf)
    for j in range(1, k):
        r_lo = j + 1
        r_hi = n - (k - 1 - j)  # later clusters need at least one point each
        rows = r_hi - r_lo + 1
        stride = 1
        while stride < rows:
            stride *= 2
        # Divide and conquer, level by level: rows at odd multiples of the stride take
        # their candidate window from the nearest rows already solved on either side
        # (the argmin is monotone in the row), so each level sweeps memory in order.
        while stride >= 1:
            for p in range(stride - 1, rows, 2 * stride):
                i = r_lo + p
                first = args[j, i - stride] if p >= stride else j
                last = args[j, i + stride] if p + stride < rows else r_hi - 1
                if last > i - 1:
                    last = i - 1
                if j > 1 and i <= n - (k - j) and args[j - 1, i] > first:
                    first = args[j - 1, i]  # and never left of the previous cluster count's
                best, best_value = first, np.inf
                s0, s1, s2 = S0[i], S1[i], S2[i]
                for m in range(first, last + 1):
                    s = s1 - S1[m]
                    c = (s2 - S2[m]) - s * s / (s0 - S0[m])
                    v = prev[m] + (c if c > 0.0 else 0.0)
                    if v < best_value:
                        best_value, best = v, m
                cur[i] = best_value
                args[j, i] = best
            stride //= 2
        prev, cur = cur, prev
    bounds = np.empty(k + 1, dtype=np.int64)
    bounds[k] = n
    end = n
    for j in range(k - 1, 0, -1):
        end = args[j, end]
        bounds[j] = end
    bounds[0] = 0
    return bounds


def exact_kmeans_1d(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Globally optimal clustering of ``values`` into at most ``k`` groups (minimum
    within-cluster sum of squares). Returns (centroids ascending, labels)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("exact_kmeans_1d: no values to cluster")
    if k < 1:
        raise ValueError(f"exact_kmeans_1d: k must be at least 1, got {k}")
    distinct, inverse, weights = np.unique(x, return_inverse=True, return_counts=True)
    n = distinct.size
    if n <= k:
        return distinct, inverse.astype(np.int64)
    if k * n > MAX_EXACT_CELLS:
        raise ValueError(f"exact_kmeans_1d: {n} distinct values x k={k} exceeds the {MAX_EXACT_CELLS:,}-cell table limit")
    # Centre first: the prefix sums of squares then lose far less to cancellation.
    centred = distinct - np.average(distinct, weights=weights)
    w = weights.astype(np.float64)
    S0 = np.concatenate([[0.0], np.cumsum(w)])
    S1 = np.concatenate([[0.0], np.cumsum(w * centred)])
    S2 = np.concatenate([[0.0], np.cumsum(w * centred * centred)])
    bounds = _optimal_bounds(S0, S1, S2, k)
    cluster_of_distinct = np.repeat(np.arange(k), np.diff(bounds))
    sums = np.bincount(cluster_of_distinct, weights=w * distinct, minlength=k)
    sizes = np.bincount(cluster_of_distinct, weights=w, minlength=k)
    return sums / sizes, cluster_of_distinct[inverse]
