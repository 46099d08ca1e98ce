"""Sweeps: sweep_compression (the threshold x bits grid on a run's baseline, as parallel
Ray Tune trials) and sweep_checkpoint (`sqz sweep`: claim a checkpoint's run folder,
evaluate its baseline once, sweep, report)."""

from __future__ import annotations

import math
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE

from flows.artifacts import Progress, publish_files
from flows.common import (
    CACHED, NOT_CACHED, RETRYING, CodeVersion, claim_run_folder, in_run, label_flow_run, run_id_of, run_tags,
)  # fmt: skip
from flows.report_flow import announce_sweep_finished, publish_run, report_folder
from sqz import storage
from sqz.architectures import check_sweep_densities
from sqz.config import DataConfig, SweepConfig, config_from_dict
from sqz.distributed.cluster import ray_session, require_shared_storage
from sqz.distributed.sweep import sweep
from sqz.evaluation import evaluate_baseline
from sqz.logs import format_eta
from sqz.report import choose_variant, load_run
from sqz.runs import RunLayout
from sqz.runs.compact import SWEEP_TABLES, compact_run_metrics

# The progress artifact's id changes every run: it must not change the cache key.
_SWEEP_CACHE = {**CACHED, "cache_policy": (INPUTS - "progress_artifact_id") + TASK_SOURCE + CodeVersion()}
# The progress artifact changes at most this often (plus its first and last state): one API
# call per trial is ~1,000 calls for a 1,024-trial sweep, and a bar nobody reads faster.
PROGRESS_EVERY_S = 5.0


def _sweep_with_progress(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any],
                         arch: dict[str, Any], progress_artifact_id: str | None) -> list[dict[str, Any]]:  # fmt: skip
    started: dict[str, float] = {}

    def on_progress(finished: int, total: int) -> None:
        now = time.monotonic()
        first = started.setdefault("t", now), started.setdefault("finished", finished)
        if finished < total and now - started.get("shown", -math.inf) < PROGRESS_EVERY_S:
            return
        started["shown"] = now
        done_here = finished - first[1]
        eta = f" - ETA {format_eta((now - first[0]) / done_here * (total - finished))}" if done_here and finished < total else ""
        Progress.update(progress_artifact_id, 100.0 * finished / total, f"{finished} of {total} trials finished{eta}")

    layout = RunLayout(run_url)
    return sweep(layout, config_from_dict(SweepConfig, sweep_config), config_from_dict(DataConfig, data_config), arch,
                 on_progress=on_progress)  # fmt: skip


@task(name="run-sweep", **RETRYING, **_SWEEP_CACHE)
def run_sweep(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any],
              progress_artifact_id: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    return _sweep_with_progress(run_url, sweep_config, data_config, arch, progress_artifact_id)


# Not retried: a sweep stopped by Ctrl+C must stop; rerunning the command resumes it trial
# by trial (its rows are the record of what finished).
@task(name="sweep-trials", **NOT_CACHED)
def sweep_trials(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any],
                 progress_artifact_id: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    return _sweep_with_progress(run_url, sweep_config, data_config, arch, progress_artifact_id)


# After the trials, when no writer is left: one Parquet file per sweep table instead of one
# per trial (sqz.runs.compact); a rerun compacts what it added.
@task(name="compact-metrics", **RETRYING, **NOT_CACHED)
def compact_metrics(run_url: str) -> list[dict[str, Any]]:
    return compact_run_metrics(run_url, SWEEP_TABLES)


@task(name="evaluate-baseline", **RETRYING, **NOT_CACHED)
def evaluate_run_baseline(run_url: str, arch: dict[str, Any], data_config: dict[str, Any]) -> dict[str, Any]:
    return evaluate_baseline(run_url, arch, config_from_dict(DataConfig, data_config))


def _label(run_url: str, stage: str, arch: dict[str, Any], data_cfg: DataConfig, sweep_cfg: SweepConfig) -> str:
    run_id = run_id_of(run_url)
    label_flow_run(f"{run_id}/{stage}", run_tags(model=arch.get("name"), data_url=data_cfg.url, bits=sweep_cfg.bits,
                                                 prune_mode=sweep_cfg.prune_mode))  # fmt: skip
    return run_id


@flow(name="sweep_compression")
def sweep_compression(run_url: str, sweep_config: dict[str, Any], data_config: dict[str, Any], arch: dict[str, Any],
                      ray_address: str | None = None, progress_artifact_id: str | None = None,
                      announce: bool = True, shared_mount: bool = False) -> list[dict[str, Any]]:  # fmt: skip
    """Compress the run's baseline at every grid point (trials already done are reused).

    Args:
        run_url: the run folder holding models/baseline.safetensors; trials write models/<trial>.sqz there.
        sweep_config: SweepConfig fields: thresholds, bits, prune_mode, retrain_steps, max_concurrent, ...
            (as in `sqz sweep --help`).
        data_config: DataConfig fields of the data the trials retrain and evaluate on.
        arch: the model, e.g. {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}.
        ray_address: a Ray cluster (host:port or ray://host:10001); empty starts a local Ray.
        progress_artifact_id: a progress artifact to update per trial (the pipeline's); empty makes this run's own.
        announce: emit sqz.sweep.finished with the variant chosen within sweep_config's max_top1_drop
            (the pipeline announces after its report instead).
        shared_mount: a local run_url is a mount every Ray node shares (else refused on a multi-node cluster).
    """
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    # Bad input fails here, before Ray starts.
    sweep_cfg = config_from_dict(SweepConfig, sweep_config)
    data_cfg = config_from_dict(DataConfig, data_config)
    check_sweep_densities(sweep_cfg, arch, option="sweep_config.thresholds", dense_option="sweep_config.dense_below")
    run_id = _label(run_url, "sweep", arch, data_cfg, sweep_cfg)
    if progress_artifact_id is None:
        progress_artifact_id = str(Progress(run_id, "sweep", f"sweep of sqz run {run_id}: trials finished").id)
    with ray_session(ray_address):
        require_shared_storage(run_url, shared_mount=shared_mount, option="run_url")
        trials = in_run(run_sweep, run_url)(run_url, sweep_config, data_config, arch, progress_artifact_id)
    compact_metrics(run_url)
    Progress.update(progress_artifact_id, 100.0, f"{len(trials)} of {len(trials)} trials finished")
    publish_files(run_url)
    if announce:
        try:
            baseline, _ = load_run(run_url)
        except (ValueError, FileNotFoundError) as exc:  # e.g. a baseline copied in without its metrics
            get_run_logger().warning("sqz.sweep.finished not emitted: no baseline accuracy in the run (%s)", exc)
        else:
            chosen = choose_variant(trials, baseline["top1"], sweep_cfg.max_top1_drop)
            summary = {"run_id": run_id, "baseline": baseline, "trials": trials, "chosen": chosen}
            announce_sweep_finished(run_url, summary, sweep_cfg.max_top1_drop, origin="sweep_compression")
    return trials


@flow(name="sweep_checkpoint")
def sweep_checkpoint(plan: dict[str, Any], sweep_config: dict[str, Any], ray_address: str | None = None,
                     max_drop: float = 0.5, shared_mount: bool = False, num_cpus: int | None = None) -> dict[str, Any]:  # fmt: skip
    """`sqz sweep`: claim the checkpoint's run folder, evaluate its baseline once, run the
    grid's missing trials, and report the run (smallest model within ``max_drop`` points).

    Args:
        plan: the run folder's claim from sqz.runs.claims.plan_sweep_run (run id, URL, checkpoint, arch, data).
        sweep_config: SweepConfig fields: thresholds, bits, prune_mode, retrain_steps, max_concurrent, ...
        ray_address: a Ray cluster (host:port or ray://host:10001); empty starts a local Ray.
        max_drop: top-1 points the chosen variant may lose against the baseline.
        shared_mount: a local run folder is a mount every Ray node shares (else refused on a multi-node cluster).
        num_cpus: CPUs of a local Ray started for this sweep; empty: all of the machine's.
    """
    sweep_cfg = config_from_dict(SweepConfig, sweep_config)  # bad input fails here, before any work
    data_cfg = config_from_dict(DataConfig, plan["data"])
    if max_drop < 0:
        raise ValueError(f"max_drop: must be >= 0, got {max_drop}")
    check_sweep_densities(sweep_cfg, plan["arch"], option="sweep_config.thresholds", dense_option="sweep_config.dense_below")
    run_url = claim_run_folder(plan)
    run_id = _label(run_url, "sweep", plan["arch"], data_cfg, sweep_cfg)
    progress = Progress(run_id, "sweep", f"sweep of sqz run {run_id}: trials finished")
    evaluate_run_baseline(run_url, plan["arch"], plan["data"])
    get_run_logger().info("sweep run %s -> %s", plan["run_id"], run_url)
    with ray_session(ray_address, num_cpus=num_cpus):
        require_shared_storage(run_url, shared_mount=shared_mount, option="run_url")
        sweep_trials(run_url, sweep_config, plan["data"], plan["arch"], str(progress.id))
    compact_metrics(run_url)
    summary = report_folder(run_url, max_drop)
    publish_run(summary, run_url)
    announce_sweep_finished(run_url, summary, max_drop, origin="sweep_checkpoint")
    return summary
