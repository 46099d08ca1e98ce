"""What an operator sees of a sqz run in the Prefect UI, on the flow run they open first.

- ``publish_report``: the report as markdown with the Pareto plot embedded as a data URL
  (the UI cannot resolve the report's relative ``pareto.png``), and the trials table.
- ``publish_files``: ONE markdown card listing the run's files grouped by kind (models,
  metrics tables, report), instead of a card per file; S3 objects are linked as presigned
  HTTPS URLs a browser can open. Its key is stable per run: each call adds a new version
  of the same artifact, which the UI shows as the latest.
- ``Progress``: a progress artifact (percent done, with "epoch k of n, images/s, ETA" or
  "trials finished, ETA" as its description), created on the flow run that owns it and
  updated in place from the tasks that do the work.

Link expiry: ``SQZ_LINK_EXPIRY_S`` (seconds, default and maximum 7 days, SigV4's limit).
"""

from __future__ import annotations

import base64
import os
import re
from collections import defaultdict
from typing import Any, Collection
from uuid import UUID

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from flows.common import artifact_key
from sqz import storage
from sqz.logs import format_eta
from sqz.report import REPORT_ALL_TRIALS_MAX, report_trials
from sqz.runs import catalog

__all__ = ["link_expiry_s", "files_markdown", "publish_files", "embed_plot", "publish_report", "Progress"]

LINK_EXPIRY_ENV = "SQZ_LINK_EXPIRY_S"
_KIND_TITLES = {"report": "Report", "model": "Models", "parquet": "Metrics tables (Parquet)"}


def link_expiry_s() -> int:
    """Seconds the UI's S3 links stay valid (``SQZ_LINK_EXPIRY_S``, default 7 days)."""
    text = os.environ.get(LINK_EXPIRY_ENV, str(storage.PRESIGN_MAX_S))
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{LINK_EXPIRY_ENV}: must be a whole number of seconds, got {text!r}") from None
    if not 1 <= value <= storage.PRESIGN_MAX_S:
        raise ValueError(f"{LINK_EXPIRY_ENV}: must be 1..{storage.PRESIGN_MAX_S} seconds (7 days), got {value}")
    return value


def _human_bytes(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"  # unreachable; keeps type checkers quiet


# The files card links at most this many models and files per table; the rest is one line
# (count and size): a 1,024-trial sweep's card stays a card, not 2,000 links.
CARD_MODELS_MAX = 20
CARD_TABLE_FILES_MAX = 10


def files_markdown(run_url: str, *, expires_s: int | None = None, models_first: Collection[str] = ()) -> str:
    """The run's files as markdown: one section per kind; a Parquet table is one line with
    a link per file (a 68-epoch training is one line, not 68 cards). Above CARD_MODELS_MAX
    models, the baseline and the first models named in ``models_first`` (file names: the
    chosen one, then the frontier's) are linked, up to that many, and the others counted."""
    expires = link_expiry_s() if expires_s is None else expires_s
    run_id = run_url.rstrip("/").rsplit("/", 1)[-1]
    by_kind: dict[str, list[str]] = defaultdict(list)
    for kind, url in catalog.run_outputs(run_url):
        by_kind[kind].append(url)
    model_sizes = dict(storage.walk(storage.join(run_url, "models")))  # one listing, not a request per model
    where = "presigned links, valid " + (f"{expires // 86400} day(s)" if expires % 86400 == 0 else f"{expires} s")
    lines = [f"# Files of sqz run {run_id}", "", f"`{run_url}`" + ("" if storage.is_local(run_url) else f" ({where})")]
    for kind in ("report", "model", "parquet"):
        urls = by_kind.get(kind, [])
        if not urls:
            continue
        lines += ["", f"## {_KIND_TITLES[kind]}", ""]
        if kind == "report":
            for url in urls:
                name = url[len(run_url):].lstrip("/")
                lines.append(f"- [{name}]({storage.presigned_url(url, expires_s=expires)}) ({_human_bytes(storage.size_of(url))})")
            continue
        if kind == "model":
            by_name = {u.rsplit("/", 1)[-1]: u for u in urls}
            wanted = [by_name[n] for n in dict.fromkeys(["baseline.safetensors", *models_first]) if n in by_name]
            linked = urls if len(urls) <= CARD_MODELS_MAX else wanted[:CARD_MODELS_MAX]
            for url in linked:
                name = url[len(run_url):].lstrip("/")
                size = model_sizes.get(name.split("/", 1)[1]) if "/" in name else None
                size = storage.size_of(url) if size is None else size
                lines.append(f"- [{name}]({storage.presigned_url(url, expires_s=expires)}) ({_human_bytes(size)})")
            rest = [u for u in urls if u not in linked]
            if rest:
                total = sum(model_sizes.get(u.rsplit("/", 1)[-1], 0) for u in rest)
                lines.append(f"- and {len(rest):,} more model(s), {_human_bytes(total)} in all, under `models/` "
                             "(each trial's file is its `model_url` in `sweep_trials`)")  # fmt: skip
            continue
        tables: dict[str, list[str]] = defaultdict(list)
        for url in urls:
            tables[url[len(run_url):].lstrip("/").split("/")[1]].append(url)  # metrics/<table>/<file>
        for table, table_urls in sorted(tables.items()):
            shown = table_urls[:CARD_TABLE_FILES_MAX]
            links = " ".join(f"[{i}]({storage.presigned_url(u, expires_s=expires)})" for i, u in enumerate(shown, 1))
            more = f" (+{len(table_urls) - len(shown):,} more)" if len(table_urls) > len(shown) else ""
            lines.append(f"- `{table}`: {len(table_urls)} file(s) {links}{more}")
    return "\n".join(lines) + "\n"


def publish_files(run_url: str, models_first: Collection[str] = ()) -> str:
    """Create (or add the next version of) the run's "files" artifact; returns its key."""
    run_id = run_url.rstrip("/").rsplit("/", 1)[-1]
    key = artifact_key(run_id, "files")
    create_markdown_artifact(files_markdown(run_url, models_first=models_first), key=key,
                             description=f"files of sqz run {run_id}, by kind")  # fmt: skip
    return key


_PLOT_REFERENCE = re.compile(r"\]\(pareto\.png\)")


def embed_plot(markdown: str, plot_url: str | None) -> str:
    """The report with its relative ``pareto.png`` replaced by the image itself (a data URL)."""
    if not plot_url or not storage.exists(plot_url):
        return _PLOT_REFERENCE.sub("](about:blank)", markdown) if plot_url else markdown
    image = base64.b64encode(storage.read_bytes(plot_url)).decode()
    return _PLOT_REFERENCE.sub(lambda _: f"](data:image/png;base64,{image})", markdown)


# The trials table artifact's columns: what an operator compares (not the per-trial
# bookkeeping: URLs, node ids, phase timings), so 1,000 rows would still be a table.
TRIAL_ARTIFACT_COLUMNS = ("trial_id", "threshold", "bits", "density", "size_bytes", "top1", "top5", "ratio_vs_alexnet_32bit")


def trials_artifact_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every trial of a small sweep; of a large one the frontier and the chosen variant."""
    trials, chosen = summary["trials"], summary.get("chosen")
    shown = trials if len(trials) <= REPORT_ALL_TRIALS_MAX else report_trials(trials, chosen)
    chosen_id = chosen["trial_id"] if chosen else None
    return [{**{c: t.get(c) for c in TRIAL_ARTIFACT_COLUMNS}, "chosen": t["trial_id"] == chosen_id} for t in shown]


def publish_report(summary: dict[str, Any]) -> list[str]:
    """The report (plot embedded) and the trials table on the current flow run; returns the keys."""
    run_id = summary["run_id"]
    keys = [artifact_key(run_id, "report"), artifact_key(run_id, "trials")]
    create_markdown_artifact(embed_plot(summary["report_markdown"], summary.get("plot_url")), key=keys[0],
                             description=f"report of sqz run {run_id}")  # fmt: skip
    rows = trials_artifact_rows(summary)
    whole = len(rows) == len(summary["trials"])
    create_table_artifact(rows, key=keys[1], description=(
        f"sweep trials of sqz run {run_id} (one row per .sqz file)" if whole else
        f"{len(rows)} of {len(summary['trials']):,} sweep trials of sqz run {run_id}: the Pareto frontier and the "
        "chosen variant; every trial is in the run's metrics/sweep_trials (Parquet, see the files card)"))  # fmt: skip
    return keys


class Progress:
    """A progress artifact owned by the flow run that creates it; ``update`` may be called
    from any task or thread after that (it changes the artifact in place, by id)."""

    def __init__(self, run_id: str, stage: str, description: str) -> None:
        self.key = artifact_key(run_id, stage, "progress")
        self.id: UUID = create_progress_artifact(0.0, key=self.key, description=description)

    @staticmethod
    def update(artifact_id: UUID | str | None, percent: float, description: str) -> None:
        if artifact_id is not None:
            update_progress_artifact(UUID(str(artifact_id)), min(100.0, max(0.0, percent)), description=description)

    @staticmethod
    def epoch_text(progress: dict[str, Any]) -> str:
        """``epoch 3 of 12 - 812 images/s - top-1 93.10 - ETA 1m20s``"""
        return (f"epoch {progress['epoch']} of {progress['epochs']} - {progress['images_per_s']:,.0f} images/s - "
                f"top-1 {progress['top1']:.2f} - ETA {format_eta(progress['eta_s'])}")  # fmt: skip
