import os
import re

import pyarrow.dataset as ds
import pytest

from sqz import metrics, storage
from sqz.report import choose_variant, pareto_frontier, render_report


def test_local_write_is_atomic_and_leaves_no_temporaries(tmp_path):
    url = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(url, b"hello")
    storage.write_bytes(url, b"world!")
    assert storage.read_bytes(url) == b"world!" and storage.size_of(url) == 6
    assert os.listdir(tmp_path / "a") == ["b.bin"]


def test_resolver_schemes():
    fs, path = storage.resolve("relative/dir")
    assert fs.type_name == "local" and os.path.isabs(path)
    assert storage.resolve("file:///tmp/x")[1] == "/tmp/x"
    with pytest.raises(ValueError, match="unsupported scheme 'gs'"):
        storage.resolve("gs://bucket/x")
    with pytest.raises(ValueError, match="names no bucket"):
        storage.check_url("s3:///x")
    assert storage.absolute("s3://b/p") == "s3://b/p"


def test_missing_object_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such object"):
        storage.read_bytes(str(tmp_path / "nope"))


@pytest.mark.integration
def test_s3_roundtrip_through_moto(s3_bucket):
    url = f"{s3_bucket}/runs/x/models/m.bin"
    storage.write_bytes(url, b"\x00" * 1000)
    assert storage.exists(url) and storage.size_of(url) == 1000
    assert storage.read_bytes(url) == b"\x00" * 1000
    fs, path = storage.resolve(url)
    assert fs.type_name == "s3" and path == url.removeprefix("s3://")


def _trial(i, size, top1):
    return {"run_id": "r", "trial_id": f"t{i}", "prune_mode": "std", "threshold": 0.1 * i, "bits": 8,
            "density": 0.5, "size_bytes": size, "top1": top1, "top5": 99.0,
            "ratio_vs_alexnet_32bit": 244_400_000 / size, "model_url": f"m{i}.sqz", "wall_s": 1.0}  # fmt: skip


@pytest.mark.parametrize("where", ["local", "s3"])
def test_metrics_one_file_per_writer_read_as_one_table(where, tmp_path, request):
    run_url = str(tmp_path / "run") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/run"
    assert metrics.read_table(run_url, "sweep_trials").num_rows == 0
    metrics.write_rows(run_url, "sweep_trials", [_trial(1, 100, 90.0)], writer_id="t1")
    metrics.write_rows(run_url, "sweep_trials", [_trial(2, 50, 80.0)], writer_id="t2")
    metrics.write_rows(run_url, "sweep_trials", [_trial(2, 50, 81.0)], writer_id="t2")  # rerun replaces
    table = metrics.read_table(run_url, "sweep_trials")
    assert sorted(table.column("top1").to_pylist()) == [81.0, 90.0]
    if where == "local":  # any Parquet reader sees the folder as one dataset
        assert ds.dataset(os.path.join(run_url, "metrics", "sweep_trials")).count_rows() == 2


def test_metrics_reject_unknown_tables_and_unsafe_names(tmp_path):
    with pytest.raises(ValueError, match="unknown metrics table"):
        metrics.write_rows(str(tmp_path), "nope", [], writer_id="x")
    with pytest.raises(ValueError, match="safe file name"):
        metrics.write_rows(str(tmp_path), "sweep_trials", [], writer_id="../escape")


def test_pareto_and_choice():
    trials = [_trial(1, 100, 93.0), _trial(2, 80, 92.5), _trial(3, 60, 90.0), _trial(4, 90, 92.0)]
    assert [t["trial_id"] for t in pareto_frontier(trials)] == ["t3", "t2", "t1"]
    assert choose_variant(trials, baseline_top1=93.2, max_drop=1.0)["trial_id"] == "t2"
    assert choose_variant(trials, baseline_top1=99.0, max_drop=1.0) is None
    text = render_report(run_id="r", baseline={"model": "m", "parameters": 10, "size_bytes": 400,
                                               "top1": 93.2, "top5": 99.0},
                         trials=trials, chosen=trials[1], max_drop=1.0)  # fmt: skip
    assert "t2 *" in text and "80 bytes" in text


# --- transient S3 errors, the runs catalog -------------------------------------------------

import pickle  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from processes import ListeningSockets, is_loopback  # noqa: E402
from s3_front import S3Front  # noqa: E402

from sqz.cli import main  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_front(s3_endpoint, s3_bucket):
    """An HTTP front before moto that can inject S3 errors; the bucket exists behind it."""
    fronts = []

    def start(**faults):
        fronts.append(S3Front(_free_port(), s3_endpoint, **faults).start())
        return fronts[-1]

    yield start
    for front in fronts:
        front.stop()


@pytest.mark.parametrize("message, transient", [
    ("When reading information for key 'x' in bucket 'b': AWS Error NETWORK_CONNECTION during HeadObject "
     "operation: curlCode: 7, Could not connect to server", True),
    ("When uploading object with key 'y' in bucket 'b': AWS Error SLOW_DOWN during PutObject operation: "
     "Please reduce your request rate.", True),
    ("When reading information for key 'x' in bucket 'b': AWS Error UNKNOWN (HTTP status 503) during "
     "HeadObject operation: No response body.", True),
    ("When uploading object with key 'y' in bucket 'b': AWS Error ACCESS_DENIED during PutObject operation: no", False),
    ("When uploading object with key 'y' in bucket 'b': AWS Error UNKNOWN (HTTP status 400) during PutObject", False),
])  # fmt: skip
def test_transient_s3_errors_are_told_apart(message, transient):
    assert storage.is_transient(OSError(message)) is transient
    assert not storage.is_transient(FileNotFoundError(message))


@pytest.mark.integration
def test_s3_writes_and_reads_outlast_more_errors_than_one_request_retries(s3_bucket, s3_front, monkeypatch):
    # More consecutive 503 SlowDown answers than pyarrow's per-request attempts: only
    # sqz's own retry of the whole operation gets the write through. (Two attempts per
    # request here instead of ten, so the test takes seconds, not a minute.)
    monkeypatch.setattr(storage, "S3_REQUEST_ATTEMPTS", 2)
    storage._s3_filesystem.cache_clear()
    try:
        front = s3_front(fail_first=storage.S3_REQUEST_ATTEMPTS + 5)
        url = f"{s3_bucket}/runs/r/models/m.bin"
        storage.write_bytes(url, b"\x01" * 5000, endpoint_url=front.url)
        assert front.requests > storage.S3_REQUEST_ATTEMPTS + 5
        front.fail_left = storage.S3_REQUEST_ATTEMPTS + 5
        assert storage.read_bytes(url, endpoint_url=front.url) == b"\x01" * 5000
        # Atomic: the temporary key was moved, nothing else is under the folder.
        assert storage.walk(f"{s3_bucket}/runs/r/models") == [("m.bin", 5000)]
    finally:
        storage._s3_filesystem.cache_clear()  # later tests get the usual attempts


@pytest.mark.integration
def test_s3_access_denied_is_not_retried(s3_bucket, s3_front):
    front = s3_front(fail_first=1000, fail_status=403, fail_code="AccessDenied")
    start = time.monotonic()
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        storage.write_bytes(f"{s3_bucket}/x.bin", b"x", endpoint_url=front.url)
    assert front.requests == 1 and time.monotonic() - start < 5


@pytest.mark.integration
def test_s3_endpoint_down_then_back_mid_operation(s3_bucket, s3_front):
    front = s3_front()
    url = f"{s3_bucket}/runs/r/a.bin"
    storage.write_bytes(url, b"before", endpoint_url=front.url)
    front.stop()
    import threading

    restart = threading.Timer(3.0, front.start)  # down for 3 s: connections refused
    restart.start()
    try:
        storage.write_bytes(url, b"after", endpoint_url=front.url)
    finally:
        restart.join()
    assert storage.read_bytes(url, endpoint_url=front.url) == b"after"


def test_s3_filesystem_keeps_its_retries_and_no_credentials_when_pickled(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPICKLETEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "pickle-secret-value")
    fs, _ = storage.resolve("s3://bucket/x", endpoint_url="http://127.0.0.1:1", region="us-east-1")
    data = pickle.dumps(fs)  # what Ray ships to each Train worker and Tune trial
    assert b"pickle-secret-value" not in data and b"AKIDPICKLETEST" not in data
    copy = pickle.loads(data)
    assert type(copy) is type(fs) and copy._max_attempts == storage.S3_REQUEST_ATTEMPTS


def _fake_run(root, run_id):
    from sqz.config import PipelineConfig
    from sqz.runs import RunLayout, write_manifest

    layout = RunLayout(storage.join(root, run_id))
    write_manifest(layout, PipelineConfig(storage_url=root))
    metrics.write_rows(layout.run_url, "sweep_trials", [_trial(1, 100, 90.0)], writer_id="t1")
    storage.write_bytes(layout.model_url("t1"), b"sqz-bytes")
    return layout.run_url


@pytest.mark.parametrize("where", ["local", "s3"])
def test_runs_ls_show_rm(where, tmp_path, request, capsys):
    root = str(tmp_path / "runs") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/runs"
    first, second = _fake_run(root, "run-a"), _fake_run(root, "run-b")
    storage.write_bytes(storage.join(root, "not-a-run", "x.txt"), b"x")  # no manifest: never listed or removed
    assert main(["runs", "ls", root]) == 0
    out = capsys.readouterr().out
    assert "run-a" in out and "run-b" in out and "not-a-run" not in out and "2 run(s)" in out
    assert main(["runs", "show", first]) == 0
    out = capsys.readouterr().out
    assert '"run_id": "run-a"' in out and "sweep_trials: 1 row(s)" in out and "t1" in out
    assert main(["runs", "rm", second]) == 0
    assert "deleted" in capsys.readouterr().out and not storage.exists(second + "/manifest.json")
    assert main(["runs", "rm", storage.join(root, "not-a-run")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert storage.exists(storage.join(root, "not-a-run", "x.txt"))
    assert main(["runs", "ls", root]) == 0 and "1 run(s)" in capsys.readouterr().out


def _wait_for(condition, timeout, what, process=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the run exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.integration
def test_s3_run_survives_a_server_restart_and_writes_no_secret(s3_endpoint, tmp_path, request):
    """`sqz run` on S3; mid-run (the first epoch's row is written, its checkpoint is on
    its way) the S3 endpoint stops: open connections are reset, new ones refused for
    8 s; then it starts again on the same port. moto keeps its objects in memory, so
    the endpoint process in front of it is what restarts, while the objects persist as
    on a real store's disks. The run must finish with every object present and
    readable, and nothing it wrote may contain the secret key, the Ray token or the
    Prefect auth string. Run as the bare console script is (no single-machine switch
    for Ray in its environment), every process it starts listens on loopback only."""
    import io
    import json
    import shutil
    import subprocess
    import sys
    import tempfile
    import uuid

    import boto3
    import pyarrow.parquet as pq

    from sqz.compress import decode

    secret, key_id = f"sqz-secret-{uuid.uuid4().hex}", f"AKIDSQZ{uuid.uuid4().hex[:12].upper()}"
    bucket = f"sqz-{uuid.uuid4().hex[:8]}"
    direct = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")  # fmt: skip
    direct.create_bucket(Bucket=bucket)
    front = S3Front(_free_port(), s3_endpoint).start()
    workdir = tempfile.mkdtemp(prefix="s", dir="/tmp")  # short: Ray's temp dir (with its logs) lands inside
    request.addfinalizer(lambda: shutil.rmtree(workdir, ignore_errors=True))
    # The run's local Ray with a token of its own and its Prefect API with a basic-auth
    # string of its own: neither may appear in anything the run writes either.
    ray_token, prefect_auth = f"sqz-ray-token-{uuid.uuid4().hex}", f"sqz:prefect-auth-{uuid.uuid4().hex}"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": front.url, "PREFECT_HOME": os.path.join(workdir, "prefect"),
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_token,
           "PREFECT_SERVER_API_AUTH_STRING": prefect_auth, "PREFECT_API_AUTH_STRING": prefect_auth}  # fmt: skip
    # Its own ephemeral API, not the session's server: Prefect's database (logs, artifacts,
    # parameters) lands in the workdir, among the files checked for the secret below. And
    # no single-machine switch for Ray, as in a new user's shell: the run is the bare
    # console script's, whose every listening socket is recorded (loopback only, below).
    env.pop("PREFECT_API_URL", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out, err = open(tmp_path / "stdout.txt", "wb"), open(tmp_path / "stderr.txt", "wb")
    args = ["--storage", f"s3://{bucket}/runs", "--epochs", "1", "--workers", "1", "--prune-mode", "std", "--thresholds", "0.3,0.9",
            "--bits", "4", "--retrain-epochs", "0", "--finetune-epochs", "0", "--distill-steps", "0", "--run-id", "restarted"]  # fmt: skip
    process = subprocess.Popen([sys.executable, "-m", "sqz.cli", "run", *args], cwd=workdir, env=env, stdout=out, stderr=err)
    listening = ListeningSockets(process)
    prefix = "runs/restarted/"
    try:
        def first_epoch_written():
            listing = direct.list_objects_v2(Bucket=bucket, Prefix=prefix + "metrics/train_epochs/")
            return any(o["Key"].endswith(".parquet") for o in listing.get("Contents", []))

        _wait_for(first_epoch_written, 600, "train_epochs row", process)
        front.stop()
        objects_at_stop = direct.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0)
        time.sleep(8)
        front.start()
        assert process.wait(timeout=900) == 0, (tmp_path / "stderr.txt").read_text()[-5000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        out.close(), err.close()
        front.stop()

    # The embedded default (a local Ray, Prefect's temporary API) listened on loopback only.
    listeners = listening.stop()
    outside = {address: who for address, who in listeners.items() if not is_loopback(address[0])}
    assert not outside, f"the run listened outside loopback: {outside}"
    assert any("gcs_server" in who for who in listeners.values()) and any("uvicorn" in who for who in listeners.values())
    print(f"{len(listeners)} listening sockets, on {sorted({host for host, _ in listeners})}")
    stdout, stderr = (tmp_path / "stdout.txt").read_text(), (tmp_path / "stderr.txt").read_text()
    assert "chosen:" in stdout, stdout[-3000:]
    retried = [line for line in stderr.splitlines() if "sqz storage:" in line]
    keys = {o["Key"]: o["Size"] for page in direct.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])}  # fmt: skip
    print(f"S3 endpoint down 8 s after the first epoch ({objects_at_stop} objects then, {front.cut} open "
          f"connections cut); {len(keys)} objects at the end; {len(retried)} sqz storage retries logged",
          *retried[:5], sep="\n  ")  # fmt: skip
    names = {k.removeprefix(prefix) for k in keys if k.startswith(prefix)}
    expected = {"manifest.json", "models/baseline.safetensors", "models/std0.3-b4.sqz", "models/std0.9-b4.sqz",
                "metrics/train_epochs/epoch-0000.parquet", "metrics/sweep_trials/compacted.parquet",
                "report/report.md"}  # fmt: skip
    assert expected <= names
    assert any(n.startswith("train/ray-train/checkpoint_") for n in names)
    assert not [n for n in names if ".tmp-" in n.rsplit("/", 1)[-1]]  # every temporary key was moved

    bodies = {}
    for key, size in keys.items():  # every object, read back whole
        body = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert len(body) == size, key
        if key.endswith(".parquet"):
            pq.read_table(io.BytesIO(body))
        elif key.endswith(".sqz"):
            decode(body)
        elif key.endswith(("manifest.json", "progress.json")) or "/prefect-results/" in key and size:
            json.loads(body)  # what sqz writes as JSON (Ray Tune's own state files are pickles)
        bodies[key] = body
    # After the sweep its per-trial row files were folded into one compacted file.
    trial_rows = pq.read_table(io.BytesIO(bodies[prefix + "metrics/sweep_trials/compacted.parquet"])).to_pylist()
    assert sorted(row["trial_id"] for row in trial_rows) == ["std0.3-b4", "std0.9-b4"]
    assert all(row["size_bytes"] == keys[row["model_url"].removeprefix(f"s3://{bucket}/")] for row in trial_rows)

    # Everything the run wrote: objects, its output, Prefect's database (logs, artifacts,
    # parameters), Ray's session logs.
    written = list(bodies.items()) + [("stdout", (tmp_path / "stdout.txt").read_bytes()),
                                      ("stderr", (tmp_path / "stderr.txt").read_bytes())]  # fmt: skip
    for folder, _, files in os.walk(workdir):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                written.append((path, open(path, "rb").read()))
    # Prefect's database (logs, artifacts, parameters) and Ray's session logs are among them.
    assert any(path.endswith("prefect.db") for path, _ in written)
    assert any("/.ray/" in path and path.endswith(".log") for path, _ in written)
    for where, data in written:
        assert secret.encode() not in data, f"the secret key is in {where}"
        assert ray_token.encode() not in data, f"the Ray token is in {where}"
        assert prefect_auth.encode() not in data, f"the Prefect auth string is in {where}"
        # The UI's presigned links carry the access key id in X-Amz-Credential, as SigV4
        # presigning requires (never the secret); anywhere else it must not appear.
        outside_links = re.sub(rb"X-Amz-Credential=" + re.escape(key_id.encode()) + rb"%2F", b"X-Amz-Credential=%2F", data)
        assert key_id.encode() not in outside_links, f"the access key id is in {where}, outside a presigned link"
