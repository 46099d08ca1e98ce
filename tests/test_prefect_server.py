"""A scheduled cloud run, simulated whole: the pipeline deployed to a real Prefect server,
picked up by a process worker, run on a real two-node Ray cluster with S3 storage.

On the session's `prefect server` (tests/conftest.py), deploys prefect.yaml's
`squeeze-pipeline-local` with `prefect deploy`, creates a run of it, and lets
`prefect worker start --pool sqz-local` run it against the session's two-node Ray cluster
(tests/ray_cluster.py) through ray://, as infra/'s deployments reach theirs, writing to a
bucket on the session's moto S3 server. Then reads the flow-run states and artifacts back
through Prefect's API. Every wait is bounded; every process is stopped by its pid.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

import boto3
import pytest
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_readback import by_kind, keyed, links, read_run_tree
from processes import stop_process_group
from sqz import metrics, storage
from sqz.config import DataConfig, PipelineConfig, SweepConfig, TrainConfig, config_to_dict

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.cluster]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFECT = os.path.join(os.path.dirname(sys.executable), "prefect")


@pytest.fixture(scope="module")
def prefect_server(prefect_api):
    """The session's Prefect server (tests/conftest.py), and the environment for the
    `prefect` commands and the worker run against it."""
    return prefect_api, {**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONPATH": ROOT}


def _prefect(env, *args, timeout=300):
    result = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def served_pipeline(prefect_server, ray_cluster, s3_endpoint, tmp_path_factory, request):
    """squeeze_pipeline deployed from prefect.yaml, run by a process worker on the
    two-node cluster with S3 storage; returns (api, flow run id, run URL, folder with the
    worker's log) once it has ended."""
    api, env = prefect_server
    tmp_path = tmp_path_factory.mktemp("served")
    bucket = f"sqz-served-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    # The worker and its flow runs find the bucket as a cloud deployment would: the S3
    # endpoint and region in their environment (credentials: moto's, from conftest). The
    # test process reads the run back the same way.
    s3_env = {"AWS_ENDPOINT_URL_S3": s3_endpoint, "AWS_REGION": "us-east-1"}
    patch = pytest.MonkeyPatch()
    request.addfinalizer(patch.undo)
    for name, value in s3_env.items():
        patch.setenv(name, value)
    env = {**env, **s3_env, "SQZ_PROJECT_DIR": ROOT}  # the deployment's pull step starts runs here
    _prefect(env, "work-pool", "create", "sqz-local", "--type", "process")
    out = _prefect(env, "deploy", "--name", "squeeze-pipeline-local")
    assert "squeeze_pipeline/squeeze-pipeline-local" in out

    storage_url = f"s3://{bucket}/runs"
    workdir = tempfile.mkdtemp(prefix="sq", dir="/tmp")
    request.addfinalizer(lambda: shutil.rmtree(workdir, ignore_errors=True))
    config = config_to_dict(PipelineConfig(
        data=DataConfig(), train=TrainConfig(epochs=1, workers=2),
        sweep=SweepConfig(thresholds=(0.3, 0.9), bits=(4,), retrain_epochs=0, max_concurrent=2,
                          quant={"bits": 8, "finetune_epochs": 0, "distill_steps": 0}),
        storage_url=storage_url,
    ))  # fmt: skip
    with temporary_settings({PREFECT_API_URL: api}):
        flow_run = run_deployment("squeeze_pipeline/squeeze-pipeline-local", timeout=0,
                                  parameters={"config": config, "run_id": "served", "workdir": workdir,
                                              "ray_address": ray_cluster.client_address})  # fmt: skip

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
            stop_process_group(worker)
            worker_log.close()
    return api, flow_run.id, f"{storage_url}/served", tmp_path


def _linked_object(link: str) -> str:
    """The s3:// URL a presigned link opens (path-style: /bucket/key)."""
    assert link.startswith("http://127.0.0.1:") and "X-Amz-Signature=" in link, link
    return "s3://" + urllib.parse.unquote(urllib.parse.urlsplit(link).path).lstrip("/")


def test_deployed_pipeline_runs_through_a_process_worker(served_pipeline):
    api, flow_run_id, run_url, tmp_path = served_pipeline
    with temporary_settings({PREFECT_API_URL: api}):
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        assert state.is_completed(), (tmp_path / "worker.log").read_text()[-5000:]

        tree = read_run_tree(flow_run_id)
    assert [run.state.name for run in tree["flow_runs"]] == ["Completed"] * 4  # the pipeline and its train, sweep and report subflows
    assert tree["task_runs"] and all(t.state.is_completed() for t in tree["task_runs"])

    kinds = by_kind(tree["artifacts"])
    report = storage.read_bytes(f"{run_url}/report/report.md").decode()
    (report_artifact,) = keyed(tree["artifacts"], "-report")
    assert re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "pareto.png", report_artifact.data) == report
    trials = metrics.read_table(run_url, "sweep_trials").to_pylist()
    (table_artifact,) = keyed(tree["artifacts"], "-trials")
    table = table_artifact.data
    rows = json.loads(table) if isinstance(table, str) else table
    assert len(trials) == 2 and sorted(r["trial_id"] for r in rows) == sorted(t["trial_id"] for t in trials)
    assert sorted(a.data for a in kinds["progress"]) == [100.0, 100.0]  # training and sweep
    linked = {_linked_object(link) for link in links(tree["artifacts"])}
    expected = {t["model_url"] for t in trials} | {f"{run_url}/models/baseline.safetensors", f"{run_url}/report/report.md"}
    expected |= {url for table in ("train_epochs", "sweep_trials") for url in metrics.table_files(run_url, table)}
    assert expected <= linked
    # It ran on the cluster: the Train workers on both of its nodes, the trials on its
    # nodes. Not "a trial on each node": a trial here takes a few seconds, and when the
    # Train run's placement group is released later than that, Tune runs the second trial
    # in the first one's process (reuse_actors) on the same node. Trials on node 2 are the
    # node-loss test's premise (tests/test_ray_cluster.py).
    epochs = metrics.read_table(run_url, "train_epochs").to_pylist()
    cluster_nodes = {node for row in epochs for node in row["worker_node_ids"].split(",")}
    assert len(cluster_nodes) == 2
    assert {row["node_id"] for row in trials} <= cluster_nodes
    print("artifacts of the deployed pipeline run:")
    for artifact in sorted(tree["artifacts"], key=lambda a: (a.type, a.key or "")):
        print(f"  {artifact.type:9} {artifact.key or '-':48} {str(artifact.data).splitlines()[0][:80]}")


SCREENSHOTS = os.path.join(ROOT, ".work", "screenshots")


def _chromium() -> str:
    """Debian's chromium, driven by the playwright package (no browser download). Where
    either is missing the test skips with the reason, except under CI=true, where it fails."""
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright package is not installed (pip install -e '.[test]')"
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if reason is None and path is None:
        reason = "no chromium on PATH (Debian: apt install chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test under CI=true: {reason}")
        pytest.skip(reason)
    return path


_IMAGE_LOADED = ("() => [...document.images].some(i => i.src.startsWith('data:image/png') "
                 "&& i.complete && i.naturalWidth > 0)")  # fmt: skip


@pytest.mark.browser
def test_the_pipeline_run_reads_well_in_the_prefect_ui(served_pipeline):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    api, flow_run_id, _, _ = served_pipeline
    ui = api.removesuffix("/api")
    os.makedirs(SCREENSHOTS, exist_ok=True)
    keys = ["served-report", "served-trials", "served-train-progress", "served-sweep-progress", "served-files"]
    with sync_playwright() as playwright:
        # Chromium's sandbox refuses to run as root (CI's containers do).
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.set_default_timeout(60_000)
            # The server asks for its basic-auth string, as an operator meets it: the UI's
            # login page (a deep link before logging in only says "Authentication
            # failed"), then the run's page.
            page.goto(f"{ui}/runs", wait_until="networkidle")
            page.wait_for_url("**/login?**")
            page.screenshot(path=os.path.join(SCREENSHOTS, "login.png"))
            page.locator("input[type=password]").fill(os.environ["PREFECT_API_AUTH_STRING"])
            page.get_by_role("button", name="Login").click()
            page.wait_for_url(lambda url: "/login" not in url)
            page.goto(f"{ui}/runs/flow-run/{flow_run_id}", wait_until="networkidle")
            # Named after the sqz run id and tagged for the UI's filters.
            for text in ("served/pipeline", "model:squeezenet_small", "dataset:digits", "bits:4"):
                page.get_by_text(text, exact=True).first.wait_for()
            page.get_by_text("Artifacts", exact=True).first.click()
            for key in keys:  # on the pipeline's own flow run, not only on its subflows
                page.get_by_text(key, exact=True).first.wait_for()
            page.get_by_text("1 of 1 epochs done", exact=False).first.wait_for()
            page.screenshot(path=os.path.join(SCREENSHOTS, "pipeline-run-artifacts.png"), full_page=True)

            page.get_by_text("served-report", exact=True).first.click()
            page.wait_for_url("**/artifacts/artifact/**")
            page.wait_for_function(_IMAGE_LOADED)  # the embedded Pareto plot decoded and laid out
            widths = page.evaluate("() => [...document.images].filter(i => i.src.startsWith('data:image/png')).map(i => i.naturalWidth)")
            page.screenshot(path=os.path.join(SCREENSHOTS, "pipeline-report.png"), full_page=True)

            page.go_back(wait_until="networkidle")
            page.get_by_text("Artifacts", exact=True).first.click()
            page.get_by_text("served-files", exact=True).first.click()
            page.wait_for_url("**/artifacts/artifact/**")
            page.get_by_text("Metrics tables (Parquet)", exact=True).first.wait_for()
            page.screenshot(path=os.path.join(SCREENSHOTS, "pipeline-files.png"), full_page=True)
        finally:
            browser.close()
    assert widths and all(width > 0 for width in widths)


def test_no_credential_reaches_the_run_its_logs_or_the_servers(served_pipeline, ray_cluster, s3_endpoint):
    """The Ray token and the Prefect auth string the deployed run used (the session's, in
    every process's environment) appear nowhere it wrote: the run's objects, the worker's
    log, the Prefect server's database and log (flow-run parameters, logs, artifacts), and
    the two Ray nodes' session logs."""
    _, _, run_url, tmp_path = served_pipeline
    secrets = {"the Ray token": os.environ["RAY_AUTH_TOKEN"].encode(),
               "the Prefect auth string": os.environ["PREFECT_API_AUTH_STRING"].encode()}  # fmt: skip
    bucket, prefix = run_url.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    written = [(f"s3://{bucket}/{o['Key']}", s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read())
               for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
               for o in page.get("Contents", [])]  # fmt: skip
    server_home = os.path.join(os.environ["SQZ_TEST_SHARED_DIR"], "prefect-server")
    for folder in (str(tmp_path), server_home, ray_cluster.base_dir):
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path) and not os.path.islink(path) and not name.endswith((".sock", ".lock")):
                    try:
                        written.append((path, open(path, "rb").read()))
                    except OSError:
                        continue  # a socket or a file gone since the walk
    assert len(written) > 50 and any(path.endswith("prefect.db") for path, _ in written)
    assert any(path.endswith("raylet.out") for path, _ in written)  # the nodes' own logs are among them
    leaks = [f"{what} in {path}" for path, data in written for what, secret in secrets.items() if secret in data]
    assert not leaks, leaks
