"""GPTQ assignment to a k-means codebook: stays on the codebook, keeps the zeros, and
lowers the layer's output error against nearest rounding."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sqz.compress.gptq import gptq_, gptq_assign, input_hessians, refit_codebook
from sqz.compress.kmeans import quantize_
from sqz.config import QuantConfig


def _correlated_inputs(n: int, dims: int, seed: int) -> torch.Tensor:
    """Inputs with correlated dimensions (as a conv's neighbouring pixels): where GPTQ's
    compensation has something to work with."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dims, dims, generator=g) / dims**0.5 + torch.eye(dims)
    return torch.randn(n, dims, generator=g) @ mixing


def _layer(rows: int, cols: int, density: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    return w * (torch.rand(rows, cols, generator=g) < density)


def _output_error(w: torch.Tensor, q: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w - q).T) ** 2).sum())


def _clustered_layer(seed: int):
    """A 24 x 40 layer at 60% density, correlated inputs for it, its 3-bit k-means
    clustering and its input Hessian."""
    w = _layer(24, 40, 0.6, seed)
    x = _correlated_inputs(400, 40, seed + 10)
    linear = nn.Sequential(nn.Linear(40, 24, bias=False))
    linear[0].weight.data.copy_(w)
    shared = quantize_(linear, QuantConfig(bits=3, method="exact"))["0.weight"]
    return w, x, shared, x.double().T @ x.double() / len(x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_assign_stays_on_codebook_keeps_zeros_and_beats_nearest(seed):
    w, x, shared, hessian = _clustered_layer(seed)

    labels = gptq_assign(w, hessian, shared.codebook, damp=0.01, block_size=8)
    q = shared.codebook[labels]
    assert torch.equal(labels == 0, w == 0)  # the sparsity pattern is the same
    assert bool((q[w == 0] == 0).all()) and bool((q[w != 0] != 0).all())
    assert set(torch.unique(q[w != 0]).tolist()) <= set(shared.codebook[1:].tolist())
    nearest, gptq = _output_error(w, shared.weight(), x), _output_error(w, q, x)
    assert gptq < nearest

    # Refitting the codebook for the new labels can only lower the same objective.
    refitted = refit_codebook(w, hessian, shared.codebook, labels)
    assert float(refitted[0]) == 0.0
    assert _output_error(w, refitted[labels], x) <= gptq * (1 + 1e-6)


def test_gptq_block_size_does_not_change_the_result():
    w = _layer(10, 30, 0.5, 3)
    x = _correlated_inputs(200, 30, 4)
    linear = nn.Sequential(nn.Linear(30, 10, bias=False))
    linear[0].weight.data.copy_(w)
    shared = quantize_(linear, QuantConfig(bits=2, method="exact"))["0.weight"]
    hessian = x.double().T @ x.double()
    one = gptq_assign(w, hessian, shared.codebook, block_size=1)
    assert torch.equal(one, gptq_assign(w, hessian, shared.codebook, block_size=7))
    assert torch.equal(one, gptq_assign(w, hessian, shared.codebook, block_size=128))


@pytest.mark.parametrize("kwargs, message", [
    ({"damp": 0.0}, "gptq damp"),
    ({"damp": 2.0}, "gptq damp"),
    ({"block_size": 0}, "gptq block_size"),
])  # fmt: skip
def test_bad_gptq_options_are_refused_in_one_line(kwargs, message):
    w = _layer(4, 6, 0.5, 0)
    with pytest.raises(ValueError, match=message) as info:
        gptq_assign(w, torch.eye(6), torch.tensor([0.0, -1.0, 1.0]), **kwargs)
    assert "\n" not in str(info.value)


def test_gptq_refuses_a_codebook_without_the_zero_entry():
    with pytest.raises(ValueError, match="entry 0"):
        gptq_assign(_layer(4, 6, 0.5, 0), torch.eye(6), torch.tensor([-1.0, 1.0]))


def test_conv_hessian_matches_unfolded_inputs():
    conv = nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=False)
    x = torch.randn(2, 3, 9, 9)
    hessian = input_hessians(nn.Sequential(conv), [x])["0.weight"]
    cols = nn.functional.unfold(x, 3, padding=1, stride=2)  # (N, 27, L)
    flat = cols.transpose(0, 1).reshape(27, -1).double()
    torch.testing.assert_close(hessian, flat @ flat.T / flat.shape[1])
    # The weight's flatten order is the unfolded one: conv output == W_flat @ columns.
    out = conv(x).flatten(2)
    torch.testing.assert_close(out, conv.weight.flatten(1) @ cols, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("inputs_from, rounds", [("sequential", 1), ("dense", 1), ("dense", 2)])
def test_gptq_model_keeps_zeros_and_lowers_the_output_error(inputs_from, rounds):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 1), nn.ReLU(),
                          nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(torch.rand_like(p) < 0.7)
    images = torch.randn(24, 3, 8, 8)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() > 1}
    quantized = copy.deepcopy(model)
    shared = quantize_(quantized, QuantConfig(bits=2, method="exact"))
    report = gptq_(quantized, shared, original, images, batch_size=10, inputs_from=inputs_from, rounds=rounds)
    for name, p in quantized.named_parameters():
        if name in shared:
            assert torch.equal(p.detach() == 0, original[name] == 0), name
            assert torch.equal(p.detach(), shared[name].weight()), name
            assert report[name]["gptq"] <= report[name]["nearest"] * (1 + 1e-6), name


def test_gptq_model_refuses_bad_inputs_before_work():
    model = nn.Sequential(nn.Linear(4, 3))
    shared = quantize_(copy.deepcopy(model), QuantConfig(bits=2))
    original = {"0.weight": model[0].weight.detach().clone()}
    with pytest.raises(ValueError, match="gptq inputs: must be sequential or dense"):
        gptq_(model, shared, original, torch.randn(5, 4), inputs_from="both")
    with pytest.raises(ValueError, match="gptq images"):
        gptq_(model, shared, original, torch.randn(0, 4))
    with pytest.raises(ValueError, match="gptq rounds"):
        gptq_(model, shared, original, torch.randn(5, 4), rounds=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"assign": "closest"}, "--assign: must be nearest or gptq"),
    ({"assign": "gptq", "bits": 6, "gptq_inputs": "both"}, "--gptq-inputs"),
    ({"gptq_images": 0}, "--gptq-images"),
    ({"gptq_damp": 0.0}, "--gptq-damp"),
    ({"gptq_rounds": 0}, "--gptq-rounds"),
])  # fmt: skip
def test_import_options_refuse_bad_gptq_options(kwargs, message):
    from sqz.config import ImportOptions

    with pytest.raises(ValueError, match=message) as info:
        ImportOptions(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gptq_extra_pruning_prunes_the_share_keeps_old_zeros_and_beats_magnitude(seed):
    w, x, shared, hessian = _clustered_layer(seed)

    labels = gptq_assign(w, hessian, shared.codebook, block_size=8, prune=0.25)
    q = shared.codebook[labels]
    kept_before, kept_after = int((w != 0).sum()), int((labels != 0).sum())
    assert abs(kept_after - 0.75 * kept_before) <= 40 / 8  # rounded once per block of 8 columns
    assert bool((labels[w == 0] == 0).all())  # an old zero stays pruned
    assert bool((q[labels != 0] != 0).all())  # a kept weight is never 0.0

    # The same count pruned by magnitude, then GPTQ on that fixed pattern: OBS's choice
    # with compensation costs the layer's output less.
    threshold = w.abs()[w != 0].sort().values[kept_before - kept_after - 1]
    by_magnitude = torch.where(w.abs() > threshold, w, torch.zeros_like(w))
    q_magnitude = shared.codebook[gptq_assign(by_magnitude, hessian, shared.codebook, block_size=8)]
    assert _output_error(w, q, x) < _output_error(w, q_magnitude, x)


def test_gptq_refuses_a_bad_prune_share_before_work():
    with pytest.raises(ValueError, match=r"gptq prune: must be in \[0, 1\)"):
        gptq_assign(_layer(4, 6, 0.5, 0), torch.eye(6), torch.tensor([0.0, -1.0, 1.0]), prune=1.0)
    model = nn.Sequential(nn.Linear(4, 3))
    shared = quantize_(copy.deepcopy(model), QuantConfig(bits=2))
    original = {"0.weight": model[0].weight.detach().clone()}
    with pytest.raises(ValueError, match="gptq prune"):
        gptq_(model, shared, original, torch.randn(5, 4), prune={"0.weight": -0.1})
    with pytest.raises(ValueError, match="unknown or missing layer"):
        gptq_(model, shared, original, torch.randn(5, 4), prune={"1.weight": 0.1})
