"""The whole `sqz run`: real Ray Train, Ray Tune and Prefect, tiny settings. The command
runs in a subprocess against the session's Ray (--ray-address) and Prefect server."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from sqz import engine, metrics
from sqz.compress import decode, encode, prune_, quantize_
from sqz.config import DataConfig, PruneConfig, QuantConfig
from sqz.data import load_split
from sqz.models import build_model

# q x std thresholds (not the default kept density), so that higher thresholds prune more.
# Every stage runs, each as short as the assertions allow (no assertion here reads an
# accuracy; test_train, test_prune_schedule and test_fidelity measure what training,
# gradual pruning and distillation achieve): 2 epochs, a 2 x 2 grid, 20 gradual-pruning
# retrain steps (two mask updates) instead of a digits epoch (~90 steps), and centroid
# distillation for 3 steps on 2 calibration batches instead of 45 on 8.
ARGS = ["--epochs", "2", "--prune-mode", "std", "--thresholds", "0.3,0.9", "--bits", "8,4", "--retrain-steps", "20",
        "--finetune-epochs", "1", "--distill-steps", "3", "--calibration-batches", "2", "--run-id", "tiny"]  # fmt: skip


def _sqz_run(cwd, storage, ray_address):
    sqz = os.path.join(os.path.dirname(sys.executable), "sqz")
    return subprocess.run([sqz, "run", "--storage", storage, "--ray-address", ray_address, *ARGS], cwd=cwd,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_address):
    cwd = tmp_path_factory.mktemp("pipeline")
    storage = str(cwd / "runs")
    first = _sqz_run(cwd, storage, ray_address)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return cwd, os.path.join(storage, "tiny"), first


@pytest.mark.slow
@pytest.mark.integration
def test_run_writes_everything_it_reports(finished_run):
    _, run_dir, result = finished_run
    out = result.stdout
    assert "baseline squeezenet_small" in out and "chosen:" in out
    manifest = json.load(open(os.path.join(run_dir, "manifest.json")))
    assert manifest["run_id"] == "tiny" and manifest["config"]["train"]["epochs"] == 2
    assert os.path.exists(os.path.join(run_dir, "report", "report.md"))

    epochs = metrics.read_table(run_dir, "train_epochs").to_pylist()
    assert sorted(r["epoch"] for r in epochs) == [0, 1]
    trials = metrics.read_table(run_dir, "sweep_trials").to_pylist()
    assert len(trials) == 4 and {(r["threshold"], r["bits"]) for r in trials} == {
        (t, b) for t in (0.3, 0.9) for b in (8, 4)
    }
    val = DataLoader(load_split(DataConfig(), "val"), batch_size=256)
    for row in trials:
        assert row["size_bytes"] == os.path.getsize(row["model_url"])  # the table's bytes are the file's
        assert row["trial_id"] in out and f"{row['size_bytes']:,}" in out
        model = decode(open(row["model_url"], "rb").read())
        assert engine.evaluate(model, val).top1 == pytest.approx(row["top1"])
    # Each trial's file has its per-layer byte account, adding up to the file's payload.
    layers = metrics.read_table(run_dir, "compressed_layers").to_pylist()
    for row in trials:
        mine = [r for r in layers if r["model"] == row["trial_id"]]
        assert mine and all(r["nonzero"] <= r["weights"] for r in mine)
        payload = sum(r["code_bytes"] + r["index_bytes"] + r["overhead_bytes"] for r in mine)
        assert 0 < row["size_bytes"] - payload < 4096  # the rest is the deflated header
    # Higher thresholds prune more.
    by_threshold = {r["threshold"]: r["density"] for r in trials}
    assert by_threshold[0.3] > by_threshold[0.9]


@pytest.mark.slow
@pytest.mark.integration
def test_decoded_file_predicts_like_the_quantized_model_in_memory(finished_run):
    _, run_dir, _ = finished_run
    model = build_model("squeezenet_small", num_classes=10)
    model.load_state_dict(load_file(os.path.join(run_dir, "models", "baseline.safetensors")))
    prune_(model, PruneConfig(mode="std", amount=0.6))
    quantize_(model, QuantConfig(bits=4))
    model.eval()
    decoded = decode(encode(model))
    inputs = next(iter(DataLoader(load_split(DataConfig(), "val"), batch_size=360)))[0]
    with torch.no_grad():
        assert torch.equal(model(inputs), decoded(inputs))


@pytest.mark.slow
@pytest.mark.integration
def test_rerun_reuses_training_and_trials(finished_run, ray_address):
    cwd, run_dir, _ = finished_run
    models = os.path.join(run_dir, "models")
    stamps = {name: os.stat(os.path.join(models, name)).st_mtime_ns for name in os.listdir(models)}
    again = _sqz_run(cwd, os.path.dirname(run_dir), ray_address)
    assert again.returncode == 0, again.stderr[-3000:]
    # Prefect's cache answers first (same inputs, same code): neither stage runs again.
    logs = again.stdout + again.stderr
    assert re.search(r"train-baseline-\w+' - Finished in state Cached", logs), logs[-3000:]
    assert re.search(r"run-sweep-\w+' - Finished in state Cached", logs), logs[-3000:]
    assert {n: os.stat(os.path.join(models, n)).st_mtime_ns for n in os.listdir(models)} == stamps
    assert len(metrics.read_table(run_dir, "sweep_trials")) == 4
