"""squeeze_pipeline: train -> sweep -> report, on one Ray session, under one run folder.

The run folder's name derives from the config, and every stage's task is cached by its
inputs + code version in that folder: running the same config again reuses what
finished (no training, no trial runs twice) and resumes what did not.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import NOT_CACHED, RETRYING
from flows.report_flow import report_run
from flows.sweep_flow import sweep_compression
from flows.train_flow import train_model
from sqz.config import PipelineConfig, config_from_dict, config_to_dict
from sqz.distributed.cluster import ray_session
from sqz.runs import RunLayout, write_manifest


@task(name="write-manifest", **RETRYING, **NOT_CACHED)
def record_manifest(config: dict[str, Any], run_id: str | None) -> str:
    pipeline = config_from_dict(PipelineConfig, config)
    layout = RunLayout.for_config(pipeline, run_id)
    write_manifest(layout, pipeline)
    return layout.run_url


@flow(name="squeeze_pipeline")
def squeeze_pipeline(config: dict[str, Any] | None = None, run_id: str | None = None,
                     ray_address: str | None = None, workdir: str = ".") -> dict[str, Any]:  # fmt: skip
    pipeline = config_from_dict(PipelineConfig, config or {})  # bad input fails here, before any work
    values = config_to_dict(pipeline)
    logger = get_run_logger()
    run_url = record_manifest(values, run_id)
    name = RunLayout(run_url).run_id
    logger.info("[sqz] run %s -> %s", name, run_url)
    arch = {"name": pipeline.train.model, "kwargs": {"num_classes": pipeline.train.num_classes}}
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    with ray_session(ray_address, workdir=workdir):
        seconds["ray_start"], clock = time.perf_counter() - clock, time.perf_counter()
        logger.info("[sqz] stage 1/3 train: %s, %d workers, %d epochs", pipeline.train.model,
                    pipeline.train.workers, pipeline.train.epochs)  # fmt: skip
        # Each stage's flow run is named after the run and the stage (the UI lists them so).
        trained = train_model.with_options(flow_run_name=f"{name}-train")(run_url, values["train"], values["data"])
        baseline = {k: v for k, v in trained.items() if k not in ("epoch_rows", "run_id")}
        seconds["train"], clock = time.perf_counter() - clock, time.perf_counter()
        logger.info("[sqz] stage 1/3 train done: top-1 %.2f, %d bytes", baseline["top1"], baseline["size_bytes"])
        logger.info("[sqz] stage 2/3 sweep: thresholds %s x bits %s", pipeline.sweep.thresholds, pipeline.sweep.bits)
        trials = sweep_compression.with_options(flow_run_name=f"{name}-sweep")(run_url, values["sweep"], values["data"], arch)
        seconds["sweep"], clock = time.perf_counter() - clock, time.perf_counter()
        logger.info("[sqz] stage 2/3 sweep done: %d trials", len(trials))
    baseline = {**baseline, "model": pipeline.train.model}
    logger.info("[sqz] stage 3/3 report")
    summary = report_run.with_options(flow_run_name=f"{name}-report")(run_url, baseline, trials, pipeline.sweep.max_top1_drop)
    seconds["report"] = time.perf_counter() - clock
    logger.info("[sqz] stage 3/3 report done: %s", summary["report_url"])
    return {**summary, "stage_seconds": seconds}
