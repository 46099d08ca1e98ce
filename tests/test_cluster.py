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
