"""The runs under a storage root: list them, describe one, name its outputs, delete one.

A folder is a run when it holds ``manifest.json`` (written first by every command that makes a run),
so listing a root never mistakes some other folder for a run, and deleting refuses to
remove a folder that is not one.
"""

from __future__ import annotations

from typing import Any

from sqz import metrics, storage
from sqz.runs.layout import RunLayout
from sqz.runs.manifest import read_manifest

__all__ = ["list_runs", "describe_run", "run_outputs", "delete_run"]


def _is_run(run_url: str) -> bool:
    return storage.exists(RunLayout(run_url).manifest_url)


def _summary(run_url: str) -> dict[str, Any]:
    manifest = read_manifest(run_url)
    files = storage.walk(run_url)
    return {
        "run_id": RunLayout(run_url).run_id,
        "run_url": run_url,
        "kind": manifest["kind"],
        "model": (manifest["arch"] or {}).get("name"),
        "data": manifest["config"].get("data", {}).get("url"),
        "epochs": metrics.read_table(run_url, "train_epochs").num_rows,
        "trials": metrics.read_table(run_url, "sweep_trials").num_rows,
        "reported": storage.exists(RunLayout(run_url).report_url),
        "files": len(files),
        "bytes": sum(size for _, size in files),
    }


def list_runs(root_url: str) -> list[dict[str, Any]]:
    """A summary of every run directly under ``root_url``, by run id."""
    storage.check_url(root_url, option="URL")
    runs = []
    for name, is_folder in storage.list_dir(root_url):
        run_url = storage.join(root_url, name)
        if is_folder and not name.startswith(".") and _is_run(run_url):
            runs.append(_summary(run_url))
    return runs


def _require_run(run_url: str) -> None:
    storage.check_url(run_url, option="URL")
    if not _is_run(run_url):
        raise FileNotFoundError(f"{run_url} is not a run folder (no manifest.json)")


def describe_run(run_url: str) -> dict[str, Any]:
    """The run's summary, its manifest and every metrics table's rows."""
    _require_run(run_url)
    tables = {name: metrics.read_table(run_url, name).to_pylist() for name in metrics.SCHEMAS}
    return {**_summary(run_url), "manifest": read_manifest(run_url), "tables": tables}


def run_outputs(run_url: str) -> list[tuple[str, str]]:
    """(kind, URL) of the files a reader of the run wants: compressed models, the
    baseline, the Parquet files of every table, the report and its plot."""
    outputs = [("model", storage.join(run_url, "models", name))
               for name, _ in storage.walk(storage.join(run_url, "models"))
               if name.endswith((".sqz", ".safetensors")) and not name.startswith(".")]  # fmt: skip
    for table in metrics.SCHEMAS:
        outputs += [("parquet", url) for url in metrics.table_files(run_url, table)]
    report_folder = storage.join(run_url, "report")
    outputs += [("report", storage.join(report_folder, name)) for name, _ in storage.walk(report_folder)
                if name in ("report.md", "pareto.png")]  # fmt: skip
    return outputs


def delete_run(run_url: str) -> int:
    """Delete the run folder and everything in it; returns the number of files removed."""
    _require_run(run_url)
    removed = len(storage.walk(run_url))
    storage.delete_tree(run_url)
    return removed
