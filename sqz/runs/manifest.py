"""The run record: one manifest schema and one run-id derivation for every command.

``manifest.json`` (schema_version 2), the same keys whatever wrote it::

    schema_version  2
    run_id, kind    the folder's name; "pipeline" (`sqz run`), "train" or "sweep"
                    (`sqz sweep` and `sqz sensitivity` share a checkpoint's folder)
    sqz_version, python
    config          the configs that shaped the run: data, train, sweep, storage_url
                    (a sweep's "train" is its checkpoint's training, what lr rewinding replays)
    arch            {"name", "kwargs"}: what models/baseline.safetensors loads into
    source          sweeps: {"checkpoint_url", "checkpoint_sha256"} of the swept weights
    trial_settings  sweeps: the settings its trials were made with (kept across reruns)
    data_fingerprint  digest of the dataset version, where it is cheap to know

Manifests written before the version field (three shapes: pipeline, train, sweep) are
upgraded when read, so old run folders keep working.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any

from sqz import __version__, storage
from sqz.config import config_to_dict

__all__ = [
    "SCHEMA_VERSION", "derive_run_id", "pipeline_run_id", "train_run_id", "sweep_run_id", "new_manifest",
    "save_manifest", "write_manifest", "read_manifest", "upgrade_manifest", "check_run_id", "data_fingerprint",
]  # fmt: skip

SCHEMA_VERSION = 2
_PREFIX = {"pipeline": "run", "train": "train", "sweep": "sweep"}


def derive_run_id(kind: str, payload: dict[str, Any]) -> str:
    """``<prefix>-<12 hex>`` over what makes the run itself: the same payload gives the
    same id, so a rerun of the same command finds (and resumes) its folder."""
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{_PREFIX[kind]}-{digest[:12]}"


# Config fields added after runs were made, with the value that behaves as before the
# field existed: at that value they are left out of the hash, so older runs keep their ids.
_LATER_FIELDS: dict[tuple[str, ...], Any] = {("sweep", "quant", "assign"): "nearest"}


def pipeline_run_id(config: Any) -> str:
    """A `sqz run`: its whole config except the storage root (moving a run keeps its id)."""
    payload = config_to_dict(config)
    payload.pop("storage_url", None)
    for (*path, key), old_behaviour in _LATER_FIELDS.items():
        holder = payload
        for part in path:
            holder = holder.get(part, {})
        if holder.get(key, old_behaviour) == old_behaviour:
            holder.pop(key, None)
    return derive_run_id("pipeline", payload)


def train_run_id(data: Any, train: Any) -> str:
    """A `sqz train`: its data and training configs."""
    return derive_run_id("train", {"data": config_to_dict(data), "train": config_to_dict(train)})


def sweep_run_id(checkpoint_sha256: str, arch: dict[str, Any], data: Any) -> str:
    """A `sqz sweep` / `sqz sensitivity`: the checkpoint's bytes, the model and the data."""
    return derive_run_id("sweep", {"checkpoint_sha256": checkpoint_sha256, "arch": arch, "data": config_to_dict(data)})


def check_run_id(run_id: str | None) -> None:
    if run_id is not None and not run_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"--run-id: {run_id!r} must be letters, digits, '-' or '_'")


def data_fingerprint(data_url: str) -> str:
    """Digest identifying the dataset version (the digits' bytes, a prepared dataset's
    plan, or the folder's listing)."""
    digest = hashlib.sha256()
    if data_url == "digits":
        from sqz.data.builtin import digits_arrays

        digest.update(digits_arrays()[0].tobytes())
    elif data_url == "synthetic":
        digest.update(b"synthetic")
    elif not storage.is_local(data_url) or os.path.exists(os.path.join(storage.local_path(data_url), "dataset.json")):
        from sqz.data import read_manifest as read_dataset_manifest

        # A prepared dataset (also on S3): its plan digest names every file, size and label.
        digest.update(read_dataset_manifest(data_url)["plan_digest"].encode())
    else:
        root = storage.local_path(data_url)
        for folder, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{os.path.relpath(os.path.join(folder, name), root)}:{stat.st_size}".encode())
    return digest.hexdigest()[:16]


def new_manifest(run_id: str, kind: str, *, config: dict[str, Any], arch: dict[str, Any] | None,
                 **extra: Any) -> dict[str, Any]:  # fmt: skip
    """A manifest of the one schema; ``extra``: source, trial_settings, data_fingerprint."""
    if kind not in _PREFIX:
        raise ValueError(f"kind: must be one of {sorted(_PREFIX)}, got {kind!r}")
    unknown = set(extra) - {"source", "trial_settings", "data_fingerprint"}
    if unknown:
        raise ValueError(f"manifest: unknown keys {sorted(unknown)}")
    return {"schema_version": SCHEMA_VERSION, "run_id": run_id, "kind": kind, "sqz_version": __version__,
            "python": platform.python_version(), "config": config, "arch": arch, **extra}  # fmt: skip


def save_manifest(run_url: str, manifest: dict[str, Any]) -> None:
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"manifest: schema_version must be {SCHEMA_VERSION}, got {manifest.get('schema_version')!r}")
    storage.write_bytes(storage.join(run_url, "manifest.json"), json.dumps(manifest, indent=2, sort_keys=True).encode())


def _arch_of_train(train: dict[str, Any]) -> dict[str, Any] | None:
    if not train.get("model"):
        return None
    kwargs = {"num_classes": train["num_classes"]} if "num_classes" in train else {}
    return {"name": train["model"], "kwargs": kwargs}


def write_manifest(layout: Any, config: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A `sqz run` pipeline's manifest, from its PipelineConfig."""
    values = config_to_dict(config)
    manifest = new_manifest(layout.run_id, "pipeline", config=values, arch=_arch_of_train(values["train"]),
                            data_fingerprint=data_fingerprint(config.data.url), **(extra or {}))  # fmt: skip
    save_manifest(layout.run_url, manifest)
    return manifest


def upgrade_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """A manifest of any version as schema_version 2 (older ones had no version field)."""
    if manifest.get("schema_version") == SCHEMA_VERSION:
        return manifest
    if "schema_version" in manifest:
        raise ValueError(f"manifest: unknown schema_version {manifest['schema_version']!r}")
    kind = manifest.get("kind") or "pipeline"  # `sqz run` wrote no kind
    config = dict(manifest.get("config") or {})
    if kind == "sweep":  # sweeps kept data (and the checkpoint's train) at the top level
        for key in ("data", "train"):
            if key in manifest:
                config.setdefault(key, manifest[key])
    upgraded = {"schema_version": SCHEMA_VERSION, "run_id": manifest.get("run_id"), "kind": kind,
                "sqz_version": manifest.get("sqz_version"), "python": manifest.get("python"), "config": config,
                "arch": manifest.get("arch") or _arch_of_train(config.get("train", {}))}  # fmt: skip
    if "checkpoint_sha256" in manifest:
        upgraded["source"] = {"checkpoint_url": manifest.get("checkpoint_url"), "checkpoint_sha256": manifest["checkpoint_sha256"]}
    for key in ("trial_settings", "data_fingerprint"):
        if key in manifest:
            upgraded[key] = manifest[key]
    return upgraded


def read_manifest(run_url: str) -> dict[str, Any]:
    """The run's manifest in the current schema (older ones upgraded on the fly)."""
    return upgrade_manifest(json.loads(storage.read_bytes(storage.join(run_url, "manifest.json"))))
