"""The threshold x bits grid as parallel Ray Tune trials: sweep_compression (a stage of
squeeze_pipeline) and sweep_checkpoint (`sqz sweep`: a checkpoint's own run, reported)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.common import CACHED, NOT_CACHED, RETRYING, artifact_key, claim_run_folder, in_run, publish_outputs
from flows.report_flow import publish_report, report_folder
from sqz import storage
from sqz.config import DataConfig, SweepConfig, config_from_dict
from sqz.distributed.cluster import ray_session
from sqz.distributed.sweep import sweep
from sqz.evaluation import evaluate_baseline
from sqz.runs import RunLayout


def _sweep_with_progress(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any],
                         arch: dict[str, Any]) -> list[dict[str, Any]]:  # fmt: skip
    layout = RunLayout(run_url)
    progress = create_progress_artifact(0.0, key=artifact_key(layout.run_id, "sweep-progress"),
                                        description=f"sweep trials finished, sqz run {layout.run_id}")  # fmt: skip

    def on_progress(finished: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * finished / total, description=f"{finished} of {total} trials finished")

    return sweep(layout, config_from_dict(SweepConfig, sweep_config), config_from_dict(DataConfig, data_config), arch,
                 on_progress=on_progress)  # fmt: skip


@task(name="run-sweep", **RETRYING, **CACHED)
def run_sweep(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any]) -> list[dict[str, Any]]:
    return _sweep_with_progress(run_url, sweep_config, data_config, arch)


# Not retried: a sweep stopped by Ctrl+C must stop; rerunning the command resumes it trial
# by trial (its rows are the record of what finished).
@task(name="sweep-trials", **NOT_CACHED)
def sweep_trials(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any]) -> list[dict[str, Any]]:
    return _sweep_with_progress(run_url, sweep_config, data_config, arch)


@task(name="evaluate-baseline", **RETRYING, **NOT_CACHED)
def evaluate_run_baseline(run_url: str, arch: dict[str, Any], data_config: dict[str, Any]) -> dict[str, Any]:
    return evaluate_baseline(run_url, arch, config_from_dict(DataConfig, data_config))


@flow(name="sweep_compression")
def sweep_compression(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any],
                      ray_address: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Compress the run's baseline at every grid point (trials already done are reused)."""
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    # Bad input fails here, before Ray starts.
    config_from_dict(SweepConfig, sweep_config)
    config_from_dict(DataConfig, data_config)
    with ray_session(ray_address):
        trials = in_run(run_sweep, run_url)(run_url, sweep_config, data_config, arch)
    publish_outputs(run_url, include=lambda kind, url: url.endswith(".sqz") or "/sweep_trials/" in url)
    return trials


@flow(name="sweep_checkpoint")
def sweep_checkpoint(plan: dict[str, Any], sweep_config: dict[str, Any], ray_address: str | None = None,
                     max_drop: float = 0.5) -> dict[str, Any]:  # fmt: skip
    """`sqz sweep`: claim the checkpoint's run folder (``plan``, from
    sqz.runs.claims.plan_sweep_run), evaluate its baseline once, run the grid's missing
    trials, and report the run (smallest model within ``max_drop`` points)."""
    config_from_dict(SweepConfig, sweep_config)  # bad input fails here, before any work
    config_from_dict(DataConfig, plan["data"])
    if max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    run_url = claim_run_folder(plan)
    evaluate_run_baseline(run_url, plan["arch"], plan["data"])
    get_run_logger().info("[sqz] sweep run %s -> %s", plan["run_id"], run_url)
    with ray_session(ray_address):
        sweep_trials(run_url, sweep_config, plan["data"], plan["arch"])
    publish_outputs(run_url, include=lambda kind, url: url.endswith(".sqz") or "/sweep_trials/" in url)
    summary = report_folder(run_url, max_drop)
    summary["artifact_links"] = publish_report(summary)
    return summary
