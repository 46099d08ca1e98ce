import pytest

from sqz.config import (DataConfig, PipelineConfig, PruneConfig, QuantConfig, SweepConfig, TrainConfig,
                        config_from_dict, config_to_dict, derive_run_id)  # fmt: skip
from sqz.runs import RunLayout


def test_roundtrip_through_json_dicts():
    config = PipelineConfig(sweep=SweepConfig(thresholds=(0.1, 0.2), bits=(6,)))
    assert config_from_dict(PipelineConfig, config_to_dict(config)) == config


def test_run_id_same_config_same_id_storage_excluded():
    a = PipelineConfig(storage_url="/x")
    assert derive_run_id(a) == derive_run_id(PipelineConfig(storage_url="s3://b/p"))
    assert derive_run_id(a) != derive_run_id(PipelineConfig(train=TrainConfig(epochs=3)))
    assert RunLayout.for_config(a).run_url == f"/x/{derive_run_id(a)}"


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
    ],
)
def test_invalid_values_name_the_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()
