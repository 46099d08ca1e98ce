"""The pipeline deployed to a real Prefect server and run by a process worker.

On the session's `prefect server` (tests/conftest.py) and its local Ray, deploys
prefect.yaml's `squeeze-pipeline-local` with `prefect deploy`, runs it through
`prefect worker start --pool sqz-local`, and reads the flow-run states and artifacts back
through Prefect's API. Every wait is bounded; every process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_readback import by_kind, links, read_run_tree
from sqz import metrics
from sqz.config import DataConfig, PipelineConfig, SweepConfig, TrainConfig, config_to_dict

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFECT = os.path.join(os.path.dirname(sys.executable), "prefect")


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group we started (the server runs uvicorn in a child)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def prefect_server(prefect_api):
    """The session's Prefect server (tests/conftest.py), and the environment for the
    `prefect` commands and the worker run against it."""
    return prefect_api, {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": ROOT}


def _prefect(env, *args, timeout=300):
    result = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_deployed_pipeline_runs_through_a_process_worker(prefect_server, ray_address, tmp_path, request):
    api, env = prefect_server
    env = {**env, "SQZ_PROJECT_DIR": ROOT}  # the deployment's pull step starts runs here
    _prefect(env, "work-pool", "create", "sqz-local", "--type", "process")
    out = _prefect(env, "deploy", "--name", "squeeze-pipeline-local")
    assert "squeeze_pipeline/squeeze-pipeline-local" in out

    storage_url = str(tmp_path / "runs")
    workdir = tempfile.mkdtemp(prefix="sq", dir="/tmp")  # Ray's socket paths under it stay short
    request.addfinalizer(lambda: shutil.rmtree(workdir, ignore_errors=True))
    config = config_to_dict(PipelineConfig(
        data=DataConfig(), train=TrainConfig(epochs=1, workers=1),
        sweep=SweepConfig(thresholds=(0.3, 0.9), bits=(4,), retrain_epochs=0, max_concurrent=2,
                          quant={"bits": 8, "finetune_epochs": 0, "distill_steps": 0}),
        storage_url=storage_url,
    ))  # fmt: skip
    with temporary_settings({PREFECT_API_URL: api}):
        flow_run = run_deployment("squeeze_pipeline/squeeze-pipeline-local", timeout=0,
                                  parameters={"config": config, "run_id": "served", "workdir": workdir,
                                              "ray_address": ray_address})  # the session's Ray, not one more  # fmt: skip

        worker_log = open(tmp_path / "worker.log", "wb")
        worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "sqz-local", "--type", "process"],
                                  env=env, cwd=workdir, stdout=worker_log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
        try:
            from prefect.client.orchestration import get_client

            deadline = time.monotonic() + 900
            with get_client(sync_client=True) as client:
                while not (state := client.read_flow_run(flow_run.id).state).is_final():
                    assert time.monotonic() < deadline, f"flow run still {state.name} after 900 s"
                    assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                    time.sleep(2)
        finally:
            _stop(worker)
            worker_log.close()
        assert state.is_completed(), (tmp_path / "worker.log").read_text()[-5000:]

        tree = read_run_tree(flow_run.id)
    assert [run.state.name for run in tree["flow_runs"]] == ["Completed"] * 4  # the pipeline and its train, sweep and report subflows
    assert tree["task_runs"] and all(t.state.is_completed() for t in tree["task_runs"])

    kinds = by_kind(tree["artifacts"])
    run_url = os.path.join(storage_url, "served")
    report = open(os.path.join(run_url, "report", "report.md")).read()
    assert [a.data for a in kinds["markdown"]] == [report]
    trials = metrics.read_table(run_url, "sweep_trials").to_pylist()
    table = kinds["table"][0].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert len(trials) == 2 and sorted(r["trial_id"] for r in rows) == sorted(t["trial_id"] for t in trials)
    assert [a.data for a in kinds["progress"]] == [100.0]
    linked = links(tree["artifacts"])
    expected = {f"file://{t['model_url']}" for t in trials} | {f"file://{run_url}/models/baseline.safetensors",
                                                               f"file://{run_url}/report/report.md"}  # fmt: skip
    expected |= {f"file://{url}" for table in ("train_epochs", "sweep_trials") for url in metrics.table_files(run_url, table)}
    assert expected <= linked
    print("artifacts of the deployed pipeline run:")
    for artifact in sorted(tree["artifacts"], key=lambda a: (a.type, a.key or "")):
        print(f"  {artifact.type:9} {artifact.key or '-':48} {str(artifact.data).splitlines()[0][:80]}")
