"""Compression sweeps with Ray Tune: one trial per (threshold, bits) grid point.

The trial body is ``sqz.trial.compress_and_evaluate``; Tune runs trials in parallel
(``max_concurrent`` at a time, one CPU each). The baseline's bytes go into Ray's object
store once (``tune.with_parameters``), not re-read per trial. Each trial writes its .sqz
and its own ``sweep_trials`` row file, so a rerun skips grid points already in the table.
"""

from __future__ import annotations

from typing import Any, Callable

from ray import tune
from ray.tune.execution import class_cache as _tune_class_cache

from sqz import metrics, storage
from sqz.config import DataConfig, PruneConfig, QuantConfig, SweepConfig, config_from_dict, config_to_dict
from sqz.runs import RunLayout
from sqz.trial import TrialSpec, compress_and_evaluate, trial_id

__all__ = ["sweep", "grid_points"]

# Ray Tune copies AWS_* credentials from the driver's environment into every trial's
# runtime_env, and Ray writes runtime envs in clear text to runtime_env_agent.log. Trials
# read credentials from their own environment instead (inherited from the driver on a
# local Ray, from the cluster's Secret on KubeRay), so sqz stops that copy.
_tune_env_vars = getattr(_tune_class_cache, "ENV_VARS_TO_PROPAGATE", None)
if isinstance(_tune_env_vars, set):
    _tune_env_vars.difference_update({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN"})


def grid_points(sweep_cfg: SweepConfig) -> list[dict[str, Any]]:
    return [
        {"threshold": float(t), "bits": int(b)}
        for t in sweep_cfg.thresholds
        for b in sweep_cfg.bits
    ]


def _point_id(sweep_cfg: SweepConfig, point: dict[str, Any]) -> str:
    return trial_id(PruneConfig(mode=sweep_cfg.prune_mode, amount=point["threshold"]), point["bits"])


def _trial(config: dict[str, Any], *, baseline: bytes, context: dict[str, Any]) -> None:
    point = config["point"]  # {"threshold": ..., "bits": ...}
    sweep_cfg: SweepConfig = config_from_dict(SweepConfig, context["sweep"])
    prune = PruneConfig(mode=sweep_cfg.prune_mode, amount=point["threshold"])
    quant = QuantConfig(**{**config_to_dict(sweep_cfg.quant), "bits": point["bits"]})
    spec = TrialSpec(prune=prune, quant=quant, retrain_epochs=sweep_cfg.retrain_epochs,
                     retrain_lr=sweep_cfg.retrain_lr, retrain_optimizer=sweep_cfg.retrain_optimizer)  # fmt: skip
    layout = RunLayout(context["run_url"])
    name = trial_id(prune, quant.bits)
    row = compress_and_evaluate(
        baseline=baseline, arch=context["arch"], data=config_from_dict(DataConfig, context["data"]),
        spec=spec, model_url=layout.model_url(name), run_id=layout.run_id,
    )  # fmt: skip
    metrics.write_rows(layout.run_url, "sweep_trials", [row], writer_id=name)
    tune.report({k: v for k, v in row.items() if isinstance(v, (int, float))})


class _Progress(tune.Callback):
    """Calls ``on_progress(finished, total)`` in the driver as each trial ends."""

    def __init__(self, on_progress: Callable[[int, int], None], finished: int, total: int) -> None:
        self.on_progress, self.finished, self.total = on_progress, finished, total

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished += 1
        self.on_progress(self.finished, self.total)


def sweep(layout: RunLayout, sweep_cfg: SweepConfig, data_cfg: DataConfig, arch: dict[str, Any], *,
          on_progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run the grid's missing trials; returns every trial row of the run (old and new).
    ``on_progress(finished, total)``, if given, is called at the start (trials already
    done count as finished) and after each trial completes."""
    done = {row["trial_id"] for row in metrics.read_table(layout.run_url, "sweep_trials").to_pylist()}
    todo = [p for p in grid_points(sweep_cfg) if _point_id(sweep_cfg, p) not in done]
    total = len(grid_points(sweep_cfg))
    if on_progress:
        on_progress(total - len(todo), total)
    if todo:
        print(f"[sqz] sweep: {len(todo)} trial(s) to run, {len(done)} already done", flush=True)
        baseline = storage.read_bytes(layout.baseline_url)
        context = {
            "sweep": config_to_dict(sweep_cfg), "data": config_to_dict(data_cfg),
            "arch": arch, "run_url": layout.run_url,
        }  # fmt: skip
        trainable = tune.with_resources(
            tune.with_parameters(_trial, baseline=baseline, context=context), {"cpu": 1}
        )
        fs, path = storage.resolve(storage.join(layout.run_url, "tune"))
        tuner = tune.Tuner(
            trainable,
            param_space={"point": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(max_concurrent_trials=sweep_cfg.max_concurrent),
            run_config=tune.RunConfig(name="ray-tune", storage_path=path, storage_filesystem=fs, verbose=0,
                                      callbacks=[_Progress(on_progress, total - len(todo), total)] if on_progress else None),
        )
        results = tuner.fit()
        errors = [str(r.error) for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"{len(errors)} sweep trial(s) failed; first: {errors[0].strip().splitlines()[-1]}")
    else:
        print(f"[sqz] sweep: all {len(done)} trial(s) already done, reusing them", flush=True)
    rows = metrics.read_table(layout.run_url, "sweep_trials").to_pylist()
    wanted = {_point_id(sweep_cfg, p) for p in grid_points(sweep_cfg)}
    return [row for row in rows if row["trial_id"] in wanted]
