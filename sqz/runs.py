"""The run's folder layout and its manifest.

Everything a run writes lives under ``<storage_url>/<run_id>/``::

    manifest.json   config, code version, data fingerprint
    train/          Ray Train storage (checkpoints; resumable)
    models/         baseline.safetensors, <trial>.sqz
    metrics/<table>/*.parquet
    report/report.md
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from typing import Any

from sqz import __version__, storage
from sqz.config import PipelineConfig, config_to_dict, derive_run_id

__all__ = ["RunLayout", "write_manifest", "read_manifest"]


@dataclass(frozen=True)
class RunLayout:
    run_url: str

    @classmethod
    def for_config(cls, config: PipelineConfig, run_id: str | None = None) -> "RunLayout":
        return cls(storage.join(storage.absolute(config.storage_url), run_id or derive_run_id(config)))

    @property
    def run_id(self) -> str:
        return self.run_url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def manifest_url(self) -> str:
        return storage.join(self.run_url, "manifest.json")

    @property
    def train_url(self) -> str:
        return storage.join(self.run_url, "train")

    @property
    def baseline_url(self) -> str:
        return storage.join(self.run_url, "models", "baseline.safetensors")

    def model_url(self, name: str) -> str:
        return storage.join(self.run_url, "models", f"{name}.sqz")

    @property
    def report_url(self) -> str:
        return storage.join(self.run_url, "report", "report.md")


def _data_fingerprint(data_url: str) -> str:
    """Digest identifying the dataset version (the digits' bytes, a prepared dataset's
    plan, or the folder's listing)."""
    import os

    from sqz.data import is_prepared, read_manifest

    digest = hashlib.sha256()
    if data_url == "digits":
        from sklearn.datasets import load_digits

        digest.update(load_digits().images.tobytes())
    elif data_url == "synthetic":
        digest.update(b"synthetic")
    elif not storage.is_local(data_url) or is_prepared(data_url):
        # A prepared dataset (also on S3): its plan digest names every file, size and label.
        digest.update(read_manifest(data_url)["plan_digest"].encode())
    else:
        root = storage.local_path(data_url)
        for folder, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{os.path.relpath(os.path.join(folder, name), root)}:{stat.st_size}".encode())
    return digest.hexdigest()[:16]


def write_manifest(layout: RunLayout, config: PipelineConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    manifest = {
        "run_id": layout.run_id,
        "sqz_version": __version__,
        "python": platform.python_version(),
        "config": config_to_dict(config),
        "data_fingerprint": _data_fingerprint(config.data.url),
        **(extra or {}),
    }
    storage.write_bytes(layout.manifest_url, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def read_manifest(run_url: str) -> dict[str, Any]:
    return json.loads(storage.read_bytes(storage.join(run_url, "manifest.json")))
