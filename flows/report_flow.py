"""Reports: report_run (squeeze_pipeline's last stage, from the trials it holds) and
report_saved_run (`sqz report`: any run folder, from its files). Both choose the smallest
variant within the accuracy budget, write report.md and pareto.png, and show the run in
the Prefect UI (the report with its plot, the trials table, the files); a finished sweep
is announced as a ``sqz.sweep.finished`` event."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.events import emit_event

from flows.artifacts import publish_files, publish_report
from flows.common import NOT_CACHED, RETRYING, label_flow_run
from sqz import storage
from sqz.report import report_run_folder, report_trials, write_run_report
from sqz.runs import RunLayout

SWEEP_FINISHED = "sqz.sweep.finished"


# Not cached: the report is cheap and rewriting it keeps report.md in step with the table.
@task(name="write-report", **RETRYING, **NOT_CACHED)
def write_report(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    layout = RunLayout(run_url)
    return write_run_report(layout.report_url, run_id=layout.run_id, baseline=baseline, trials=trials, max_drop=max_drop)


@task(name="report-folder", **RETRYING, **NOT_CACHED)
def report_folder(run_url: str, max_drop: float | None) -> dict[str, Any]:
    return report_run_folder(run_url, max_drop)


def publish_run(summary: dict[str, Any], run_url: str) -> None:
    """The report (when the run has trials), the trials table and the files card."""
    if summary.get("report_markdown"):
        publish_report(summary)
    chosen = summary.get("chosen")
    shown = ([chosen] if chosen else []) + report_trials(summary.get("trials") or [], chosen)
    publish_files(run_url, models_first=[t["model_url"].rsplit("/", 1)[-1] for t in shown if t.get("model_url")])


def announce_sweep_finished(run_url: str, summary: dict[str, Any], max_drop: float, *, origin: str) -> None:
    """The ``sqz.sweep.finished`` event: the run, and the chosen variant (bytes, top-1, ratio
    vs the float32 baseline), or ``chosen: null`` when no trial kept the accuracy budget.
    ``origin`` (the flow that swept: squeeze_pipeline, sweep_compression or
    sweep_checkpoint) is a resource label, so automations can match one of them.
    prefect.yaml has an example automation."""
    chosen, baseline = summary["chosen"], summary["baseline"]
    payload: dict[str, Any] = {"run_url": run_url, "trials": len(summary["trials"]), "max_drop": max_drop,
                               "baseline_top1": baseline["top1"], "chosen": None}  # fmt: skip
    if chosen is not None:
        payload["chosen"] = {
            "trial_id": chosen["trial_id"], "size_bytes": chosen["size_bytes"], "top1": chosen["top1"],
            "ratio_vs_float32": round(baseline["size_bytes"] / chosen["size_bytes"], 2), "model_url": chosen["model_url"],
        }  # fmt: skip
    run_id = summary["run_id"]
    resource = {"prefect.resource.id": f"sqz.run.{run_id}", "prefect.resource.name": run_id, "sqz.origin": origin}
    emit_event(event=SWEEP_FINISHED, resource=resource, payload=payload)


@flow(name="report_run")
def report_run(run_url: str, baseline: dict[str, Any], trials: list[dict[str, Any]], max_drop: float = 1.0,
               publish: bool = True) -> dict[str, Any]:  # fmt: skip
    """Write the run's report.md and pareto.png from the given trials and choose its variant.

    Args:
        run_url: the run folder (local path or s3://bucket/prefix/<run id>).
        baseline: {model, parameters, size_bytes, top1, top5} of the dense model.
        trials: the sweep_trials rows.
        max_drop: top-1 points the chosen variant may lose against the baseline.
        publish: show the report, trials and files as artifacts of this flow run (the
            pipeline publishes them on its own run instead).
    """
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    if max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    label_flow_run(f"{RunLayout(run_url).run_id}/report")
    summary = write_report(run_url, baseline, trials, max_drop)
    if publish:
        publish_run(summary, run_url)
    return summary


@flow(name="report_saved_run")
def report_saved_run(run_url: str, max_drop: float | None = None) -> dict[str, Any]:
    """`sqz report`: report the run folder at ``run_url`` from its files.

    Args:
        run_url: a run folder (local path or s3://bucket/prefix/<run id>) with a baseline and sweep trials.
        max_drop: top-1 points the chosen variant may lose; empty: the run's own budget, else 1 point.
    """
    storage.check_url(run_url, option="run_url")
    if max_drop is not None and max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    run_url = storage.absolute(run_url)
    label_flow_run(f"{RunLayout(run_url).run_id}/report")
    summary = report_folder(run_url, max_drop)
    publish_run(summary, run_url)
    return summary
