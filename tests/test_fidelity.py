"""Weighted exact k-means, Fisher importance, centroid distillation, fidelity, the byte
budget's bit allocation, and import-dc's calibration options."""

from __future__ import annotations

import copy
import itertools
import os

import numpy as np
import pytest
import torch
from torch import nn

from sqz import metrics
from sqz.cli import main
from sqz.compress.kmeans import distill_codebooks_, kl_divergence, kmeans_1d, quantize_, within_cluster_sse
from sqz.compress.prune import prune_
from sqz.config import ImportOptions, PruneConfig, QuantConfig
from sqz.fidelity import (LayerBits, allocate_bits, allocated_bytes, calibration_sets, cluster_at_widths, fidelity,
                          fisher_importance, layer_bit_options, logits_of, scale_costs_by_measured_kl, smallest_file)  # fmt: skip

RELEASED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "models",
                        "squeezenet-deep-compression", "compressed_SqueezeNet.net")  # fmt: skip
needs_release = pytest.mark.skipif(not os.path.exists(RELEASED), reason="../shared/models/squeezenet-deep-compression is absent")


def brute_force_weighted_sse(x: np.ndarray, w: np.ndarray, k: int) -> float:
    """Least weighted SSE over every assignment of the values to k labels (not only
    contiguous runs), each cluster at its weighted mean."""
    best = np.inf
    for labels in itertools.product(range(k), repeat=x.size):
        labels = np.asarray(labels)
        cost = 0.0
        for c in range(k):
            members = labels == c
            if members.any():
                centre = np.average(x[members], weights=w[members])
                cost += float((w[members] * (x[members] - centre) ** 2).sum())
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_weighted_exact_kmeans_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(3, 8)), int(rng.integers(2, 4))
    x = np.round(rng.normal(size=n), 1)  # rounding makes ties, which merge into one point
    w = rng.exponential(size=n) + 1e-3
    centroids, labels = kmeans_1d(x, k, method="exact", weights=w)
    assert len(centroids) <= k
    got = within_cluster_sse(x, centroids, labels, w)
    assert got == pytest.approx(brute_force_weighted_sse(x, w, k), rel=1e-9, abs=1e-12)
    # Each centroid is its members' weighted mean.
    for c in range(len(centroids)):
        assert centroids[c] == pytest.approx(np.average(x[labels == c], weights=w[labels == c]))


def test_weighted_is_no_worse_than_unweighted_on_the_weighted_objective():
    rng = np.random.default_rng(0)
    x = rng.standard_t(3, size=4000)
    w = rng.exponential(size=x.size) * (1 + 10 * (np.abs(x) > 2))  # the tails matter more
    for k in (4, 16, 64):
        weighted = within_cluster_sse(x, *kmeans_1d(x, k, weights=w), w)
        plain = within_cluster_sse(x, *kmeans_1d(x, k), w)
        lloyd = within_cluster_sse(x, *kmeans_1d(x, k, method="lloyd", weights=w), w)
        assert weighted <= plain * (1 + 1e-12) and weighted <= lloyd * (1 + 1e-12)
    assert weighted < plain  # and strictly better here: the weights moved centroids


def test_unit_weights_equal_plain_kmeans():
    x = np.random.default_rng(1).normal(size=500)
    plain = kmeans_1d(x, 16)
    unit = kmeans_1d(x, 16, weights=np.ones_like(x))
    np.testing.assert_allclose(unit[0], plain[0])
    np.testing.assert_array_equal(unit[1], plain[1])


@pytest.mark.parametrize("bad", [np.zeros(5), -np.ones(5), np.full(5, np.nan), np.ones(4)])
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValueError, match="kmeans weights"):
        kmeans_1d(np.arange(5.0), 2, weights=bad)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


def test_quantize_importance_is_checked_and_zeros_stay_zero():
    model = tiny_model()
    prune_(model, PruneConfig(mode="density", amount=0.5))
    zeros = {n: (p == 0).clone() for n, p in model.named_parameters() if p.dim() > 1}
    with pytest.raises(ValueError, match="importance: unknown"):
        quantize_(copy.deepcopy(model), QuantConfig(bits=2), importance={"nope.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="importance: 0.weight has shape"):
        quantize_(copy.deepcopy(model), QuantConfig(bits=2), importance={"0.weight": torch.ones(3)})
    importance = {n: torch.rand_like(p) for n, p in model.named_parameters() if p.dim() > 1}
    quantize_(model, QuantConfig(bits=2), importance=importance)
    for n, p in model.named_parameters():
        if p.dim() > 1:
            assert torch.equal(p == 0, zeros[n])
            assert torch.unique(p[p != 0]).numel() <= 4


def test_fisher_importance_shapes_and_sign():
    model = tiny_model()
    batches = [torch.randn(8, 3, 8, 8) for _ in range(2)]
    importance = fisher_importance(model, batches, micro_batch=4)
    assert set(importance) == {"0.weight", "3.weight"}
    for name, p in model.named_parameters():
        if p.dim() > 1:
            assert importance[name].shape == p.shape and bool((importance[name] >= 0).all())
            assert float(importance[name].sum()) > 0
    with_labels = fisher_importance(model, batches, labels=[torch.zeros(8, dtype=torch.int64)] * 2)
    assert not torch.equal(with_labels["3.weight"], importance["3.weight"])


def test_distillation_lowers_kl_and_keeps_assignments_and_zeros():
    teacher = tiny_model()
    inputs = torch.randn(64, 3, 8, 8)
    with torch.no_grad():
        teacher[3].weight.mul_(20)  # confident logits: 2-bit clustering then costs real KL
        teacher_logits = teacher(inputs)
    student = copy.deepcopy(teacher)
    prune_(student, PruneConfig(mode="density", amount=0.5))
    shared = quantize_(student, QuantConfig(bits=2))
    labels = {n: s.labels.clone() for n, s in shared.items()}
    zeros = {n: (p == 0).clone() for n, p in student.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        before = float(kl_divergence(teacher_logits, student(inputs)).mean())
    losses = distill_codebooks_(student, shared, inputs, teacher_logits, steps=60, lr=1e-2, batch_size=16)
    with torch.no_grad():
        after = float(kl_divergence(teacher_logits, student(inputs)).mean())
    assert len(losses) == 60 and after < 0.7 * before
    params = dict(student.named_parameters())
    for name, layer in shared.items():
        assert torch.equal(layer.labels, labels[name])  # assignments fixed
        assert float(layer.codebook[0]) == 0.0
        assert torch.equal(params[name] == 0, zeros[name])  # zeros stay zero
        assert torch.equal(params[name].detach(), layer.weight())  # the weights are the codebook's
    with pytest.raises(ValueError, match="distill steps"):
        distill_codebooks_(student, shared, inputs, teacher_logits, steps=-1, lr=1e-2)


def test_fidelity_figures():
    teacher = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])
    same = fidelity(teacher.clone(), teacher)
    assert {k: same[k] for k in ("images", "top1_agreement", "top5_overlap", "kl")} == {
        "images": 2, "top1_agreement": 100.0, "top5_overlap": 100.0, "kl": pytest.approx(0.0, abs=1e-6)}
    student = torch.tensor([[4.0, 5, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5]])  # first image's top-1 swapped
    result = fidelity(student, teacher)
    assert result["top1_agreement"] == 50.0 and result["top5_overlap"] == 100.0 and result["kl"] > 0


def test_fidelity_on_confident_crops_and_near_ties():
    # Teacher probabilities per row (top-1, top-2, rest): confident 0.9 / 0.6, unsure 0.4,
    # and a near-tie (0.35 vs 0.34, < 0.02 apart).
    probs = torch.tensor([[0.90, 0.05, 0.03, 0.02], [0.60, 0.30, 0.05, 0.05], [0.40, 0.30, 0.20, 0.10],
                          [0.35, 0.34, 0.21, 0.10]])  # fmt: skip
    teacher = probs.log()
    student = teacher.clone()
    student[1] = teacher[1, [1, 0, 2, 3]]  # a confident crop flips
    student[3] = teacher[3, [1, 0, 2, 3]]  # the near-tie flips
    result = fidelity(student, teacher)
    assert result["top1_agreement"] == 50.0 and result["flips"] == 2
    assert result["confident_threshold"] == 0.5 and result["confident_images"] == 2
    assert result["confident_agreement"] == 50.0
    assert result["near_tie_images"] == 1 and result["near_tie_flips"] == 1
    strict = fidelity(student, teacher, confident=0.8)  # only the 0.9 crop, which agrees
    assert strict["confident_images"] == 1 and strict["confident_agreement"] == 100.0
    assert fidelity(student, teacher, confident=0.95)["confident_agreement"] is None  # none that sure
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"--confident: .* must lie in \(0, 1\)"):
            fidelity(student, teacher, confident=bad)


def test_fidelity_table_round_trip(tmp_path):
    row = {"run_id": "r", "model": "a.sqz", "reference": "a.net", "images": 210, "top1_agreement": 91.5,
           "top5_overlap": 95.25, "kl": 0.0312, "confident_threshold": 0.5, "confident_images": 94,
           "confident_agreement": 98.9, "flips": 18, "near_tie_images": 20, "near_tie_flips": 7}  # fmt: skip
    metrics.write_rows(str(tmp_path), "fidelity", [row], writer_id="one")
    assert metrics.read_table(str(tmp_path), "fidelity").to_pylist() == [row]


def test_allocate_bits_matches_brute_force_and_refuses_small_budgets():
    rng = np.random.default_rng(0)
    options = {f"l{i}": [LayerBits(f"l{i}", b, int(rng.integers(50, 100)) * b, float(rng.exponential()) / b**2)
                         for b in (2, 4, 8)] for i in range(4)}  # fmt: skip
    rest = 100
    for budget in (1200, 1800, 2500, 4000):
        if budget < smallest_file(options, rest):
            with pytest.raises(ValueError, match="below the smallest file"):
                allocate_bits(options, rest, budget)
            continue
        chosen = allocate_bits(options, rest, budget, granularity=1)
        picked = [next(o for o in options[n] if o.bits == chosen[n]) for n in options]
        assert allocated_bytes(options, rest, chosen) == rest + sum(o.bytes for o in picked) <= budget
        feasible = [c for c in itertools.product(*options.values()) if rest + sum(o.bytes for o in c) <= budget]
        assert sum(o.cost for o in picked) == pytest.approx(min(sum(o.cost for o in c) for c in feasible))
    with pytest.raises(ValueError, match="below the smallest file"):
        allocate_bits(options, rest, smallest_file(options, rest) - 1)


def test_budget_costs_scaled_by_each_layers_measured_kl():
    model = tiny_model()
    with torch.no_grad():
        model[3].weight.mul_(20)  # confident logits: clustering costs real KL
    images = torch.randint(0, 256, (32, 3, 8, 8), dtype=torch.uint8)
    names = ["0.weight", "3.weight"]
    # Predicted costs that rank the layers the wrong way round, and (below) a layer whose
    # cost at the reference width is 0: it takes the other layer's factor (the median).
    options = {"0.weight": [LayerBits("0.weight", 2, 100, 40.0), LayerBits("0.weight", 4, 200, 10.0)],
               "3.weight": [LayerBits("3.weight", 2, 900, 0.4), LayerBits("3.weight", 4, 1800, 0.1)]}  # fmt: skip
    reference = cluster_at_widths(model, QuantConfig(bits=8, method="exact"), [2])[2]
    scaled, measured = scale_costs_by_measured_kl(model, options, reference, images, reference_bits=2)
    teacher = logits_of(model, images)
    for name in names:  # each KL with that layer alone clustered at 2 bits (the other one restored)
        alone = copy.deepcopy(model)
        with torch.no_grad():
            dict(alone.named_parameters())[name].copy_(dict(reference.named_parameters())[name])
            expected = float(kl_divergence(teacher, logits_of(alone, images)).mean())
        assert measured[name] == pytest.approx(expected, rel=1e-5) and expected > 0
        at = {o.bits: o for o in scaled[name]}
        assert at[2].cost == pytest.approx(measured[name])  # cost at the reference width = its measured KL
        assert at[4].cost == pytest.approx(measured[name] / 4)  # the layer's own ratios kept
        assert [(o.bits, o.bytes) for o in scaled[name]] == [(o.bits, o.bytes) for o in options[name]]
    assert measured["3.weight"] > measured["0.weight"]  # the classifier matters more, whatever was predicted
    assert torch.equal(logits_of(model, images), teacher)  # the model itself untouched
    options["0.weight"][0] = LayerBits("0.weight", 2, 100, 0.0)
    scaled, measured = scale_costs_by_measured_kl(model, options, reference, images, reference_bits=2)
    assert scaled["0.weight"][1].cost == pytest.approx(10.0 * measured["3.weight"] / 0.4)
    with pytest.raises(ValueError, match="reference width 3"):
        scale_costs_by_measured_kl(model, options, reference, images, reference_bits=3)


def test_width_copies_are_reassigned_and_costed_as_given():
    from sqz.models import build_model

    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)  # the encoder sizes sqz's own architectures
    prune_(model, PruneConfig(mode="density", amount=0.2))
    quant = QuantConfig(bits=8, method="exact")
    seen = []

    def halve(copy_, shared):  # a stand-in re-assignment: every weight's value halved
        seen.append(sorted(shared))
        with torch.no_grad():
            for p in copy_.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)

    copies = cluster_at_widths(model, quant, [3, 2], assign=halve)
    names = sorted(n for n, p in model.named_parameters() if p.dim() > 1)
    assert sorted(copies) == [2, 3] and seen == [names] * 2
    plain, rest = layer_bit_options(model, quant, [2, 3])
    halved, rest_halved = layer_bit_options(model, quant, [2, 3], clustered=copies)
    weights = dict(model.named_parameters())
    for name in names:
        assert [o.bits for o in halved[name]] == [2, 3]
        for option in halved[name]:
            expected = float(((dict(copies[option.bits].named_parameters())[name] - weights[name]) ** 2).sum().detach())
            assert option.cost == pytest.approx(expected)
        assert [o.cost for o in halved[name]] != [o.cost for o in plain[name]]
    assert rest > 0 and rest_halved > 0


def test_folder_calibration_splits_by_file(tmp_path):
    from torchvision.io import encode_png

    for i in range(12):
        image = torch.randint(0, 255, (3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        (tmp_path / f"img{i}.png").write_bytes(encode_png(image).numpy().tobytes())
    (tmp_path / "notes.txt").write_text("not an image")
    sets = calibration_sets(str(tmp_path), image_size=16)
    assert len(sets.calibration) + len(sets.held_out) == 12
    assert sets.calibration.shape[1:] == (3, 16, 16) and sets.calibration.dtype == torch.uint8
    with pytest.raises(ValueError, match="--calibrate: unknown source"):
        calibration_sets(str(tmp_path / "missing"))


def test_quant_config_refuses_bad_options():
    with pytest.raises(ValueError, match="distill_steps"):
        QuantConfig(distill_steps=-1)
    with pytest.raises(ValueError, match="weighting"):
        QuantConfig(weighting="hessian")
    with pytest.raises(ValueError, match="distill_lr"):
        QuantConfig(distill_lr=0.0)
    with pytest.raises(ValueError, match="--budget-kl-images: must be >= 0"):
        ImportOptions(budget_kl_images=-1)
    with pytest.raises(ValueError, match="--budget-kl-images: needs --calibrate and --size-budget"):
        ImportOptions(bits=6, calibrate="photos", budget_kl_images=96)


@needs_release
@pytest.mark.parametrize("extra, message", [
    (["--bits", "6", "--calibrate", "nowhere"], "--calibrate: unknown source"),
    (["--size-budget", "100000", "--calibrate", "photos"], "--size-budget: 100,000 bytes is below the smallest file"),
    (["--size-budget", "430000", "--budget-kl-images", "96"], "--budget-kl-images: needs --calibrate and --size-budget"),
    (["--bits", "6", "--distill-steps", "3"], "need --calibrate"),
    (["--bits", "6", "--assign", "gptq"], "need --calibrate"),
    (["--bits", "6", "--calibrate", "photos", "--distill-steps", "-2"], "--distill-steps"),
    (["--bits", "6", "--calibrate", "photos", "--confident", "1.5"], "--confident: the dense top-1 probability threshold must lie in (0, 1)"),
    (["--bits", "6", "--calibrate", "photos", "--confident", "0"], "--confident: the dense top-1 probability threshold must lie in (0, 1)"),
    (["--size-budget", "430000", "--calibrate", "photos", "--distill-steps", "4"], "--allocator measured: the file is assembled"),
    (["--size-budget", "430000", "--calibrate", "photos", "--allocator", "ilp"], "--allocator: invalid choice"),
])  # fmt: skip
def test_import_dc_refuses_bad_options_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "out.sqz"
    try:
        code = main(["import-dc", RELEASED, str(out), *extra])
    except SystemExit as exc:  # argparse's own refusals
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


@needs_release
@pytest.mark.slow
def test_import_dc_calibrated_writes_fidelity(tmp_path, capsys):
    out = tmp_path / "released6.sqz"
    run = tmp_path / "run"
    # 8 calibration crops: every calibrated stage runs (Fisher weighting, GPTQ assignment,
    # distillation), each on a quarter of the forward/backward passes 32 cost; the
    # fidelity is still measured on all the held-out photos.
    assert main(["import-dc", RELEASED, str(out), "--bits", "6", "--calibrate", "photos", "--calibration-images", "8",
                 "--distill-steps", "2", "--run", str(run)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "top-1 agreement" in printed and "on confident crops (dense top-1 >= 0.5" in printed
    (row,) = metrics.read_table(str(run), "fidelity").to_pylist()
    assert row["images"] > 100 and 0 < row["top1_agreement"] <= 100 and row["kl"] > 0
    assert row["confident_threshold"] == 0.5 and 0 < row["confident_images"] < row["images"]
    assert 0 <= row["near_tie_flips"] <= min(row["flips"], row["near_tie_images"])


@pytest.mark.slow
@pytest.mark.parametrize("assign", ["nearest", "gptq"])
def test_trial_with_fisher_weighting_and_distillation(tmp_path, assign):
    from safetensors.torch import save

    from sqz.compress.codec import decode
    from sqz.config import DataConfig
    from sqz.models import build_model
    from sqz.trial import TrialSpec, compress_and_evaluate

    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10)
    baseline = save({k: v.contiguous() for k, v in model.state_dict().items()})
    quant = QuantConfig(bits=3, weighting="fisher", distill_steps=3, calibration_batches=2, finetune_epochs=0, assign=assign)
    spec = TrialSpec(prune=PruneConfig(mode="std", amount=0.8), quant=quant, retrain_epochs=0, retrain_lr=1e-4)
    url = str(tmp_path / "t.sqz")
    row = compress_and_evaluate(baseline=baseline, arch={"name": "squeezenet_small", "kwargs": {"num_classes": 10}},
                                data=DataConfig(url="digits"), spec=spec, model_url=url, run_id="r")  # fmt: skip
    assert row["size_bytes"] == os.path.getsize(url) and 0 <= row["top1"] <= 100
    original = dict(model.named_parameters())
    for name, weight in decode(open(url, "rb").read()).named_parameters():
        if weight.dim() > 1:
            kept = original[name].abs() > 0.8 * original[name].std()  # pruned at q x std, zeros kept through distillation
            assert torch.equal(weight != 0, kept), name
            assert torch.unique(weight[weight != 0]).numel() <= 8, name


# ---------------------------------------------------------------- the measured allocator


class KnownCosts:
    """A stand-in for ``KLProbe`` whose KL is a known function of the widths in place:
    the sum of ``cost[layer][width]`` (each copy's weights hold its width as their value)."""

    def __init__(self, cost: dict[str, dict[int, float]]) -> None:
        self.cost, self.width = cost, {name: max(c) for name, c in cost.items()}

    def set_weights(self, weights):
        for name, w in weights.items():
            self.width[name] = int(w.flatten()[0])

    def total(self, width):
        return sum(self.cost[n][b] for n, b in width.items())

    def each_change(self, changes):
        out = {n: self.total({**self.width, n: int(w.flatten()[0])}) for n, w in changes.items()}
        return out, self.total(self.width)

    def whole(self):
        return self.total(self.width), 100.0


def width_copies(names, widths):
    """Copies of a two-layer model whose every weight at width b equals b."""
    dense = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=False))
    copies = {}
    for b in widths:
        m = copy.deepcopy(dense)
        with torch.no_grad():
            for p in m.parameters():
                p.fill_(float(b))
        copies[b] = m
    return dense, copies


def test_measured_allocator_fits_the_budget_and_takes_the_cheapest_bits_first():
    from sqz.allocate import allocate_measured

    names = ["0.weight", "1.weight"]
    dense, copies = width_copies(names, (4, 6, 8))
    # Layer 0 is cheap to narrow, layer 1 dear; both save the same bytes per width.
    options = {n: [LayerBits(n, b, 100 * b, 0.0) for b in (4, 6, 8)] for n in names}
    cost = {"0.weight": {4: 0.01, 6: 0.001, 8: 0.0}, "1.weight": {4: 1.0, 6: 0.1, 8: 0.0}}
    probe, check = KnownCosts(cost), KnownCosts(cost)
    choice = allocate_measured(dense, copies, options, 0, 1400, probe, check)  # 1,600 at 8 bits: 200 B to save
    assert choice.bits == {"0.weight": 6, "1.weight": 8} and choice.bytes == 1400 and choice.fallback is None
    choice = allocate_measured(dense, copies, options, 0, 1000, KnownCosts(cost), KnownCosts(cost))
    assert choice.bits == {"0.weight": 4, "1.weight": 6} and choice.bytes <= 1000
    with pytest.raises(ValueError, match="below the smallest file"):
        allocate_measured(dense, copies, options, 0, 799, KnownCosts(cost), KnownCosts(cost))


@pytest.mark.parametrize("budget", [900, 1000, 1100, 1250, 1400])
def test_measured_allocator_never_returns_worse_than_a_uniform_width_at_no_more_bytes(budget):
    from sqz.allocate import allocate_measured

    names = ["0.weight", "1.weight"]
    dense, copies = width_copies(names, (4, 6, 8))
    options = {n: [LayerBits(n, b, 100 * b + (20 if n == "0.weight" else 0), 0.0) for b in (4, 6, 8)] for n in names}
    # The probe misjudges: it sees layer 0 as free, the check (other crops) sees it dear at
    # 4 bits, and a uniform width is then better on the check than the greedy's mix.
    probe = KnownCosts({"0.weight": {4: 0.0, 6: 0.0, 8: 0.0}, "1.weight": {4: 3.0, 6: 1.0, 8: 0.0}})
    truth = {"0.weight": {4: 5.0, 6: 0.2, 8: 0.0}, "1.weight": {4: 3.0, 6: 1.0, 8: 0.0}}
    choice = allocate_measured(dense, copies, options, 0, budget, probe, KnownCosts(truth), min_block_bytes=100)
    assert choice.bytes <= budget
    got = sum(truth[n][b] for n, b in choice.bits.items())
    assert choice.kl == pytest.approx(got)
    for b in (4, 6, 8):
        uniform_bytes = sum(100 * b + (20 if n == "0.weight" else 0) for n in names)
        if uniform_bytes <= choice.greedy["bytes"]:
            assert got <= sum(truth[n][b] for n in names) + 1e-12
    if choice.fallback is not None:
        assert set(choice.bits.values()) == {choice.fallback} and f"fell back to uniform {choice.fallback} bits" in choice.summary()
    if budget == 1250:  # the greedy takes layer 0 to 4 bits (free on the probe): uniform 6 bits is better
        assert choice.greedy["kl"] == pytest.approx(5.0) and choice.fallback == 6 and choice.kl == pytest.approx(1.2)


def test_kl_probe_reruns_only_the_tail_and_matches_whole_forwards():
    from sqz.allocate import KLProbe
    from sqz.models import build_model

    torch.manual_seed(0)
    model = build_model("squeezenet_small", num_classes=10).eval()
    with torch.no_grad():
        model.classifier[1].weight.mul_(30)  # confident logits: changes cost real KL
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    prepare = lambda x: x.float() / 255  # noqa: E731
    probe = KLProbe(model, images, prepare=prepare, batch_size=4)
    assert len(probe.stages) > 2  # the staged path, not the whole-model fallback
    names = ["features.0.weight", "features.3.expand3x3.weight", "classifier.1.weight"]
    changes = {n: torch.randn_like(dict(model.named_parameters())[n]) * 0.1 for n in names}
    measured, base = probe.each_change(changes)
    assert base == pytest.approx(0.0, abs=1e-6)
    teacher = model(prepare(images))
    for name in names:
        alone = copy.deepcopy(model)
        with torch.no_grad():
            dict(alone.named_parameters())[name].copy_(changes[name])
            expected = float(kl_divergence(teacher, alone(prepare(images))).mean())
        assert measured[name] == pytest.approx(expected, rel=1e-4, abs=1e-7) and expected > 0
