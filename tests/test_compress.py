import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sqz.compress import attach_masks_, compute_masks, density, kmeans_1d, prune_, quantize_
from sqz.compress.kmeans import CodebookSGD
from sqz.compress.prune import prunable_parameters
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
