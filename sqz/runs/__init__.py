"""Runs: where a run lives (layout), its record (manifest, run ids), placing a command's
run folder (claims), and the runs under a storage root (catalog)."""

from sqz.runs.layout import RunLayout
from sqz.runs.manifest import (SCHEMA_VERSION, derive_run_id, pipeline_run_id, read_manifest, sweep_run_id,
                               train_run_id, upgrade_manifest, write_manifest)  # fmt: skip

__all__ = ["RunLayout", "SCHEMA_VERSION", "derive_run_id", "pipeline_run_id", "train_run_id", "sweep_run_id",
           "read_manifest", "upgrade_manifest", "write_manifest"]  # fmt: skip
