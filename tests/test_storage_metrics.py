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
