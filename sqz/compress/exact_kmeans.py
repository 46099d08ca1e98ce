"""Exact (globally optimal) 1-D k-means by dynamic programming, compiled with numba.

In 1-D an optimal clustering is a partition of the sorted values into contiguous runs, so
D[j][i] = min over m of D[j-1][m] + SSE(values m..i-1) with SSE from prefix sums in O(1).
SSE satisfies the quadrangle inequality (concave Monge), which gives two exact methods:

- Lagrangian relaxation (the default path): drop the "exactly k runs" constraint and
  charge ``lam`` per run instead. That 1-D problem is solved in O(n log n) with a deque
  of candidate run starts (each new candidate overtakes the older ones from one
  position on, found by binary search), with O(n) memory. D(k) is convex in k, so some
  ``lam`` makes a k-run partition optimal for the penalised problem, and any such
  partition is optimal for k runs. A bisection on log(lam) finds it in 7 to 16 passes on
  SqueezeNet's layers: about 0.4 s for all of SqueezeNet v1.0 at k = 256 on one core,
  against 2.6 s for the table below, with the same boundaries on every layer.
- The k x n table with divide and conquer on the monotone argmin, O(k n log n), tightened
  by the previous row's argmin: the fallback for the degenerate case where no ``lam``
  yields exactly k runs (D(k) linear around k, e.g. under ties), bounded by
  :data:`MAX_EXACT_CELLS`.

Identical values are merged into one weighted point first (an optimal clustering never
splits them), which makes re-clustering an already weight-shared layer nearly free.
Each value may carry its own positive weight (an importance, e.g. a diagonal Fisher
estimate): the objective becomes the weighted SSE, sum w (x - c)^2, whose run costs come
from the same three prefix sums (sum w, sum w x, sum w x^2), so both kernels stay exact
and as fast; unit weights are the plain k-means.

numba rather than a C extension: it is a pip wheel on every platform torch supports,
and the kernels stay readable Python. The ``ckwrap`` package (Ckmeans.1d.dp) is the
reference implementation; bench/bench_compress.py times both.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["exact_kmeans_1d", "check_weights", "ExactKMeansUnavailable", "MAX_EXACT_CELLS"]

# The fallback's backtracking table holds k x n int32 argmins: bound it (256 MB) rather
# than let a huge fully connected layer exhaust memory; "auto" uses Lloyd past it.
MAX_EXACT_CELLS = 64_000_000
# Bisection passes on log(lam) before the table fallback; 7 to 16 suffice on real weights.
MAX_LAGRANGE_PASSES = 100


class ExactKMeansUnavailable(ValueError):
    """The degenerate case needs the table fallback and it exceeds MAX_EXACT_CELLS."""


@njit(inline="always", error_model="numpy")  # no zero-division checks: runs are non-empty
def _run_sse(S0, S1, S2, m, i):  # pragma: no cover - compiled
    """Within-run sum of squares of points m..i-1 from the prefix sums (clamped at 0,
    where rounding would make a near-constant run slightly negative)."""
    s = S1[i] - S1[m]
    c = (S2[i] - S2[m]) - s * s / (S0[i] - S0[m])
    return c if c > 0.0 else 0.0


@njit(inline="always", error_model="numpy")
def _run_cost(G, S0, S1, S2, m, i, lam):  # pragma: no cover - compiled
    """G[m] + SSE of points m..i-1 + lam: a partition ending at i whose last run starts at m."""
    return G[m] + _run_sse(S0, S1, S2, m, i) + lam


@njit(cache=True, error_model="numpy")
def _penalised_runs(S0, S1, S2, lam, G, count, start, queue_start, queue_from):  # pragma: no cover - compiled
    """min over partitions of SSE + lam x runs, for every prefix; returns the run count of
    the whole. ``start[i]`` is where the last run of the best partition of 0..i-1 starts.
    The queue holds candidate starts, each optimal from ``queue_from`` on: by the
    quadrangle inequality a newer start, once better at some end, stays better after."""
    n = S0.size - 1
    G[0] = 0.0
    count[0] = 0
    head, tail = 0, 1
    queue_start[0] = 0
    queue_from[0] = 1
    for i in range(1, n + 1):
        while tail - head > 1 and queue_from[head + 1] <= i:
            head += 1
        m = queue_start[head]
        G[i] = _run_cost(G, S0, S1, S2, m, i, lam)
        count[i] = count[m] + 1
        start[i] = m
        if i == n:
            break
        # Start i enters: drop the candidates it beats from their first position on.
        while tail > head:  # never empty here: the front just served position i
            last = queue_start[tail - 1]
            first = queue_from[tail - 1] if queue_from[tail - 1] > i + 1 else i + 1
            if _run_cost(G, S0, S1, S2, i, first, lam) <= _run_cost(G, S0, S1, S2, last, first, lam):
                tail -= 1
            else:
                break
        if tail == head:
            queue_start[tail] = i
            queue_from[tail] = i + 1
            tail += 1
            continue
        last = queue_start[tail - 1]
        if _run_cost(G, S0, S1, S2, i, n, lam) > _run_cost(G, S0, S1, S2, last, n, lam):
            continue  # never better than the last candidate
        worse, better = first, n  # binary search for the first end where i wins
        while better - worse > 1:
            mid = (worse + better) >> 1
            if _run_cost(G, S0, S1, S2, i, mid, lam) <= _run_cost(G, S0, S1, S2, last, mid, lam):
                better = mid
            else:
                worse = mid
        queue_start[tail] = i
        queue_from[tail] = better
        tail += 1
    return count[n]


def _lagrangian_bounds(S0: np.ndarray, S1: np.ndarray, S2: np.ndarray, k: int) -> np.ndarray | None:
    """Run boundaries of an optimal k-run partition, or None if no penalty gives k runs."""
    n = S0.size - 1
    G, count, start = np.empty(n + 1), np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)
    queue_start, queue_from = np.empty(n + 1, np.int64), np.empty(n + 1, np.int64)
    # A penalty above the one-run cost leaves one run; a tiny one (far below the ~total/k^3
    # that k runs cost per run) leaves every point alone. Bisect between them on a log scale.
    high = float(S2[n] - S1[n] ** 2 / S0[n]) + 1.0
    low = high * 1e-24
    for _ in range(MAX_LAGRANGE_PASSES):
        lam = float(np.sqrt(low * high))
        runs = _penalised_runs(S0, S1, S2, lam, G, count, start, queue_start, queue_from)
        if runs == k:
            bounds = np.empty(k + 1, dtype=np.int64)
            bounds[k] = end = n
            for j in range(k - 1, -1, -1):
                end = start[end]
                bounds[j] = end
            return bounds
        if runs > k:
            low = lam
        else:
            high = lam
        if high <= low * (1 + 1e-15):
            break
    return None


@njit(cache=True, error_model="numpy")  # no zero-division checks: widths are >= 1
def _optimal_bounds(S0, S1, S2, k):  # pragma: no cover - compiled
    n = S0.size - 1
    args = np.zeros((k, n + 1), dtype=np.int32)
    prev = np.full(n + 1, np.inf)
    for i in range(1, n + 1):
        prev[i] = _run_sse(S0, S1, S2, 0, i)
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
                for m in range(first, last + 1):
                    v = prev[m] + _run_sse(S0, S1, S2, m, i)
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


def _prefix_sums(distinct: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prefix sums of weight, weight x value, weight x value^2 over the sorted distinct
    values (each with a leading 0), what both kernels read run costs from."""
    # Centre first: the prefix sums of squares then lose far less to cancellation.
    w = weights.astype(np.float64)
    centred = distinct - np.average(distinct, weights=w)
    return tuple(np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * centred, w * centred * centred))


def check_weights(weights: np.ndarray | None, size: int) -> np.ndarray | None:
    """``weights`` as float64 of ``size`` values, all finite and positive (a zero weight
    would leave a run with no mass and no defined centroid), or None."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size != size:
        raise ValueError(f"kmeans weights: {w.size} weights for {size} values")
    if not (np.all(np.isfinite(w)) and np.all(w > 0)):
        raise ValueError("kmeans weights: must be finite and positive")
    return w


def exact_kmeans_1d(values: np.ndarray, k: int, *, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Globally optimal clustering of ``values`` into at most ``k`` groups (minimum
    within-cluster sum of squares, weighted by ``weights`` when given: sum w (x - c)^2,
    each centroid its members' weighted mean). Returns (centroids ascending, labels)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("exact_kmeans_1d: no values to cluster")
    if k < 1:
        raise ValueError(f"exact_kmeans_1d: k must be at least 1, got {k}")
    w = check_weights(weights, x.size)
    if w is None:
        distinct, inverse, weights = np.unique(x, return_inverse=True, return_counts=True)
    else:
        distinct, inverse = np.unique(x, return_inverse=True)
        weights = np.bincount(inverse, weights=w, minlength=distinct.size)
    n = distinct.size
    if n <= k:
        return distinct, inverse.astype(np.int64)
    S0, S1, S2 = _prefix_sums(distinct, weights)
    bounds = _lagrangian_bounds(S0, S1, S2, k)
    if bounds is None:
        if k * n > MAX_EXACT_CELLS:
            raise ExactKMeansUnavailable(f"exact_kmeans_1d: {n} distinct values x k={k} exceeds the "
                                         f"{MAX_EXACT_CELLS:,}-cell table limit")  # fmt: skip
        bounds = _optimal_bounds(S0, S1, S2, k)
    cluster_of_distinct = np.repeat(np.arange(k), np.diff(bounds))
    sums = np.bincount(cluster_of_distinct, weights=weights * distinct, minlength=k)
    sizes = np.bincount(cluster_of_distinct, weights=weights, minlength=k)
    return sums / sizes, cluster_of_distinct[inverse]
