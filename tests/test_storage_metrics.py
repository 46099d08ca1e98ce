import os

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
