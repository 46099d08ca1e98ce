"""train_model: train (or resume, or reuse) a run's baseline with Ray Train."""

from __future__ import annotations

import dataclasses
from typing import Any

from prefect import flow, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from flows.artifacts import Progress, publish_files
from flows.common import (
    CACHED, NOT_CACHED, RETRYING, CodeVersion, claim_run_folder, in_run, label_flow_run, run_id_of, run_tags,
)  # fmt: skip
from sqz import metrics, storage
from sqz.config import DataConfig, TrainConfig, config_from_dict
from sqz.distributed.cluster import ray_session, require_shared_storage
from sqz.distributed.train import train
from sqz.runs import RunLayout

# The progress artifact's id changes every run: it must not change the cache key.
_TRAIN_CACHE = {**CACHED, "cache_policy": (INPUTS - "progress_artifact_id") + TASK_SOURCE + CodeVersion()}


@task(name="train-baseline", **RETRYING, **_TRAIN_CACHE)
def train_baseline(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any],
                   progress_artifact_id: str | None = None, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    def on_epoch(epoch: dict[str, Any]) -> None:
        Progress.update(progress_artifact_id, 100.0 * epoch["epoch"] / epoch["epochs"], Progress.epoch_text(epoch))

    result = train(RunLayout(run_url), config_from_dict(TrainConfig, train_config), config_from_dict(DataConfig, data_config),
                   progress=progress, on_epoch=on_epoch)  # fmt: skip
    return dataclasses.asdict(result)


@task(name="read-epochs", **RETRYING, **NOT_CACHED)
def read_epochs(run_url: str) -> list[dict[str, Any]]:
    return sorted(metrics.read_table(run_url, "train_epochs").to_pylist(), key=lambda r: r["epoch"])


@flow(name="train_model")
def train_model(run_url: str, train_config: dict[str, Any], data_config: dict[str, Any], ray_address: str | None = None,
                plan: dict[str, Any] | None = None, num_cpus: int | None = None, progress: bool = False,
                progress_artifact_id: str | None = None, shared_mount: bool = False) -> dict[str, Any]:  # fmt: skip
    """Train the baseline of the run at ``run_url`` (a rerun resumes or reuses it).
    Inside squeeze_pipeline Ray is already up; alone (`sqz train`), it claims the run
    folder of ``plan`` first, then connects to ``ray_address`` or starts a local Ray.
    Returns the training result and its per-epoch rows (``epoch_rows``); the driver logs
    each epoch's line as it finishes (this flow run's log).

    Args:
        run_url: the run folder (local path or s3://bucket/prefix/<run id>); its models/,
            metrics/ and train/ (Ray Train checkpoints) are written there.
        train_config: TrainConfig fields (model, epochs, workers, optimizer, lr, ...), as in `sqz train --help`.
        data_config: DataConfig fields; `url` is digits, synthetic, an ImageNet folder or a prepared Parquet URL.
        ray_address: a Ray cluster (host:port or ray://host:10001); empty starts a local Ray.
        plan: the run folder's claim (manifest and source), as `sqz train` makes it; empty: already claimed.
        num_cpus: CPUs of a local Ray started for this run; empty: all of the machine's.
        progress: draw per-epoch progress bars (an interactive terminal).
        progress_artifact_id: a progress artifact to update per epoch (the pipeline's); empty makes this run's own.
        shared_mount: a local run_url is a mount every Ray node shares (else refused on a multi-node cluster).
    """
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    # Bad input fails here, before Ray starts.
    train_cfg = config_from_dict(TrainConfig, train_config)
    data_cfg = config_from_dict(DataConfig, data_config)
    run_id = run_id_of(run_url)
    label_flow_run(f"{run_id}/train", run_tags(model=train_cfg.model, data_url=data_cfg.url))
    if plan is not None:
        claim_run_folder(plan)
    if progress_artifact_id is None:
        progress_artifact_id = str(Progress(run_id, "train", f"training of sqz run {run_id}: epochs done").id)
    with ray_session(ray_address, num_cpus=num_cpus):
        require_shared_storage(run_url, shared_mount=shared_mount, option="run_url")
        result = in_run(train_baseline, run_url)(run_url, train_config, data_config, progress_artifact_id, progress)
    # Also when the training was reused (cached task, finished baseline): no epoch ran now.
    Progress.update(progress_artifact_id, 100.0, f"{result['epochs']} of {result['epochs']} epochs done - "
                                                 f"top-1 {result['top1']:.2f}")  # fmt: skip
    publish_files(run_url)
    return {**result, "run_id": RunLayout(run_url).run_id, "epoch_rows": read_epochs(run_url)}
