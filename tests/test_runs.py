"""The run record: one manifest schema (older manifests upgraded when read) and one
run-id derivation for every command."""

import json

import pytest

from sqz.config import DataConfig, PipelineConfig, TrainConfig
from sqz.runs import RunLayout, read_manifest, write_manifest
from sqz.runs.manifest import SCHEMA_VERSION, derive_run_id as run_id_of, new_manifest, pipeline_run_id, train_run_id, upgrade_manifest

ARCH = {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}


def test_one_derivation_gives_every_commands_id():
    config = PipelineConfig(train=TrainConfig(epochs=3))
    assert pipeline_run_id(config).startswith("run-")
    assert pipeline_run_id(config) == pipeline_run_id(PipelineConfig(train=TrainConfig(epochs=3), storage_url="s3://b/p"))
    ids = {pipeline_run_id(config), train_run_id(DataConfig(), TrainConfig()), run_id_of("sweep", {"x": 1})}
    assert [i.split("-")[0] for i in sorted(ids)] == ["run", "sweep", "train"]
    assert train_run_id(DataConfig(), TrainConfig()) != train_run_id(DataConfig(), TrainConfig(epochs=3))


def test_pipeline_manifest_round_trips_in_the_current_schema(tmp_path):
    layout = RunLayout(str(tmp_path / "r"))
    written = write_manifest(layout, PipelineConfig())
    read = read_manifest(layout.run_url)
    assert read == json.loads(json.dumps(written)) and read["schema_version"] == SCHEMA_VERSION
    assert read["kind"] == "pipeline" and read["arch"] == {"name": "squeezenet_small", "kwargs": {"num_classes": 10}}


@pytest.mark.parametrize("old, kind, model", [
    ({"run_id": "p", "config": {"train": {"model": "squeezenet_small"}, "sweep": {"max_top1_drop": 0.5}}}, "pipeline", "squeezenet_small"),
    ({"run_id": "t", "kind": "train", "config": {"data": {"url": "digits"}, "train": {"model": "squeezenet1_0", "num_classes": 10}}},
     "train", "squeezenet1_0"),
    ({"run_id": "s", "kind": "sweep", "arch": ARCH, "data": {"url": "digits"}, "checkpoint_sha256": "ab", "checkpoint_url": "/c",
      "train": {"epochs": 2}, "trial_settings": {"retrain_lr": 0.1}}, "sweep", "squeezenet_small"),
])  # fmt: skip
def test_the_three_older_shapes_are_upgraded(old, kind, model):
    new = upgrade_manifest(old)
    assert new["schema_version"] == SCHEMA_VERSION and new["kind"] == kind and new["arch"]["name"] == model
    if kind == "sweep":
        assert new["config"] == {"data": {"url": "digits"}, "train": {"epochs": 2}}
        assert new["source"] == {"checkpoint_url": "/c", "checkpoint_sha256": "ab"}
        assert new["trial_settings"] == {"retrain_lr": 0.1}
    assert upgrade_manifest(new) == new


def test_bad_manifests_are_refused():
    with pytest.raises(ValueError, match="kind"):
        new_manifest("x", "experiment", config={}, arch=None)
    with pytest.raises(ValueError, match="unknown keys"):
        new_manifest("x", "train", config={}, arch=None, notes="free text")
    with pytest.raises(ValueError, match="schema_version"):
        upgrade_manifest({"schema_version": 99})


def test_sweep_recorded_before_a_quant_field_existed_keeps_its_trials():
    from sqz.config import QuantConfig, SweepConfig, config_to_dict
    from sqz.runs.claims import plan_sweep_trials

    recorded = config_to_dict(SweepConfig())["quant"]
    recorded.pop("assign")  # as a sweep recorded it before GPTQ assignment existed
    plan = {"run_id": "s", "manifest": {"trial_settings": {"quant": recorded}}}
    assert plan_sweep_trials(plan, SweepConfig())["manifest"]["trial_settings"]["quant"]["assign"] == "nearest"
    with pytest.raises(ValueError, match="--assign: run s was swept with quant="):
        plan_sweep_trials(plan, SweepConfig(quant=QuantConfig(assign="gptq")))
