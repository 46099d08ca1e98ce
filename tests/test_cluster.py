"""Cluster rules that hold whatever the cluster: storage every node can reach."""

from __future__ import annotations

import pytest

from sqz.distributed import cluster


def test_local_storage_is_refused_on_more_than_one_node(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "alive_nodes", lambda: 2)
    with pytest.raises(ValueError) as error:
        cluster.require_shared_storage(str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--storage {tmp_path}: a local path on a 2-node Ray cluster")
    assert "s3://" in message and "--shared-mount" in message
    cluster.require_shared_storage(str(tmp_path), shared_mount=True)  # declared shared: allowed
    cluster.require_shared_storage("s3://bucket/runs")  # object storage: every node reaches it


def test_local_storage_is_fine_on_one_node(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster, "alive_nodes", lambda: 1)
    cluster.require_shared_storage(str(tmp_path))


def test_a_sigterm_exit_inside_a_finalizer_prints_no_traceback_and_other_errors_still_do():
    """Ray's SIGTERM handler raises SystemExit; landing in a finalizer, Python would print
    it as "Exception ignored in: ..." with a traceback (seen in `make demo`'s console)."""
    import subprocess
    import sys

    probe = """
import sys
class Ends:
    def __del__(self): raise SystemExit(1)
class Fails:
    def __del__(self): raise ValueError("a real finalizer bug")
if sys.argv[1] == "quiet":
    from sqz.distributed.cluster import quiet_exit_in_finalizers
    quiet_exit_in_finalizers(); quiet_exit_in_finalizers()  # a reused worker calls it again
Ends(); Fails()
print("still running")
"""
    runs = {mode: subprocess.run([sys.executable, "-c", probe, mode], capture_output=True, text=True, timeout=120)
            for mode in ("plain", "quiet")}  # fmt: skip
    assert "SystemExit" in runs["plain"].stderr  # what the hook is for: Python prints it by default
    quiet = runs["quiet"]
    assert quiet.returncode == 0 and quiet.stdout.strip() == "still running"
    assert "SystemExit" not in quiet.stderr and quiet.stderr.count("Exception ignored") == 1
    assert "ValueError: a real finalizer bug" in quiet.stderr
