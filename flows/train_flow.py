"""train_model: train (or resume, or reuse) a run's baseline with Ray Train."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import CACHED, NOT_CACHED, RETRYING, claim_run_folder, in_run, publish_outputs
from sqz import metrics, storage
from sqz.config import DataConfig, TrainConfig, config_from_dict
from sqz.distributed.cluster import ray_session
from sqz.distributed.train import train
from sqz.runs import RunLayout


@task(name="train-baseline", **RETRYING, **CACHED)
def train_baseline(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any],
                   progress: bool = False) -> dict[str, Any]:  # fmt: skip
    bars = {"progress": True} if progress else {}  # progress bars: only for an interactive terminal
    result = train(RunLayout(run_url), config_from_dict(TrainConfig, train_config), config_from_dict(DataConfig, data_config),
                   **bars)  # fmt: skip
    return dataclasses.asdict(result)


@task(name="read-epochs", **RETRYING, **NOT_CACHED)
def read_epochs(run_url: str) -> list[dict[str, Any]]:
    return sorted(metrics.read_table(run_url, "train_epochs").to_pylist(), key=lambda r: r["epoch"])


@flow(name="train_model")
def train_model(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any], ray_address: str | None = None,
                plan: dict[str, Any] | None = None, num_cpus: int | None = None,
                progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train the baseline of the run at ``run_url`` (a rerun resumes or reuses it).
    Inside squeeze_pipeline Ray is already up; alone (`sqz train`), it claims the run
    folder of ``plan`` first, then connects to ``ray_address`` or starts a local Ray of
    ``num_cpus``. Returns the training result and its per-epoch rows (``epoch_rows``), each
    also a line of this flow run's log."""
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    # Bad input fails here, before Ray starts.
    train_cfg = config_from_dict(TrainConfig, train_config)
    config_from_dict(DataConfig, data_config)
    if plan is not None:
        claim_run_folder(plan)
    with ray_session(ray_address, num_cpus=num_cpus):
        result = in_run(train_baseline, run_url)(run_url, train_config, data_config, progress)
    epochs = read_epochs(run_url)
    logger = get_run_logger()
    for r in epochs:
        logger.info("[sqz] train epoch %d of %d: lr %.3g, loss %.3f, top-1 %.2f, top-5 %.2f, %.0f img/s, %.1f s",
                    r["epoch"] + 1, train_cfg.epochs, r["lr"], r["loss"], r["top1"], r["top5"], r["images_per_s"],
                    r["wall_s"])  # fmt: skip
    publish_outputs(run_url, include=lambda kind, url: "/train_epochs/" in url or url.endswith(".safetensors"))
    return {**result, "run_id": RunLayout(run_url).run_id, "epoch_rows": epochs}
