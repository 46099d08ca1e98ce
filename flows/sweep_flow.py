"""sweep_compression: the threshold x bits grid as parallel Ray Tune trials."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.common import CACHED, RETRYING, artifact_key, in_run, publish_outputs
from sqz import storage
from sqz.config import DataConfig, SweepConfig, config_from_dict
from sqz.distributed.cluster import ray_session
from sqz.distributed.sweep import sweep
from sqz.runs import RunLayout


@task(name="run-sweep", **RETRYING, **CACHED)
def run_sweep(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any]) -> list[dict[str, Any]]:
    layout = RunLayout(run_url)
    progress = create_progress_artifact(0.0, key=artifact_key(layout.run_id, "sweep-progress"),
                                        description=f"sweep trials finished, sqz run {layout.run_id}")  # fmt: skip

    def on_progress(finished: int, total: int) -> None:
        update_progress_artifact(progress, 100.0 * finished / total, description=f"{finished} of {total} trials finished")

    return sweep(layout, config_from_dict(SweepConfig, sweep_config), config_from_dict(DataConfig, data_config), arch,
                 on_progress=on_progress)  # fmt: skip


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
