import dataclasses

import pytest

from sqz.config import (DataConfig, PipelineConfig, PruneConfig, QuantConfig, SweepConfig, TrainConfig,
                        config_from_dict, config_to_dict)  # fmt: skip
from sqz.runs import RunLayout
from sqz.runs.manifest import pipeline_run_id


def test_roundtrip_through_json_dicts():
    config = PipelineConfig(sweep=SweepConfig(thresholds=(0.1, 0.2), bits=(6,)))
    assert config_from_dict(PipelineConfig, config_to_dict(config)) == config


def test_run_ids_of_existing_runs_are_kept():
    # Golden ids, computed before the configs became pydantic dataclasses: a change to the
    # JSON a run id hashes would orphan every existing run folder (no resume, no reuse).
    assert pipeline_run_id(PipelineConfig()) == "run-1e8c4659b2dc"
    digits = PipelineConfig(data=DataConfig(batch_size=16, shift_augment=2),
                            train=TrainConfig(epochs=12, lr=5e-4, warmup_epochs=1.0, weight_decay=0.05, label_smoothing=0.1),
                            sweep=SweepConfig(thresholds=(0.33, 0.25), bits=(8, 6), prune_mode="density", retrain_steps=600,
                                              retrain_lr=5e-4, quant=QuantConfig(finetune_epochs=1)))  # fmt: skip
    assert pipeline_run_id(digits) == "run-da4c2aada8c6"
    # A field added later changes the id only away from its old behaviour.
    gptq = dataclasses.replace(digits, sweep=dataclasses.replace(digits.sweep, quant=QuantConfig(finetune_epochs=1, assign="gptq")))
    assert pipeline_run_id(gptq) != "run-da4c2aada8c6"


def test_values_are_normalised_and_copies_validated():
    config = SweepConfig(thresholds=[0.5, 1], bits=[6])  # as read back from JSON
    assert config.thresholds == (0.5, 1.0) and config.bits == (6,) and hash(config) == hash(SweepConfig(thresholds=(0.5, 1.0), bits=(6,)))
    assert dataclasses.replace(config.quant, bits=4).bits == 4
    with pytest.raises(ValueError, match="bits: must be at most 8, got 9"):
        dataclasses.replace(config.quant, bits=9)


def test_run_id_same_config_same_id_storage_excluded():
    a = PipelineConfig(storage_url="/x")
    assert pipeline_run_id(a) == pipeline_run_id(PipelineConfig(storage_url="s3://b/p"))
    assert pipeline_run_id(a) != pipeline_run_id(PipelineConfig(train=TrainConfig(epochs=3)))
    assert RunLayout.for_config(a).run_url == f"/x/{pipeline_run_id(a)}"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: QuantConfig(bits=0), "bits"),
        (lambda: QuantConfig(bits=9), "bits"),
        (lambda: PruneConfig(mode="std", amount=-1), "threshold"),
        (lambda: PruneConfig(mode="density", amount=1.5), "density"),
        (lambda: SweepConfig(thresholds=()), "thresholds"),
        (lambda: SweepConfig(bits=(4, 12)), "bits"),
        (lambda: TrainConfig(workers=0), "workers"),
        (lambda: DataConfig(val_fraction=1.0), "val_fraction"),
        (lambda: config_from_dict(TrainConfig, {"epochz": 3}), "unknown keys"),
        (lambda: SweepConfig(retrain_steps=-1), "retrain_steps"),
        (lambda: SweepConfig(retrain_steps=20, prune_frequency=11), "prune_frequency"),
        (lambda: SweepConfig(prune_frequency=0), "prune_frequency"),
        (lambda: SweepConfig(prune_ramp=0.0), "prune_ramp"),
        (lambda: SweepConfig(prune_schedule="cubic"), "prune_schedule"),
        (lambda: SweepConfig(retrain_lr_schedule="cosine"), "retrain_lr_schedule"),
        (lambda: SweepConfig(scheduler="asha", retrain_steps=0), "asha"),
        (lambda: TrainConfig(epochs=0), "^epochs: must be at least 1, got 0$"),
        (lambda: TrainConfig(amp="fp8"), "^amp: must be 'auto', 'off', 'bf16' or 'fp16', got 'fp8'$"),
        (lambda: DataConfig(val_fraction=float("nan")), "^val_fraction: must be a finite number"),
        (lambda: config_from_dict(PipelineConfig, {"sweep": {"bits": [8, 12]}}), r"^sweep\.bits\[1\]: must be at most 8, got 12$"),
        (lambda: config_from_dict(PipelineConfig, {"train": {"epochz": 3}}), r"^train: unknown keys \['epochz'\]$"),
        (lambda: config_from_dict(PipelineConfig, {"sweep": {"thresholds": [-1]}}), "^sweep: threshold: must be >= 0"),
    ],
)
def test_invalid_values_name_the_field(build, message):
    with pytest.raises(ValueError, match=message) as info:
        build()
    assert "\n" not in str(info.value)  # pydantic's own errors take several lines
