"""Per-layer sensitivity on Ray: the units of ``sqz.sensitivity`` as parallel tasks.

One task per layer (its pruning and bit-width curves on the fixed subset) and one per
(threshold, bits) pair (real encoded bytes of every layer), ``max_concurrent`` at a time.
The baseline's bytes go into the object store once and every task reads that one copy.
Each unit writes its own file of the run's ``sensitivity`` table, so a rerun (or a
``--per-layer`` sweep after ``sqz sensitivity``) computes only the units still missing.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import ray
import torch
from safetensors.torch import load as load_safetensors

from sqz import metrics, sensitivity, storage
from sqz.compress.prune import prunable_parameters
from sqz.config import DataConfig, SensitivityConfig, config_from_dict, config_to_dict
from sqz.distributed.cluster import quiet_exit_in_finalizers
from sqz.models import build_model
from sqz.runs import RunLayout

_log = logging.getLogger("sqz.sensitivity")

__all__ = ["run_sensitivity"]

TABLE = "sensitivity"


def _model(baseline: bytes, arch: dict[str, Any]) -> torch.nn.Module:
    model = build_model(arch["name"], **arch.get("kwargs", {}))
    model.load_state_dict(load_safetensors(baseline))
    return model.eval()


def _writer(*parts: Any) -> str:
    # Writer ids are file names: keep [A-Za-z0-9._-] only.
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(str(p) for p in parts))


@ray.remote
def _unit(kind: str, item: Any, baseline: bytes, context: dict[str, Any]) -> int:
    """One unit of work: "baseline", "curves" of one layer, or "sizes" at one (level, bits)."""
    quiet_exit_in_finalizers()
    config: SensitivityConfig = config_from_dict(SensitivityConfig, context["config"])
    torch.set_num_threads(max(1, int(config.cpus_per_task)))
    model = _model(baseline, context["arch"])
    run_url, run_id, mode = context["run_url"], context["run_id"], config.prune_mode
    if kind == "sizes":
        level, bits = item
        rows = sensitivity.layer_sizes_at(model, level, bits, config, run_id=run_id)
        writer = _writer("sizes", mode, f"{level:g}", f"b{bits}")
    else:
        inputs, targets = sensitivity.fixed_subset(config_from_dict(DataConfig, context["data"]), config.images)
        if kind == "baseline":
            rows = [sensitivity.baseline_row(model, inputs, targets, run_id=run_id, prune_mode=mode)]
            writer = _writer("baseline", mode)
        else:
            rows = sensitivity.layer_curves(model, item, inputs, targets, config, run_id=run_id)
            writer = _writer("curves", mode, item)
    metrics.write_rows(run_url, TABLE, rows, writer_id=writer)
    return len(rows)


def _subset_size(data: DataConfig, config: SensitivityConfig) -> int:
    from sqz.data import load_split

    return min(config.images, len(load_split(data, "val")))


def run_sensitivity(layout: RunLayout, config: SensitivityConfig, data: DataConfig, arch: dict[str, Any]) -> list[dict[str, Any]]:
    """Compute the units of the sensitivity table still missing; returns the table's rows
    for ``config.prune_mode``. Needs Ray (an existing session, or Ray starts one)."""
    layers = list(prunable_parameters(build_model(arch["name"], **arch.get("kwargs", {}))))
    images = _subset_size(data, config)
    rows = metrics.read_table(layout.run_url, TABLE).to_pylist()
    need_baseline, layers_todo, pairs_todo = sensitivity.missing_units(rows, layers, config, images)
    units = ([("baseline", None)] if need_baseline else []) + [("curves", layer) for layer in layers_todo]
    units += [("sizes", pair) for pair in pairs_todo]
    if not units:
        _log.info("all %d layer(s) and sizes already measured, reusing them", len(layers))
    else:
        _log.info("%d layer curve(s) and %d size point(s) to measure on %d validation images",
                  len(layers_todo), len(pairs_todo), images)  # fmt: skip
        baseline = ray.put(storage.read_bytes(layout.baseline_url))  # one copy for every task
        context = {"config": config_to_dict(config), "data": config_to_dict(data), "arch": arch,
                   "run_url": layout.run_url, "run_id": layout.run_id}  # fmt: skip
        task = _unit.options(num_cpus=config.cpus_per_task)
        pending: list[ray.ObjectRef] = []
        failures: list[str] = []
        for kind, item in units:
            if len(pending) >= config.max_concurrent:
                done, pending = ray.wait(pending, num_returns=1)
                failures += _errors(done)
            pending.append(task.remote(kind, item, baseline, context))
        failures += _errors(pending)
        if failures:
            raise RuntimeError(f"{len(failures)} sensitivity unit(s) failed; first: {failures[0]}")
    rows = metrics.read_table(layout.run_url, TABLE).to_pylist()
    return [r for r in rows if r["prune_mode"] == config.prune_mode]


def _errors(refs: list[ray.ObjectRef]) -> list[str]:
    errors = []
    for ref in refs:
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            errors.append(str(exc).strip().splitlines()[-1])
    return errors
