"""Sweeps of a checkpoint: grid validation, per-layer trials, sensitivity, the per-layer
choice, resuming (in-process and after interrupting `sqz sweep`), ASHA, and `sqz report`."""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch.utils.data import DataLoader

from sqz import engine, metrics, sensitivity, storage
from sqz.cli import main
from sqz.compress import decode
from sqz.compress.prune import prunable_parameters, prune_
from sqz.config import DataConfig, PruneConfig, QuantConfig, SensitivityConfig, SweepConfig, config_to_dict
from sqz.data import load_split
from sqz.models import build_model
from sqz.runs import RunLayout
from sqz.trial import TrialSpec, compress_and_evaluate

ARCH = {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}
DATA = DataConfig(url="digits")


@pytest.fixture
def baseline_bytes(trained_baseline):
    """The session's trained digits baseline (tests/conftest.py), as safetensors bytes."""
    return trained_baseline.read_bytes()


def _model(baseline_bytes):
    from safetensors.torch import load

    model = build_model(ARCH["name"], **ARCH["kwargs"])
    model.load_state_dict(load(baseline_bytes))
    return model


def _layout(tmp_path, baseline_bytes, name="run"):
    layout = RunLayout(str(tmp_path / name))
    storage.write_bytes(layout.baseline_url, baseline_bytes)
    return layout


# ---------------------------------------------------------------- validation (no Ray)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"thresholds": ()}, "thresholds"),
        ({"bits": ()}, "bits"),
        ({"bits": (8, 0)}, "bits"),
        ({"bits": (9,)}, "bits"),
        ({"thresholds": (0.3, -0.1)}, "threshold"),
        ({"thresholds": (float("nan"),)}, "threshold"),
        ({"prune_mode": "density", "thresholds": (0.0,)}, "density"),
        ({"prune_mode": "density", "thresholds": (0.5, 1.5)}, "density"),
        ({"cpus_per_trial": 0}, "cpus_per_trial"),
        ({"gpus_per_trial": 1.5}, "gpus_per_trial"),
        ({"scheduler": "asha", "retrain_epochs": 0}, "asha"),
        ({"per_layer": True}, "per_layer"),
        ({"max_drops": (1.0,)}, "per_layer"),
        ({"per_layer": True, "size_budgets": (0,)}, "size_budgets"),
    ],
)
def test_invalid_sweep_configs_are_one_line_errors(kwargs, field):
    with pytest.raises(ValueError, match=field) as info:
        SweepConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "args, option",
    [
        (["--bits", "9"], "--bits"),
        (["--bits", ""], "--bits"),
        (["--thresholds=-0.5"], "--thresholds"),
        (["--prune-mode", "density", "--thresholds", "0.5,1.5"], "density"),
        (["--prune-mode", "density", "--thresholds", "0"], "density"),
        (["--max-drops", "1"], "--max-drops"),
        (["--checkpoint", "/no/such/model.safetensors"], "/no/such/model.safetensors"),
    ],
)
def test_cli_refuses_bad_grids_before_any_work(tmp_path, args, option, refused_in_process):
    argv = ["sweep", "--checkpoint", str(tmp_path / "m.safetensors"), "--storage", str(tmp_path / "runs"), *args]
    if args[0] == "--checkpoint":
        argv = ["sweep", *args, "--storage", str(tmp_path / "runs")]
    code, err = refused_in_process(argv)  # fails the test if the sweep's flow was reached
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_grid_points_are_unique_and_keep_grid_order():
    from sqz.distributed.sweep import grid_points

    points = grid_points(SweepConfig(thresholds=(0.6, 0.3, 0.6), bits=(8, 4, 8)))
    assert [p["trial_id"] for p in points] == ["std0.6-b8", "std0.6-b4", "std0.3-b8", "std0.3-b4"]


# ---------------------------------------------------------------- per-layer trial (no Ray)


def test_per_layer_trial_applies_each_layers_threshold_and_bits(tmp_path, baseline_bytes):
    layers = list(prunable_parameters(_model(baseline_bytes)))
    amounts = {name: (1.5 if i % 2 else 0.3) for i, name in enumerate(layers)}
    bits = {name: (2 if i % 3 == 0 else 6) for i, name in enumerate(layers)}
    spec = TrialSpec(prune=PruneConfig(mode="std", amount=0.0), quant=QuantConfig(bits=8, finetune_epochs=0, distill_steps=0),
                     retrain_epochs=0, retrain_lr=1e-4, layer_amounts=amounts, layer_bits=bits)  # fmt: skip
    url = str(tmp_path / "pl.sqz")
    row = compress_and_evaluate(baseline=baseline_bytes, arch=ARCH, data=DATA, spec=spec, model_url=url,
                                run_id="r", name="pl-test", target="drop<=1")  # fmt: skip
    assert row["trial_id"] == "pl-test" and row["target"] == "drop<=1" and row["bits"] == 6
    assert json.loads(row["layer_settings"]) == {n: {"threshold": amounts[n], "bits": bits[n]} for n in layers}
    assert row["size_bytes"] == os.path.getsize(url)
    decoded = dict(decode(open(url, "rb").read()).named_parameters())
    original = {n: p.detach() for n, p in _model(baseline_bytes).named_parameters()}
    for name in layers:
        weight = decoded[name].detach()
        assert torch.unique(weight[weight != 0]).numel() <= 2 ** bits[name], name
        # Pruned exactly where |w| <= q x std of that layer's own weights.
        expected_kept = original[name].abs() > amounts[name] * original[name].std()
        assert torch.equal(weight != 0, expected_kept), name


def test_per_layer_overrides_must_name_real_layers(tmp_path, baseline_bytes):
    spec = TrialSpec(prune=PruneConfig(amount=0.3), quant=QuantConfig(finetune_epochs=0, distill_steps=0), retrain_epochs=0,
                     retrain_lr=1e-4, layer_bits={"features.99.weight": 4})  # fmt: skip
    with pytest.raises(ValueError, match="unknown layer"):
        compress_and_evaluate(baseline=baseline_bytes, arch=ARCH, data=DATA, spec=spec,
                              model_url=str(tmp_path / "x.sqz"), run_id="r")  # fmt: skip


# ---------------------------------------------------------------- sensitivity core (no Ray)


def test_layer_curves_match_full_evaluation_and_leave_the_model_intact(baseline_bytes):
    model = _model(baseline_bytes)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = SensitivityConfig(thresholds=(0.0, 0.8, 2.0), bits=(6, 2), images=100)
    inputs, targets = sensitivity.fixed_subset(DATA, config.images)
    base = sensitivity.baseline_row(model, inputs, targets, run_id="r", prune_mode="std")
    layer = "features.9.expand3x3.weight"  # mid-network: exercises the cached prefix
    rows = sensitivity.layer_curves(model, layer, inputs, targets, config, run_id="r")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    prune_rows = {r["threshold"]: r for r in rows if r["kind"] == "prune"}
    assert prune_rows[0.0]["correct"] == base["correct"]  # nothing pruned, nothing lost
    assert prune_rows[0.0]["nonzero"] > prune_rows[0.8]["nonzero"] > prune_rows[2.0]["nonzero"]
    # The cached-prefix evaluation equals a full forward of an independently pruned copy.
    copy = _model(baseline_bytes).eval()
    prune_(torch.nn.Sequential(copy.get_submodule(layer.rsplit(".", 1)[0])), PruneConfig(amount=2.0))
    with torch.no_grad():
        correct = int((copy(inputs).argmax(1) == targets).sum())
    assert prune_rows[2.0]["correct"] == correct
    assert {r["bits"] for r in rows if r["kind"] == "bits"} == {6, 2}


def test_layer_sizes_are_real_bytes_that_shrink_with_bits_and_pruning(baseline_bytes):
    model = _model(baseline_bytes)
    config = SensitivityConfig(thresholds=(0.5, 1.5), bits=(8, 3))
    at = {(level, b): sensitivity.layer_sizes_at(model, level, b, config, run_id="r") for level in (0.5, 1.5) for b in (8, 3)}
    big = "features.12.expand3x3.weight"

    def size(level, b, layer=big):
        return next(r["size_bytes"] for r in at[(level, b)] if r["layer"] == layer)

    assert size(0.5, 8) > size(0.5, 3) and size(0.5, 8) > size(1.5, 8)
    for rows in at.values():
        file_row = next(r for r in rows if r["kind"] == "file")
        layer_total = sum(r["size_bytes"] for r in rows if r["kind"] == "size")
        assert 0 < file_row["size_bytes"] - layer_total < 0.25 * file_row["size_bytes"]  # header + biases


def _synthetic_table(rng, layers=3, n=50):
    """A sensitivity table with random drops and sizes, to check the choice against brute force."""
    config = SensitivityConfig(thresholds=(0.5, 1.0), bits=(8, 4), images=n)
    rows = [{"kind": "baseline", "layer": "", "prune_mode": "std", "correct": 45, "images": n}]
    for pair in itertools.product((0.5, 1.0), (8, 4)):
        rows.append({"kind": "file", "layer": "", "prune_mode": "std", "threshold": pair[0], "bits": pair[1],
                     "size_bytes": 0})  # fmt: skip
    for i in range(layers):
        layer = f"l{i}"
        for level in (0.5, 1.0):
            rows.append({"kind": "prune", "layer": layer, "prune_mode": "std", "threshold": level,
                         "correct": 45 - rng.randint(-1, 4), "images": n})  # fmt: skip
        for b in (8, 4):
            rows.append({"kind": "bits", "layer": layer, "prune_mode": "std", "bits": b,
                         "correct": 45 - rng.randint(0, 3), "images": n})  # fmt: skip
        for level, b in itertools.product((0.5, 1.0), (8, 4)):
            rows.append({"kind": "size", "layer": layer, "prune_mode": "std", "threshold": level, "bits": b,
                         "size_bytes": rng.randint(100, 1000)})  # fmt: skip
    overhead = 37
    for r in rows:
        if r["kind"] == "file":
            r["size_bytes"] = overhead + sum(s["size_bytes"] for s in rows if s["kind"] == "size"
                                             and (s["threshold"], s["bits"]) == (r["threshold"], r["bits"]))  # fmt: skip
    return rows, config, overhead


def _brute_force(rows, layers, overhead):
    base = next(r for r in rows if r["kind"] == "baseline")["correct"]
    combos = []
    for pick in itertools.product(list(itertools.product((0.5, 1.0), (8, 4))), repeat=len(layers)):
        drop = size = 0
        for layer, (level, b) in zip(layers, pick):
            drop += max(0, base - next(r["correct"] for r in rows if r["kind"] == "prune" and r["layer"] == layer and r["threshold"] == level))
            drop += max(0, base - next(r["correct"] for r in rows if r["kind"] == "bits" and r["layer"] == layer and r["bits"] == b))
            size += next(r["size_bytes"] for r in rows if r["kind"] == "size" and r["layer"] == layer
                         and r["threshold"] == level and r["bits"] == b)  # fmt: skip
        combos.append((drop, size + overhead))
    return combos


@pytest.mark.parametrize("seed", range(6))
def test_per_layer_choice_is_the_exact_optimum(seed):
    rng = random.Random(seed)
    rows, config, overhead = _synthetic_table(rng)
    combos = _brute_force(rows, ["l0", "l1", "l2"], overhead)
    for max_drop in (0.0, 4.0, 10.0, 30.0):  # points of 50 images: 2 points = 1 image
        feasible = [size for drop, size in combos if drop <= max_drop * 50 / 100]
        if not feasible:
            with pytest.raises(ValueError, match="max_drops"):
                sensitivity.choose_layer_settings(rows, config, max_drop=max_drop)
            continue
        choice = sensitivity.choose_layer_settings(rows, config, max_drop=max_drop)
        assert choice.predicted_bytes == min(feasible)
        assert choice.predicted_drop <= max_drop
    sizes = sorted(size for _, size in combos)
    for budget in (sizes[0], sizes[len(sizes) // 2], sizes[-1]):
        choice = sensitivity.choose_layer_settings(rows, config, size_budget=budget)
        assert choice.predicted_drop * 50 / 100 == pytest.approx(min(drop for drop, size in combos if size <= budget))
        assert choice.predicted_bytes <= budget
    with pytest.raises(ValueError, match="below the smallest file"):
        sensitivity.choose_layer_settings(rows, config, size_budget=sizes[0] - 1)


# ---------------------------------------------------------------- Ray Tune sweeps


def _mtimes(paths):
    return {p: os.stat(p).st_mtime_ns for p in paths}


def test_sweep_refuses_a_density_the_checkpoints_model_cannot_reach(tmp_path, refused_in_process):
    from safetensors.torch import save_file

    checkpoint = tmp_path / "m.safetensors"
    save_file(build_model(ARCH["name"], **ARCH["kwargs"]).state_dict(), str(checkpoint))
    code, err = refused_in_process(["sweep", "--checkpoint", str(checkpoint), "--storage", str(tmp_path / "runs"),
                                    "--prune-mode", "density", "--thresholds", "0.5,0.05", "--bits", "4"])  # fmt: skip
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "--thresholds: density 0.05 keeps fewer weights than squeezenet_small's" in lines[0], err
    assert "use a density above 0.096 or lower --dense-below" in lines[0], err
    assert not (tmp_path / "runs").exists()


def _tune_trial_dirs(layout):
    root = os.path.join(layout.run_url, "tune", "ray-tune")
    return [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))]


def test_a_restarted_trial_whose_row_exists_reports_it_and_does_not_run_again(tmp_path, monkeypatch):
    """Tune restarts a trial whose node died, also one that wrote its sweep_trials row just
    before: that restart reports the row it finds and writes nothing; without a row it runs."""
    from sqz.distributed import sweep as sweep_module

    class Ran(Exception):
        pass

    def compress_and_evaluate(**kwargs):
        raise Ran(kwargs["name"])

    reports = []
    # _trial sets torch's threads to the trial's CPUs (1): in this pytest process that would
    # leave every later test on one thread.
    monkeypatch.setattr(sweep_module.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(sweep_module, "compress_and_evaluate", compress_and_evaluate)
    monkeypatch.setattr(sweep_module.tune, "report", reports.append)
    layout = RunLayout(str(tmp_path / "run"))
    sweep_cfg = SweepConfig(thresholds=(0.5,), bits=(6,), retrain_epochs=0, quant=QuantConfig(finetune_epochs=0, distill_steps=0))
    point = sweep_module.grid_points(sweep_cfg)[0]
    context = {"sweep": config_to_dict(sweep_cfg), "data": config_to_dict(DATA), "arch": ARCH,
               "run_url": layout.run_url, "lr_rewind": None}  # fmt: skip

    def run_trial():
        sweep_module._trial({"trial_id": point["trial_id"]}, baseline=b"", points={point["trial_id"]: point}, context=context)

    with pytest.raises(sweep_module.TrialFailed, match=f"Ran: {point['trial_id']}"):
        run_trial()  # no row yet: the trial does its work (and says in one line that it failed)
    assert reports == []

    row = {name: None for name in metrics.SCHEMAS["sweep_trials"].names}
    row.update(run_id=layout.run_id, trial_id=point["trial_id"], threshold=0.5, bits=6, size_bytes=1234, top1=97.5,
               top5=99.0, model_url=layout.model_url(point["trial_id"]))  # fmt: skip
    metrics.write_rows(layout.run_url, "sweep_trials", [row], writer_id=point["trial_id"])
    before = _mtimes(p for p in tmp_path.rglob("*") if p.is_file())
    run_trial()
    assert len(reports) == 1 and reports[0]["size_bytes"] == 1234 and reports[0]["top1"] == 97.5
    assert _mtimes(p for p in tmp_path.rglob("*") if p.is_file()) == before  # nothing written again


def test_a_failing_trial_raises_one_line_and_keeps_its_traceback_in_the_run(tmp_path, monkeypatch):
    from sqz.distributed import sweep as sweep_module

    def compress_and_evaluate(**kwargs):
        raise ValueError(f"density: something about {kwargs['name']}\nand a second line")

    monkeypatch.setattr(sweep_module.torch, "set_num_threads", lambda n: None)  # as in the test above
    monkeypatch.setattr(sweep_module, "compress_and_evaluate", compress_and_evaluate)
    layout = RunLayout(str(tmp_path / "run"))
    sweep_cfg = SweepConfig(thresholds=(0.5,), bits=(6,), retrain_epochs=0, quant=QuantConfig(finetune_epochs=0, distill_steps=0))
    point = sweep_module.grid_points(sweep_cfg)[0]
    context = {"sweep": config_to_dict(sweep_cfg), "data": config_to_dict(DATA), "arch": ARCH,
               "run_url": layout.run_url, "lr_rewind": None}  # fmt: skip
    with pytest.raises(sweep_module.TrialFailed) as failed:
        sweep_module._trial({"trial_id": point["trial_id"]}, baseline=b"", points={point["trial_id"]: point}, context=context)
    error_url = layout.error_url(point["trial_id"])
    assert str(failed.value) == f"ValueError: density: something about std0.5-b6 (traceback: {error_url})"
    assert failed.value.__cause__ is None  # Tune's error.txt gets the line; the traceback is in the file
    text = storage.read_bytes(error_url).decode()
    assert text.splitlines()[0] == "ValueError: density: something about std0.5-b6"
    assert "Traceback (most recent call last)" in text and "in compress_and_evaluate" in text and "a second line" in text


@pytest.mark.slow
def test_failed_trials_say_so_in_one_line_each_not_in_ray_tracebacks(ray_local, tmp_path, baseline_bytes, caplog, capfd, monkeypatch):
    """A trial that fails inside Ray (here: a density below what the dense small layers hold,
    which the CLI and flows refuse before, but sweep() as a library does not) logs one line
    per trial, after Tune's retries, naming its error and its traceback's file; Tune's own
    console output (a traceback per attempt) is gone."""
    from sqz.distributed import sweep as sweep_module

    monkeypatch.setattr(sweep_module, "TRIAL_RETRIES", 1)  # one retry still exercises on_trial_recover
    caplog.set_level(logging.INFO, logger="sqz")
    layout = _layout(tmp_path, baseline_bytes)
    sweep_cfg = SweepConfig(thresholds=(0.05,), bits=(8, 4), prune_mode="density", retrain_epochs=0,
                            quant=QuantConfig(finetune_epochs=0, distill_steps=0))  # fmt: skip
    capfd.readouterr()
    with pytest.raises(sweep_module.TrialsFailed) as failed:
        sweep_module.sweep(layout, sweep_cfg, DATA, ARCH)
    console = "".join(capfd.readouterr())
    assert str(failed.value).startswith("2 of 2 sweep trial(s) failed (density0.05-b4, density0.05-b8)")
    assert "\n" not in str(failed.value)
    lines = [r.getMessage() for r in caplog.records if r.name == "sqz.sweep" and r.levelno >= logging.ERROR]
    assert len(lines) == 2, lines  # one per trial, not one per attempt
    for name in ("density0.05-b4", "density0.05-b8"):
        (line,) = [text for text in lines if text.startswith(f"trial {name} failed: ValueError: density: 0.05 keeps fewer")]
        assert line.endswith(f"(traceback: {layout.error_url(name)})")
        text = storage.read_bytes(layout.error_url(name)).decode()
        assert "Traceback (most recent call last)" in text and "in layer_thresholds" in text
    assert "Traceback" not in console and "errored after" not in console and "Trials did not complete" not in console, console


@pytest.mark.slow
def test_sweep_extended_grid_runs_only_the_missing_trials(ray_local, tmp_path, baseline_bytes, caplog):
    import ray

    from sqz.distributed.sweep import sweep

    caplog.set_level(logging.INFO, logger="sqz")

    layout = _layout(tmp_path, baseline_bytes)
    common = dict(bits=(8, 4), retrain_epochs=0, quant=QuantConfig(finetune_epochs=0, distill_steps=0), max_concurrent=2)
    first = sweep(layout, SweepConfig(thresholds=(0.5,), **common), DATA, ARCH)
    assert sorted(r["trial_id"] for r in first) == ["std0.5-b4", "std0.5-b8"]
    files = [r["model_url"] for r in first] + [os.path.join(layout.run_url, "metrics", "sweep_trials", f"{r['trial_id']}.parquet") for r in first]
    stamps = _mtimes(files)

    caplog.clear()
    second = sweep(layout, SweepConfig(thresholds=(0.5, 1.5), **common), DATA, ARCH)
    assert "2 trial(s) to run, 2 already done" in caplog.text
    assert sorted(r["trial_id"] for r in second) == ["std0.5-b4", "std0.5-b8", "std1.5-b4", "std1.5-b8"]
    assert _mtimes(files) == stamps  # finished trials untouched
    # Each grid point ran exactly once across both sweeps (one Tune trial folder each).
    names = [d.split("_")[0] for d in _tune_trial_dirs(layout)]
    assert sorted(names) == sorted(r["trial_id"] for r in second)
    for row in second:
        assert row["size_bytes"] == os.path.getsize(row["model_url"])
        assert row["node_id"] == ray.get_runtime_context().get_node_id()  # the one local node
    assert {r["trial_id"]: r["density"] for r in second}["std1.5-b8"] < {r["trial_id"]: r["density"] for r in second}["std0.5-b8"]

    caplog.clear()
    sweep(layout, SweepConfig(thresholds=(1.5, 0.5), **common), DATA, ARCH)
    assert "all 4 trial(s) already done" in caplog.text
    assert len(metrics.read_table(layout.run_url, "sweep_trials")) == 4


@pytest.mark.slow
def test_asha_stops_a_losing_retrain_and_a_rerun_does_not_restart_it(ray_local, tmp_path, baseline_bytes, caplog):
    from sqz.distributed.sweep import sweep

    layout = _layout(tmp_path, baseline_bytes)
    # One trial at a time, in grid order: 3.0 x std prunes ~99.7% of every layer, so its
    # top-1 after the first retrain epoch is far below the two before it.
    config = SweepConfig(thresholds=(0.3, 0.5, 3.0), bits=(8,), retrain_epochs=1, quant=QuantConfig(finetune_epochs=0, distill_steps=0),
                         max_concurrent=1, scheduler="asha")  # fmt: skip
    rows = sweep(layout, config, DATA, ARCH)
    stopped = {r["trial_id"]: r for r in metrics.read_table(layout.run_url, "sweep_stopped").to_pylist()}
    assert "std3-b8" in stopped and stopped["std3-b8"]["retrain_epochs_done"] == 1
    assert not os.path.exists(layout.model_url("std3-b8"))  # stopped before quantization
    assert {r["trial_id"] for r in rows} | set(stopped) == {"std0.3-b8", "std0.5-b8", "std3-b8"}
    assert not {r["trial_id"] for r in rows} & set(stopped)
    caplog.set_level(logging.INFO, logger="sqz")
    caplog.clear()
    sweep(layout, config, DATA, ARCH)
    out = caplog.text
    assert "all 3 trial(s) already done" in out and "stopped early by ASHA" in out


@pytest.mark.slow
def test_per_layer_sweep_measures_sensitivity_once_and_meets_its_budget(ray_local, tmp_path, baseline_bytes, caplog):
    from sqz.distributed.sweep import sweep

    layout = _layout(tmp_path, baseline_bytes)
    config = SweepConfig(thresholds=(0.5, 1.5), bits=(8, 4), retrain_epochs=0, quant=QuantConfig(finetune_epochs=0, distill_steps=0),
                         per_layer=True, max_drops=(5000.0, 9000.0), sensitivity_images=64)  # fmt: skip
    rows = sweep(layout, config, DATA, ARCH)
    table = metrics.read_table(layout.run_url, "sensitivity").to_pylist()
    layers = set(prunable_parameters(_model(baseline_bytes)))
    assert {r["layer"] for r in table if r["kind"] == "prune"} == layers
    assert {(r["threshold"], r["bits"]) for r in table if r["kind"] == "file"} == {(0.5, 8), (0.5, 4), (1.5, 8), (1.5, 4)}
    # Both targets allow any drop (26 layers sum to at most 2,600 points), so both pick the
    # smallest file: one shared trial.
    assert len(rows) == 1
    row = rows[0]
    settings = json.loads(row["layer_settings"])
    assert all(s == {"threshold": 1.5, "bits": 4} for s in settings.values())
    smallest = next(r["size_bytes"] for r in table if r["kind"] == "file" and (r["threshold"], r["bits"]) == (1.5, 4))
    assert abs(row["size_bytes"] - smallest) < 0.02 * smallest  # predicted bytes are the file's
    caplog.set_level(logging.INFO, logger="sqz")
    caplog.clear()
    sweep(layout, config, DATA, ARCH)
    out = caplog.text
    assert "all 26 layer(s) and sizes already measured" in out and "all 1 trial(s) already done" in out


@pytest.mark.slow
@pytest.mark.gpu
def test_trials_share_a_gpu(ray_local, tmp_path, baseline_bytes):
    from sqz.distributed.sweep import sweep

    layout = _layout(tmp_path, baseline_bytes)
    config = SweepConfig(thresholds=(0.5,), bits=(8, 4), retrain_epochs=1, quant=QuantConfig(finetune_epochs=1),
                         gpus_per_trial=0.5)  # fmt: skip
    rows = sweep(layout, config, DATA, ARCH)
    val = DataLoader(load_split(DATA, "val"), batch_size=256)
    assert len(rows) == 2
    for row in rows:  # the file decoded on the CPU scores what the GPU trial measured
        assert engine.evaluate(decode(open(row["model_url"], "rb").read()), val).top1 == pytest.approx(row["top1"], abs=0.3)


@pytest.mark.slow
@pytest.mark.integration
def test_interrupted_sqz_sweep_reruns_only_the_missing_trials(tmp_path, baseline_bytes, ray_address):
    checkpoint = tmp_path / "baseline.safetensors"
    checkpoint.write_bytes(baseline_bytes)
    storage_root = tmp_path / "runs"
    # Against the session's Ray: interrupting the driver ends its job, not the cluster.
    args = [sys.executable, "-m", "sqz.cli", "sweep", "--checkpoint", str(checkpoint), "--storage", str(storage_root),
            "--ray-address", ray_address, "--run-id", "interrupted", "--thresholds", "0.2,0.6", "--bits", "8,4", "--retrain-epochs", "0",
            "--finetune-epochs", "0", "--distill-steps", "0", "--max-concurrent", "1"]  # fmt: skip
    rows_dir = storage_root / "interrupted" / "metrics" / "sweep_trials"
    # Interrupt the driver (Ctrl+C) once two trials have written their rows.
    driver = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (rows_dir.exists() and len([p for p in os.listdir(rows_dir) if p.endswith(".parquet")]) >= 2):
            assert driver.poll() is None, driver.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no two trials within 300 s"
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        out, _ = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the group this test started
            driver.wait()
    assert driver.returncode != 0, out[-3000:]
    assert "sweep interrupted" in out, out[-3000:]
    finished = sorted(p.removesuffix(".parquet") for p in os.listdir(rows_dir) if p.endswith(".parquet"))
    assert 2 <= len(finished) < 4
    layout = RunLayout(str(storage_root / "interrupted"))
    stamps = _mtimes([layout.model_url(name) for name in finished])
    rows_before = {name: metrics.read_writer_rows(layout.run_url, "sweep_trials", writer_id=name) for name in finished}
    names = [d.split("_")[0] for d in _tune_trial_dirs(layout)]
    runs_before = {name: names.count(name) for name in finished}

    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    todo = re.search(r"(\d+) trial\(s\) to run, (\d+) already done", again.stdout + again.stderr)
    assert todo and int(todo.group(2)) == len(finished) and int(todo.group(1)) == 4 - len(finished)
    assert _mtimes(stamps) == stamps  # nothing finished was recomputed
    # Their rows are unchanged, now read from the table's compacted file (the sweep compacts at its end).
    assert {name: metrics.read_writer_rows(layout.run_url, "sweep_trials", writer_id=name) for name in finished} == rows_before
    assert os.listdir(rows_dir) == [metrics.COMPACTED]
    names = [d.split("_")[0] for d in _tune_trial_dirs(layout)]
    assert {name: names.count(name) for name in finished} == runs_before == {name: 1 for name in finished}
    table = metrics.read_table(layout.run_url, "sweep_trials").to_pylist()
    assert sorted(r["trial_id"] for r in table) == sorted(f"std{t}-b{b}" for t in ("0.2", "0.6") for b in (8, 4))
    assert "Pareto frontier" in again.stdout and (storage_root / "interrupted" / "report" / "pareto.png").exists()


# ---------------------------------------------------------------- sqz report


def _fake_run(tmp_path, baseline_bytes, kind):
    run = tmp_path / kind
    layout = RunLayout(str(run))
    storage.write_bytes(layout.baseline_url, baseline_bytes)
    trials = [("std0.3-b8", 0.3, 8, 0.7, 400_000, 97.0), ("std0.6-b8", 0.6, 8, 0.45, 300_000, 96.8),
              ("std0.9-b6", 0.9, 6, 0.37, 200_000, 96.3), ("std0.6-b6", 0.6, 6, 0.45, 250_000, 95.0)]  # fmt: skip
    for name, threshold, bits, density, size, top1 in trials:
        metrics.write_rows(layout.run_url, "sweep_trials", [{
            "run_id": kind, "trial_id": name, "prune_mode": "std", "threshold": threshold, "bits": bits,
            "density": density, "size_bytes": size, "top1": top1, "top5": 99.0, "ratio_vs_alexnet_32bit": 1.0,
            "model_url": "", "wall_s": 1.0}], writer_id=name)  # fmt: skip
    if kind == "sweep":
        manifest = {"run_id": kind, "kind": "sweep", "arch": ARCH}
        metrics.write_rows(layout.run_url, "evaluations", [{"run_id": kind, "model": "baseline", "dataset": "digits",
                           "split": "val", "top1": 97.2, "top5": 99.5, "images": 360}], writer_id="baseline-val")  # fmt: skip
    else:  # a `sqz run` pipeline folder: the model in the config, top-1 from the last epoch
        manifest = {"run_id": kind, "config": {"train": {"model": "squeezenet_small"}, "sweep": {"max_top1_drop": 0.5}}}
        for epoch, top1 in ((0, 90.0), (1, 97.2)):
            metrics.write_rows(layout.run_url, "train_epochs", [{"run_id": kind, "epoch": epoch, "top1": top1, "top5": 99.5}],
                               writer_id=f"epoch-{epoch:04d}")  # fmt: skip
    storage.write_bytes(layout.manifest_url, json.dumps(manifest).encode())
    return run


@pytest.mark.parametrize("kind", ["sweep", "pipeline"])
def test_report_prints_the_pareto_table_and_writes_the_plot(tmp_path, baseline_bytes, capsys, kind):
    run = _fake_run(tmp_path, baseline_bytes, kind)
    assert main(["report", str(run), "--max-drop", "1"]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("std")]
    assert [line.split()[0] for line in table] == ["std0.9-b6", "std0.6-b8", "std0.3-b8"]  # frontier only, by size
    assert "smallest within 1 point(s) of the baseline: std0.9-b6 - 200,000 bytes" in out
    dense = 4 * sum(p.numel() for p in _model(baseline_bytes).parameters())
    assert f"1/7.3 = {round(dense * 0.66 / 4.8):,} bytes" in out and f"1/10.2 = {round(dense * 0.47 / 4.8):,} bytes" in out
    png = (run / "report" / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "pareto.png" in (run / "report" / "report.md").read_text()
    # Default budget: the run's own (0.5 for the pipeline folder), else 1 point.
    assert main(["report", str(run)]) == 0
    expected = "std0.6-b8 - 300,000" if kind == "pipeline" else "std0.9-b6 - 200,000"
    assert expected in capsys.readouterr().out


def test_report_of_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a run folder" in err[0]
