"""Training: engine options, checkpoint files, masked retraining, `sqz train`, and the
resume / fault-tolerance behaviour of the Ray Train launcher (real Ray, digits data)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader, TensorDataset

from sqz import engine
from sqz.checkpoint import load_training_state, read_masks, read_weights, save_training_state
from sqz.compress import encode, prune_
from sqz.config import DataConfig, PruneConfig, TrainConfig
from sqz.models import build_model

SQZ = [sys.executable, "-m", "sqz.cli"]


def _batches(n=32, size=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return images, labels


def _model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return build_model("squeezenet_small", num_classes=10, dropout=dropout)


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- engine options -----------------------------------------------------------------


def test_auto_flags_resolve_to_the_plain_loop_on_cpu():
    assert engine.resolve_amp("auto", "cpu") is None
    assert engine.resolve_channels_last(None, "cpu") is False
    assert engine.make_grad_scaler(None, "cpu") is None
    # Asked for explicitly, they are honoured on CPU too.
    assert engine.resolve_amp("bf16", "cpu") is torch.bfloat16
    assert engine.resolve_channels_last(True, "cpu") is True


def test_cpu_defaults_train_bit_for_bit_like_the_plain_call():
    images, labels = _batches(48)
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    results = []
    for options in ({}, {"amp_dtype": engine.resolve_amp("auto", "cpu"), "channels_last": engine.resolve_channels_last(None, "cpu"),
                         "scaler": None, "accumulation_steps": 1}):  # fmt: skip
        torch.manual_seed(1)  # dropout draws the same masks in both runs
        model = _model(dropout=0.5)
        optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
        stats = engine.train_one_epoch(model, loader, optimizer, **options)
        results.append((stats.loss, stats.steps, _params(model)))
    (loss_a, steps_a, a), (loss_b, steps_b, b) = results
    assert loss_a == loss_b and steps_a == steps_b == 3
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_the_full_batch():
    images, labels = _batches(16)
    full, accumulated = _model(), _model()
    for model, batch, steps in ((full, 16, 1), (accumulated, 8, 2)):
        optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.05, momentum=0.9)
        stats = engine.train_one_epoch(model, DataLoader(TensorDataset(images, labels), batch_size=batch),
                                       optimizer, accumulation_steps=steps)  # fmt: skip
        assert stats.steps == 1 and stats.images == 16
    a, b = _params(full), _params(accumulated)
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-5) for k in a)


def test_last_partial_accumulation_group_still_steps():
    images, labels = _batches(24)
    model = _model()
    optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.05)
    stats = engine.train_one_epoch(model, DataLoader(TensorDataset(images, labels), batch_size=8), optimizer,
                                   accumulation_steps=2)  # fmt: skip
    assert stats.steps == 2  # batches 1+2, then batch 3 alone


def test_channels_last_on_cpu_changes_layout_not_results(tmp_path):
    images, labels = _batches(16)
    loader = DataLoader(TensorDataset(images, labels), batch_size=8)
    plain, nhwc = _model(), _model().to(memory_format=torch.channels_last)
    # lr 0.01, not larger: at 0.05 the first step overshoots (the second batch's loss is ~13),
    # and from there the two layouts' float32 rounding differences (1e-7 in the forward
    # pass) grew to 1e-3 in the weights on one thread (a CI failure; 2e-6 on two threads).
    for model, flag in ((plain, False), (nhwc, True)):
        optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
        engine.train_one_epoch(model, loader, optimizer, channels_last=flag)
    assert nhwc.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    a, b = _params(plain), _params(nhwc)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # A checkpoint of the NHWC model loads into a plain one with the same values.
    optimizer = engine.make_optimizer(nhwc.parameters(), "sgd", lr=0.05)
    save_training_state(str(tmp_path), nhwc, optimizer, progress={"epoch": 0})
    fresh = _model(seed=5)
    load_training_state(str(tmp_path), fresh)
    assert all(torch.equal(v, b[k]) for k, v in fresh.state_dict().items())


def test_bf16_autocast_keeps_float32_weights_and_learns():
    images, labels = _batches(32)
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    model = _model()
    optimizer = engine.make_optimizer(model.parameters(), "adamw", lr=1e-3)
    first = engine.train_one_epoch(model, loader, optimizer, amp_dtype=torch.bfloat16)
    for _ in range(2):
        last = engine.train_one_epoch(model, loader, optimizer, amp_dtype=torch.bfloat16)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert last.loss < first.loss


def test_label_smoothing_raises_the_loss_floor():
    logits = torch.tensor([[20.0, 0.0, 0.0]])
    target = torch.tensor([0])
    assert torch.nn.functional.cross_entropy(logits, target).item() < 1e-6
    assert torch.nn.functional.cross_entropy(logits, target, label_smoothing=0.1).item() > 0.1


def test_warmup_then_poly_decay():
    assert engine.scheduled_lr(0.04, 0, 100) == engine.poly_lr(0.04, 0, 100)
    assert engine.scheduled_lr(0.04, 37, 100) == engine.poly_lr(0.04, 37, 100)
    assert engine.scheduled_lr(0.04, 0, 100, warmup_steps=10) == pytest.approx(0.004)
    assert engine.scheduled_lr(0.04, 9, 100, warmup_steps=10) == pytest.approx(0.04)
    assert engine.scheduled_lr(0.04, 10, 100, warmup_steps=10) == pytest.approx(0.04)
    assert engine.scheduled_lr(0.04, 55, 100, warmup_steps=10) == pytest.approx(0.02)
    assert engine.scheduled_lr(0.04, 100, 100, warmup_steps=10) == 0.0


def test_caffe_xavier_init_bounds_and_final_conv():
    torch.manual_seed(0)
    model = engine.caffe_xavier_init_(build_model("squeezenet1_0", num_classes=1000))
    stem = model.features[0].weight  # 96 x 3 x 7 x 7: fan_in 147
    assert stem.abs().max().item() <= (3.0 / 147) ** 0.5 and stem.std().item() == pytest.approx((1.0 / 147) ** 0.5, rel=0.05)
    final = model.classifier[1].weight
    assert final.std().item() == pytest.approx(0.01, rel=0.05)
    assert all(m.bias.abs().max() == 0 for m in model.modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.gpu
def test_two_amp_channels_last_steps_on_the_gpu():
    device = torch.device("cuda")
    amp_dtype = engine.resolve_amp("auto", device)
    assert amp_dtype in (torch.bfloat16, torch.float16) and engine.resolve_channels_last(None, device)
    images, labels = _batches(64, size=64)
    model = _model().to(device, memory_format=torch.channels_last)
    before = _params(model)
    optimizer = engine.make_optimizer(model.parameters(), "sgd", lr=0.01)
    scaler = engine.make_grad_scaler(amp_dtype, device)
    stats = engine.train_one_epoch(model, DataLoader(TensorDataset(images, labels), batch_size=32), optimizer,
                                   device=device, amp_dtype=amp_dtype, scaler=scaler, channels_last=True)  # fmt: skip
    assert stats.steps == 2 and torch.isfinite(torch.tensor(stats.loss))
    assert all(p.dtype == torch.float32 and p.is_cuda for p in model.parameters())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    result = engine.evaluate(model, DataLoader(TensorDataset(images, labels), batch_size=32), device=device,
                             amp_dtype=amp_dtype, channels_last=True)  # fmt: skip
    assert result.images == 64


# --- checkpoint files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_checkpoint_is_safetensors_and_json_and_round_trips(tmp_path, name):
    images, labels = _batches(16)
    model = _model()
    optimizer = engine.make_optimizer(model.parameters(), name, lr=0.01, weight_decay=2e-4)
    engine.train_one_epoch(model, DataLoader(TensorDataset(images, labels), batch_size=8), optimizer)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    save_training_state(str(tmp_path), model, optimizer, progress={"epoch": 4, "top1": 50.0}, scaler=scaler)
    assert sorted(os.listdir(tmp_path)) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    json.loads((tmp_path / "state.json").read_text())  # plain JSON, no pickle anywhere

    restored = _model(seed=3)
    restored_optimizer = engine.make_optimizer(restored.parameters(), name, lr=0.5)
    restored_scaler = torch.amp.GradScaler("cpu")
    progress = load_training_state(str(tmp_path), restored, restored_optimizer, scaler=restored_scaler)
    assert progress == {"epoch": 4, "top1": 50.0}
    assert restored_scaler.get_scale() == 1024.0
    a, b = optimizer.state_dict(), restored_optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    assert a["state"].keys() == b["state"].keys()
    for index, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][index][key])
    # The restored pair takes the very same next step.
    for m, o in ((model, optimizer), (restored, restored_optimizer)):
        engine.train_one_epoch(m, DataLoader(TensorDataset(images, labels), batch_size=16), o)
    assert all(torch.equal(v, restored.state_dict()[k]) for k, v in model.state_dict().items())


def test_masks_from_bool_masks_or_pruned_weights(tmp_path):
    model = _model()
    masks = prune_(model, PruneConfig(mode="std", amount=0.8))
    save_file({k: v.contiguous() for k, v in masks.items()}, str(tmp_path / "masks.safetensors"))
    save_file(model.state_dict(), str(tmp_path / "pruned.safetensors"))
    (tmp_path / "pruned.sqz").write_bytes(encode(model))
    for name in ("masks.safetensors", "pruned.safetensors", "pruned.sqz"):
        loaded = read_masks(str(tmp_path / name), _model(seed=9))
        assert loaded.keys() == masks.keys() and all(torch.equal(loaded[k], masks[k]) for k in masks)
    assert torch.equal(read_weights(str(tmp_path / "pruned.sqz"))["features.0.weight"], model.features[0].weight)
    other = build_model("squeezenet_small", num_classes=7)  # same names, another classifier shape
    with pytest.raises(ValueError, match="has shape"):
        read_masks(str(tmp_path / "masks.safetensors"), other)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="neither a .sqz nor a .safetensors"):
        read_weights(str(tmp_path / "junk.safetensors"))


# --- sqz train: input errors --------------------------------------------------------


@pytest.mark.parametrize(
    "args, option",
    [
        (["--workers", "0"], "--workers"),
        (["--lr", "0"], "--lr"),
        (["--label-smoothing", "1.5"], "--label-smoothing"),
        (["--warmup-epochs", "9", "--epochs", "3"], "--warmup-epochs"),
        (["--batch-size", "3", "--workers", "2", "--accumulation-steps", "2"], "--batch-size"),
        (["--recipe", "cifar"], "--recipe"),
        (["--model", "alexnet"], "--model"),
        (["--init", "gs://bucket/x.safetensors"], "--init"),
        (["--masks-from", "/no/such/pruned.sqz"], "--masks-from"),
        (["--amp", "fp8"], "--amp"),
    ],
)
def test_train_bad_input_is_one_line_naming_the_option(args, option, tmp_path, refused_in_process):
    # In this process: what a real process adds (exit status, nothing printed at start-up)
    # is the same for every option of one error path; the test below checks it, a
    # process per path.
    code, err = refused_in_process(["train", "--storage", str(tmp_path), *args])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], err
    assert not os.listdir(tmp_path)  # nothing started, nothing written


@pytest.mark.parametrize(
    "args, option",
    [
        (["--workers", "0"], "--workers"),  # refused by argparse, before sqz imports torch
        (["--model", "alexnet"], "--model"),  # refused by sqz's checks (ValueError), after torch is imported
    ],
)
def test_train_bad_input_is_one_line_from_a_real_process(args, option, tmp_path):
    result = subprocess.run([*SQZ, "train", "--storage", str(tmp_path), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and option in lines[0], result.stderr
    assert not os.listdir(tmp_path)  # nothing started, nothing written


def test_init_that_does_not_fit_the_model_fails_before_ray(tmp_path):
    save_file(build_model("squeezenet1_0", num_classes=10).state_dict(), str(tmp_path / "other.safetensors"))
    result = subprocess.run([*SQZ, "train", "--storage", str(tmp_path / "runs"), "--init", str(tmp_path / "other.safetensors")],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "--init" in result.stderr and "does not fit squeezenet_small" in result.stderr
    assert "Started a local Ray" not in result.stderr


def test_recipes_and_retraining_defaults():
    from sqz.cli import build_parser
    from sqz.cli.train import train_configs

    parse = build_parser().parse_args
    data, train = train_configs(parse(["train"]))
    assert (train.optimizer, train.lr, train.epochs, data.batch_size) == ("adamw", 5e-4, 12, 16)
    assert (train.warmup_epochs, train.weight_decay, train.label_smoothing, data.shift_augment) == (1.0, 0.05, 0.1, 2)
    _, short = train_configs(parse(["train", "--epochs", "1"]))
    assert short.warmup_epochs == pytest.approx(1 / 8)  # the recipe's warm-up would fill the whole run
    data, train = train_configs(parse(["train", "--recipe", "imagenet"]))
    assert (train.model, train.optimizer, train.lr, train.momentum, train.weight_decay, train.lr_power) == (
        "squeezenet1_0", "sgd", 0.04, 0.9, 2e-4, 1.0)  # fmt: skip
    assert (train.epochs, train.weight_init, data.batch_size, data.image_size) == (68, "caffe_xavier", 512, 227)
    _, retrain = train_configs(parse(["train", "--recipe", "imagenet", "--masks-from", "/x/pruned.sqz"]))
    assert retrain.lr == pytest.approx(0.04 / 100) and retrain.masks_url == retrain.init_url == "/x/pruned.sqz"
    _, digits_retrain = train_configs(parse(["train", "--masks-from", "/x/p.sqz"]))
    assert digits_retrain.warmup_epochs == 0.0 and digits_retrain.lr == pytest.approx(5e-4 / 100)
    _, told = train_configs(parse(["train", "--masks-from", "/x/p.sqz", "--lr", "0.003", "--epochs", "5"]))
    assert (told.lr, told.epochs) == (0.003, 5)


# --- Ray Train ----------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a live process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))):
            parents[int(entry)] = stat[0]
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _train_workers_of(root: int) -> list[int]:
    return [pid for pid in _descendants(root) if _cmdline(pid).startswith("ray::RayTrainWorker")]


def _kill_session(session: int) -> None:
    """SIGKILL every process of the session we started (Ray's helpers outlive a killed driver)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _proc_stat(int(entry))) and stat[1] == session:
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _latest_checkpoint_epoch(train_url: str) -> int | None:
    """The epoch of the latest checkpoint Ray Train has registered: what it hands back
    through ray.train.get_checkpoint() when the run resumes."""
    from ray.train import Result

    from sqz import storage

    fs, path = storage.resolve(storage.join(train_url, "ray-train"))
    try:
        result = Result.from_path(path, storage_filesystem=fs)
    except RuntimeError:  # no snapshot yet
        return None
    if result.checkpoint is None:
        return None
    return int(os.path.basename(result.checkpoint.path).rsplit("-", 1)[1])


def _wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _epoch_files(run_url: str) -> dict[int, int]:
    """Epoch -> modification time (ns) of its train_epochs row file, local or on S3."""
    import pyarrow.fs as pafs

    from sqz import storage

    fs, path = storage.resolve(storage.join(run_url, "metrics", "train_epochs"))
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {int(info.base_name[6:10]): info.mtime_ns for info in infos if info.base_name.startswith("epoch-")}


@pytest.fixture(scope="module")
def masked_run_with_a_killed_worker(ray_local, tmp_path_factory):
    """One Ray Train run for two tests (a run's worker processes take ~20 s to start on
    2 cores): masked retraining of a pruned model, 3 epochs on 2 workers, one worker
    SIGKILLed once the first checkpoint is registered. Records what the tests check and
    asserts nothing itself, so each test fails only on its own claim."""
    from types import SimpleNamespace

    from sqz.distributed.train import train
    from sqz.runs import RunLayout

    folder = tmp_path_factory.mktemp("masked-faulty")
    model = _model()
    masks = prune_(model, PruneConfig(mode="std", amount=0.7))
    pruned = folder / "pruned.sqz"
    pruned.write_bytes(encode(model))
    layout = RunLayout(str(folder / "retrain"))
    cfg = TrainConfig(epochs=3, lr=1e-5, masks_url=str(pruned), init_url=str(pruned), keep_checkpoints=1, max_failures=1)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = train(layout, cfg, DataConfig())
        except BaseException as exc:  # reported by the tests, not lost in the thread
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    _wait_for(lambda: _latest_checkpoint_epoch(layout.train_url) is not None or not runner.is_alive(), 240,
              "the first checkpoint")  # fmt: skip
    before = _epoch_files(layout.run_url)
    workers = _train_workers_of(os.getpid())
    killed_at = time.time_ns()
    if len(workers) == 2:  # else the recovery test fails on it, and nothing is killed
        os.kill(workers[0], signal.SIGKILL)
    runner.join(timeout=400)
    return SimpleNamespace(layout=layout, model=model, masks=masks, before=before, workers=workers,
                           killed_at=killed_at, finished=not runner.is_alive(), result=outcome.get("result"),
                           error=outcome.get("error"))  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_masked_retraining_keeps_pruned_weights_at_zero(masked_run_with_a_killed_worker):
    import ray

    from sqz import metrics

    run = masked_run_with_a_killed_worker
    assert run.finished and run.error is None, run.error
    assert run.result.epochs == 3
    rows = metrics.read_table(run.layout.run_url, "train_epochs").to_pylist()
    node = ray.get_runtime_context().get_node_id()
    assert rows and all(row["node_id"] == node and row["worker_node_ids"] == node for row in rows)  # both workers on the one local node
    retrained = read_weights(run.layout.baseline_url)
    changed = False
    for name, mask in run.masks.items():
        assert torch.all(retrained[name][~mask] == 0), name  # pruned stay pruned, across the restart too
        changed |= not torch.equal(retrained[name][mask], run.model.state_dict()[name][mask])
    assert changed  # the kept weights did train


@pytest.mark.slow
@pytest.mark.integration
def test_killed_worker_recovers_from_the_last_checkpoint(masked_run_with_a_killed_worker):
    from sqz import metrics

    run = masked_run_with_a_killed_worker
    assert len(run.workers) == 2, run.workers
    assert 2 not in run.before  # killed mid-run
    assert run.finished, "training did not finish after the worker was killed"
    assert run.error is None, run.error
    assert run.result.epochs == 3
    after = _epoch_files(run.layout.run_url)
    assert sorted(after) == [0, 1, 2]
    assert after[0] == run.before[0]  # checkpointed work was not redone
    assert after[2] > run.killed_at  # the rest was done after the kill
    assert run.workers[0] not in _train_workers_of(os.getpid())
    assert sorted(r["epoch"] for r in metrics.read_table(run.layout.run_url, "train_epochs").to_pylist()) == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.integration
def test_rerun_after_the_driver_is_killed_resumes_from_s3_at_the_next_epoch(tmp_path, s3_bucket, ray_address):
    storage_url = f"{s3_bucket}/runs"  # moto's S3 server; endpoint and keys come from the environment
    # Both drivers join the session's Ray: killing one ends its job (its Train workers
    # with it), and the rerun finds the checkpoints on S3, not in the cluster.
    command = [*SQZ, "train", "--epochs", "2", "--storage", storage_url, "--run-id", "resumable", "--ray-address", ray_address]
    run_url, train_url = f"{storage_url}/resumable", f"{storage_url}/resumable/train"
    log = open(tmp_path / "first.log", "w")
    driver = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: _latest_checkpoint_epoch(train_url) is not None or driver.poll() is not None, 240,
                  "the first checkpoint")  # fmt: skip
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.kill(driver.pid, signal.SIGKILL)  # the driver, half-way: no chance to clean up
        driver.wait(timeout=30)
    finally:
        _kill_session(driver.pid)  # then anything else it had started
        log.close()
    resume_from = _latest_checkpoint_epoch(train_url) + 1
    assert resume_from < 2
    before = _epoch_files(run_url)

    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    output = again.stdout + again.stderr
    assert again.returncode == 0, output[-3000:]
    assert f"resuming from the checkpoint of epoch {resume_from}/2" in output
    assert "after 2 epochs" in output
    after = _epoch_files(run_url)
    assert sorted(after) == [0, 1]
    for epoch in range(resume_from):
        assert after[epoch] == before[epoch]  # not repeated
    assert f"epoch {resume_from + 1}/2: loss" in output and "epoch 1/2: loss" not in output
    assert _latest_checkpoint_epoch(train_url) == 1
