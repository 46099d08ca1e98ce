import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sqz.compress import attach_masks_, compute_masks, density, kmeans_1d, prune_, quantize_
from sqz.compress.indexed import IndexedConv2d, to_indexed, weight_bytes
from sqz.compress.kmeans import within_cluster_sse
from sqz.compress.kmeans import CodebookSGD
from sqz.compress.prune import layer_thresholds, prunable_parameters
from sqz.config import PruneConfig, QuantConfig
from sqz.models import build_model


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("squeezenet_small", num_classes=10)


def test_std_threshold_prunes_below_q_times_std():
    model = _model()
    weights = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    prune_(model, PruneConfig(mode="std", amount=0.5))
    for name, param in prunable_parameters(model).items():
        threshold = 0.5 * weights[name].std().item()
        expected = torch.where(weights[name].abs() > threshold, weights[name], torch.zeros(()))
        assert torch.equal(param.detach(), expected)


def test_density_mode_keeps_that_share():
    model = _model()
    prune_(model, PruneConfig(mode="density", amount=0.25))
    assert density(model) == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("mode,amount", [("density", 0.3), ("std", 0.7)])
def test_global_scope_uses_one_threshold_for_all_layers(mode, amount):
    model = _model()
    thresholds = layer_thresholds(model, PruneConfig(mode=mode, amount=amount, scope="global"))
    assert len(set(thresholds.values())) == 1
    prune_(model, PruneConfig(mode=mode, amount=amount, scope="global"))
    if mode == "density":
        assert density(model) == pytest.approx(amount, abs=0.01)
    densities = [float((p != 0).float().mean()) for p in prunable_parameters(model).values()]
    assert max(densities) - min(densities) > 0.05  # unlike per-layer density, layers differ


def test_pruning_again_prunes_further_and_keeps_zeros():
    model = _model()
    prune_(model, PruneConfig(mode="std", amount=0.3))
    first = density(model)
    masks = prune_(model, PruneConfig(mode="std", amount=0.6))
    assert density(model) < first
    assert all(bool((~m).any()) for m in masks.values())


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_masks_survive_training_with_momentum(optimizer_name):
    model = _model()
    # Momentum built up before pruning must not revive pruned weights afterwards.
    from sqz import engine

    optimizer = engine.make_optimizer(model.parameters(), optimizer_name, lr=0.01, weight_decay=1e-4)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    masks = prune_(model, PruneConfig(mode="std", amount=1.0))
    attach_masks_(model, optimizer, masks)
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    for name, param in prunable_parameters(model).items():
        assert torch.all(param[~masks[name]] == 0)
        assert not torch.equal(param.detach(), before[name])  # the kept weights did train


def _within_cluster_error(values, centroids, labels):
    return float(((values - centroids[labels]) ** 2).sum())


def test_kmeans_1d_matches_brute_force_on_separated_clusters():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(c, 0.01, 50) for c in (-1.0, 0.2, 3.0)])
    centroids, labels = kmeans_1d(values, 3)
    assert np.allclose(np.sort(centroids), [-1.0, 0.2, 3.0], atol=0.01)
    # brute force over all contiguous 3-way splits of the sorted values
    s = np.sort(values)
    best = min(
        sum(((part - part.mean()) ** 2).sum() for part in np.split(s, [i, j]))
        for i, j in itertools.combinations(range(1, len(s)), 2)
    )
    assert _within_cluster_error(values, centroids, labels) == pytest.approx(best, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=200), st.integers(1, 16))
def test_kmeans_1d_properties(values, k):
    x = np.array(values)
    centroids, labels = kmeans_1d(x, k)
    assert len(centroids) <= min(k, len(np.unique(x)))
    assert np.all(np.diff(centroids) > 0)
    assert labels.min() >= 0 and labels.max() < len(centroids)
    # each value sits with its nearest centroid
    nearest = np.abs(x[:, None] - centroids[None, :]).min(axis=1)
    assert np.allclose(np.abs(x - centroids[labels]), nearest)


@pytest.mark.parametrize("bits", [1, 2, 5, 8])
def test_quantize_keeps_zeros_and_at_most_2_to_bits_values(bits):
    model = _model()
    masks = prune_(model, PruneConfig(mode="std", amount=0.5))
    quantize_(model, QuantConfig(bits=bits))
    for name, param in prunable_parameters(model).items():
        assert torch.all(param[~masks[name]] == 0)
        assert torch.all(param[masks[name]] != 0) or bits == 1
        assert len(torch.unique(param[param != 0])) <= 2**bits


def test_centroid_finetuning_moves_centroids_not_assignments():
    model = _model()
    prune_(model, PruneConfig(mode="std", amount=0.5))
    shared = quantize_(model, QuantConfig(bits=4))
    labels_before = {n: s.labels.clone() for n, s in shared.items()}
    codebooks_before = {n: s.codebook.clone() for n, s in shared.items()}
    optimizer = CodebookSGD(model, shared, lr=1e-3)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    params = dict(model.named_parameters())
    moved = 0
    for name, layer in shared.items():
        assert torch.equal(layer.labels, labels_before[name])
        assert layer.codebook[0] == 0.0
        assert torch.equal(params[name].detach(), layer.codebook[layer.labels])
        moved += int(not torch.equal(layer.codebook, codebooks_before[name]))
    assert moved > 0


def test_compute_masks_zero_threshold_keeps_everything_nonzero():
    model = _model()
    masks = compute_masks(model, PruneConfig(mode="std", amount=0.0))
    assert all(bool(m.all()) for m in masks.values())


# ---------------------------------------------------------------- exact k-means


def _brute_force_sse(values, k):
    s = np.sort(values)
    return min(
        sum(((part - part.mean()) ** 2).sum() for part in np.split(s, list(cuts)))
        for cuts in itertools.combinations(range(1, len(s)), k - 1)
    )


def test_exact_kmeans_equals_brute_force_on_small_inputs():
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(2, 11))
        k = int(rng.integers(1, min(n, 5) + 1))
        scale = float(rng.choice([1e-3, 1.0, 50.0]))
        values = rng.standard_normal(n) * scale
        if rng.random() < 0.3:  # repeated values (weight-shared input) take the weighted path
            values = rng.choice(values[: max(2, n // 2)], size=n)
        if len(np.unique(values)) < k:
            continue
        centroids, labels = kmeans_1d(values, k, method="exact")
        assert within_cluster_sse(values, centroids, labels) == pytest.approx(_brute_force_sse(values, k), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1, 1, allow_nan=False, allow_subnormal=False), min_size=2, max_size=400), st.integers(1, 32))
def test_exact_kmeans_never_worse_than_lloyd(values, k):
    x = np.array(values)
    exact = within_cluster_sse(x, *kmeans_1d(x, k, method="exact"))
    lloyd = within_cluster_sse(x, *kmeans_1d(x, k, method="lloyd"))
    assert exact <= lloyd * (1 + 1e-9) + 1e-12


def test_lagrangian_path_matches_the_table_dp_on_weights_like_data():
    from sqz.compress import exact_kmeans

    rng = np.random.default_rng(3)
    x = rng.laplace(scale=0.02, size=30_000)
    x = x[np.abs(x) > 0.01]
    sums = exact_kmeans._prefix_sums(*np.unique(x, return_counts=True))
    for k in (2, 16, 255):
        lagrangian = exact_kmeans._lagrangian_bounds(*sums, k)
        assert lagrangian is not None and np.array_equal(lagrangian, exact_kmeans._optimal_bounds(*sums, k))


def test_degenerate_cluster_count_is_optimal_and_has_a_fallback(monkeypatch):
    from sqz.compress import exact_kmeans

    # 0, 1, 2, 3: D(2) = 1, D(3) = 0.5, D(4) = 0 lie on a line, so 3 runs are optimal for
    # the penalised problem only at a tie, which rounding may or may not hit.
    values = np.array([0.0, 1.0, 2.0, 3.0])
    assert within_cluster_sse(values, *kmeans_1d(values, 3, method="exact")) == pytest.approx(0.5)
    # Where no penalty gives k runs, the table DP answers ...
    monkeypatch.setattr(exact_kmeans, "_lagrangian_bounds", lambda *a: None)
    rng = np.random.default_rng(5)
    for _ in range(20):
        x = rng.standard_normal(9)
        assert within_cluster_sse(x, *kmeans_1d(x, 3, method="exact")) == pytest.approx(_brute_force_sse(x, 3), rel=1e-9)
    # ... and past its size limit "exact" says so while "auto" takes Lloyd.
    monkeypatch.setattr(exact_kmeans, "MAX_EXACT_CELLS", 4)
    with pytest.raises(exact_kmeans.ExactKMeansUnavailable, match="table limit"):
        kmeans_1d(values, 3, method="exact")
    assert len(kmeans_1d(values, 3, method="auto")[0]) <= 3


def test_exact_kmeans_beats_lloyd_on_weights_like_data():
    rng = np.random.default_rng(0)
    x = rng.laplace(scale=0.02, size=20_000)
    exact = within_cluster_sse(x, *kmeans_1d(x, 16, method="exact"))
    lloyd = within_cluster_sse(x, *kmeans_1d(x, 16, method="lloyd"))
    assert exact < lloyd


def test_per_layer_bits_and_cluster_count():
    model = _model()
    prune_(model, PruneConfig(mode="std", amount=0.5))
    config = QuantConfig(bits=8, layer_bits=("classifier.*=3", "features.0=2"))
    assert config.bits_for("classifier.1") == 3 and config.bits_for("features.0") == 2
    assert config.bits_for("features.3.squeeze") == 8
    quantize_(model, config)
    params = prunable_parameters(model)
    assert len(torch.unique(params["classifier.1.weight"][params["classifier.1.weight"] != 0])) <= 8
    assert len(torch.unique(params["features.0.weight"][params["features.0.weight"] != 0])) <= 4
    model = _model()
    quantize_(model, QuantConfig(bits=8, clusters=8))  # "8 clusters, 8-bit indices"
    assert all(len(torch.unique(p[p != 0])) <= 8 for p in prunable_parameters(model).values())
    with pytest.raises(ValueError, match="layer_bits"):
        QuantConfig(layer_bits=("classifier.*=9",))
    with pytest.raises(ValueError, match="clusters"):
        QuantConfig(bits=3, clusters=9)


def test_indexed_model_computes_the_same_from_uint8_indices():
    model = _model()
    prune_(model, PruneConfig(mode="std", amount=0.8))
    quantize_(model, QuantConfig(bits=5))
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        dense_bytes = weight_bytes(model)
        indexed = to_indexed(model)
        assert any(isinstance(m, IndexedConv2d) for m in indexed.modules())
        assert all(m.indices.dtype == torch.uint8 for m in indexed.modules() if isinstance(m, IndexedConv2d))
        assert torch.allclose(indexed(x), expected, atol=1e-5)
    assert weight_bytes(indexed) < dense_bytes / 3
