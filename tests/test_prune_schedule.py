"""Gradual (Zhu & Gupta cubic) pruning: targets reached exactly, zeros that stay zero,
bad schedules refused before any work."""

import pytest
import torch
from torch import nn

from sqz.compress.prune import GradualPruner, GradualSchedule, cubic_sparsity, density, prunable_parameters


def _tiny(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10))  # fmt: skip


def _steps(model, optimizer, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x, y = torch.randn(8, 3, 8, 8, generator=generator), torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def test_cubic_formula_matches_zhu_gupta():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3 at the update steps; held between them.
    kwargs = dict(final=0.8, initial=0.1, begin_step=5, ramp_steps=40, frequency=10)
    assert cubic_sparsity(4, **kwargs) == 0.0
    assert cubic_sparsity(5, **kwargs) == pytest.approx(0.1)
    assert cubic_sparsity(25, **kwargs) == pytest.approx(0.8 + (0.1 - 0.8) * 0.5**3)
    assert cubic_sparsity(29, **kwargs) == cubic_sparsity(25, **kwargs)
    assert cubic_sparsity(45, **kwargs) == pytest.approx(0.8)
    assert cubic_sparsity(1000, **kwargs) == pytest.approx(0.8)
    values = [cubic_sparsity(t, **kwargs) for t in range(5, 46)]
    assert values == sorted(values)  # monotone: masks only tighten


@pytest.mark.parametrize("optimizer_name", ["sgd", "adamw"])
def test_gradual_pruning_hits_each_layer_target_and_keeps_zeros(optimizer_name):
    from sqz import engine

    model = _tiny()
    names = list(prunable_parameters(model))
    targets = dict(zip(names, (0.5, 0.25, 0.4)))
    optimizer = engine.make_optimizer(model.parameters(), optimizer_name, lr=0.05, weight_decay=1e-3)
    pruner = GradualPruner(model, optimizer, GradualSchedule(targets, ramp_steps=24, frequency=4))
    params = prunable_parameters(model)
    seen_pruned = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in params.items()}
    densities = []
    for _ in range(30):
        _steps(model, optimizer, 1)
        for name, p in params.items():
            # Once cut, a weight is zero after every later step (no regrowth by momentum).
            assert torch.all(p[seen_pruned[name]] == 0), name
            seen_pruned[name] |= ~pruner.masks[name]
            assert torch.all(p[~pruner.masks[name]] == 0)
        densities.append(density(model))
    assert pruner.finished
    assert densities == sorted(densities, reverse=True) and densities[0] > densities[-1]
    for name, p in params.items():
        assert int(torch.count_nonzero(p)) == round(targets[name] * p.numel())  # exact per layer
    total = sum(p.numel() for p in params.values())
    assert density(model) == pytest.approx(sum(targets[n] * params[n].numel() for n in names) / total, abs=1e-3)
    pruner.remove()


def test_a_layer_can_be_pruned_away_entirely():
    # One-shot at a high threshold can empty a layer; its density 0 is a valid target.
    model = _tiny()
    name = next(iter(prunable_parameters(model)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, optimizer, GradualSchedule({name: 0.0}, ramp_steps=4, frequency=2))
    _steps(model, optimizer, 5)
    assert int(torch.count_nonzero(prunable_parameters(model)[name])) == 0 and pruner.finished


def test_gradual_pruning_is_gradual_not_one_shot():
    model = _tiny()
    name = next(iter(prunable_parameters(model)))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    pruner = GradualPruner(model, optimizer, GradualSchedule({name: 0.2}, ramp_steps=30, frequency=10))
    layer = prunable_parameters(model)[name]
    counts = []
    for _ in range(30):
        _steps(model, optimizer, 1)
        counts.append(int(pruner.masks[name].sum()))
    # Three updates of the cubic schedule (at steps 10, 20, 30): 1 - 0.8 (1 - (1 - k/3)^3).
    expected = [round((1 - 0.8 * (1 - (1 - k / 3) ** 3)) * layer.numel()) for k in (1, 2, 3)]
    assert [counts[9], counts[19], counts[29]] == expected
    assert counts[8] == layer.numel()  # nothing cut before the first update after t0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ramp_steps": 0, "frequency": 1}, "ramp_steps"),
        ({"ramp_steps": -5, "frequency": 1}, "ramp_steps"),
        ({"ramp_steps": 10, "frequency": 0}, "prune_frequency"),
        ({"ramp_steps": 10, "frequency": 11}, "longer than"),
        ({"ramp_steps": 10, "frequency": 2, "initial_sparsity": 1.0}, "initial_sparsity"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GradualSchedule({"0.weight": 0.5}, **kwargs)


def test_bad_targets_are_refused_before_any_change():
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="final_densities"):
        GradualPruner(model, optimizer, GradualSchedule({"nope.weight": 0.5}, ramp_steps=10, frequency=2))
    with pytest.raises(ValueError, match="final_densities"):
        GradualSchedule({"0.weight": 1.5}, ramp_steps=10, frequency=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize(
    "fields, message",
    [
        # 1 epoch of digits is 45 steps, a ramp of 22: a mask update every 100 never comes.
        ({"retrain_epochs": 1, "prune_frequency": 100}, "prune_frequency"),
        # Rewinding 400 steps of an 8-epoch (360-step) training goes past its start.
        ({"retrain_steps": 400, "lr_rewind": (1e-3, 8, 1.0)}, "rewind"),
    ],
)
def test_trial_refuses_options_that_do_not_fit_its_budget_before_any_work(tmp_path, fields, message):
    from safetensors.torch import save

    from sqz.config import DataConfig, PruneConfig, QuantConfig
    from sqz.models import build_model
    from sqz.trial import TrialSpec, compress_and_evaluate

    spec = TrialSpec(**{"prune": PruneConfig(mode="density", amount=0.5), "quant": QuantConfig(finetune_epochs=0),
                        "retrain_epochs": 0, "retrain_lr": 1e-4, "prune_schedule": "gradual", **fields})  # fmt: skip
    out = tmp_path / "t.sqz"
    with pytest.raises(ValueError, match=message) as info:
        compress_and_evaluate(baseline=save(build_model("squeezenet_small", num_classes=10).state_dict()),
                              arch={"name": "squeezenet_small", "kwargs": {"num_classes": 10}}, data=DataConfig(),
                              spec=spec, model_url=str(out), run_id="r")  # fmt: skip
    assert "\n" not in str(info.value) and not out.exists()


@pytest.mark.parametrize("fields", [{"retrain_steps": -1}, {"prune_schedule": "cubic"}, {"prune_ramp": 0.0},
                                    {"prune_frequency": 0}, {"lr_rewind": (0.0, 8, 1.0)}])  # fmt: skip
def test_bad_trial_specs_are_refused(fields):
    from sqz.config import PruneConfig, QuantConfig
    from sqz.trial import TrialSpec

    with pytest.raises(ValueError, match=next(iter(fields))):
        TrialSpec(prune=PruneConfig(), quant=QuantConfig(), retrain_epochs=1, retrain_lr=1e-4, **fields)


@pytest.mark.slow
def test_gradual_and_one_shot_trials_end_at_the_same_per_layer_density(tmp_path):
    # The gradual schedule takes one-shot's per-layer densities as its targets: same
    # sparsity, reached differently; the decoded .sqz file keeps exactly those zeros.
    from safetensors.torch import save

    from sqz.compress import decode
    from sqz.config import DataConfig, PruneConfig, QuantConfig
    from sqz.models import build_model
    from sqz.trial import TrialSpec, compress_and_evaluate

    torch.manual_seed(0)
    baseline = save(build_model("squeezenet_small", num_classes=10).state_dict())
    kept = {}
    for schedule in ("oneshot", "gradual"):
        spec = TrialSpec(prune=PruneConfig(mode="std", amount=0.8), quant=QuantConfig(bits=8, finetune_epochs=0),
                         retrain_epochs=0, retrain_lr=1e-4, retrain_steps=4, prune_schedule=schedule,
                         prune_frequency=1)  # fmt: skip
        url = str(tmp_path / f"{schedule}.sqz")
        compress_and_evaluate(baseline=baseline, arch={"name": "squeezenet_small", "kwargs": {"num_classes": 10}},
                              data=DataConfig(val_fraction=0.05), spec=spec, model_url=url, run_id="r")  # fmt: skip
        model = decode(open(url, "rb").read())
        kept[schedule] = {name: int(torch.count_nonzero(p)) for name, p in prunable_parameters(model).items()}
    assert kept["gradual"] == kept["oneshot"]


def test_dense_below_keeps_small_layers_whole_and_the_overall_density():
    # Small layers stay dense; the others are pruned harder so the model keeps `amount`.
    from sqz.compress.prune import compute_masks
    from sqz.config import PruneConfig

    model = _tiny()
    params = prunable_parameters(model)
    masks = compute_masks(model, PruneConfig(mode="density", amount=0.5, dense_below=500))
    small = [name for name, p in params.items() if p.numel() <= 500]
    assert small == ["0.weight", "6.weight"]  # 432 and 240 weights; the 3,456-weight conv is not
    assert all(bool(masks[name].all()) for name in small)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(p.numel() for p in params.values())
    assert kept == pytest.approx(0.5 * total, abs=2)
    assert int(masks["2.weight"].sum()) < 0.5 * params["2.weight"].numel()


def test_dense_below_refuses_a_density_the_small_layers_already_exceed():
    from sqz.compress.prune import compute_masks
    from sqz.config import PruneConfig

    with pytest.raises(ValueError, match="density: 0.1 keeps fewer weights") as info:
        compute_masks(_tiny(), PruneConfig(mode="density", amount=0.1, dense_below=500))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="dense_below"):
        PruneConfig(mode="density", amount=0.5, dense_below=-1)


@pytest.mark.parametrize("cls", ["TrialSpec", "SweepConfig"])
def test_an_unknown_retrain_loss_is_refused(cls):
    from sqz.config import PruneConfig, QuantConfig, SweepConfig
    from sqz.trial import TrialSpec

    with pytest.raises(ValueError, match="retrain_loss"):
        if cls == "TrialSpec":
            TrialSpec(prune=PruneConfig(), quant=QuantConfig(), retrain_epochs=1, retrain_lr=1e-4, retrain_loss="mse")
        else:
            SweepConfig(retrain_loss="mse")


def test_distillation_retraining_keeps_zeros_and_moves_toward_the_teacher():
    # "distill" retrains on KL to the unpruned model: pruned weights stay zero and the KL
    # to the teacher falls.
    import itertools

    from sqz.compress.prune import compute_masks
    from sqz.config import PruneConfig, QuantConfig
    from sqz.trial import TrialSpec, _retrain, distillation_loss

    torch.manual_seed(0)
    model = _tiny()
    teacher = _tiny()
    teacher.load_state_dict(model.state_dict())
    generator = torch.Generator().manual_seed(1)
    data = [(torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 10, (16,), generator=generator)) for _ in range(4)]
    masks = compute_masks(model, PruneConfig(mode="density", amount=0.3))

    def kl() -> float:
        with torch.no_grad():
            return float(sum(distillation_loss(model(x), teacher(x)) for x, _ in data))

    spec = TrialSpec(prune=PruneConfig(mode="density", amount=0.3), quant=QuantConfig(), retrain_epochs=0,
                     retrain_lr=3e-3, retrain_steps=80, retrain_loss="distill")  # fmt: skip
    pruned = _tiny()
    pruned.load_state_dict(model.state_dict())
    for name, p in prunable_parameters(pruned).items():
        p.data.mul_(masks[name])
    with torch.no_grad():
        before = float(sum(distillation_loss(pruned(x), teacher(x)) for x, _ in data))
    _retrain(model, spec, masks, data, itertools.repeat(None, 0), "cpu", None)
    for name, p in prunable_parameters(model).items():
        assert bool((p[~masks[name]] == 0).all()), name
    assert kl() < 0.5 * before
