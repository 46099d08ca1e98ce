"""sweep_compression: the threshold x bits grid as parallel Ray Tune trials."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from sqz.config import DataConfig, SweepConfig, config_from_dict
from sqz.distributed.sweep import sweep
from sqz.runs import RunLayout


@task(name="run-sweep", retries=1, retry_delay_seconds=5)
def run_sweep(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any]) -> list[dict[str, Any]]:
    return sweep(RunLayout(run_url), config_from_dict(SweepConfig, sweep_config), config_from_dict(DataConfig, data_config), arch)


@flow(name="sweep_compression")
def sweep_compression(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any]) -> list[dict[str, Any]]:
    return run_sweep(run_url, sweep_config, data_config, arch)
