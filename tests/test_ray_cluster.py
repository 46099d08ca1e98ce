"""`sqz` on a real two-node Ray cluster (tests/ray_cluster.py) with S3 storage (moto): a
sweep through the Ray Client path (ray://) that loses a node midway, and the refusal of a
local --storage path on more than one node. The whole pipeline runs on the same cluster in
test_prefect_server, deployed and picked up by a worker; that test also shows the Train
workers placed on both nodes (one `sqz run` fewer here: ~1 min of the suite). Trials on
the second node are this sweep's premise: it waits for one there before it kills the node.

Every `sqz` command runs as a subprocess against the session's Prefect server; every wait
is bounded; the cluster's nodes are ended by their process ids (conftest's ``ray_cluster``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone

import boto3
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sqz import metrics
from sqz.compress import codec

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.integration]

SQZ = os.path.join(os.path.dirname(sys.executable), "sqz")
# One epoch of training on two workers, then 1-CPU trials (refused before any of it runs).
TINY = ["--epochs", "1", "--workers", "2", "--bits", "6", "--max-concurrent", "2", "--distill-steps", "3"]


def _finish(process: subprocess.Popen, timeout_s: float = 600) -> str:
    try:
        out, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        pytest.fail(f"the sqz command did not finish within {timeout_s:.0f} s: {(out or '')[-3000:]}")
    return out or ""


def test_local_storage_is_refused_with_one_line_on_two_nodes(ray_cluster, tmp_path):
    result = subprocess.run([SQZ, "run", "--ray-address", ray_cluster.address, "--storage", str(tmp_path / "runs"), *TINY],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("sqz run: error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "a local path on a 2-node Ray cluster" in errors[0] and "s3://" in errors[0] and "--shared-mount" in errors[0]
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def _tune_errors(log_path: str) -> list[datetime]:
    """When Tune saw a trial fail (its "Trial ... errored ... at <time>" lines), in UTC."""
    text = open(log_path, errors="replace").read()
    stamps = re.findall(r"Trial \S+ errored after \d+ iterations at (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", text)
    return [datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) for s in stamps]


def test_ray_client_sweep_survives_the_loss_of_a_node(ray_cluster, s3_bucket, s3_endpoint, trained_baseline, tmp_path):
    """`sqz sweep` of the session's trained baseline through ray://: the second node (its
    raylet and workers) is killed while trials run; the sweep still completes, interrupted
    trials rerun on the head, finished ones are not redone, every object is readable from
    S3, and the node rejoins. (`sqz run` through ray:// runs in test_prefect_server.)"""
    head = ray_cluster.head_node_id()
    second = next(n for n in ray_cluster.alive_node_ids() if n != head)
    run_url = f"{s3_bucket}/runs/node-loss"
    log_path = str(tmp_path / "sqz-sweep.log")
    with open(log_path, "w") as log:
        # Four trials, two at a time: while the first finishes, the second node runs another.
        run = subprocess.Popen([SQZ, "sweep", "--checkpoint", str(trained_baseline), "--ray-address", ray_cluster.client_address,
                                "--storage", f"{s3_bucket}/runs", "--run-id", "node-loss", "--thresholds", "0.33,0.25",
                                "--bits", "6,4", "--retrain-steps", "40", "--distill-steps", "3", "--max-concurrent", "2"],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 600
            # The kill lands once a trial has finished and while a trial that has not is at work
            # on the second node. Tune reuses a trial's process for the next trial, and a
            # finished trial's process still runs `train` for a moment after its row is
            # written (Tune has its result: killing it is no failure). So once the second
            # node has written a row, its process counts as at work on an unfinished trial
            # only when it is still (again) running `train` 5 s after that row appeared, with
            # trials left: a trial here takes longer than that, the moment well under 1 s.
            node_rows, row_seen_at = 0, time.monotonic()
            while True:
                at_work = ray_cluster.worker_node_pids("ImplicitFunc.train")
                rows = metrics.read_table(run_url, "sweep_trials").to_pylist()
                if (mine := sum(row["node_id"] == second for row in rows)) != node_rows:
                    node_rows, row_seen_at = mine, time.monotonic()
                if not node_rows:
                    unfinished = at_work if rows else set()  # the head finished one; the node's first is at work
                else:
                    unfinished = at_work if time.monotonic() - row_seen_at > 5 and len(rows) < 4 else set()
                if unfinished:
                    break
                assert run.poll() is None, open(log_path).read()[-3000:]
                assert time.monotonic() < deadline, "no trial finished within 600 s with an unfinished one on the second node"
                time.sleep(0.5)
            killed_at = datetime.now(timezone.utc)
            ray_cluster.kill_worker_node()
            done_before = metrics.read_table(run_url, "sweep_trials").to_pylist()  # also any written just before the kill
            _finish(run)
        finally:
            if run.poll() is None:
                run.kill()
    completed_at = datetime.now(timezone.utc)
    out = open(log_path).read()
    assert run.returncode == 0 and "report:" in out, out[-3000:]

    trials = {row["trial_id"]: row for row in metrics.read_table(run_url, "sweep_trials").to_pylist()}
    assert len(trials) == 4
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    bucket = s3_bucket.removeprefix("s3://")

    def written_at(url: str) -> datetime:
        return s3.head_object(Bucket=bucket, Key=url.removeprefix(f"{s3_bucket}/"))["LastModified"]

    # Finished before the kill: not redone (their files were not written again).
    for row in done_before:
        assert written_at(trials[row["trial_id"]]["model_url"]) <= killed_at, row["trial_id"]
    # Finished after the kill: on the head, the only node left.
    after = [row for trial_id, row in trials.items() if trial_id not in {r["trial_id"] for r in done_before}]
    assert after and all(row["node_id"] == head for row in after)
    errored = [t for t in _tune_errors(log_path) if t >= killed_at.replace(microsecond=0)]
    assert errored, "Tune never saw a trial fail: the kill landed between trials"  # an interrupted trial was rerun

    # Every object the run wrote is in S3 and reads back whole: models decode, tables parse.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="runs/node-loss/")
            for o in page.get("Contents", [])]  # fmt: skip
    assert len(keys) > 10
    for key in keys:
        data = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith(".sqz"):
            codec.decode(data)
        elif key.endswith(".parquet"):
            assert pq.read_table(pa.BufferReader(data)).num_rows > 0
    assert not [k for k in keys if "/.tmp" in k or ".tmp-" in k]  # no half-written temporaries

    rejoin_started = time.monotonic()
    ray_cluster.start_worker()
    rejoined = set(ray_cluster.alive_node_ids())
    assert len(rejoined) == 2 and head in rejoined and second not in rejoined  # a new node id: a fresh raylet
    print(f"node loss timeline (UTC): kill {killed_at:%H:%M:%S.%f}; Tune saw the trial fail {errored[0]:%H:%M:%S}; "
          f"sweep complete {completed_at:%H:%M:%S.%f}; node rejoined after {time.monotonic() - rejoin_started:.1f} s; "
          f"head {head[:12]}, lost node {second[:12]}; trials before the kill "
          f"{sorted((r['trial_id'], r['node_id'][:12]) for r in done_before)}, after "
          f"{sorted((r['trial_id'], r['node_id'][:12]) for r in after)}")  # fmt: skip


def _without_token(token: str | None, home: str) -> dict[str, str]:
    """This process's environment with no Ray token, or with ``token`` in its place."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = home  # an empty home: no ~/.ray/auth_token to fall back on
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return env


def _job_api(url: str, token: str | None, body: dict | None = None) -> int:
    """The HTTP status the dashboard's job API answers (GET the job list, or POST a job)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}/api/jobs/", data=data, method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_cluster_refuses_drivers_clients_and_jobs_without_its_token(ray_cluster, trained_baseline, tmp_path):
    """ShadowRay (CVE-2023-48022) ran code through an unauthenticated job API. The session's
    cluster runs with token authentication: with no token or a wrong one, a driver (GCS
    address), a Ray Client (ray://) and a job submission are refused, and `sqz` says so in
    one line naming RAY_AUTH_TOKEN before any work. With the token, all three get in (and
    `sqz run` places work on both nodes: test_prefect_server)."""
    from sqz.cluster_access import _probe

    token, wrong = os.environ["RAY_AUTH_TOKEN"], "0" * 64
    # What Ray's own drivers and clients call first (GetClusterId: "Failed to get cluster ID
    # from GCS server: Unauthenticated" is what ray.init logs on a wrong token), answered by
    # the cluster's GCS and Ray Client server themselves.
    for address in (ray_cluster.address, ray_cluster.client_address):
        assert _probe(address, token) is None, address
        for attempt in (None, wrong):
            assert _probe(address, attempt) == grpc.StatusCode.UNAUTHENTICATED, (address, attempt is None)
    # A raw Ray driver and client in token mode with no token: refused at once.
    connect = "import sys, ray; ray.init(address=sys.argv[1])"
    for address in (ray_cluster.address, ray_cluster.client_address):
        result = subprocess.run([sys.executable, "-c", connect, address], env=_without_token(None, str(tmp_path)), capture_output=True,
                                text=True, timeout=120)  # fmt: skip
        assert result.returncode != 0 and "AuthenticationError" in result.stderr, result.stderr[-2000:]

    # The job API: nothing listed, nothing run without the token.
    marker = tmp_path / "ran-without-a-token"
    job = {"entrypoint": f"touch {marker}"}
    assert _job_api(ray_cluster.dashboard_url, token) == 200
    assert _job_api(ray_cluster.dashboard_url, None) == 401 and _job_api(ray_cluster.dashboard_url, wrong) == 403
    assert _job_api(ray_cluster.dashboard_url, None, job) == 401 and _job_api(ray_cluster.dashboard_url, wrong, job) == 403
    time.sleep(2)
    assert not marker.exists()

    # sqz itself: one line naming RAY_AUTH_TOKEN, no traceback, nothing written.
    for address, attempt in ((ray_cluster.client_address, None), (ray_cluster.address, wrong)):
        storage_dir = tmp_path / f"runs-{attempt is None}"
        started = time.monotonic()
        result = subprocess.run([SQZ, "sweep", "--checkpoint", str(trained_baseline), "--ray-address", address,
                                 "--storage", str(storage_dir), "--thresholds", "0.33", "--bits", "6"],
                                env=_without_token(attempt, str(tmp_path)), cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
        seconds = time.monotonic() - started
        errors = [line for line in result.stderr.splitlines() if line.startswith("sqz sweep: error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
        assert "RAY_AUTH_TOKEN" in errors[0] and address in errors[0], errors[0]
        assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
        assert wrong not in result.stderr + result.stdout and token not in result.stderr + result.stdout
        assert not storage_dir.exists() or not any(storage_dir.rglob("*.sqz"))
        print(f"refused in {seconds:.1f} s: {errors[0]}")
