"""report_run: choose the smallest variant within the accuracy budget, write report.md."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from sqz.report import write_run_report
from sqz.runs import RunLayout


@task(name="write-report")
def write_report(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    layout = RunLayout(run_url)
    return write_run_report(layout.report_url, run_id=layout.run_id, baseline=baseline, trials=trials, max_drop=max_drop)


@flow(name="report_run")
def report_run(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float = 1.0) -> dict[str, Any]:
    summary = write_report(run_url, baseline, trials, max_drop)
    create_markdown_artifact(summary["report_markdown"], key="sqz-report", description=f"sqz run {summary['run_id']}")
    return summary
