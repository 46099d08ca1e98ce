"""report_run: choose the smallest variant within the accuracy budget, write report.md,
and show the run in the Prefect UI (report, trials table, the report and plot files)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import NOT_CACHED, RETRYING, artifact_key, publish_outputs
from sqz import storage
from sqz.report import write_run_report
from sqz.runs import RunLayout


# Not cached: the report is cheap and rewriting it keeps report.md in step with the table.
@task(name="write-report", **RETRYING, **NOT_CACHED)
def write_report(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    layout = RunLayout(run_url)
    return write_run_report(layout.report_url, run_id=layout.run_id, baseline=baseline, trials=trials, max_drop=max_drop)


@flow(name="report_run")
def report_run(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float = 1.0) -> dict[str, Any]:
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    if max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    summary = write_report(run_url, baseline, trials, max_drop)
    run_id = summary["run_id"]
    create_markdown_artifact(summary["report_markdown"], key=artifact_key(run_id, "report"), description=f"sqz run {run_id}")
    create_table_artifact(summary["trials"], key=artifact_key(run_id, "trials"),
                          description=f"sweep trials of sqz run {run_id} (one row per .sqz file)")  # fmt: skip
    # The models and Parquet files are linked by the flows that wrote them.
    summary["artifact_links"] = publish_outputs(run_url, include=lambda kind, url: kind == "report")
    return summary
