"""train_model: train (or resume, or reuse) the run's baseline with Ray Train."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, task

from sqz.config import DataConfig, TrainConfig, config_from_dict
from sqz.distributed.train import train
from sqz.runs import RunLayout


@task(name="train-baseline", retries=1, retry_delay_seconds=5)
def train_baseline(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any]) -> dict[str, Any]:
    result = train(RunLayout(run_url), config_from_dict(TrainConfig, train_config), config_from_dict(DataConfig, data_config))
    return dataclasses.asdict(result)


@flow(name="train_model")
def train_model(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any]) -> dict[str, Any]:
    return train_baseline(run_url, train_config, data_config)
