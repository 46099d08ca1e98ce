"""The flows and their tasks called as functions, on Prefect's ephemeral API."""

from __future__ import annotations

import base64
import dataclasses
import os

import pytest
import torch
from prefect.cache_policies import NO_CACHE
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from safetensors.torch import save

import flows.common
import flows.compress_flow
import flows.sweep_flow
import flows.train_flow
from flows.common import RunResultStorage, artifact_key, code_version
from flows.compress_flow import compress_model
from flows.pipeline_flow import squeeze_pipeline
from flows.report_flow import report_run
from prefect_readback import by_kind, keyed, links, read_run_tree
from sqz import metrics, storage
from sqz.compress import decode
from sqz.config import DataConfig, PipelineConfig, SweepConfig, TrainConfig, config_to_dict
from sqz.distributed.train import TrainResult
from sqz.models import build_model
from sqz.runs import RunLayout

ARCH = {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}
PRUNE, QUANT = {"mode": "std", "amount": 0.5}, {"bits": 4, "finetune_epochs": 0, "distill_steps": 0}


@pytest.fixture
def baseline_run(tmp_path):
    """A run folder holding an untrained baseline: enough for compress and report flows."""
    run_url = str(tmp_path / "runs" / "manual")
    torch.manual_seed(0)
    storage.write_bytes(RunLayout(run_url).baseline_url, save(build_model(ARCH["name"], **ARCH["kwargs"]).state_dict()))
    return run_url


def _counting(monkeypatch, module, name):
    """Replace ``module.name`` by a wrapper that counts its calls (and still does the work)."""
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def test_bad_input_fails_at_once_and_transient_errors_are_retried(monkeypatch, tmp_path):
    calls = []

    def flaky_train(layout, train_cfg, data_cfg, **options):
        calls.append(layout.run_url)
        if len(calls) < 3:
            raise OSError("AWS Error SLOW_DOWN during PutObject operation: Please reduce your request rate.")
        return TrainResult(baseline_url="b", parameters=1, size_bytes=4, top1=1.0, top5=2.0, epochs=1)

    monkeypatch.setattr(flows.train_flow, "train", flaky_train)
    # The task as the flows use it, only without waiting between retries or caching;
    # called outside a flow, so its logs stay local.
    task = flows.train_flow.train_baseline.with_options(retry_delay_seconds=0, cache_policy=NO_CACHE)
    with temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
        state = task(str(tmp_path), {"epochs": 1}, {"url": "digits"}, return_state=True)
        assert state.is_completed() and len(calls) == 3  # failed twice, retried, then done

        calls.clear()
        state = task(str(tmp_path), {"epochs": 0}, {"url": "digits"}, return_state=True)  # sqz raises ValueError
    assert state.is_failed() and calls == []
    with pytest.raises(ValueError, match="epochs: must be at least 1"):
        state.result()
    assert flows.train_flow.train_baseline.retries == 3  # it would have retried anything else


def test_flow_rejects_bad_input_before_any_work(baseline_run):
    state = compress_model(baseline_run, ARCH, {"url": "digits"}, {"mode": "std", "amount": -1.0}, QUANT, return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="threshold: must be >= 0"):
        state.result()
    assert not storage.exists(storage.join(baseline_run, "metrics"))
    tasks = read_run_tree(state.state_details.flow_run_id)["task_runs"]
    assert tasks == []  # failed in the flow body, before any task ran


def test_pipeline_and_sweep_flows_refuse_an_unreachable_density_before_ray(monkeypatch, tmp_path, baseline_run):
    # A deployment run gets the CLI's check too: in the flow's parameter validation.
    import flows.pipeline_flow

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(flows.pipeline_flow, "ray_session", no_ray)
    monkeypatch.setattr(flows.sweep_flow, "ray_session", no_ray)
    config = config_to_dict(PipelineConfig(sweep=SweepConfig(prune_mode="density", thresholds=(0.5, 0.02)),
                                           storage_url=str(tmp_path / "pipeline-runs")))  # fmt: skip
    state = squeeze_pipeline(config=config, return_state=True)
    with pytest.raises(ValueError, match="config.sweep.thresholds: density 0.02 keeps fewer weights than squeezenet_small"):
        state.result()
    assert not (tmp_path / "pipeline-runs").exists()
    state = flows.sweep_flow.sweep_compression(baseline_run, config["sweep"], {"url": "digits"}, ARCH, return_state=True)
    with pytest.raises(ValueError, match="sweep_config.thresholds: density 0.02"):
        state.result()
    assert not storage.exists(storage.join(baseline_run, "tune"))

def test_pipeline_refuses_a_storage_it_cannot_write_before_ray(monkeypatch, tmp_path):
    import flows.pipeline_flow

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(flows.pipeline_flow, "ray_session", no_ray)
    (tmp_path / "a-file").write_text("not a folder")
    state = squeeze_pipeline(config=config_to_dict(PipelineConfig(storage_url=str(tmp_path / "a-file" / "runs"))),
                             return_state=True)  # fmt: skip
    with pytest.raises(ValueError, match="config.storage_url: .*a-file is a file"):
        state.result()

@pytest.mark.slow
def test_compress_model_writes_the_file_its_row_and_artifacts_and_reruns_from_cache(baseline_run, monkeypatch):
    calls = _counting(monkeypatch, flows.compress_flow, "compress_and_evaluate")
    first = compress_model(baseline_run, ARCH, {"url": "digits"}, PRUNE, QUANT, return_state=True)
    row = first.result()
    assert os.path.getsize(row["model_url"]) == row["size_bytes"] and len(calls) == 1
    assert decode(open(row["model_url"], "rb").read()) is not None
    assert metrics.read_table(baseline_run, "sweep_trials").to_pylist() == [row]
    tree = read_run_tree(first.state_details.flow_run_id)
    linked = links(tree["artifacts"])
    assert f"file://{row['model_url']}" in linked
    assert f"file://{baseline_run}/metrics/sweep_trials/std0.5-b4.parquet" in linked
    assert any(a.type == "table" and a.key == artifact_key("manual", "std0.5-b4", "evaluation") for a in tree["artifacts"])
    # The task's result lives in the run folder, as plain JSON.
    records = storage.walk(storage.join(baseline_run, flows.common.RESULTS_FOLDER))
    assert len(records) == 1 and b'"serializer":{"type":"json"' in storage.read_bytes(
        storage.join(baseline_run, flows.common.RESULTS_FOLDER, records[0][0])).replace(b" ", b"")  # fmt: skip

    again = compress_model(baseline_run, ARCH, {"url": "digits"}, PRUNE, QUANT, return_state=True)
    assert again.result() == row and len(calls) == 1  # same inputs, same code: reused
    cached = [t for t in read_run_tree(again.state_details.flow_run_id)["task_runs"] if t.name.startswith("compress")]
    assert [t.state.name for t in cached] == ["Cached"]

    monkeypatch.setattr(flows.common, "code_version", lambda: "another-version")
    compress_model(baseline_run, ARCH, {"url": "digits"}, PRUNE, QUANT)
    assert len(calls) == 2  # other code: computed again


def test_code_version_follows_the_sources():
    assert code_version().startswith(__import__("sqz").__version__ + "+") and code_version() == code_version()


@pytest.mark.integration
def test_run_result_storage_on_s3(s3_bucket):
    block = RunResultStorage(basepath=f"{s3_bucket}/runs/r/prefect-results")
    block.write_path("k1", b'{"x": 1}', _sync=True)
    assert block.read_path("k1", _sync=True) == b'{"x": 1}'
    assert storage.read_bytes(f"{s3_bucket}/runs/r/prefect-results/k1") == b'{"x": 1}'
    with pytest.raises(FileNotFoundError):
        block.read_path("missing", _sync=True)


def test_report_run_shows_report_trials_and_plot(baseline_run):
    trials = [{"run_id": "manual", "trial_id": f"std{q}-b4", "prune_mode": "std", "threshold": q, "bits": 4,
               "density": 1 - q / 2, "size_bytes": int(1000 * (2 - q)), "top1": 90 - 5 * q, "top5": 99.0,
               "ratio_vs_alexnet_32bit": 1e5, "model_url": "m", "wall_s": 1.0} for q in (0.3, 0.6)]  # fmt: skip
    baseline = {"model": "squeezenet_small", "parameters": 727626, "size_bytes": 2910504, "top1": 90.0, "top5": 99.0}
    if not storage.exists(storage.join(baseline_run, "report", "pareto.png")):
        # A plot in the report folder, as sqz.report draws one (where it does, it overwrites this).
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(2, 2))
        axes.plot([t["size_bytes"] for t in trials], [t["top1"] for t in trials], "o")
        png = io.BytesIO()
        figure.savefig(png, format="png")
        plt.close(figure)
        storage.write_bytes(storage.join(baseline_run, "report", "pareto.png"), png.getvalue())
    state = report_run(baseline_run, baseline, trials, 5.0, return_state=True)
    summary = state.result()
    artifacts = read_run_tree(state.state_details.flow_run_id)["artifacts"]
    png = storage.read_bytes(storage.join(baseline_run, "report", "pareto.png"))
    # The report renders in the UI: its plot is embedded, not a relative pareto.png.
    (report,) = keyed(artifacts, "-report")
    assert report.data.replace("data:image/png;base64," + base64.b64encode(png).decode(), "pareto.png") == summary["report_markdown"]
    (table,) = keyed(artifacts, "-trials")
    assert "std0.3-b4" in str(table.data) and "std0.6-b4" in str(table.data)
    # One "files" card for the run, not one per file.
    (files,) = keyed(artifacts, "-files")
    assert {f"file://{baseline_run}/report/report.md", f"file://{baseline_run}/report/pareto.png"} <= links(artifacts)
    assert "## Report" in files.data and not by_kind(artifacts).get("link")


@pytest.mark.slow
@pytest.mark.integration
def test_pipeline_retries_resumes_and_reruns_nothing_that_finished(ray_local, tmp_path, monkeypatch):
    real_train = flows.train_flow.train
    trainings, first_epoch = [], []

    def train_losing_a_node_after_epoch_1(layout, train_cfg, data_cfg, **options):
        trainings.append(train_cfg.epochs)
        if len(trainings) == 1:  # the first attempt gets through epoch 1 of 2, then fails
            real_train(layout, dataclasses.replace(train_cfg, epochs=1), data_cfg, **options)
            first_epoch.append(os.stat(metrics.table_files(layout.run_url, "train_epochs")[0]).st_mtime_ns)
            raise RuntimeError("simulated: the Ray node running the training was lost")
        return real_train(layout, train_cfg, data_cfg, **options)

    monkeypatch.setattr(flows.train_flow, "train", train_losing_a_node_after_epoch_1)
    # Retried at once: the 5 s (+/- 50%) back-off is Prefect's to keep, not what this tests.
    monkeypatch.setattr(flows.train_flow, "train_baseline", flows.train_flow.train_baseline.with_options(retry_delay_seconds=0))
    sweeps = _counting(monkeypatch, flows.sweep_flow, "sweep")
    config = config_to_dict(PipelineConfig(
        data=DataConfig(), train=TrainConfig(epochs=2, workers=1),
        sweep=SweepConfig(thresholds=(0.3, 0.9), bits=(4,), retrain_epochs=0, max_concurrent=2,
                          quant={"bits": 8, "finetune_epochs": 0, "distill_steps": 0}),
        storage_url=str(tmp_path / "runs"),
    ))  # fmt: skip
    first = squeeze_pipeline(config=config, run_id="twice", return_state=True)
    summary = first.result()
    run_url = str(tmp_path / "runs" / "twice")
    # Prefect retried the training task, and the retry resumed Ray Train from the
    # epoch-1 checkpoint: epoch 1's row was not written again.
    assert trainings == [2, 2] and len(sweeps) == 1 and len(summary["trials"]) == 2
    epoch_files = metrics.table_files(run_url, "train_epochs")
    assert len(epoch_files) == 2 and os.stat(epoch_files[0]).st_mtime_ns == first_epoch[0]
    models = os.path.join(run_url, "models")
    stamps = {name: os.stat(os.path.join(models, name)).st_mtime_ns for name in os.listdir(models)}
    tune_trials = os.listdir(os.path.join(run_url, "tune", "ray-tune"))

    tree = read_run_tree(first.state_details.flow_run_id)
    assert len(tree["flow_runs"]) == 4 and all(r.state.is_completed() for r in tree["flow_runs"])  # + 3 subflows
    train_run = next(t for t in tree["task_runs"] if t.name.startswith("train-baseline"))
    assert train_run.run_count == 2 and train_run.state.is_completed()
    kinds = by_kind(tree["artifacts"])
    assert {"markdown", "table", "progress"} <= set(kinds) and "link" not in kinds
    # Training and sweep progress, on the pipeline's own flow run, updated in place to the end.
    progress = {a.key: a for a in kinds["progress"]}
    assert sorted(progress) == ["twice-sweep-progress", "twice-train-progress"]
    assert all(a.data == 100.0 and a.flow_run_id == first.state_details.flow_run_id for a in progress.values())
    assert all(keyed(tree["artifacts"], suffix)[-1].flow_run_id == first.state_details.flow_run_id
               for suffix in ("-report", "-trials", "-files"))  # fmt: skip
    linked = links(tree["artifacts"])
    for name in stamps:
        assert f"file://{models}/{name}" in linked
    for table in ("train_epochs", "sweep_trials"):
        for url in metrics.table_files(run_url, table):
            assert f"file://{url}" in linked

    again = squeeze_pipeline(config=config, run_id="twice", return_state=True)
    assert again.result()["trials"] == summary["trials"]
    assert len(trainings) == 2 and len(sweeps) == 1  # no training and no trial ran again
    assert {n: os.stat(os.path.join(models, n)).st_mtime_ns for n in os.listdir(models)} == stamps
    assert os.listdir(os.path.join(run_url, "tune", "ray-tune")) == tune_trials
    states = {t.name.rsplit("-", 1)[0]: t.state.name for t in read_run_tree(again.state_details.flow_run_id)["task_runs"]}
    assert states["train-baseline"] == "Cached" and states["run-sweep"] == "Cached"


def test_sweep_finished_event_carries_the_chosen_variant(monkeypatch):
    emitted = []
    monkeypatch.setattr(flows.report_flow, "emit_event", lambda **event: emitted.append(event))
    baseline = {"model": "squeezenet_small", "parameters": 727626, "size_bytes": 2_915_360, "top1": 98.9, "top5": 100.0}
    chosen = {"trial_id": "density0.33-b6", "size_bytes": 256_908, "top1": 98.9, "model_url": "s3://b/r/models/x.sqz"}
    summary = {"run_id": "run-1", "baseline": baseline, "trials": [chosen, {}], "chosen": chosen}
    flows.report_flow.announce_sweep_finished("s3://b/r", summary, 0.5, origin="sweep_compression")
    summary_none = {**summary, "chosen": None}
    flows.report_flow.announce_sweep_finished("s3://b/r", summary_none, 0.5, origin="squeeze_pipeline")
    first, second = emitted
    assert first["event"] == "sqz.sweep.finished" == second["event"]
    assert first["resource"] == {"prefect.resource.id": "sqz.run.run-1", "prefect.resource.name": "run-1",
                                 "sqz.origin": "sweep_compression"}  # fmt: skip
    assert first["payload"]["chosen"] == {"trial_id": "density0.33-b6", "size_bytes": 256_908, "top1": 98.9,
                                          "ratio_vs_float32": 11.35, "model_url": "s3://b/r/models/x.sqz"}  # fmt: skip
    assert first["payload"]["run_url"] == "s3://b/r" and first["payload"]["trials"] == 2
    assert second["payload"]["chosen"] is None and second["resource"]["sqz.origin"] == "squeeze_pipeline"


def _flow_run_log(client, name: str, enough) -> list[str]:
    """The messages of the flow run called ``name`` (and of its tasks), as the Prefect API
    (and so the UI) serves them; polled until ``enough(lines)``, for at most 30 s."""
    import time

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, LogFilter, LogFilterFlowRunId

    (flow_run,) = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
    assert flow_run.state.is_completed()
    deadline = time.monotonic() + 30  # the log handler ships records in batches
    while True:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id])))
        lines = [log.message for log in logs]
        if enough(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(1)


@pytest.mark.slow
def test_sqz_train_and_sweep_are_flow_runs_whose_logs_have_every_epoch_and_trial(ray_local, tmp_path, capsys):
    """`sqz train` runs as the train_model flow, `sqz sweep` as sweep_checkpoint, each named
    after its run; their per-epoch and per-trial lines (logged by sqz's Ray layer, on the
    driver) are in the flow runs' logs as the Prefect API (and so the UI) serves them."""
    import uuid

    from prefect.client.orchestration import get_client

    from sqz.cli import main

    run_id = f"log-{uuid.uuid4().hex[:8]}"  # unique on a server shared by many runs
    assert main(["train", "--epochs", "2", "--workers", "1", "--storage", str(tmp_path), "--run-id", run_id]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id}: squeezenet_small after 2 epochs" in out
    sweep_id = f"{run_id}-sweep"
    assert main(["sweep", "--checkpoint", str(tmp_path / run_id), "--storage", str(tmp_path), "--run-id", sweep_id,
                 "--prune-mode", "std", "--thresholds", "0.3,0.9", "--bits", "4", "--retrain-epochs", "0",
                 "--finetune-epochs", "0", "--distill-steps", "0"]) == 0  # fmt: skip
    with get_client(sync_client=True) as client:
        epoch_lines = _flow_run_log(client, f"{run_id}/train", lambda lines: sum(": loss " in line and "top-1" in line for line in lines) >= 2)
        trial_lines = _flow_run_log(client, f"{sweep_id}/sweep", lambda lines: sum(line.startswith("trial ") for line in lines) >= 2)
    rows = sorted(metrics.read_table(str(tmp_path / run_id), "train_epochs").to_pylist(), key=lambda r: r["epoch"])
    for row in rows:  # each epoch's line carries that epoch's numbers
        assert any(line.startswith(f"epoch {row['epoch'] + 1}/2: loss ") and f"top-1 {row['top1']:.2f}" in line
                   for line in epoch_lines), epoch_lines  # fmt: skip
    assert len(rows) == 2
    trials = metrics.read_table(str(tmp_path / sweep_id), "sweep_trials").to_pylist()
    assert sorted(row["trial_id"] for row in trials) == ["std0.3-b4", "std0.9-b4"]
    for row in trials:  # each trial's line carries that trial's file size and accuracy
        assert any(line.startswith(f"trial {row['trial_id']} done: {row['size_bytes']:,} bytes, top-1 {row['top1']:.2f}")
                   for line in trial_lines), trial_lines  # fmt: skip
