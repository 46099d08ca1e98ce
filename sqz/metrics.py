"""Parquet metrics tables: one schema per table, one file per writer, read as a dataset.

Each writer (a training epoch, a sweep trial) writes its own file under
``<run_url>/metrics/<table>/``, so concurrent trials never overwrite each other and a
rerun that repeats a writer replaces its file instead of duplicating rows. The folder is
a plain Parquet dataset: pyarrow.dataset, pandas, duckdb and polars read it as one table.
Files are written through ``sqz.storage`` (temporary name, then the final one; retried
on transient S3 errors), so a reader never meets half a file.

After a sweep, ``sqz.runs.compact`` folds a table's writer files into one
``compacted.parquet`` (its footer lists the writers and their row counts) and deletes
them. Readers here take each writer's rows from one place: its own file if it (still, or
again) exists, else the compacted file; so a compaction cut short anywhere changes no row.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sqz import storage

__all__ = ["SCHEMAS", "COMPACTED", "WRITERS_KEY", "write_rows", "read_writer_rows", "read_table", "read_compacted",
           "table_url", "table_files"]

SCHEMAS: dict[str, pa.Schema] = {
    "train_epochs": pa.schema([
        ("run_id", pa.string()), ("epoch", pa.int32()), ("lr", pa.float64()), ("loss", pa.float64()),
        ("top1", pa.float64()), ("top5", pa.float64()), ("images_per_s", pa.float64()),
        ("data_wait_s", pa.float64()), ("wall_s", pa.float64()),
        # Where the epoch ran (Ray node ids): rank 0's, and every worker's (sorted, comma-joined).
        ("node_id", pa.string()), ("worker_node_ids", pa.string()),
    ]),
    "sweep_trials": pa.schema([
        ("run_id", pa.string()), ("trial_id", pa.string()), ("prune_mode", pa.string()),
        ("threshold", pa.float64()), ("bits", pa.int32()), ("density", pa.float64()),
        ("size_bytes", pa.int64()), ("top1", pa.float64()), ("top5", pa.float64()),
        ("ratio_vs_alexnet_32bit", pa.float64()), ("model_url", pa.string()), ("wall_s", pa.float64()),
        # Per-layer trials only (null for grid points): the target they were chosen for and
        # their {layer: {"threshold", "bits"}} settings as JSON.
        ("target", pa.string()), ("layer_settings", pa.string()),
        ("node_id", pa.string()),  # the Ray node the trial ran on (null outside Ray)
        # Where the trial's time went: JSON {"started_at": Unix time, phase: seconds, ...}
        # (sqz.trial.PhaseClock; null in tables written before it was recorded).
        ("phase_s", pa.string()),
    ]),
    # Trials a scheduler (ASHA) stopped during retraining: finished decisions, not rerun.
    "sweep_stopped": pa.schema([
        ("run_id", pa.string()), ("trial_id", pa.string()), ("retrain_epochs_done", pa.int32()),
        ("top1", pa.float64()), ("reason", pa.string()),
    ]),
    # Per-layer sensitivity on a fixed validation subset. kind: "baseline" (nothing changed),
    # "prune" (only this layer pruned at threshold), "bits" (only this layer quantized at
    # bits), "size" (this layer's encoded bytes when pruned at threshold and quantized at
    # bits), "file" (the whole .sqz file's bytes with every layer at threshold and bits).
    "sensitivity": pa.schema([
        ("run_id", pa.string()), ("layer", pa.string()), ("kind", pa.string()), ("prune_mode", pa.string()),
        ("threshold", pa.float64()), ("bits", pa.int32()), ("weights", pa.int64()), ("nonzero", pa.int64()),
        ("size_bytes", pa.int64()), ("correct", pa.int64()), ("images", pa.int64()),
        ("top1", pa.float64()), ("top5", pa.float64()), ("wall_s", pa.float64()),
    ]),
    "compressed_layers": pa.schema([
        ("run_id", pa.string()), ("model", pa.string()), ("layer", pa.string()), ("shape", pa.string()),
        ("weights", pa.int64()), ("nonzero", pa.int64()), ("bits", pa.int32()), ("code_bytes", pa.int64()),
        ("index_bytes", pa.int64()), ("overhead_bytes", pa.int64()), ("entropy_bound_bytes", pa.float64()),
        # which .sqz version and which coder models wrote the layer's streams (null in
        # tables written before they were recorded)
        ("format_version", pa.int32()), ("codes_model", pa.string()), ("positions_model", pa.string()),
        ("codebook_model", pa.string()),
    ]),
    "evaluations": pa.schema([
        ("run_id", pa.string()), ("model", pa.string()), ("dataset", pa.string()), ("split", pa.string()),
        ("top1", pa.float64()), ("top5", pa.float64()), ("images", pa.int64()),
    ]),
    # Agreement of a compressed model with its dense reference on held-out images (no
    # labels needed): top-1 agreement and top-5 overlap in %, mean KL(reference || model);
    # the agreement on the images where the reference's softmax top-1 >= confident_threshold
    # (with their count), and the flips among near-ties (null in rows written before them).
    "fidelity": pa.schema([
        ("run_id", pa.string()), ("model", pa.string()), ("reference", pa.string()), ("images", pa.int64()),
        ("top1_agreement", pa.float64()), ("top5_overlap", pa.float64()), ("kl", pa.float64()),
        ("confident_threshold", pa.float64()), ("confident_images", pa.int64()), ("confident_agreement", pa.float64()),
        ("flips", pa.int64()), ("near_tie_images", pa.int64()), ("near_tie_flips", pa.int64()),
    ]),
}  # fmt: skip

_WRITER_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# A table's compacted file, and the footer key listing its writers: JSON [[writer_id, rows], ...]
# in row order. "compacted" is no writer id any table uses (trial, epoch and model names).
COMPACTED = "compacted.parquet"
WRITERS_KEY = b"sqz.writers"


def table_url(run_url: str, table: str) -> str:
    if table not in SCHEMAS:
        raise ValueError(f"table: unknown metrics table {table!r}; known: {', '.join(SCHEMAS)}")
    return storage.join(run_url, "metrics", table)


def _writer_url(run_url: str, table: str, writer_id: str) -> str:
    if not _WRITER_ID.match(writer_id):
        raise ValueError(f"writer_id: {writer_id!r} is not a safe file name")
    return storage.join(table_url(run_url, table), f"{writer_id}.parquet")


def write_rows(run_url: str, table: str, rows: Iterable[dict[str, Any]], *, writer_id: str) -> str:
    """Write ``rows`` as ``<run_url>/metrics/<table>/<writer_id>.parquet``; returns its URL."""
    url = _writer_url(run_url, table, writer_id)
    schema = SCHEMAS[table] if table in SCHEMAS else None
    data = pa.Table.from_pylist(list(rows), schema=schema)
    buffer = io.BytesIO()
    pq.write_table(data, buffer)
    storage.write_bytes(url, buffer.getvalue())
    return url


def read_writer_rows(run_url: str, table: str, *, writer_id: str) -> list[dict[str, Any]] | None:
    """The rows one writer wrote to ``table`` (its own file), or None if it wrote none yet."""
    url = _writer_url(run_url, table, writer_id)
    if storage.exists(url):
        return pq.read_table(io.BytesIO(storage.read_bytes(url)), schema=SCHEMAS[table]).to_pylist()
    compacted_url = storage.join(table_url(run_url, table), COMPACTED)
    if not storage.exists(compacted_url):
        return None
    rows, writers = read_compacted(compacted_url, table)
    start = 0
    for writer, count in writers:
        if writer == writer_id:
            return rows.slice(start, count).to_pylist()
        start += count
    return None


def read_compacted(url: str, table: str) -> tuple[pa.Table, list[tuple[str, int]]]:
    """A compacted file's rows and its [(writer id, rows), ...] in row order."""
    data = storage.read_bytes(url)
    metadata = pq.ParquetFile(io.BytesIO(data)).schema_arrow.metadata or {}
    writers = [(str(w), int(n)) for w, n in json.loads(metadata.get(WRITERS_KEY, b"[]"))]
    return pq.read_table(io.BytesIO(data), schema=SCHEMAS[table]), writers


def read_table(run_url: str, table: str) -> pa.Table:
    """All rows of ``table`` in the run (an empty table with the schema if none yet)."""
    url = table_url(run_url, table)
    fs, path = storage.resolve(url)

    def attempt() -> pa.Table:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return SCHEMAS[table].empty_table()
        names = {info.base_name: info.path for info in fs.get_file_info(pafs.FileSelector(path))
                 if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
                 and not info.base_name.startswith((".", "_"))}  # fmt: skip
        compacted = names.pop(COMPACTED, None)
        parts = []
        if compacted is not None:
            rows, writers = read_compacted(storage.join(url, COMPACTED), table)
            # A writer with its own file now (a compaction cut short, or a rewrite since) is read from it.
            keep = [name + ".parquet" not in names for name, count in writers for _ in range(count)]
            parts.append(rows.filter(pa.array(keep, type=pa.bool_())) if not all(keep) else rows)
        if names or not parts:
            dataset = ds.dataset(sorted(names.values()), filesystem=fs, format="parquet", schema=SCHEMAS[table],
                                 exclude_invalid_files=False)  # fmt: skip
            parts.append(dataset.to_table())
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    # Listing and reading the files is one operation: a retry lists again.
    return storage.with_retries(url, "read table", attempt)


def table_files(run_url: str, table: str) -> list[str]:
    """URLs of the table's Parquet files (one per writer, and the compacted one), sorted."""
    url = table_url(run_url, table)
    return [storage.join(url, name) for name, _ in storage.walk(url) if name.endswith(".parquet") and not name.startswith(".")]
