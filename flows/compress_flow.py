"""compress_model: one checkpoint + one setting -> a .sqz file and its evaluation."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flows.artifacts import publish_files
from flows.common import CACHED, NOT_CACHED, RETRYING, artifact_key, in_run, label_flow_run, run_tags
from sqz import metrics, storage
from sqz.config import DataConfig, PruneConfig, QuantConfig, config_from_dict
from sqz.runs import RunLayout
from sqz.trial import TrialSpec, compress_and_evaluate, trial_id


@task(name="compress-checkpoint", **RETRYING, **CACHED)
def compress_checkpoint(checkpoint_url: str, model_url: str, run_id: str, arch: dict[str, Any],
                        data_config: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    trial_spec = TrialSpec(**{**spec, "prune": config_from_dict(PruneConfig, spec["prune"]),
                              "quant": config_from_dict(QuantConfig, spec["quant"])})  # fmt: skip
    return compress_and_evaluate(baseline=storage.read_bytes(checkpoint_url), arch=arch, spec=trial_spec,
                                 data=config_from_dict(DataConfig, data_config), model_url=model_url, run_id=run_id)  # fmt: skip


@task(name="record-trial", **RETRYING, **NOT_CACHED)
def record_trial(run_url: str, row: dict[str, Any]) -> str:
    return metrics.write_rows(run_url, "sweep_trials", [row], writer_id=row["trial_id"])


@flow(name="compress_model")
def compress_model(run_url: str, arch: dict[str, Any], data_config: dict[str, Any], prune: dict[str, Any],
                   quant: dict[str, Any], retrain_epochs: int = 0, retrain_lr: float = 1e-4,
                   retrain_optimizer: str = "adamw", checkpoint_url: str | None = None,
                   retrain_steps: int | None = None, prune_schedule: str = "gradual", prune_frequency: int = 10,
                   prune_ramp: float = 0.5, retrain_loss: str = "task") -> dict[str, Any]:  # fmt: skip
    """Prune, retrain, quantize and encode one checkpoint (default: the run's baseline)
    into ``<run>/models/<trial>.sqz``, evaluate the decoded file, and add its row to the
    run's sweep_trials table (a grid point of a sweep is the same trial, same file).
    The retrain budget is ``retrain_steps`` optimizer steps (else ``retrain_epochs``);
    ``prune_schedule`` "gradual" reaches the pruning target by the cubic schedule during
    it, "oneshot" cuts first; ``retrain_loss`` "distill" retrains on KL to the unpruned
    checkpoint's logits instead of the labels (see ``sqz.trial.TrialSpec``).

    Args:
        run_url: the run folder; the .sqz file goes to its models/, the row to its sweep_trials table.
        arch: the model, e.g. {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}.
        data_config: DataConfig fields of the data to retrain and evaluate on (url: digits, a folder, Parquet).
        prune: PruneConfig fields: mode (std | density | absolute) and amount (q, kept share, or magnitude).
        quant: QuantConfig fields: bits (1..8 per codebook), method, finetune_epochs, distill_steps.
        retrain_epochs: retraining epochs with pruned weights held at zero (when retrain_steps is empty).
        retrain_lr: retraining learning rate.
        retrain_optimizer: adamw or sgd.
        checkpoint_url: the weights to compress (.safetensors); empty takes the run's baseline.
        retrain_steps: retraining budget in optimizer steps (wins over retrain_epochs).
        prune_schedule: gradual (Zhu & Gupta's cubic schedule during retraining) or oneshot.
        prune_frequency: steps between mask updates of the gradual schedule.
        prune_ramp: share of the retraining over which the gradual schedule reaches its target.
        retrain_loss: task (labels) or distill (KL to the unpruned checkpoint's logits).
    """
    storage.check_url(run_url, option="run_url")
    run_url = storage.absolute(run_url)
    layout = RunLayout(run_url)
    prune_cfg, quant_cfg = config_from_dict(PruneConfig, prune), config_from_dict(QuantConfig, quant)  # bad input fails here
    config_from_dict(DataConfig, data_config)
    checkpoint_url = storage.absolute(checkpoint_url) if checkpoint_url else layout.baseline_url
    name = trial_id(prune_cfg, quant_cfg.bits)
    label_flow_run(f"{layout.run_id}/compress-{name}", run_tags(model=arch.get("name"), data_url=data_config.get("url", "digits"),
                                                                 bits=quant_cfg.bits, prune_mode=prune_cfg.mode))  # fmt: skip
    spec = {"prune": prune, "quant": quant, "retrain_epochs": retrain_epochs, "retrain_lr": retrain_lr,
            "retrain_optimizer": retrain_optimizer, "retrain_steps": retrain_steps, "prune_schedule": prune_schedule,
            "prune_frequency": prune_frequency, "prune_ramp": prune_ramp, "retrain_loss": retrain_loss}  # fmt: skip
    TrialSpec(**{**spec, "prune": prune_cfg, "quant": quant_cfg})  # every bad option fails here, before any work
    row = in_run(compress_checkpoint, run_url)(checkpoint_url, layout.model_url(name), layout.run_id, arch, data_config, spec)
    record_trial(run_url, row)
    create_table_artifact([row], key=artifact_key(layout.run_id, name, "evaluation"),
                          description=f"{name}: the decoded .sqz file evaluated on {data_config.get('url', 'digits')}")  # fmt: skip
    publish_files(run_url)
    return row


@task(name="import-released", **RETRYING, **NOT_CACHED)
def import_released_task(file_url: str, out_url: str, options: dict[str, Any], run_url: str | None) -> dict[str, Any]:
    from sqz.import_dc import ImportOptions, import_to

    # Progress (calibration, budget retries) goes to the flow run's log.
    return import_to(file_url, out_url, ImportOptions(**options), run_url=run_url, log=get_run_logger().info)


@flow(name="import_released")
def import_released(file_url: str, out_url: str, bits: int | None = None, method: str = "exact",
                    calibrate: str | None = None, size_budget: int | None = None, weighting: str = "fisher",
                    distill_steps: int = 0, distill_lr: float = 1e-4, calibration_images: int = 384,
                    assign: str = "gptq", gptq_inputs: str = "dense", budget_kl_images: int = 0,
                    allocator: str = "measured", allocator_images: int = 64, confident: float = 0.5,
                    run_url: str | None = None) -> dict[str, Any]:  # fmt: skip
    """`sqz import-dc` as a flow: the released Deep Compression SqueezeNet -> .sqz,
    re-clustered at ``bits`` or per layer under ``size_budget`` bytes, calibrated on
    ``calibrate`` (photos | a folder | a prepared dataset) with Fisher-weighted k-means and
    centroid distillation; the held-out fidelity goes to the ``fidelity`` table and an
    artifact.

    Args:
        file_url: the released compressed_SqueezeNet.net (Deep Compression's format).
        out_url: where the .sqz file goes (local path or s3://).
        bits: re-cluster every layer at this width (1..8); empty keeps the released codebooks unless size_budget is set.
        method: the k-means method of the re-clustering (exact: the optimal 1-D dynamic program).
        calibrate: photos (built-in real photos), a folder of images, or a prepared dataset URL; empty: no calibration.
        size_budget: bytes the .sqz file may take; each layer's bits are chosen to maximise fidelity under it.
        weighting: fisher (k-means weighted by the loss's sensitivity, needs calibrate) or none (weight MSE).
        distill_steps: centroid fine-tuning steps by distillation from the dense model (0: none).
        distill_lr: learning rate of the centroid fine-tuning.
        calibration_images: calibration crops used (a fixed subset; the rest is held out for fidelity).
        assign: nearest (each weight to its closest shared value) or gptq (error-compensated, from the layer inputs).
        gptq_inputs: with gptq, the layer inputs come from the re-assigned earlier layers (sequential) or the dense model.
        budget_kl_images: with calibrate and size_budget, scale each layer's costs by its KL measured on this many calibration images (0: unscaled).
        allocator: with calibrate and size_budget, measured (greedy on measured KL per byte, never worse than the best uniform width at no more bytes) or fisher (knapsack over predicted costs).
        allocator_images: calibration crops the measured allocator measures its KLs on.
        confident: fidelity is also reported on held-out crops whose dense top-1 probability is at least this, in (0, 1).
        run_url: a run folder whose fidelity table gets the result's row; empty: none.
    """
    from sqz.config import ImportOptions

    options = {"bits": bits, "method": method, "calibrate": calibrate, "size_budget": size_budget, "weighting": weighting,
               "distill_steps": distill_steps, "distill_lr": distill_lr, "calibration_images": calibration_images,
               "assign": assign, "gptq_inputs": gptq_inputs, "budget_kl_images": budget_kl_images, "allocator": allocator,
               "allocator_images": allocator_images, "confident": confident}  # fmt: skip
    if ImportOptions(**options).calibrate is not None:  # bad input fails here, before the task (and its retries)
        from sqz.fidelity import check_calibration_source

        check_calibration_source(calibrate)
    storage.check_url(out_url, option="out_url")
    storage.check_url(file_url, option="file_url")
    if not storage.exists(file_url):
        raise ValueError(f"file_url: no such file: {file_url}")
    summary = import_released_task(file_url, out_url, options, run_url)
    if summary["fidelity"] is not None:
        create_table_artifact([{"model": summary["model_url"], "size_bytes": summary["size_bytes"], **summary["fidelity"]}],
                              key=artifact_key("import-dc", f"b{bits}-s{size_budget}", "fidelity"),
                              description=f"fidelity vs the dense released model on held-out {calibrate} images")  # fmt: skip
    return summary
