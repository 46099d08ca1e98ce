"""Reports: report_run (squeeze_pipeline's last stage, from the trials it holds) and
report_saved_run (`sqz report`: any run folder, from its files). Both choose the smallest
variant within the accuracy budget, write report.md and pareto.png, and show the run in
the Prefect UI (report, trials table, the report and plot files)."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.common import NOT_CACHED, RETRYING, artifact_key, publish_outputs
from sqz import storage
from sqz.report import report_run_folder, write_run_report
from sqz.runs import RunLayout


# Not cached: the report is cheap and rewriting it keeps report.md in step with the table.
@task(name="write-report", **RETRYING, **NOT_CACHED)
def write_report(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    layout = RunLayout(run_url)
    return write_run_report(layout.report_url, run_id=layout.run_id, baseline=baseline, trials=trials, max_drop=max_drop)


@task(name="report-folder", **RETRYING, **NOT_CACHED)
def report_folder(run_url: str, max_drop: float | None) -> dict[str, Any]:
    return report_run_folder(run_url, max_drop)


def publish_report(summary: dict[str, Any]) -> list[str]:
    """The report as a markdown artifact, the trials as a table, the files as links;
    returns the linked URLs."""
    run_id = summary["run_id"]
    if summary.get("report_markdown"):
        create_markdown_artifact(summary["report_markdown"], key=artifact_key(run_id, "report"), description=f"sqz run {run_id}")
    if summary["trials"]:
        create_table_artifact(summary["trials"], key=artifact_key(run_id, "trials"),
                              description=f"sweep trials of sqz run {run_id} (one row per .sqz file)")  # fmt: skip
    # The models and Parquet files are linked by the flows that wrote them.
    return publish_outputs(summary["run_url"], include=lambda kind, url: kind == "report")


@flow(name="report_run")
def report_run(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float = 1.0) -> dict[str, Any]:
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    if max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    summary = write_report(run_url, baseline, trials, max_drop)
    summary["artifact_links"] = publish_report({**summary, "run_url": run_url})
    return summary


@flow(name="report_saved_run")
def report_saved_run(run_url: str, max_drop: float | None = None) -> dict[str, Any]:
    """`sqz report`: report the run folder at ``run_url`` from its files (``max_drop``:
    default the run's own budget, else 1 point)."""
    storage.check_url(run_url, option="run_url")
    if max_drop is not None and max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    summary = report_folder(storage.absolute(run_url), max_drop)
    summary["artifact_links"] = publish_report(summary)
    return summary
