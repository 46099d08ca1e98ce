"""Metrics compaction: a finished run's tables as one Parquet file each, not one per writer.

While trials run, every writer has its own file (``sqz.metrics``): concurrent writers never
meet. A 1,024-trial sweep leaves ~2,000 of them, and every reader then pays a request per
file. ``compact_run_metrics`` folds each table's writer files (and an earlier compacted
file) into ``<table>/compacted.parquet``, whose footer lists each writer and its row
count, then deletes the writer files it folded in.

Crash safety: the compacted file is written whole (``storage.write_bytes``) and read back
before any writer file is deleted; a writer file is deleted only if it is still the one
that was read (same size and modification time). Until the last deletion both copies
exist, and ``sqz.metrics`` readers take a writer's rows from its own file, so a
compaction stopped at any point changes no row that sqz reads; a plain glob over the
folder (DuckDB, pandas) may count those writers twice until the next compaction ends.
Run it when the table's writers are done (the sweep flow does, after its trials).
"""

from __future__ import annotations

import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sqz import metrics, storage

__all__ = ["SWEEP_TABLES", "CompactionResult", "compact_table", "compact_run_metrics"]

_log = logging.getLogger("sqz.storage")

# What a sweep writes a file per trial to (a training's few epoch files are left as they are).
SWEEP_TABLES = ("sweep_trials", "compressed_layers", "sweep_stopped")
# Reads and deletes in flight at once: per-object requests are latency-bound on S3.
_PARALLEL = 16


@dataclass(frozen=True)
class CompactionResult:
    table: str
    files_before: int
    files_after: int
    rows: int


def _delete_file(fs: pafs.FileSystem, path: str) -> None:
    fs.delete_file(path)


def _writer_files(fs: pafs.FileSystem, path: str) -> dict[str, pafs.FileInfo]:
    """Writer id -> file info of the table's writer files (not the compacted one)."""
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return {info.base_name[: -len(".parquet")]: info for info in infos
            if info.type == pafs.FileType.File and info.base_name.endswith(".parquet")
            and not info.base_name.startswith((".", "_")) and info.base_name != metrics.COMPACTED}  # fmt: skip


def compact_table(run_url: str, table: str) -> CompactionResult:
    """Fold ``table``'s writer files into its compacted file; returns the file counts."""
    url = metrics.table_url(run_url, table)
    fs, path = storage.resolve(url)
    compacted_url = storage.join(url, metrics.COMPACTED)
    writers = storage.with_retries(url, "list", lambda: _writer_files(fs, path))
    has_compacted = storage.exists(compacted_url)
    before = len(writers) + has_compacted
    if not writers:
        rows = metrics.read_table(run_url, table).num_rows if has_compacted else 0
        return CompactionResult(table, before, before, rows)
    schema = metrics.SCHEMAS[table]

    def read(writer: str) -> pa.Table:
        return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(url, f"{writer}.parquet"))), schema=schema)

    names = sorted(writers)
    with ThreadPoolExecutor(_PARALLEL) as pool:
        fresh = dict(zip(names, pool.map(read, names)))
    parts: list[pa.Table] = []
    order: list[tuple[str, int]] = []
    if has_compacted:  # its writers that have no newer file of their own
        old_rows, old_writers = metrics.read_compacted(compacted_url, table)
        start = 0
        for writer, count in old_writers:
            if writer not in fresh:
                parts.append(old_rows.slice(start, count))
                order.append((writer, count))
            start += count
    for writer in names:
        parts.append(fresh[writer])
        order.append((writer, fresh[writer].num_rows))
    combined = pa.concat_tables(parts).replace_schema_metadata({metrics.WRITERS_KEY: json.dumps(order).encode()})
    buffer = io.BytesIO()
    pq.write_table(combined, buffer)
    storage.write_bytes(compacted_url, buffer.getvalue())
    check, check_writers = metrics.read_compacted(compacted_url, table)
    if check.num_rows != combined.num_rows or check_writers != order:
        raise RuntimeError(f"{compacted_url}: read back {check.num_rows} rows, wrote {combined.num_rows}; writer files kept")

    # Only files still as they were read: a writer that rewrote its file since keeps it
    # (its file wins over the compacted copy in every sqz reader).
    now = storage.with_retries(url, "list", lambda: _writer_files(fs, path))
    unchanged = [w for w in names if w in now and (now[w].size, now[w].mtime) == (writers[w].size, writers[w].mtime)]

    def delete(writer: str) -> None:
        target = writers[writer].path
        try:
            storage.with_retries(url, "delete", lambda: _delete_file(fs, target))
        except FileNotFoundError:
            pass

    with ThreadPoolExecutor(_PARALLEL) as pool:
        list(pool.map(delete, unchanged))
    after = 1 + len(names) - len(unchanged)
    _log.info("metrics %s: %d file(s) -> %d (%d rows)", table, before, after, combined.num_rows)
    return CompactionResult(table, before, after, combined.num_rows)


def compact_run_metrics(run_url: str, tables: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Compact every metrics table of the run that has writer files (or ``tables``);
    returns one {table, files_before, files_after, rows} per table compacted."""
    existing = {name for name, is_dir in storage.list_dir(storage.join(run_url, "metrics")) if is_dir}
    wanted = [t for t in (tables or tuple(metrics.SCHEMAS)) if t in existing and t in metrics.SCHEMAS]
    return [vars(compact_table(run_url, table)) for table in wanted]
