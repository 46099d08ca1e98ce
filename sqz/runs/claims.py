"""Placing a command's run folder: plan it (read-only: every conflict is a one-line
ValueError before any work), then claim it (write its manifest, copy its baseline).

A plan is plain JSON (run_url, run_id, the manifest to write, ...), so a Prefect flow can
take it as a parameter and claim the folder as its first task.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqz import storage
from sqz.config import DataConfig, TrainConfig, config_from_dict, config_to_dict
from sqz.runs.layout import RunLayout
from sqz.runs.manifest import check_run_id, new_manifest, read_manifest, save_manifest, sweep_run_id, train_run_id

__all__ = ["plan_train_run", "plan_sweep_run", "plan_sweep_trials", "claim_run", "TRIAL_SETTINGS"]


def plan_train_run(storage_url: str, run_id: str | None, data: DataConfig, train: TrainConfig) -> dict[str, Any]:
    """The folder of a `sqz train`. An existing run must have the same configs: a resume
    with other settings would silently mix two trainings."""
    from sqz.checkpoint import check_start_files

    storage.check_url(storage_url, option="--storage")
    check_run_id(run_id)
    check_start_files(train)
    layout = RunLayout.under(storage_url, run_id or train_run_id(data, train))
    wanted = {"data": config_to_dict(data), "train": config_to_dict(train)}
    manifest = None
    if storage.exists(layout.manifest_url):
        existing = read_manifest(layout.run_url)["config"]
        for key, cls in (("data", DataConfig), ("train", TrainConfig)):
            had = config_to_dict(config_from_dict(cls, existing.get(key, {})))
            changed = sorted(k for k in wanted[key] if had.get(k) != wanted[key][k])
            if changed:
                name = changed[0]
                raise ValueError(f"--run-id: run {layout.run_url} was started with {name}={had.get(name)!r}, not "
                                 f"{wanted[key][name]!r}; use another --run-id")  # fmt: skip
    else:
        arch = {"name": train.model, "kwargs": {"num_classes": train.num_classes}}
        manifest = new_manifest(layout.run_id, "train", config=wanted, arch=arch)
    return {"run_url": layout.run_url, "run_id": layout.run_id, "manifest": manifest}


def _checkpoint_source(checkpoint: str) -> tuple[str, dict[str, Any]]:
    """(URL of the checkpoint's safetensors, the source run's manifest or {})."""
    storage.check_url(checkpoint, option="--checkpoint")
    if checkpoint.endswith(".safetensors"):
        return checkpoint, {}
    baseline_url = RunLayout(checkpoint).baseline_url
    if not storage.exists(baseline_url):
        raise ValueError(f"--checkpoint: {checkpoint} is neither a .safetensors file nor a run folder with models/baseline.safetensors")
    manifest_url = RunLayout(checkpoint).manifest_url
    return baseline_url, read_manifest(checkpoint) if storage.exists(manifest_url) else {}


def plan_sweep_run(storage_url: str, checkpoint: str, *, run_id: str | None = None, data_url: str | None = None,
                   model: str | None = None) -> dict[str, Any]:  # fmt: skip
    """The folder of a `sqz sweep` / `sqz sensitivity` of ``checkpoint`` (a .safetensors
    file or a run folder): ``sweep-<digest of the checkpoint's bytes, model, data>``, so
    both commands and reruns of the same checkpoint share one folder. Loads the weights
    into the model to refuse a wrong file, model or class count in one line."""
    from safetensors.torch import load as load_safetensors

    from sqz.data import check_data_url, num_classes_of
    from sqz.models import build_model, list_models

    storage.check_url(storage_url, option="--storage")
    check_run_id(run_id)
    checkpoint_url, source = _checkpoint_source(checkpoint)
    source_config = source.get("config", {})
    if data_url is not None:
        check_data_url(data_url)
        data = DataConfig(url=data_url)
    elif "data" in source_config:
        data = config_from_dict(DataConfig, source_config["data"])
    else:
        data = DataConfig(url="digits")
    model_name = model or (source.get("arch") or {}).get("name") or "squeezenet_small"
    if model_name not in list_models():
        raise ValueError(f"--model: unknown model {model_name!r}; choose one of {', '.join(list_models())}")
    arch = {"name": model_name, "kwargs": {"num_classes": num_classes_of(data)}}
    baseline = storage.read_bytes(checkpoint_url)
    try:
        build_model(model_name, **arch["kwargs"]).load_state_dict(load_safetensors(baseline))
    except Exception as exc:  # a wrong file, model or class count: say which, in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--checkpoint: {checkpoint_url} does not load into {model_name} with "
                         f"{arch['kwargs']['num_classes']} classes: {first[:200]}") from None  # fmt: skip
    digest = hashlib.sha256(baseline).hexdigest()
    layout = RunLayout.under(storage_url, run_id or sweep_run_id(digest, arch, data))
    earlier = read_manifest(layout.run_url) if storage.exists(layout.manifest_url) else None
    if earlier is not None and earlier["kind"] != "sweep":
        raise ValueError(f"--run-id: {layout.run_id} is a `sqz {'run' if earlier['kind'] == 'pipeline' else earlier['kind']}` "
                         "folder; sweeps of a checkpoint go in their own run")  # fmt: skip
    if earlier is not None and (earlier.get("source") or {}).get("checkpoint_sha256", digest) != digest:
        raise ValueError(f"--run-id: run {layout.run_id} was made from another checkpoint; choose a new --run-id")
    config = {"data": config_to_dict(data)}
    if source_config.get("train"):  # the baseline's training: what lr rewinding replays
        config["train"] = source_config["train"]
    extra = {"trial_settings": earlier["trial_settings"]} if earlier and "trial_settings" in earlier else {}
    manifest = new_manifest(layout.run_id, "sweep", config=config, arch=arch,
                            source={"checkpoint_url": checkpoint_url, "checkpoint_sha256": digest}, **extra)  # fmt: skip
    return {"run_url": layout.run_url, "run_id": layout.run_id, "arch": arch, "data": config_to_dict(data),
            "checkpoint_url": checkpoint_url, "manifest": manifest}  # fmt: skip


# The settings that shape a trial's result under one grid-point name.
TRIAL_SETTINGS = ("retrain_epochs", "retrain_lr", "retrain_optimizer", "quant", "retrain_steps", "prune_schedule",
                  "prune_frequency", "prune_ramp", "retrain_lr_schedule", "retrain_loss", "dense_below")  # fmt: skip


# Quant fields added after sweeps recorded their settings, at the value those sweeps used.
_QUANT_BEFORE_RECORDED = {"assign": "nearest"}


def _differs(recorded: Any, now: Any) -> bool:
    """A recorded setting differs from the current one (a dict: on the keys it recorded)."""
    if isinstance(recorded, dict) and isinstance(now, dict):
        return any(k not in now or _differs(v, now[k]) for k, v in recorded.items())
    return recorded != now


def plan_sweep_trials(plan: dict[str, Any], sweep_cfg: Any) -> dict[str, Any]:
    """``plan`` with the sweep's trial settings recorded. Trials of one run share a row
    table keyed by grid point, so the settings that shape a trial's result must not change
    under them: a different retrain needs another run."""
    manifest = plan["manifest"]
    settings = {k: v for k, v in config_to_dict(sweep_cfg).items() if k in TRIAL_SETTINGS}
    earlier = manifest.get("trial_settings")
    if earlier is not None and isinstance(earlier.get("quant"), dict):
        # Quant fields added later: what a sweep recorded before them did.
        earlier = {**earlier, "quant": {**_QUANT_BEFORE_RECORDED, **earlier["quant"]}}
    # A run swept before a setting existed had its default then: compare only what it
    # recorded (inside "quant" too: its later fields, such as assign, are absent there).
    if earlier is not None and any(k in earlier and _differs(earlier[k], settings[k]) for k in settings):
        changed = ", ".join(f"{k}={earlier.get(k)!r}" for k in settings if k in earlier and _differs(earlier[k], settings[k]))
        raise ValueError(f"--retrain-*/--prune-*/--finetune-epochs/--weighting/--distill-*/--assign: run {plan['run_id']} was swept with "
                         f"{changed}; keep them or choose a new --run-id")  # fmt: skip
    if sweep_cfg.retrain_lr_schedule == "rewind":
        source_train = manifest["config"].get("train")
        if not source_train:
            raise ValueError("--lr-rewind: needs the baseline's training schedule; give a `sqz run` folder as --checkpoint")
        config_from_dict(TrainConfig, source_train)
    return {**plan, "manifest": {**manifest, "trial_settings": settings}}


def claim_run(plan: dict[str, Any]) -> str:
    """Write the plan's manifest (a resumed train run keeps its own) and copy the swept
    checkpoint in as the run's baseline; returns the run's URL."""
    layout = RunLayout(plan["run_url"])
    checkpoint_url = plan.get("checkpoint_url")
    if checkpoint_url and not storage.exists(layout.baseline_url):
        storage.write_bytes(layout.baseline_url, storage.read_bytes(checkpoint_url))
    if plan.get("manifest") is not None:
        save_manifest(layout.run_url, plan["manifest"])
    return layout.run_url
