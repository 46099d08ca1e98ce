"""train_model: train (or resume, or reuse) the run's baseline with Ray Train."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, task

from flows.common import CACHED, RETRYING, in_run, publish_outputs
from sqz import storage
from sqz.config import DataConfig, TrainConfig, config_from_dict
from sqz.distributed.cluster import ray_session
from sqz.distributed.train import train
from sqz.runs import RunLayout


@task(name="train-baseline", **RETRYING, **CACHED)
def train_baseline(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any]) -> dict[str, Any]:
    result = train(RunLayout(run_url), config_from_dict(TrainConfig, train_config), config_from_dict(DataConfig, data_config))
    return dataclasses.asdict(result)


@flow(name="train_model")
def train_model(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any],
                ray_address: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Train the baseline of the run at ``run_url`` (a rerun resumes or reuses it).
    Inside squeeze_pipeline Ray is already up; alone, it connects to ``ray_address``
    or starts a local Ray."""
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    # Bad input fails here, before Ray starts.
    config_from_dict(TrainConfig, train_config)
    config_from_dict(DataConfig, data_config)
    with ray_session(ray_address):
        result = in_run(train_baseline, run_url)(run_url, train_config, data_config)
    publish_outputs(run_url, include=lambda kind, url: "/train_epochs/" in url or url.endswith(".safetensors"))
    return result
