"""Compression sweeps with Ray Tune: one trial per (threshold, bits) grid point, or, with
``per_layer``, one trial per target of a per-layer choice made from the sensitivity table.

The trial body is ``sqz.trial.compress_and_evaluate``. Tune runs ``max_concurrent``
trials at once, each with ``cpus_per_trial`` CPUs or a ``gpus_per_trial`` share of a GPU
(``tune.with_resources``). The baseline's bytes go into Ray's object store once:
``tune.with_parameters`` puts each keyword argument there when it is called and every
trial gets that one object, not a fresh read of the checkpoint.

Resuming: each trial writes its .sqz and then its own ``sweep_trials`` row file; a rerun
with the same arguments runs only the grid points without a row (with ASHA, also not
those it already stopped: they have a ``sweep_stopped`` row). A sweep interrupted half-way
keeps every finished trial and raises, naming how many are left; the rerun does the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import traceback
from typing import Any, Callable, Iterator

import ray
import torch
from ray import tune
from ray.tune.execution import class_cache as _tune_class_cache
from ray.tune.schedulers import ASHAScheduler
from ray.util.client import ray as ray_client

from sqz import metrics, sensitivity, storage
from sqz.compress import codec
from sqz.distributed.cluster import quiet_exit_in_finalizers
from sqz.distributed.follow import RowFollower
from sqz.logs import format_eta, terminal_bar
from sqz.config import DataConfig, PruneConfig, SensitivityConfig, SweepConfig, config_from_dict, config_to_dict
from sqz.runs import RunLayout
from sqz.trial import TrialSpec, compress_and_evaluate, retrain_rounds, trial_id

_log = logging.getLogger("sqz.sweep")

__all__ = ["sweep", "grid_points", "missing_points", "per_layer_points", "sensitivity_config_of", "trial_spec", "training_schedule",
           "TrialFailed", "SweepIncomplete", "TrialsFailed"]

# Ray Tune copies AWS_* credentials from the driver's environment into every trial's
# runtime_env, and Ray writes runtime envs in clear text to runtime_env_agent.log. Trials
# read credentials from their own environment instead (inherited from the driver on a
# local Ray, from the cluster's Secret on KubeRay), so sqz stops that copy.
_tune_env_vars = getattr(_tune_class_cache, "ENV_VARS_TO_PROPAGATE", None)
if isinstance(_tune_env_vars, set):
    _tune_env_vars.difference_update({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


# Restarts of one trial after its node or worker died; a trial that fails by itself (a bug,
# a bad config) fails this many more times before the sweep says so.
TRIAL_RETRIES = 2


def grid_points(sweep_cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every (threshold, bits) pair of the grid once, in grid order, with its trial id."""
    points: dict[str, dict[str, Any]] = {}
    for t in sweep_cfg.thresholds:
        for b in sweep_cfg.bits:
            point = {"threshold": float(t), "bits": int(b)}
            points.setdefault(_point_id(sweep_cfg, point), point)  # 0.3 twice is one trial
    return [{**point, "trial_id": name} for name, point in points.items()]


def _point_id(sweep_cfg: SweepConfig, point: dict[str, Any]) -> str:
    if "trial_id" in point:
        return point["trial_id"]
    return trial_id(PruneConfig(mode=sweep_cfg.prune_mode, amount=point["threshold"]), point["bits"])


def sensitivity_config_of(sweep_cfg: SweepConfig) -> SensitivityConfig:
    """The sensitivity analysis a per-layer sweep chooses from: the grid's levels."""
    return SensitivityConfig(
        thresholds=sweep_cfg.thresholds, bits=sweep_cfg.bits, prune_mode=sweep_cfg.prune_mode,
        images=sweep_cfg.sensitivity_images, max_concurrent=sweep_cfg.max_concurrent,
        cpus_per_task=sweep_cfg.cpus_per_trial, quant=sweep_cfg.quant,
    )  # fmt: skip


def per_layer_points(sweep_cfg: SweepConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per target (``max_drops``, ``size_budgets``) from the sensitivity rows;
    targets that lead to the same settings share one trial."""
    config = sensitivity_config_of(sweep_cfg)
    targets = [{"max_drop": d} for d in sweep_cfg.max_drops] + [{"size_budget": int(b)} for b in sweep_cfg.size_budgets]
    choices, unreachable = [], []
    for target in targets:
        try:
            choices.append(sensitivity.choose_layer_settings(rows, config, **target))
        except ValueError as exc:  # an unreachable target: say so, keep the others
            unreachable.append(str(exc))
            _log.warning("per-layer target skipped: %s", exc)
    if not choices:
        raise ValueError(unreachable[0])
    points: list[dict[str, Any]] = []
    seen: dict[str, str] = {}
    for choice in choices:
        name = sensitivity.per_layer_trial_id(choice)
        key = name.rsplit("-", 1)[-1]  # the settings' digest
        _log.info("per-layer %s: predicted %s bytes, top-1 drop %.2f point(s) before retraining%s", choice.target,
                  f"{choice.predicted_bytes:,}", choice.predicted_drop,
                  f" (same settings as {seen[key]})" if key in seen else f" -> {name}")  # fmt: skip
        if key in seen:
            continue
        seen[key] = name
        points.append({
            "trial_id": name, "threshold": math.nan, "bits": max(choice.bits.values()), "target": choice.target,
            "layer_amounts": choice.amounts, "layer_bits": choice.bits,
        })  # fmt: skip
    return points


def _device(sweep_cfg: SweepConfig) -> str:
    if sweep_cfg.gpus_per_trial <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("gpus_per_trial > 0 but this trial's worker sees no CUDA device")
    return "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the trial's GPU


def trial_spec(sweep_cfg: SweepConfig, point: dict[str, Any], lr_rewind: tuple[float, int, float] | None = None) -> TrialSpec:
    """The TrialSpec of one grid (or per-layer) point under ``sweep_cfg``."""
    per_layer = "layer_amounts" in point
    amount = sensitivity.no_prune_level(sweep_cfg.prune_mode) if per_layer else point["threshold"]
    prune = PruneConfig(mode=sweep_cfg.prune_mode, amount=amount, dense_below=sweep_cfg.dense_below)
    quant = dataclasses.replace(sweep_cfg.quant, bits=point["bits"])
    return TrialSpec(prune=prune, quant=quant, retrain_epochs=sweep_cfg.retrain_epochs,
                     retrain_lr=sweep_cfg.retrain_lr, retrain_optimizer=sweep_cfg.retrain_optimizer,
                     layer_amounts=point.get("layer_amounts"), layer_bits=point.get("layer_bits"),
                     prune_schedule=sweep_cfg.prune_schedule, prune_frequency=sweep_cfg.prune_frequency,
                     prune_ramp=sweep_cfg.prune_ramp, retrain_steps=sweep_cfg.retrain_steps,
                     retrain_loss=sweep_cfg.retrain_loss,
                     lr_rewind=lr_rewind if sweep_cfg.retrain_lr_schedule == "rewind" else None)  # fmt: skip


def training_schedule(layout: RunLayout) -> tuple[float, int, float]:
    """(base lr, epochs, poly power) of the training that made the run's baseline, from
    its manifest (a `sqz run` folder, or a sweep of one): what lr rewinding replays."""
    manifest = json.loads(storage.read_bytes(layout.manifest_url)) if storage.exists(layout.manifest_url) else {}
    train = manifest.get("config", {}).get("train") or manifest.get("train")
    if not train:
        raise ValueError("retrain_lr_schedule: rewind needs the baseline's training schedule; sweep a `sqz run` "
                         "folder (its manifest has it), or use the constant retrain lr")  # fmt: skip
    return float(train["lr"]), int(train["epochs"]), float(train.get("lr_power", 1.0))


class TrialFailed(RuntimeError):
    """A trial's error in one line: its type, its message and where its full traceback is."""


class SweepIncomplete(RuntimeError):
    """The sweep ended with trials that failed or were interrupted; the finished ones are
    kept, so running it again runs only the others. (The CLI reports it in one line.)"""


class TrialsFailed(SweepIncomplete):
    """Trials raised, each after Tune's TRIAL_RETRIES: a retry of the whole sweep (a
    Prefect task retry) would run them into the same errors again."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _record_failure(layout: RunLayout, name: str, exc: BaseException) -> tuple[TrialFailed, bool]:
    """Write ``exc``'s full traceback to the run's errors/<trial>.txt (first line: the
    error); returns the one-line error the trial raises instead (pages of Ray frames on
    the console say less than one line and a path) and whether the file was written."""
    message = _first_line(exc)
    summary = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    url = layout.error_url(name)
    try:
        storage.write_bytes(url, (summary + "\n\n" + "".join(traceback.format_exception(exc))).encode())
    except Exception as write_error:  # noqa: BLE001  (the trial's own error matters more)
        _log.warning("trial %s: its traceback could not be written to %s (%s)", name, url, _first_line(write_error))
        return TrialFailed(summary), False
    return TrialFailed(f"{summary} (traceback: {url})"), True


def _trial(config: dict[str, Any], *, baseline: bytes, points: dict[str, dict[str, Any]], context: dict[str, Any]) -> None:
    try:
        _run_trial(config, baseline=baseline, points=points, context=context)
    except Exception as exc:
        failed, written = _record_failure(RunLayout(context["run_url"]), config["trial_id"], exc)
        # Unwritten, the traceback stays chained to the error: Tune's error.txt keeps it.
        raise failed from (None if written else exc)


def _run_trial(config: dict[str, Any], *, baseline: bytes, points: dict[str, dict[str, Any]], context: dict[str, Any]) -> None:
    quiet_exit_in_finalizers()
    point = points[config["trial_id"]]
    sweep_cfg: SweepConfig = config_from_dict(SweepConfig, context["sweep"])
    # Ray sets OMP_NUM_THREADS from the trial's CPUs; say it to torch too, whatever ran first.
    torch.set_num_threads(max(1, int(sweep_cfg.cpus_per_trial)))
    rewind = context.get("lr_rewind")
    spec = trial_spec(sweep_cfg, point, tuple(rewind) if rewind else None)
    layout = RunLayout(context["run_url"])
    name = config["trial_id"]

    def report_epoch(epoch: int, result: Any) -> None:
        # One report per retrain round (an epoch, or a share of a step budget): what ASHA
        # compares trials on.
        tune.report({"top1": result.top1, "top5": result.top5, "retrain_epoch": epoch + 1})

    # Tune restarts a trial whose node died, also one that wrote its row just before the
    # node went and so had no time to report it: its row says it is done, so it reports that
    # row instead of retraining and writing its file again.
    check_started = time.perf_counter()
    written = metrics.read_writer_rows(layout.run_url, "sweep_trials", writer_id=name)
    check_s = time.perf_counter() - check_started
    if written:
        _log.info("trial %s: already done (its sweep_trials row exists); not run again", name)
        _report_final(written[0], spec)
        return
    row = compress_and_evaluate(
        baseline=baseline, arch=context["arch"], data=config_from_dict(DataConfig, context["data"]),
        spec=spec, model_url=layout.model_url(name), run_id=layout.run_id, name=name,
        target=point.get("target"), device=_device(sweep_cfg),
        on_retrain_epoch=report_epoch if sweep_cfg.scheduler == "asha" else None,
    )  # fmt: skip
    row["node_id"] = ray.get_runtime_context().get_node_id()
    # The file's per-layer byte account first: the sweep_trials row marks the trial done.
    account_started = time.perf_counter()
    account = codec.layer_sizes(storage.read_bytes(row["model_url"]))
    metrics.write_rows(layout.run_url, "compressed_layers", [{"run_id": layout.run_id, "model": name, **r} for r in account],
                       writer_id=name)  # fmt: skip
    # The done-check and the byte account are this trial's too (the row's own write is not:
    # the row cannot time itself).
    phases = json.loads(row["phase_s"])
    phases.update(check_done=round(check_s, 4), write_layers=round(time.perf_counter() - account_started, 4))
    row["phase_s"] = json.dumps(phases)
    metrics.write_rows(layout.run_url, "sweep_trials", [row], writer_id=name)
    _report_final(row, spec)


def _report_final(row: dict[str, Any], spec: TrialSpec) -> None:
    """The trial's last report to Tune: its row's numbers, at the round after retraining."""
    numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    tune.report({**numbers, "retrain_epoch": retrain_rounds(spec) + 1})


def _finished(layout: RunLayout) -> tuple[list[dict[str, Any]], set[str]]:
    """(every sweep_trials row, trial ids a scheduler stopped early and without a row)."""
    rows = metrics.read_table(layout.run_url, "sweep_trials").to_pylist()
    stopped = {row["trial_id"] for row in metrics.read_table(layout.run_url, "sweep_stopped").to_pylist()}
    return rows, stopped - {row["trial_id"] for row in rows}


def _finished_ids(layout: RunLayout) -> tuple[set[str], set[str]]:
    """(trial ids with a row, trial ids a scheduler stopped early)."""
    rows, stopped = _finished(layout)
    return {row["trial_id"] for row in rows}, stopped


def missing_points(layout: RunLayout, sweep_cfg: SweepConfig, points: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[str]]:
    """(the points of ``points`` still to run, the trial ids ASHA stopped that count as
    done): a point is done once it has a sweep_trials row (in its own file or compacted),
    or, under ASHA, a sweep_stopped row. One read of each table, whatever the grid's size."""
    done, stopped = _finished_ids(layout)
    if sweep_cfg.scheduler != "asha":
        stopped = set()  # without early stopping asked for, an earlier ASHA stop is no answer
    return [p for p in points if p["trial_id"] not in done | stopped], stopped


class _StopRecordingASHA(ASHAScheduler):
    """ASHA that remembers the trials it stopped before their final report, so the sweep
    can record those decisions (an interrupted trial is not one of them)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped: dict[str, dict[str, Any]] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and "size_bytes" not in result:
            self.stopped[trial.config["trial_id"]] = {"retrain_epochs_done": int(result["retrain_epoch"]),
                                                      "top1": float(result["top1"])}  # fmt: skip
        return action


def _scheduler(sweep_cfg: SweepConfig) -> _StopRecordingASHA | None:
    if sweep_cfg.scheduler != "asha":
        return None
    # Rungs after retrain rounds 1, 2, 4, ...; the final report (the decoded file's top-1)
    # comes at rounds + 1 = max_t, where ASHA only lets the finished trial end.
    rounds = retrain_rounds(trial_spec(sweep_cfg, {"threshold": sweep_cfg.thresholds[0], "bits": sweep_cfg.bits[0]}))
    return _StopRecordingASHA(time_attr="retrain_epoch", metric="top1", mode="max",
                              max_t=rounds + 1, grace_period=1, reduction_factor=2)  # fmt: skip


def _announce(trial: str, outcome: str, finished: int, total: int, eta_s: float) -> None:
    left = total - finished
    _log.info("trial %s done: %s; %d of %d left, ETA %s", trial, outcome, left, total, format_eta(eta_s) if left else "0s")


def _failure_of(trial: Any) -> str:
    """One line for a trial Tune gave up on: the TrialFailed its function raised (the
    error and its traceback's path), else (the trial's process died: no Python error)
    the last line of Tune's own error file, and that file's path."""
    text = ""
    if trial.error_file and os.path.exists(trial.error_file):
        with open(trial.error_file, errors="replace") as tune_error:
            text = tune_error.read()
    marker = f"{TrialFailed.__name__}: "
    if marker in text:
        return text.rsplit(marker, 1)[1].strip().splitlines()[0]
    last = next((line.strip() for line in reversed(text.splitlines()) if line.strip()), "no error recorded")
    return f"{last} (Tune's error file: {trial.error_file})"


class _Progress(tune.Callback):
    """In the driver, as each trial ends: a log line (trial id, bytes, top-1, trials left,
    ETA, or the error of a failed trial) and ``on_progress(finished, total)``. Tune calls
    its callbacks in the driver process, so the line reaches the driver's log handlers
    (the flow run's log too). Not used through Ray Client: Tune's driver then runs on the
    cluster (see _TrialWatcher)."""

    def __init__(self, on_progress: Callable[[int, int], None] | None, finished: int, total: int) -> None:
        self.on_progress, self.finished, self.total = on_progress, finished, total
        self.started, self.ended_here = time.monotonic(), 0
        self.bar = terminal_bar(total, "sweep", "trial", initial=finished)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Called once per trial, after its last retry (a retry is on_trial_recover).
        _log.error("trial %s failed: %s", trial.config.get("trial_id", trial.trial_id), _failure_of(trial))

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        _log.debug("trial %s failed, Tune runs it again: %s", trial.config.get("trial_id", trial.trial_id), _failure_of(trial))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        self.ended_here += 1
        eta = (time.monotonic() - self.started) / self.ended_here * (self.total - self.finished)
        result = trial.last_result or {}
        if "size_bytes" in result:
            outcome = f"{int(result['size_bytes']):,} bytes, top-1 {float(result['top1']):.2f}"
        else:  # stopped early by ASHA: no file was written
            outcome = f"stopped early at top-1 {float(result.get('top1', float('nan'))):.2f}"
        _announce(trial.config.get("trial_id", trial.trial_id), outcome, self.finished, self.total, eta)
        if self.on_progress is not None:
            self.on_progress(self.finished, self.total)
        if self.bar is not None:
            self.bar.update(1)
            if self.finished >= self.total:
                self.bar.close()


class _TrialWatcher(RowFollower):
    """Through Ray Client, ``Tuner.fit`` runs on the cluster, and so do Tune's callbacks:
    a callback there can reach neither this process's logs nor its Prefect run. Instead,
    this thread in the driver follows the run's ``sweep_trials`` rows (a row marks a trial
    done) and announces each new one, as :class:`_Progress` does in-process."""

    thread_name = "sqz-trial-watcher"

    def __init__(self, run_url: str, todo: set[str], on_progress: Callable[[int, int], None] | None,
                 finished: int, total: int, interval_s: float = 2.0) -> None:  # fmt: skip
        super().__init__(interval_s)
        self.run_url, self.todo, self.on_progress = run_url, set(todo), on_progress
        self.finished, self.total = finished, total
        self.started, self.ended_here = time.monotonic(), 0

    def poll(self) -> None:
        # One listing per poll, and each new row file read once: reading the whole table
        # every 2 s would cost N reads per poll, N^2 over a sweep.
        names = {url.rsplit("/", 1)[-1].removesuffix(".parquet") for url in metrics.table_files(self.run_url, "sweep_trials")}
        for name in sorted(names & self.todo):
            self.todo.discard(name)
            row = (metrics.read_writer_rows(self.run_url, "sweep_trials", writer_id=name) or [None])[0]
            if row is None:
                continue
            self.finished += 1
            self.ended_here += 1
            eta = (time.monotonic() - self.started) / self.ended_here * (self.total - self.finished)
            _announce(row["trial_id"], f"{int(row['size_bytes']):,} bytes, top-1 {float(row['top1']):.2f}",
                      self.finished, self.total, eta)  # fmt: skip
            if self.on_progress is not None:
                self.on_progress(self.finished, self.total)


class _DropRecords(logging.Filter):
    """Drops a logger's records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


# What Tune prints for a failed trial, each of which _Progress says in one line: its
# controller logs the trial's traceback at every attempt, its terminal reporter prints an
# "errored ... Error file:" block at every attempt (the legacy reporter honours verbose=0,
# the default one does not), and tune.run logs the list of unfinished trials. Tune's files
# (error.txt per trial under the run's tune/) and the run's errors/ keep everything.
_TUNE_NOISE = (("ray.tune.execution.tune_controller", "Trial task failed"), ("ray.tune.tune", "Trials did not complete"),
               # Without its per-trial logger files (_TUNE_ENV), Tune's result grid finds no
               # metrics files to load and says so for every trial; sqz reads its rows instead.
               ("ray.tune.analysis.experiment_analysis", "Failed to fetch metrics"))


# Tune settings read by Tuner.fit in the driver. sqz resumes from its own rows, never from
# Tune's state or per-trial files, and those cost ~140 of ~160 S3 requests per trial
# (bench_scale.py, 8 trials): Tune's JSON/CSV/TensorBoard loggers write ~6 files per trial
# into the run's tune/ folder, and its experiment state (all trials: it grows with N) is
# rewritten there every few seconds. So: no per-trial logger files, and the state at
# most every 5 minutes (and at the end). An operator's own values stand.
_TUNE_ENV = {"RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1", "TUNE_GLOBAL_CHECKPOINT_S": "300"}


@contextlib.contextmanager
def _tune_console_quiet() -> Iterator[None]:
    filters = [(logging.getLogger(name), _DropRecords(prefix)) for name, prefix in _TUNE_NOISE]
    for logger, drop in filters:
        logger.addFilter(drop)
    unset = [name for name in _TUNE_ENV if name not in os.environ]
    os.environ.update({name: _TUNE_ENV[name] for name in unset})
    try:
        yield
    finally:
        for name in unset:
            os.environ.pop(name, None)
        for logger, drop in filters:
            logger.removeFilter(drop)


def _tune_folder(layout: RunLayout) -> str:
    """Where Tune keeps its experiment state: the run's ``tune/`` on a local run folder;
    for an object-store run folder, a local folder of the driver (sqz's cache), since sqz
    never restores from Tune's state (its rows are the record) and Tune re-uploads its
    whole experiment folder at every sync: 7.7 s at the end of a 32-trial sweep on
    bench_scale's S3, growing with N. Trials write nothing there (no checkpoints)."""
    if storage.is_local(layout.run_url):
        return storage.join(layout.run_url, "tune")
    from sqz.data.builtin import cache_dir

    return os.path.join(cache_dir(), "tune", layout.run_id)


def _tuner(layout: RunLayout, sweep_cfg: SweepConfig, data_cfg: DataConfig, arch: dict[str, Any],
           todo: list[dict[str, Any]], *, lr_rewind: tuple[float, int, float] | None,
           scheduler: _StopRecordingASHA | None, callbacks: list[tune.Callback]) -> tune.Tuner:
    """A Tuner of one trial per point of ``todo``, its state under the run's ``tune/``."""
    baseline = storage.read_bytes(layout.baseline_url)
    context = {
        "sweep": config_to_dict(sweep_cfg), "data": config_to_dict(data_cfg),
        "arch": arch, "run_url": layout.run_url, "lr_rewind": lr_rewind,
    }  # fmt: skip
    resources = {"cpu": sweep_cfg.cpus_per_trial, "gpu": sweep_cfg.gpus_per_trial}
    trainable = tune.with_resources(
        tune.with_parameters(_trial, baseline=baseline, points={p["trial_id"]: p for p in todo}, context=context),
        resources,
    )
    fs, path = storage.resolve(_tune_folder(layout))
    return tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search([p["trial_id"] for p in todo])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=sweep_cfg.max_concurrent, scheduler=scheduler,
            # A finished trial's process runs the next trial (each trial seeds itself and
            # sets its threads): a new one costs a process start and the imports of
            # torch and sqz, ~3 s per trial on 2 cores, which Tune's default pays.
            reuse_actors=True,
            trial_dirname_creator=lambda trial: f"{trial.config['trial_id']}_{trial.trial_id}",
        ),
        run_config=tune.RunConfig(name="ray-tune", storage_path=path, storage_filesystem=fs, verbose=0,
                                  # A trial whose node dies (or whose worker crashes) runs again
                                  # on a live node; finished trials are never rerun.
                                  failure_config=tune.FailureConfig(max_failures=TRIAL_RETRIES),
                                  callbacks=callbacks),
    )


def sweep(layout: RunLayout, sweep_cfg: SweepConfig, data_cfg: DataConfig, arch: dict[str, Any], *,
          on_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run the grid's missing trials; returns every trial row of the grid (old and new).
    With ``sweep_cfg.per_layer`` the sensitivity table is completed first (on Ray) and the
    grid is one per-layer trial per target. ``on_progress(finished, total)``, if given, is
    called at the start (trials already done count as finished) and as each trial ends."""
    lr_rewind = training_schedule(layout) if sweep_cfg.retrain_lr_schedule == "rewind" else None
    if sweep_cfg.per_layer:
        from sqz.distributed.sensitivity import run_sensitivity

        rows = run_sensitivity(layout, sensitivity_config_of(sweep_cfg), data_cfg, arch)
        points = per_layer_points(sweep_cfg, rows)
    else:
        points = grid_points(sweep_cfg)
    todo, stopped = missing_points(layout, sweep_cfg, points)
    finished = len(points) - len(todo)
    if on_progress:
        on_progress(finished, len(points))
    if todo:
        _log.info("%d trial(s) to run, %d already done", len(todo), finished)
        scheduler = _scheduler(sweep_cfg)
        remote_driver = ray_client.is_connected()  # a ray:// address: Tune's driver runs on the cluster
        tuner = _tuner(layout, sweep_cfg, data_cfg, arch, todo, lr_rewind=lr_rewind, scheduler=scheduler,
                       callbacks=[] if remote_driver else [_Progress(on_progress, finished, len(points))])  # fmt: skip
        watcher = (_TrialWatcher(layout.run_url, {p["trial_id"] for p in todo}, on_progress, finished, len(points))
                   if remote_driver else contextlib.nullcontext())  # fmt: skip
        with watcher, _tune_console_quiet():
            results = tuner.fit()
        if scheduler is not None:
            for name, decision in scheduler.stopped.items():
                row = {"run_id": layout.run_id, "trial_id": name, **decision, "reason": "asha"}
                metrics.write_rows(layout.run_url, "sweep_stopped", [row], writer_id=name)
        failed = sorted(r.config["trial_id"] for r in results if r.error is not None)
        if failed:
            raise TrialsFailed(f"{len(failed)} of {len(todo)} sweep trial(s) failed ({', '.join(failed[:4])}"
                               f"{', ...' if len(failed) > 4 else ''}); each one's error and traceback: "
                               f"{layout.error_url('<trial>')}")  # fmt: skip
        # One read of the table serves the check and the rows returned: at 256 trials each
        # read of every row file cost seconds of the sweep's serial tail (bench_scale.py).
        rows, stopped = _finished(layout)
        done = {row["trial_id"] for row in rows}
        stopped = stopped if sweep_cfg.scheduler == "asha" else set()
        left = [p["trial_id"] for p in todo if p["trial_id"] not in done | stopped]
        if left:
            raise SweepIncomplete(f"sweep interrupted: {len(left)} of {len(points)} trial(s) unfinished "
                               f"({', '.join(left[:4])}); run the same command again to run only those")  # fmt: skip
    else:
        _log.info("all %d trial(s) already done, reusing them", finished)
        rows = metrics.read_table(layout.run_url, "sweep_trials").to_pylist()
    stopped &= {p["trial_id"] for p in points}
    if stopped:
        _log.info("%d trial(s) stopped early by ASHA: %s", len(stopped), ", ".join(sorted(stopped)))
    wanted = {p["trial_id"] for p in points}
    return [row for row in rows if row["trial_id"] in wanted]
