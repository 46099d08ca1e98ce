"""squeeze_pipeline: train -> sweep -> report, on one Ray session, under one run folder.

The run folder's name derives from the config, and every stage's task is cached by its
inputs + code version in that folder: running the same config again reuses what
finished (no training, no trial runs twice) and resumes what did not.

The pipeline's own flow run carries what an operator looks at first: training and sweep
progress, the report with its plot, the trials table and the run's files.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, tags, task

from flows.artifacts import Progress
from flows.common import NOT_CACHED, RETRYING, label_flow_run, run_tags
from flows.report_flow import announce_sweep_finished, publish_run, report_run
from flows.sweep_flow import sweep_compression
from flows.train_flow import train_model
from sqz import storage
from sqz.architectures import check_sweep_densities
from sqz.config import PipelineConfig, config_from_dict, config_to_dict
from sqz.distributed.cluster import ray_session, require_shared_storage
from sqz.runs import RunLayout, write_manifest


@task(name="write-manifest", **RETRYING, **NOT_CACHED)
def record_manifest(config: dict[str, Any], run_id: str | None) -> str:
    pipeline = config_from_dict(PipelineConfig, config)
    layout = RunLayout.for_config(pipeline, run_id)
    write_manifest(layout, pipeline)
    return layout.run_url


@flow(name="squeeze_pipeline")
def squeeze_pipeline(config: dict[str, Any] | None = None, run_id: str | None = None,
                     ray_address: str | None = None, workdir: str = ".", shared_mount: bool = False,
                     num_cpus: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Train a SqueezeNet, sweep pruning x bit widths on it, report the smallest variant
    within the accuracy budget. Same config, same run folder: finished stages are reused.

    Args:
        config: the run's PipelineConfig: data {url}, train {model, epochs, workers, ...},
            sweep {thresholds, bits, prune_mode, retrain_steps, max_top1_drop, ...} and
            storage_url (a local folder or s3://bucket/prefix); see `sqz run --help`.
        run_id: the run folder's name under storage_url; empty derives it from the config.
        ray_address: a Ray cluster (host:port or ray://host:10001); empty starts a local Ray.
        workdir: where a local Ray keeps its session files (.ray under it).
        shared_mount: the storage_url is a local path that every Ray node mounts (NFS, ...);
            without it a local storage_url is refused on a cluster of more than one node.
        num_cpus: CPUs of a local Ray started for this run; empty: all of the machine's.
    """
    pipeline = config_from_dict(PipelineConfig, config or {})  # bad input fails here, before any work
    check_sweep_densities(pipeline.sweep, {"name": pipeline.train.model, "kwargs": {"num_classes": pipeline.train.num_classes}},
                          option="config.sweep.thresholds", dense_option="config.sweep.dense_below")  # fmt: skip
    storage.check_writable_folder(pipeline.storage_url, option="config.storage_url")
    values = config_to_dict(pipeline)
    logger = get_run_logger()
    labels = run_tags(model=pipeline.train.model, data_url=pipeline.data.url, bits=pipeline.sweep.bits,
                      prune_mode=pipeline.sweep.prune_mode)  # fmt: skip
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    with ray_session(ray_address, workdir=workdir, num_cpus=num_cpus), tags(*labels):
        seconds["ray_start"], clock = time.perf_counter() - clock, time.perf_counter()
        # Checked on the connected cluster, before the run folder is claimed or anything written.
        require_shared_storage(pipeline.storage_url, shared_mount=shared_mount)
        run_url = record_manifest(values, run_id)
        run = RunLayout(run_url).run_id
        label_flow_run(f"{run}/pipeline", labels)
        logger.info("run %s -> %s", run, run_url)
        train_progress = Progress(run, "train", f"training of sqz run {run}: epochs done")
        sweep_progress = Progress(run, "sweep", f"sweep of sqz run {run}: trials finished")
        arch = {"name": pipeline.train.model, "kwargs": {"num_classes": pipeline.train.num_classes}}
        logger.info("stage 1/3 train: %s, %d workers, %d epochs", pipeline.train.model,
                    pipeline.train.workers, pipeline.train.epochs)  # fmt: skip
        # Each stage's flow run is named after the run and the stage at creation (the UI lists them so).
        trained = train_model.with_options(flow_run_name=f"{run}/train")(
            run_url, values["train"], values["data"], progress_artifact_id=str(train_progress.id), shared_mount=shared_mount)
        baseline = {k: v for k, v in trained.items() if k not in ("epoch_rows", "run_id")}
        seconds["train"], clock = time.perf_counter() - clock, time.perf_counter()
        logger.info("stage 1/3 train done: top-1 %.2f, %s bytes (float32)", baseline["top1"], f"{baseline['size_bytes']:,}")
        logger.info("stage 2/3 sweep: thresholds %s x bits %s", pipeline.sweep.thresholds, pipeline.sweep.bits)
        trials = sweep_compression.with_options(flow_run_name=f"{run}/sweep")(
            run_url, values["sweep"], values["data"], arch, progress_artifact_id=str(sweep_progress.id), announce=False,
            shared_mount=shared_mount)  # fmt: skip
        seconds["sweep"], clock = time.perf_counter() - clock, time.perf_counter()
        logger.info("stage 2/3 sweep done: %d trials", len(trials))
        baseline = {**baseline, "model": pipeline.train.model}
        logger.info("stage 3/3 report")
        summary = report_run.with_options(flow_run_name=f"{run}/report")(
            run_url, baseline, trials, pipeline.sweep.max_top1_drop, publish=False)
    publish_run(summary, run_url)
    announce_sweep_finished(run_url, summary, pipeline.sweep.max_top1_drop, origin="squeeze_pipeline")
    seconds["report"] = time.perf_counter() - clock
    logger.info("stage 3/3 report done: %s", summary["report_url"])
    return {**summary, "stage_seconds": seconds}
